"""The test PKI, one module for every certificate the tests make (Python `cryptography`, a
dependency of tote itself): EC P-256 keys, SHA-256 signatures, validity from five minutes
ago (clock skew between the processes of one machine).

Two shapes of the same building blocks:

- The control plane's (`make_ca`, `CA.issue`, `make_rsa_keypair`): a CA whose certificate
  and key are files (kube-apiserver, the controller-manager's signer and kubelets read them),
  serving and client certificates with DNS/IP names and `O=` groups, and the
  service-account signing key (RSA-2048: RS256, what every client expects).
- tote's identities (`make_pki`, `authority`, `make_intermediate`, `issue`): a tote CA,
  controller and agent certificates with their SPIFFE URIs (`spiffe://tote/controller`,
  `spiffe://tote/agent`), a rogue CA issuing the same identity, an identity tote does not
  know, intermediates and chains. An `Authority` is (certificate, key, the CA file).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SKEW = dt.timedelta(minutes=5)

Authority = tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    return x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_certs(path: Path, certs: list[x509.Certificate]) -> None:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False)


def _sign(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, valid_for: dt.timedelta,
          extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    """The one certificate builder: everything else says only what differs."""
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - SKEW).not_valid_after(now + valid_for))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def authority(d: Path, name: str, *, parent: Authority | None = None,
              valid_for: dt.timedelta = dt.timedelta(days=1),
              common_name: str | None = None) -> Authority:
    """A CA (self-signed, or issued by `parent` with path length 0), its certificate written
    to `<d>/<name>.crt` (only itself: chains are built by `issue`); its subject is
    `common_name`, else `name`."""
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name or name)
    issuer, issuer_key = (parent[0].subject, parent[1]) if parent else (subject, key)
    cert = _sign(subject, key, issuer, issuer_key, valid_for, [
        (x509.BasicConstraints(ca=True, path_length=0 if parent else None), True),
        (_ca_usage(), True)])
    path = d / f"{name}.crt"
    _write_certs(path, [cert])
    return cert, key, path


def make_intermediate(d: Path, parent: Authority, name: str) -> Authority:
    return authority(d, name, parent=parent)


# --------------------------------------------------------------------------- control plane
@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    """A CA kept as files (`cert`, `key`); leaves go into `dir`."""

    cert: Path
    key: Path
    dir: Path

    def _authority(self) -> Authority:
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), type(key)
        return cert, key, self.cert

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        organizations: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        days: int = 30,
    ) -> CertPair:
        """A leaf signed by this CA in `<dir>/<name>.{crt,key}` (client only when neither
        `server` nor `client` is asked for)."""
        ca_cert, ca_key, _ = self._authority()
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [u for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                                  (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if on]
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(digital_signature=True, content_commitment=False,
                           key_encipherment=True, data_encipherment=False,
                           key_agreement=False, key_cert_sign=False, crl_sign=False,
                           encipher_only=False, decipher_only=False), True),
            (x509.ExtendedKeyUsage(usages or [ExtendedKeyUsageOID.CLIENT_AUTH]), False)]
        sans: list[x509.GeneralName] = [
            *(x509.DNSName(n) for n in dns_names),
            *(x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses)]
        if sans:
            extensions.append((x509.SubjectAlternativeName(sans), False))
        cert = _sign(_name(common_name, organizations), key, ca_cert.subject, ca_key,
                     dt.timedelta(days=days), extensions)
        pair = CertPair(cert=self.dir / f"{name}.crt", key=self.dir / f"{name}.key")
        _write_certs(pair.cert, [cert])
        _write_key(pair.key, key)
        return pair


def make_ca(directory: Path, common_name: str = "tote-test-ca", days: int = 30) -> CA:
    """The control plane's CA, as `<directory>/ca.crt` and `ca.key`."""
    _, key, path = authority(directory, "ca", valid_for=dt.timedelta(days=days),
                             common_name=common_name)
    _write_key(directory / "ca.key", key)
    return CA(cert=path, key=directory / "ca.key", dir=directory)


def make_rsa_keypair(directory: Path, name: str) -> CertPair:
    """An RSA private key and its public key (PEM); `cert` holds the public key here."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = CertPair(cert=directory / f"{name}.pub", key=directory / f"{name}.key")
    _write_key(pair.key, key)
    pair.cert.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pair


# --------------------------------------------------------------------------- tote identities
@dataclass
class Identity:
    cert: str
    key: str
    ca: str


def issue(d: Path, ca: Authority, name: str, uri: str | None, *,
          valid_for: dt.timedelta = dt.timedelta(hours=12), is_ca: bool = False,
          client_auth: bool = True, chain: list[x509.Certificate] | None = None,
          root: Path | None = None) -> Identity:
    """A tote identity issued by `ca`, valid for localhost / 127.0.0.1. `uri` None: no SAN
    URI (CN only). `chain`: intermediates written after the leaf in its certificate file;
    `root`: the CA file of the identity (default `ca`'s own file)."""
    ca_cert, ca_key, ca_path = ca
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if uri is not None:
        sans.insert(0, x509.UniformResourceIdentifier(uri))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH]
                                                  if client_auth else [])
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.SubjectAlternativeName(sans), False), (x509.ExtendedKeyUsage(usages), False)]
    if is_ca:
        extensions.append((x509.BasicConstraints(ca=True, path_length=None), True))
    cert = _sign(_name(name), key, ca_cert.subject, ca_key, valid_for, extensions)
    d.mkdir(parents=True, exist_ok=True)
    cp, kp = d / f"{name}.crt", d / f"{name}.key"
    _write_certs(cp, [cert, *(chain or [])])
    _write_key(kp, key)
    return Identity(str(cp), str(kp), str(root or ca_path))


@dataclass
class PKI:
    controller: Identity
    agent: Identity
    rogue_controller: Identity  # same identity, issued by another CA
    unknown: Identity  # tote CA, but no tote identity
    root: Authority  # the tote CA, for tests that issue more identities


def make_pki(d: Path) -> PKI:
    ca = authority(d, "tote-ca")
    rogue = authority(d, "rogue-ca")
    return PKI(
        controller=issue(d, ca, "tote-controller", "spiffe://tote/controller"),
        agent=issue(d, ca, "tote-agent", "spiffe://tote/agent"),
        rogue_controller=issue(d, rogue, "rogue-controller", "spiffe://tote/controller"),
        unknown=issue(d, ca, "someone", "spiffe://elsewhere/x"),
        root=ca,
    )
