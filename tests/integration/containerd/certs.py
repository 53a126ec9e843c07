"""Test PKI: a tote CA with controller and agent identities, and a rogue CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Identity:
    cert: str
    key: str
    ca: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_ca(d: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    p = d / f"{name}.crt"
    p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, p


def issue(d: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path], name: str,
          uri: str, *, valid_for: dt.timedelta = dt.timedelta(hours=12)) -> Identity:
    ca_cert, ca_key, ca_path = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + valid_for)
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cp = d / f"{name}.crt"
    kp = d / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(kp, key)
    return Identity(str(cp), str(kp), str(ca_path))


@dataclass
class PKI:
    controller: Identity
    agent: Identity
    rogue_controller: Identity  # same identity, issued by another CA
    unknown: Identity  # tote CA, but no tote identity


def make_pki(d: Path) -> PKI:
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d, "tote-ca")
    rogue = make_ca(d, "rogue-ca")
    return PKI(
        controller=issue(d, ca, "tote-controller", "spiffe://tote/controller"),
        agent=issue(d, ca, "tote-agent", "spiffe://tote/agent"),
        rogue_controller=issue(d, rogue, "rogue-controller", "spiffe://tote/controller"),
        unknown=issue(d, ca, "someone", "spiffe://elsewhere/x"),
    )
