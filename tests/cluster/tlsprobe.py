"""Looking at a TLS listener from outside: which certificate it presents now, and whether it
accepts a given client identity. Used to see certificate renewals take effect."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tote_containerd.agent.tls import client_context


def served_cert(host: str, port: int) -> bytes:
    """The certificate (DER) the listener presents in a fresh handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der
    return der


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def handshake_with(host: str, port: int, cert: Path, key: Path, ca: Path) -> str:
    """An mTLS connection with this identity: "" if the listener accepts it, else the error
    (with TLS 1.3 a refused client certificate arrives as an alert at the first read)."""
    ctx = client_context(str(cert), str(key), str(ca))
    try:
        with socket.create_connection((host, port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as conn:
            conn.settimeout(2)
            with contextlib.suppress(TimeoutError):
                conn.recv(1)
            return ""
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
