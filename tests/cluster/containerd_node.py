"""A containerd daemon with the CRI plugin for a kubelet node: its config, its CNI
config, starting it, and what a node needs installed (CNI plugins)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster import containerd_config, oci, versions
from tests.cluster.procs import Proc, ProcessGroup, wait_until

CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
# The sandbox image of a CRI daemon that never runs a pod (agent tests): never pulled.
PLACEHOLDER_PAUSE = "registry.k8s.io/pause:3.10"



def cni_bin_dir() -> str | None:
    for d in CNI_BIN_DIRS:
        if all(os.access(Path(d) / p, os.X_OK) for p in ("bridge", "host-local", "loopback")):
            return d
    return None


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a kubelet node (empty when it can)."""
    missing = [
        t for t in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "mount", "umount")
        if shutil.which(t) is None
    ]  # fmt: skip
    if cni_bin_dir() is None:
        missing.append("CNI plugins (bridge, host-local, loopback) in " + " or ".join(CNI_BIN_DIRS))
    if os.geteuid() != 0:
        missing.append("root (kubelet and containerd need it)")
    return missing


# --------------------------------------------------------------------------- containerd


@dataclass
class Containerd:
    """A containerd daemon, its own root/state/socket under `dir`: a kubelet node's (CRI
    plugin on) or an integration test's "node" (`tests/cluster/containerd_env.py`)."""

    name: str
    dir: Path
    proc: Proc

    @property
    def socket(self) -> str:
        return str(self.dir / "containerd.sock")

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def content_root(self) -> Path:
        return self.dir / "root" / "io.containerd.content.v1.content"

    def ctr(
        self, *args: str, namespace: str = "k8s.io", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ctr", "--address", self.socket, "--namespace", namespace, *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {res.stderr.strip()}")
        return res

    def image_names(self) -> list[str]:
        out = self.ctr("images", "ls", "-q").stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def blob_present(self, digest: str) -> bool:
        """In the namespace's content metadata (files of deleted blobs go at the next GC)."""
        return digest in self.ctr("content", "ls", "-q").stdout.split()

    def import_archive(self, archive: Path, *, all_platforms: bool = False) -> None:
        args = ["images", "import", "--no-unpack"]
        if all_platforms:
            args.append("--all-platforms")
        self.ctr(*args, str(archive))

    def trust_registry(self, host: str) -> None:
        """Treat `host` (e.g. 127.0.0.1:5000) as a plain-HTTP registry (hosts.toml)."""
        d = self.dir / "certs.d" / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "http://{host}"\n\n'
            f'[host."http://{host}"]\n'
            '  capabilities = ["pull", "resolve", "push"]\n'
            "  skip_verify = true\n"
        )

    def import_image(
        self, image: oci.OciImage, name: str | None = None, *, unpack: bool = True
    ) -> None:
        image.import_into(self.socket, name=name, unpack=unpack)

    def delete_blob(self, digest: str) -> None:
        """Remove one blob from the content store (to make a corrupt image record)."""
        self.ctr("content", "rm", digest)

    def remove_all_tasks(self) -> list[str]:
        """SIGKILL and delete every task and container in `k8s.io` (what a drain would do)."""
        removed: list[str] = []
        if not self.proc.alive():
            return removed
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for t in tasks:
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", t, check=False)
        for t in tasks:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                res = self.ctr("tasks", "delete", "--force", t, check=False)
                if res.returncode == 0 or "not found" in res.stderr:
                    break
                time.sleep(0.2)
            removed.append(t)
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", c, check=False)
        return removed


def discard_unpacked_layers() -> bool:
    """Whether kubelet nodes' containerd discard layer blobs after unpack, as EKS and other
    managed node images configure it (`TOTE_DISCARD_UNPACKED_LAYERS=1`; a matrix cell)."""
    return os.environ.get("TOTE_DISCARD_UNPACKED_LAYERS", "") == "1"


