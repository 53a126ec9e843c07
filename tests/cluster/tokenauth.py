"""A real token server for `docker-registry`'s `auth.token` (the Docker registry token flow).

The registry answers `401 WWW-Authenticate: Bearer realm=…,service=…,scope=…`; a client gets
a JWT from `realm` (HTTP Basic user:password, `scope` and `service` query parameters) and
sends `Authorization: Bearer <jwt>`. This server checks the password, grants the actions
asked for (for any repository), signs an ES256 JWT whose `x5c` header carries its
self-signed certificate (the registry's `rootcertbundle`) and records every request it
answered (`requests`: (user or None, scopes, status)). Loopback only, a thread of the test
process, stopped by `close()`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

ISSUER = "tote-test-token-issuer"
SERVICE = "tote-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        self.users = users
        self.requests: list[tuple[str | None, list[str], int]] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - dt.timedelta(minutes=5))
                      .not_valid_after(now + dt.timedelta(days=1))
                      .sign(self._key, hashes.SHA256()))
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = workdir / "token-signer.crt"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_config(self) -> str:
        """The `auth:` block for the registry's config file."""
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {SERVICE}\n"
                f"    issuer: {ISSUER}\n    rootcertbundle: {self.cert_path}\n")

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _user(self, header: str) -> str | None:
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else ""

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(h.path).query)
        scopes = query.get("scope", [])
        user = self._user(h.headers.get("Authorization", ""))
        status = 401 if user == "" else 200  # wrong password; no credentials = anonymous
        self.requests.append((user, scopes, status))
        if status != 200:
            h.send_response(401)
            h.end_headers()
            return
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            granted = actions.split(",") if user else [a for a in actions.split(",")
                                                       if a == "pull"]
            access.append({"type": kind, "name": repo, "actions": granted})
        body = json.dumps({"token": self._jwt(user or "", access)}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _jwt(self, subject: str, access: list[dict[str, Any]]) -> str:
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing.encode(),
                                                   ec.ECDSA(hashes.SHA256())))
        return f"{signing}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
