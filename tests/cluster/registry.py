"""A real OCI registry (Debian's `docker-registry`, CNCF distribution v2) on loopback.

Plain HTTP on `127.0.0.1:PORT`, storage in a tmp dir. It can be stopped (→ pulls fail with
"connection refused", a real `ErrImagePull`), started again on the same port, and emptied
(→ "manifest unknown"). containerd nodes must be told the host is insecure:
`KubeletNode.trust_registry(registry.host)` writes the hosts.toml for it.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.procs import Proc, ProcessGroup, free_port, port_open, wait_until

REGISTRY_BINARY = "docker-registry"

CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: tote-test-registry
  headers:
    X-Content-Type-Options: [nosniff]
"""


def available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


@dataclass
class Registry:
    workdir: Path
    port: int = 0
    procs: ProcessGroup | None = field(default=None, repr=False)
    _proc: Proc | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self) -> None:
        if self.running():
            return
        if self.procs is None:
            self.procs = ProcessGroup(log_dir=self.workdir / "logs")
        if not self.port:
            self.port = free_port()
        else:  # restart on the same port: the old listener may linger briefly
            wait_until(
                lambda: not port_open("127.0.0.1", self.port),
                timeout=15,
                what=f"registry port {self.port} free",
            )
        self.storage.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.yml"
        cfg.write_text(CONFIG.format(storage=self.storage, port=self.port))
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
            with urllib.request.urlopen(req, timeout=5) as resp:
                digest = resp.headers.get("Docker-Content-Digest")
                return str(digest) if digest else None
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def catalog(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/v2/_catalog", timeout=5) as resp:
            return list(json.load(resp).get("repositories") or [])

    def logs(self) -> dict[str, str]:
        return self.procs.logs() if self.procs is not None else {}


def start_registry(workdir: Path, port: int = 0) -> Registry:
    workdir.mkdir(parents=True, exist_ok=True)
    reg = Registry(workdir=workdir, port=port)
    reg.start()
    return reg
