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


CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_ca(d: Path, name: str) -> CA:
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



def make_intermediate(d: Path, parent: CA, name: str) -> CA:
    """A CA issued by `parent`; its file holds only itself (chains are built by `issue`)."""
    p_cert, p_key, _ = parent
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(p_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(p_key, hashes.SHA256()))
    path = d / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def issue(d: Path, ca: CA, name: str, uri: str | None, *,
          valid_for: dt.timedelta = dt.timedelta(hours=12), is_ca: bool = False,
          client_auth: bool = True, chain: list[x509.Certificate] | None = None,
          root: Path | None = None) -> Identity:
    """A leaf issued by `ca`. `uri` None: no SAN URI (CN only). `chain`: intermediates
    written after the leaf in its certificate file; `root`: the CA file of the identity
    (default `ca`'s own file)."""
    ca_cert, ca_key, ca_path = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if uri is not None:
        sans.insert(0, x509.UniformResourceIdentifier(uri))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH]
                                                  if client_auth else [])
    builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + valid_for)
               .add_extension(x509.SubjectAlternativeName(sans), critical=False)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if is_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    cert = builder.sign(ca_key, hashes.SHA256())
    cp = d / f"{name}.crt"
    kp = d / f"{name}.key"
    cp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                            for c in [cert, *(chain or [])]))
    _write_key(kp, key)
    return Identity(str(cp), str(kp), str(root or ca_path))


@dataclass
class PKI:
    controller: Identity
    agent: Identity
    rogue_controller: Identity  # same identity, issued by another CA
    unknown: Identity  # tote CA, but no tote identity
    root: CA  # the tote CA, for tests that issue more identities


def make_pki(d: Path) -> PKI:
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d, "tote-ca")
    rogue = make_ca(d, "rogue-ca")
    return PKI(
        controller=issue(d, ca, "tote-controller", "spiffe://tote/controller"),
        agent=issue(d, ca, "tote-agent", "spiffe://tote/agent"),
        rogue_controller=issue(d, rogue, "rogue-controller", "spiffe://tote/controller"),
        unknown=issue(d, ca, "someone", "spiffe://elsewhere/x"),
        root=ca,
    )
