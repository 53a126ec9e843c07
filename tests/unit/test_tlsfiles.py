"""TLS material is validated at start-up: each bad file gives one line naming flag and path.

Material is generated here with `cryptography` (a declared dependency): a good CA and leaf,
then one defect at a time (garbage PEM, key of another certificate, expired, not yet valid,
a "CA" that is a leaf, a leaf from another CA, an encrypted key, half a configuration).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tote_core import tlsfiles
from tote_core.errors import ConfigError

NOW = dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, *, issuer: str | None = None,
          issuer_key: ec.EllipticCurvePrivateKey | None = None, ca: bool = False,
          start: dt.datetime = NOW - dt.timedelta(hours=1),
          end: dt.datetime = NOW + dt.timedelta(days=1)) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    iname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(iname)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key or key, hashes.SHA256()))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


@dataclass
class Material:
    d: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca: Path
    cert: Path
    key: Path

    def write(self, name: str, data: bytes) -> str:
        p = self.d / name
        p.write_bytes(data)
        return str(p)

    def leaf(self, name: str, **kw: object) -> tuple[str, str]:
        key = _key()
        cert = _cert(name, key, issuer="tote-ca", issuer_key=self.ca_key, **kw)  # type: ignore[arg-type]
        return self.write(f"{name}.crt", _pem(cert)), self.write(f"{name}.key", _key_pem(key))


@dataclass
class S:
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    insecure: bool = False


@pytest.fixture
def m(tmp_path: Path) -> Material:
    ca_key = _key()
    ca = tmp_path / "ca.crt"
    ca.write_bytes(_pem(_cert("tote-ca", ca_key, ca=True)))
    mat = Material(tmp_path, ca_key, ca, tmp_path / "x", tmp_path / "x")
    cert, key = mat.leaf("controller")
    mat.cert, mat.key = Path(cert), Path(key)
    return mat


def _fails(settings: S, *needles: str) -> str:
    with pytest.raises(ConfigError) as err:
        tlsfiles.check_mtls(settings)
    text = str(err.value)
    assert "\n" not in text, "one line"
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def test_good_material_turns_mtls_on(m: Material) -> None:
    assert tlsfiles.check_mtls(S(str(m.cert), str(m.key), str(m.ca))) is True


def test_no_tls_needs_insecure() -> None:
    _fails(S(), "refusing to start without mTLS", "--insecure")
    assert tlsfiles.check_mtls(S(insecure=True)) is False


def test_half_configuration(m: Material) -> None:
    _fails(S(str(m.cert), str(m.key)), "must be given together", "missing --tls-ca")
    # --insecure does not excuse half a configuration either
    _fails(S(tls_cert=str(m.cert), insecure=True), "missing --tls-key, --tls-ca")


def test_garbage_pem(m: Material) -> None:
    junk = m.write("junk.pem", b"hello, I am not a certificate\n")
    _fails(S(junk, str(m.key), str(m.ca)), "--tls-cert", junk, "no PEM certificate")
    _fails(S(str(m.cert), junk, str(m.ca)), "--tls-key", junk, "not a valid PEM private key")
    _fails(S(str(m.cert), str(m.key), junk), "--tls-ca", junk, "no PEM certificate")
    broken = m.write("broken.pem",
                     b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    _fails(S(broken, str(m.key), str(m.ca)), "--tls-cert", "not a valid PEM certificate")


def test_key_of_another_certificate(m: Material) -> None:
    _, other_key = m.leaf("agent")
    _fails(S(str(m.cert), other_key, str(m.ca)), other_key, "does not match the certificate")


def test_expired_and_not_yet_valid(m: Material) -> None:
    cert, key = m.leaf("old", start=NOW - dt.timedelta(days=10), end=NOW - dt.timedelta(days=1))
    _fails(S(cert, key, str(m.ca)), "--tls-cert", cert, "expired on")
    cert, key = m.leaf("future", start=NOW + dt.timedelta(days=1),
                       end=NOW + dt.timedelta(days=10))
    _fails(S(cert, key, str(m.ca)), "is not valid before")


def test_ca_that_is_not_a_ca(m: Material) -> None:
    _fails(S(str(m.cert), str(m.key), str(m.cert)), "--tls-ca", "is not a CA")


def test_leaf_from_another_ca(m: Material) -> None:
    rogue_key = _key()
    rogue = m.write("rogue-ca.crt", _pem(_cert("tote-ca", rogue_key, ca=True)))
    _fails(S(str(m.cert), str(m.key), rogue), "is not signed by --tls-ca", rogue)


def test_intermediate_in_the_cert_file(m: Material) -> None:
    inter_key = _key()
    inter = _cert("inter", inter_key, issuer="tote-ca", issuer_key=m.ca_key, ca=True)
    leaf_key = _key()
    leaf = _cert("leaf", leaf_key, issuer="inter", issuer_key=inter_key)
    cert = m.write("chain.crt", _pem(leaf) + _pem(inter))
    key = m.write("chain.key", _key_pem(leaf_key))
    assert tlsfiles.check_mtls(S(cert, key, str(m.ca))) is True


def test_encrypted_key(m: Material) -> None:
    key = _key()
    cert = m.write("enc.crt", _pem(_cert("enc", key, issuer="tote-ca", issuer_key=m.ca_key)))
    enc = m.write("enc.key", _key_pem(key, b"secret"))
    _fails(S(cert, enc, str(m.ca)), "encrypted")


def test_admission_pair(m: Material) -> None:
    assert tlsfiles.check_pair(str(m.cert), str(m.key), cert_flag="--admission-tls-cert",
                               key_flag="--admission-tls-key")
    with pytest.raises(ConfigError, match="--admission-tls-key"):
        tlsfiles.check_pair(str(m.cert), str(m.ca), cert_flag="--admission-tls-cert",
                            key_flag="--admission-tls-key")


@pytest.mark.parametrize("subcommand", ["controller", "agent"])
def test_cli_refuses_garbage_with_one_line(m: Material, subcommand: str) -> None:
    """What was tried: `tote controller|agent` with a garbage --tls-cert → exit 2, one line,
    no traceback, before any connection is attempted."""
    junk = m.write("junk.pem", b"garbage\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tote_core.cli", subcommand, f"--tls-cert={junk}",
         f"--tls-key={m.key}", f"--tls-ca={m.ca}"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"tote {subcommand}: --tls-cert {junk}: no PEM certificate in the file"
    assert "Traceback" not in proc.stderr


def test_cli_controller_without_tls_or_insecure_refuses() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tote_core.cli", "controller", "--kubeconfig=/nonexistent"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to start without mTLS" in proc.stderr
    assert "Traceback" not in proc.stderr
