"""tote's own certificate authority: what the controller issues into Secrets by default.

Helm can only generate certificates while rendering, so a chart that generates them renders
differently every time (GitOps tools see drift, `helm template` is never reproducible) and
renews nothing. Instead the chart renders no key material and the controller issues it
(`tote_core.components.cert_issuer`): one CA and a certificate per role, renewed when two
thirds of their lifetime has passed, long before anyone's handshake depends on the old one.

Identities are those the agents check (`spiffe://tote/<role>` and CN `tote-<role>`); the
webhook's certificate carries its Service's DNS names instead. A new CA (the old one near its
end, or its Secret deleted) is trusted next to the previous one while that one is still
valid, so processes that have not yet read the renewed files keep talking to each other.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
RENEW_AT = 2 / 3
"""Fraction of a certificate's lifetime after which it is replaced."""
BACKDATE = dt.timedelta(minutes=5)
"""notBefore lies this far in the past (at most a tenth of the lifetime): a node whose clock
is a little behind still accepts a certificate issued a moment ago."""


def _not_before(now: dt.datetime, validity: dt.timedelta) -> dt.datetime:
    return now - min(BACKDATE, validity / 10)


@dataclass(frozen=True)
class Issued:
    cert: bytes  # PEM
    key: bytes  # PEM (PKCS#8, unencrypted)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_ca(common_name: str, now: dt.datetime,
           validity: dt.timedelta = CA_VALIDITY) -> Issued:
    key = _key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_not_before(now, validity)).not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue(ca: Issued, role: str, now: dt.datetime, validity: dt.timedelta,
          dns_names: Sequence[str] = ()) -> Issued:
    """A leaf for `role` ("controller", "agent": mTLS client and server; "webhook": a
    serving certificate for `dns_names`)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    if dns_names:
        cn = dns_names[0]
        san = x509.SubjectAlternativeName([_general_name(n) for n in dns_names])
        usage = [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        cn = f"tote-{role}"
        san = x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://tote/{role}")])
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_not_before(now, validity)).not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def renewal_due(cert: x509.Certificate) -> dt.datetime:
    """When `cert` is to be replaced: two thirds into its lifetime."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AT


def bundle(certs: Sequence[x509.Certificate], now: dt.datetime) -> bytes:
    """The trust bundle: the given CAs still valid at `now`, newest first, deduplicated."""
    seen: set[bytes] = set()
    out: list[bytes] = []
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der in seen or cert.not_valid_after_utc <= now:
            continue
        seen.add(der)
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return b"".join(out)


def leaf_problem(cert_pem: bytes, key_pem: bytes, ca_cert: x509.Certificate, now: dt.datetime,
                 dns_names: Sequence[str] = ()) -> str:
    """Why the stored leaf must be re-issued ("" when it is fine): unreadable, key not its
    own, not from the current CA, renewal due, or other DNS names than the webhook needs."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        return f"unreadable ({exc})"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        return "key does not match the certificate"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # InvalidSignature, ValueError, TypeError: another CA's
        return "not issued by the current CA"
    if now >= renewal_due(cert):
        return f"renewal due since {renewal_due(cert):%Y-%m-%dT%H:%M:%SZ}"
    if dns_names:
        try:
            have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return "no DNS names"
        names = [*have.get_values_for_type(x509.DNSName),
                 *map(str, have.get_values_for_type(x509.IPAddress))]
        if sorted(names) != sorted(dns_names):
            return "other DNS names than the webhook Service's"
    return ""
