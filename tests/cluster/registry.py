"""A real OCI registry (Debian's `docker-registry`, CNCF distribution v2) on loopback.

Plain HTTP on `127.0.0.1:PORT` (or `address:PORT`: the e2e cluster's bridge address, which
its nodes reach from their own network namespaces), storage in a tmp dir. Optional:
htpasswd Basic auth (`users={"user": "password"}`, bcrypt entries) and TLS (`tls=CertPair`,
`ca=` the CA file the harness itself trusts); without them behaviour is unchanged.

It can be stopped (→ pulls fail with "connection refused", a real `ErrImagePull`), started
again on the same port, and emptied (→ "manifest unknown"). containerd nodes must be told
the host is insecure: `KubeletNode.trust_registry(registry.host)` writes the hosts.toml for it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.pki import CertPair
from tests.cluster.procs import Proc, ProcessGroup, free_port, port_open, wait_until
from tests.cluster.tokenauth import TokenServer

REGISTRY_BINARY = "docker-registry"

CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: {no_access_log}
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {address}:{port}
  secret: tote-test-registry
  headers:
    X-Content-Type-Options: [nosniff]
"""

AUTH_CONFIG = """auth:
  htpasswd:
    realm: tote-test-registry
    path: {htpasswd}
"""

TLS_CONFIG = """  tls:
    certificate: {cert}
    key: {key}
"""


def htpasswd_line(user: str, password: str) -> str:
    """One htpasswd entry with a bcrypt hash (the only kind distribution accepts)."""
    import bcrypt  # dev extra; only needed by auth-enabled registries

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{user}:{hashed}"


def available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


@dataclass
class Registry:
    workdir: Path
    port: int = 0
    address: str = "127.0.0.1"
    procs: ProcessGroup | None = field(default=None, repr=False)
    users: dict[str, str] | None = field(default=None, repr=False)
    tls: CertPair | None = None
    ca: Path | None = None
    access_log: bool = False  # log every request (method, path, status) for `requests()`
    token: TokenServer | None = None  # Bearer token auth (users are the token server's)
    _proc: Proc | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """`ADDRESS:PORT`, the registry part of image references."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca) if self.ca else None)

    def _headers(self) -> dict[str, str]:
        if not self.users:
            return {}
        user, password = next(iter(self.users.items()))
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    def _open(self, req: urllib.request.Request | str, timeout: float = 5) -> Any:
        if isinstance(req, str):
            req = urllib.request.Request(req)
        if self.token is None:
            for k, v in self._headers().items():
                req.add_header(k, v)
        try:
            return urllib.request.urlopen(req, timeout=timeout, context=self._context())
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "") if exc.code == 401 else ""
            if self.token is None or not challenge.startswith("Bearer "):
                raise
        # Token auth: ask the token server for exactly the challenged scope, then again.
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode({k: params[k] for k in ("scope", "service") if k in params})
        treq = urllib.request.Request(f"{params['realm']}?{query}", headers=self._headers())
        with urllib.request.urlopen(treq, timeout=timeout) as resp:
            token = json.load(resp)["token"]
        req.add_header("Authorization", f"Bearer {token}")
        return urllib.request.urlopen(req, timeout=timeout, context=self._context())

    @property
    def creds(self) -> str | None:
        """`user:password` for `skopeo --dest-creds` (the first user), or None."""
        if not self.users:
            return None
        user, password = next(iter(self.users.items()))
        return f"{user}:{password}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def healthy(self) -> bool:
        try:
            with self._open(f"{self.url}/v2/", timeout=2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            return bool(exc.code == 401 and (self.users or self.token))  # up, asks for creds
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> None:
        if self.running():
            return
        if self.procs is None:
            self.procs = ProcessGroup(log_dir=self.workdir / "logs")
        if not self.port:
            self.port = free_port(self.address)
        else:  # restart on the same port: the old listener may linger briefly
            wait_until(
                lambda: not port_open(self.address, self.port),
                timeout=15,
                what=f"registry port {self.port} free",
            )
        self.storage.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.yml"
        text = CONFIG.format(storage=self.storage, port=self.port, address=self.address,
                             no_access_log=str(not self.access_log).lower())
        if self.tls is not None:
            text += TLS_CONFIG.format(cert=self.tls.cert, key=self.tls.key)
        if self.token is not None:
            text += self.token.registry_config()
        elif self.users:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(
                "".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items())
            )
            text += AUTH_CONFIG.format(htpasswd=htpasswd)
        cfg.write_text(text)
        if self._proc is not None and self._proc in self.procs.procs:
            self.procs.procs.remove(self._proc)
        self._proc = self.procs.start("registry", [REGISTRY_BINARY, "serve", str(cfg)])
        wait_until(self.healthy, timeout=30, what="registry /v2/", proc=self._proc)

    def stop(self) -> None:
        """Stop the daemon (pulls then fail with connection refused); storage is kept."""
        if self._proc is not None:
            self._proc.stop(grace=5)

    def empty(self) -> None:
        """Delete every repository (pulls then fail with `manifest unknown`)."""
        was_running = self.running()
        self.stop()
        if self.storage.exists():
            shutil.rmtree(self.storage)
        if was_running:
            self.start()

    def manifest_digest(self, repo: str, ref: str) -> str | None:
        """The registry's digest for repo:ref (HEAD manifest), or None if unknown."""
        req = urllib.request.Request(
            f"{self.url}/v2/{repo}/manifests/{ref}",
            method="HEAD",
            headers={"Accept": ", ".join([
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ])},
        )  # fmt: skip
        try:
            with self._open(req) as resp:
                digest = resp.headers.get("Docker-Content-Digest")
                return str(digest) if digest else None
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def catalog(self) -> list[str]:
        with self._open(f"{self.url}/v2/_catalog") as resp:
            return list(json.load(resp).get("repositories") or [])

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request so far (needs `access_log=True`)."""
        out = []
        for proc in self.procs.procs if self.procs is not None else []:
            try:
                text = proc.log_path.read_text(errors="replace")
            except OSError:
                continue
            for m in re.finditer(r'"([A-Z]+) (/v2/\S*) HTTP/[\d.]+" (\d{3})', text):
                out.append((m.group(1), m.group(2), int(m.group(3))))
        return out

    def logs(self) -> dict[str, str]:
        return self.procs.logs() if self.procs is not None else {}


def start_registry(
    workdir: Path, port: int = 0, *, users: dict[str, str] | None = None,
    tls: CertPair | None = None, ca: Path | None = None, access_log: bool = False,
    token: TokenServer | None = None, address: str = "127.0.0.1",
) -> Registry:
    """`token` (a `tests.cluster.tokenauth.TokenServer`) switches from htpasswd to Bearer
    token auth; `users` are then the token server's users (for the helpers' requests)."""
    workdir.mkdir(parents=True, exist_ok=True)
    reg = Registry(workdir=workdir, port=port, users=users, tls=tls, ca=ca,
                   access_log=access_log, token=token, address=address)
    reg.start()
    return reg