def write_containerd_config(d: Path, *, cri: bool = True,
                            pause_image: str = PLACEHOLDER_PAUSE,
                            discard_layers: bool | None = None) -> Path:
    """containerd.toml under `d` (and the directories it names). `cri=False`: content,
    images, leases and snapshots only; `discard_layers` None: as the matrix cell says
    (`discard_unpacked_layers()`)."""
    for sub in ("root", "state", "opt", "certs.d", "cni/net.d", "cni/ipam"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    cfg = d / "containerd.toml"
    if not cri:
        cfg.write_text(containerd_config.plain(d))
        return cfg
    if discard_layers is None:
        discard_layers = discard_unpacked_layers()
    cni_bin = cni_bin_dir() or CNI_BIN_DIRS[0]
    cfg.write_text(containerd_config.cri(d, pause=pause_image, cni_bin=cni_bin,
                                         discard_unpacked_layers=discard_layers))
    return cfg


def write_cni_config(d: Path, *, bridge: str, subnet: str, routed: bool = False) -> None:
    """bridge + host-local (+ CRI's own loopback).

    `routed` (a node in its own network namespace): the bridge is the pods' gateway and
    hairpins (a pod reaching itself through a Service), so pods talk to other nodes' pods
    and to Services through the node. Otherwise (nodes sharing the host's namespace) it only
    makes the node report NetworkReady: no gateway, no ipMasq, no portmap, no iptables.
    """
    bridge_conf: dict[str, Any] = {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": routed,
        "ipMasq": False,
        "hairpinMode": routed,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": str(d / "cni" / "ipam"),
            **({"routes": [{"dst": "0.0.0.0/0"}]} if routed else {}),
        },
    }
    conf = {"cniVersion": "0.4.0", "name": "tote-test", "plugins": [bridge_conf]}
    (d / "cni" / "net.d" / "10-tote.conflist").write_text(json.dumps(conf, indent=2))


def start_containerd(
    procs: ProcessGroup, d: Path, *, name: str, cri: bool = True,
    pause_image: str = PLACEHOLDER_PAUSE, subnet: str | None = "10.244.0.0/24",
    exec_prefix: list[str] | None = None, discard_layers: bool | None = None,
) -> Containerd:
    """The one way the harness starts a containerd: its root, state and sockets under `d`,
    started through `procs` (stopped by PID), waited for until `ctr version` answers.

    The variations, as parameters: `cri` (the CRI plugin, overlayfs, as on a kubelet node;
    False for a daemon with content, images, leases and snapshots only, what most agent
    tests need); `subnet` (a CNI network for pods on that subnet; None for none: nothing
    runs pods); `exec_prefix` (tests/cluster/netns.py: the daemon runs in a node's network
    namespace and its CNI bridge `cni0` there is routed); `discard_layers` (CRI's
    `discard_unpacked_layers`, as EKS and other managed node images set it; None: the
    matrix cell's `TOTE_DISCARD_UNPACKED_LAYERS`)."""
    versions.use_containerd()
    d.mkdir(parents=True, exist_ok=True)
    cfg = write_containerd_config(d, cri=cri, pause_image=pause_image,
                                  discard_layers=discard_layers)
    if cri and subnet is not None:
        if exec_prefix:
            write_cni_config(d, bridge="cni0", subnet=subnet, routed=True)
        else:
            write_cni_config(d, bridge=f"tote{secrets.token_hex(3)}", subnet=subnet)
    proc = procs.start(f"containerd-{name}",
                       [*(exec_prefix or []), "containerd", "--config", str(cfg)])  # fmt: skip
    cd = Containerd(name=name, dir=d, proc=proc)
    wait_until(
        lambda: Path(cd.socket).exists() and cd.ctr("version", check=False).returncode == 0,
        timeout=30, what=f"containerd {name} socket", proc=proc,
    )  # fmt: skip
    return cd


class ContainerdBacked:
    """What a node (kubelet or image-only) answers through its own containerd."""

    containerd: Containerd
    procs: ProcessGroup

    @property
    def socket(self) -> str:
        return self.containerd.socket

    def ctr(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.containerd.ctr(*args, **kw)

    def image_names(self) -> list[str]:
        return self.containerd.image_names()

    def trust_registry(self, host: str) -> None:
        self.containerd.trust_registry(host)

    def import_image(
        self, image: oci.OciImage, name: str | None = None, *, unpack: bool = True
    ) -> None:
        self.containerd.import_image(image, name=name, unpack=unpack)

    def delete_blob(self, digest: str) -> None:
        self.containerd.delete_blob(digest)

    def blob_present(self, digest: str) -> bool:
        return self.containerd.blob_present(digest)

    def logs(self) -> dict[str, str]:
        return self.procs.logs()
