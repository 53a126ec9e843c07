"""A throw-away PKI for the test control plane, made with the `openssl` CLI.

The `cryptography` package is not a declared dependency, `openssl` is (Debian's `openssl`,
installed by .ci/install), so certificates are made by the CLI. EC P-256 keys keep it fast;
the service-account signing key is RSA-2048 (RS256, what every client expects).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the `openssl` command is required (apt-get install openssl)")
    res = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{res.stderr}")


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    cert: Path
    key: Path
    dir: Path

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
        """Issue a leaf certificate signed by this CA into `<dir>/<name>.{crt,key}`."""
        key = self.dir / f"{name}.key"
        csr = self.dir / f"{name}.csr"
        crt = self.dir / f"{name}.crt"
        ext = self.dir / f"{name}.ext"
        subj = "".join(f"/O={o}" for o in organizations) + f"/CN={common_name}"
        usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={','.join(usages or ['clientAuth'])}",
        ]
        sans = [f"DNS:{d}" for d in dns_names] + [f"IP:{ip}" for ip in ip_addresses]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", subj,
            cwd=self.dir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(crt), "-days", str(days), "-sha256",
            "-extfile", str(ext),
            cwd=self.dir,
        )  # fmt: skip
        key.chmod(0o600)
        return CertPair(cert=crt, key=key)


def make_ca(directory: Path, common_name: str = "tote-test-ca", days: int = 30) -> CA:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(days), "-sha256",
        "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )  # fmt: skip
    key.chmod(0o600)
    return CA(cert=cert, key=key, dir=directory)


def make_rsa_keypair(directory: Path, name: str) -> CertPair:
    """An RSA private key and its public key (PEM); `cert` holds the public key here."""
    key, pub = directory / f"{name}.key", directory / f"{name}.pub"
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key),
        cwd=directory,
    )  # fmt: skip
    _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub), cwd=directory)
    key.chmod(0o600)
    return CertPair(cert=pub, key=key)
