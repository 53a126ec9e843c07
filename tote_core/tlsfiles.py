"""TLS material checked at start-up, so a bad file stops the process with one clear line.

Without this, a garbage PEM, a key that belongs to another certificate, an expired
certificate or a "CA" bundle holding a leaf would only show up later, as failed handshakes
in the middle of a salvage (and, before, as records marked permanently failed). Both
subcommands call `check_mtls` before anything starts; the controller also calls
`check_pair` for the admission webhook's serving certificate.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from tote_core.errors import ConfigError


class TLSSettings(Protocol):
    tls_cert: str
    tls_key: str
    tls_ca: str
    insecure: bool


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None


def _certs(path: str, flag: str) -> list[x509.Certificate]:
    data = _read(path, flag)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{flag} {path}: no PEM certificate in the file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{flag} {path}: not a valid PEM certificate ({exc})") from None


def _key(path: str, flag: str) -> PrivateKeyTypes:
    data = _read(path, flag)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{flag} {path}: the key is encrypted; give an unencrypted PEM key"
                          ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise ConfigError(f"{flag} {path}: not a valid PEM private key ({reason})") from None


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_dates(cert: x509.Certificate, where: str, now: dt.datetime) -> None:
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"{where} expired on {_when(cert.not_valid_after_utc)}")
    if cert.not_valid_before_utc > now:
        raise ConfigError(f"{where} is not valid before {_when(cert.not_valid_before_utc)}")


def _spki(key: object) -> bytes:
    public_bytes = key.public_bytes  # type: ignore[attr-defined]
    result: bytes = public_bytes(serialization.Encoding.DER,
                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return result


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # ValueError, TypeError, InvalidSignature: not this issuer
        return False
    return True


def check_pair(cert_path: str, key_path: str, *, cert_flag: str, key_flag: str,
               now: dt.datetime | None = None) -> list[x509.Certificate]:
    """Certificate (chain) and key: both parse, the key matches the leaf, the leaf is valid
    now. Returns the certificates of the file, leaf first."""
    now = now or dt.datetime.now(dt.UTC)
    chain = _certs(cert_path, cert_flag)
    key = _key(key_path, key_flag)
    leaf = chain[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(f"{key_flag} {key_path} does not match the certificate in "
                          f"{cert_flag} {cert_path}")
    _check_dates(leaf, f"{cert_flag} {cert_path}", now)
    try:  # what the TLS stack will do with them later
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise ConfigError(f"{cert_flag} {cert_path} / {key_flag} {key_path}: rejected by the "
                          f"TLS library: {exc.reason or exc}") from None
    return chain


def check_ca(ca_path: str, *, flag: str = "--tls-ca",
             now: dt.datetime | None = None) -> list[x509.Certificate]:
    """Every certificate of the bundle is a CA (basicConstraints CA:TRUE) and valid now."""
    now = now or dt.datetime.now(dt.UTC)
    cas = _certs(ca_path, flag)
    for ca in cas:
        subject = ca.subject.rfc4514_string() or "(empty subject)"
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ConfigError(f"{flag} {ca_path}: certificate {subject!r} is not a CA "
                              "(no basicConstraints CA:TRUE)")
        _check_dates(ca, f"{flag} {ca_path}: CA {subject!r}", now)
    return cas


def check_chain(chain: list[x509.Certificate], cas: list[x509.Certificate], *,
                cert_where: str, ca_where: str) -> None:
    """The leaf (through intermediates in its own file, if any) is signed by a CA of the
    bundle: a certificate from another CA would fail every handshake later."""
    current = chain[0]
    extras = list(chain[1:])
    for _ in range(len(extras) + 1):
        if any(_issued_by(current, ca) for ca in cas):
            return
        parent = next((c for c in extras if _issued_by(current, c)), None)
        if parent is None:
            break
        extras.remove(parent)
        current = parent
    raise ConfigError(f"{cert_where} is not signed by {ca_where}")


def check_mtls(settings: TLSSettings, *, now: dt.datetime | None = None) -> bool:
    """Validate `--tls-cert/--tls-key/--tls-ca`; True when mTLS is on.

    Refuses half a configuration, and no TLS at all unless `--insecure` was given (the caller
    logs that loudly). Raises `ConfigError` with a one-line reason.
    """
    files = {"--tls-cert": settings.tls_cert, "--tls-key": settings.tls_key,
             "--tls-ca": settings.tls_ca}
    if not any(files.values()):
        if settings.insecure:
            return False
        raise ConfigError("refusing to start without mTLS: give --tls-cert, --tls-key and "
                          "--tls-ca, or pass --insecure explicitly")
    missing = [flag for flag, value in files.items() if not value]
    if missing:
        raise ConfigError("--tls-cert, --tls-key and --tls-ca must be given together "
                          f"(missing {', '.join(missing)})")
    chain = check_pair(settings.tls_cert, settings.tls_key, cert_flag="--tls-cert",
                       key_flag="--tls-key", now=now)
    cas = check_ca(settings.tls_ca, now=now)
    check_chain(chain, cas, cert_where=f"--tls-cert {settings.tls_cert}",
                ca_where=f"--tls-ca {settings.tls_ca}")
    return True
