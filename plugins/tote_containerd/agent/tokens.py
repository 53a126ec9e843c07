"""Transfer tokens: controller-signed, short-lived, single-use.

A token binds (digest, source node, target node, expiry, nonce). The controller signs it with
the private key of its TLS certificate and embeds that certificate (and any intermediates from
its certificate file); a source agent validates the certificate as a chain to the tote CA
(signatures, validity times, CA constraints, client-auth key usage: RFC 5280 path validation
by `cryptography.x509.verification`), requires the controller role in it (SAN URI
`spiffe://tote/controller`, or CN `tote-controller` on a certificate without URI SANs — the
same rule as the TLS handshake), then checks the signature and the claims. Single use is
enforced by the source agent (see `source`).

Format: `tote1.<claims b64url>.<cert DER b64url>[~<intermediate DER b64url>…].<signature
b64url>`. Without TLS (`--insecure`) tokens are unsigned (`tote1.<claims>..`) and only
insecure agents accept them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import time
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from tote_containerd.agent.errors import PermissionDenied, Unauthenticated

PREFIX = "tote1"
MAX_TOKEN_LEN = 16384
MAX_CHAIN = 4  # signer certificate + intermediates carried in a token
CONTROLLER_URI = "spiffe://tote/controller"
CONTROLLER_CN = "tote-controller"  # the role without URIs (as in tls.identity_of)


class Claims(msgspec.Struct, frozen=True):
    digest: str
    source: str
    target: str
    exp: int
    iat: int
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Controller side: mints tokens (signed when given a cert/key)."""

    def __init__(self, cert_path: str = "", key_path: str = "") -> None:
        self._chain = ""
        self._key: object = None
        if cert_path:
            # The certificate file may hold intermediates after the leaf (as for TLS).
            certs = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
            self._chain = "~".join(_b64(c.public_bytes(serialization.Encoding.DER))
                                   for c in certs[:MAX_CHAIN])
            self._key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)

    def mint(self, *, digest: str, source: str, target: str, ttl: float,
             now: float | None = None) -> str:
        t = int(now if now is not None else time.time())
        claims = Claims(digest=digest, source=source, target=target, exp=t + int(ttl), iat=t,
                        nonce=secrets.token_hex(16))
        body = _b64(msgspec.json.encode(claims))
        if self._key is None:
            return f"{PREFIX}.{body}.."
        signed = f"{PREFIX}.{body}".encode()
        return f"{PREFIX}.{body}.{self._chain}.{_b64(_sign(self._key, signed))}"


def _sign(key: object, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise TypeError(f"unsupported key type {type(key).__name__}")


def _verify(pub: object, sig: bytes, data: bytes) -> None:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(pub, rsa.RSAPublicKey):
        pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        pub.verify(sig, data)
    else:
        raise InvalidSignature("unsupported key type")


class Verifier:
    """Source-agent side. `ca_path` empty = insecure mode (unsigned tokens only)."""

    def __init__(self, ca_path: str = "") -> None:
        self._cas: list[x509.Certificate] = []
        if ca_path:
            self.load(ca_path)

    def load(self, ca_path: str) -> None:
        """Trust the CA bundle in `ca_path` from now on (a renewed bundle replaces the old)."""
        self._cas = x509.load_pem_x509_certificates(Path(ca_path).read_bytes())

    def verify(self, token: str, *, source: str, target: str, now: float | None = None
               ) -> Claims:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LEN:
            raise Unauthenticated("missing or oversized transfer token")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise Unauthenticated("malformed transfer token")
        _, body, cert_b64, sig_b64 = parts
        try:
            claims = msgspec.json.decode(_unb64(body), type=Claims)
        except (ValueError, msgspec.DecodeError) as exc:
            raise Unauthenticated(f"malformed transfer token claims: {exc}") from exc
        if self._cas:
            if not cert_b64 or not sig_b64:
                raise Unauthenticated("unsigned transfer token refused (mTLS is on)")
            try:
                self._check_signature(f"{PREFIX}.{body}".encode(), cert_b64, sig_b64, now)
            except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
                # cryptography parses lazily: a damaged certificate can fail at any access
                # (a flipped version bit raises InvalidVersion, not ValueError).
                raise Unauthenticated(
                    f"malformed transfer token signer certificate: {exc}") from exc
        t = now if now is not None else time.time()
        if claims.exp <= t:
            raise PermissionDenied("transfer token expired")
        if claims.iat > t + 60:
            raise PermissionDenied("transfer token issued in the future")
        if claims.source != source:
            raise PermissionDenied(
                f"transfer token is for source {claims.source!r}, not {source!r}")
        if claims.target != target:
            raise PermissionDenied(
                f"transfer token is for target {claims.target!r}, not {target!r}")
        return claims

    def _check_signature(self, signed: bytes, cert_b64: str, sig_b64: str,
                         now: float | None) -> None:
        parts = cert_b64.split("~")
        if len(parts) > MAX_CHAIN:
            raise Unauthenticated("transfer token carries too many certificates")
        try:
            certs = [x509.load_der_x509_certificate(_unb64(c)) for c in parts]
            sig = _unb64(sig_b64)
        except ValueError as exc:
            raise Unauthenticated(f"malformed transfer token signature: {exc}") from exc
        when = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.UTC)
        verifier = (PolicyBuilder().store(Store(self._cas)).time(when)
                    .max_chain_depth(MAX_CHAIN)
                    .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                        ee_policy=_EE_POLICY)
                    .build_client_verifier())
        try:
            verified = verifier.verify(certs[0], certs[1:])
        except VerificationError as exc:
            raise Unauthenticated(
                f"transfer token signer is not a valid certificate chain to the tote CA: "
                f"{exc}") from exc
        uris = [g.value for g in verified.subjects or []
                if isinstance(g, x509.UniformResourceIdentifier)]
        by_cn = not uris and _common_name(certs[0]) == CONTROLLER_CN
        if CONTROLLER_URI not in uris and not by_cn:
            raise Unauthenticated(
                "transfer token was not signed by the controller identity (SAN URI "
                f"{CONTROLLER_URI}, or CN {CONTROLLER_CN} on a certificate without URIs; "
                f"found URIs {uris}, CN {_common_name(certs[0])!r})")
        try:
            _verify(certs[0].public_key(), sig, signed)
        except InvalidSignature as exc:
            raise Unauthenticated("transfer token signature is invalid") from exc


# Leaf rules: the Web PKI defaults (no CA flag, client-auth key usage if restricted, …), but
# an authority key identifier and the SAN extension are optional, as in the TLS handshake
# (OpenSSL needs neither): Helm's genSignedCert, the chart's self-generated default, writes no
# SANs, so its controller certificate names the role by CN only — the same rule as tls.py.
_EE_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def describe(token: str) -> dict[str, object]:
    """Claims of a token without verifying it (for logs)."""
    try:
        return dict(json.loads(_unb64(token.split(".")[1])))
    except (ValueError, IndexError):
        return {}
