"""An image-only node: a containerd without a kubelet whose Node object, status.images and
Lease the harness writes itself (scale tests with many nodes that hold images)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import oci
from tests.cluster.containerd_node import Containerd, ContainerdBacked, start_containerd
from tests.cluster.controlplane import ControlPlane
from tests.cluster.host_cleanup import (
    descendants,
    describe_pid,
    pids_referencing,
    unmount_all_under,
)
from tests.cluster.procs import ProcessGroup, wait_until

# --------------------------------------------------------------------------- image-only nodes


def _microtime() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _parse_size(text: str) -> int:
    """`ctr images ls` sizes ("1.4 MiB") → bytes (approximate, like kubelet's sizeBytes)."""
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
    try:
        num, unit = text.split()
        return int(float(num) * units.get(unit, 1))
    except ValueError:
        return 0


@dataclass
class ImageNode(ContainerdBacked):
    """Another "node" of the cluster: a containerd (CRI plugin on, like a real node) that
    holds images and never runs pods, plus a Node object the test process keeps Ready.

    `heartbeat()` (called every few seconds by the cluster) renews the node's Lease in
    `kube-node-lease` — what the node lifecycle controller watches — and, when the image list
    changed, writes `status.images` the way kubelet reports it (`repo@digest` + `repo:tag`,
    at most 50 images). The node is tainted `tote.test/image-only:NoSchedule`.
    """

    name: str
    address: str
    workdir: Path
    containerd: Containerd
    procs: ProcessGroup
    report_images: bool = True
    runtime_version: str = "containerd://unknown"
    ready_since: str = ""
    _stopped: bool = False

    TAINT_KEY = "tote.test/image-only"


    def node_images(self) -> list[dict[str, Any]]:
        """What kubelet would put in Node.status.images for this containerd."""
        res = self.ctr("images", "ls", check=False)
        by_digest: dict[str, dict[str, Any]] = {}
        for line in res.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 5:
                continue
            ref, digest = parts[0], parts[2]
            size = _parse_size(f"{parts[3]} {parts[4]}")
            if ref.startswith("sha256:"):
                continue
            entry = by_digest.setdefault(digest, {"names": [], "sizeBytes": size})
            repo = ref.split("@", 1)[0]
            if "@" not in ref:
                last = repo.rsplit("/", 1)[-1]
                if ":" in last:
                    repo = repo[: repo.rfind(":")]
            for n in (f"{repo}@{digest}", ref):
                if n not in entry["names"]:
                    entry["names"].append(n)
        images = sorted(by_digest.values(), key=lambda i: -int(i["sizeBytes"]))[:50]
        for i in images:  # kubelet: digests first, at most 5 names
            i["names"] = sorted(i["names"], key=lambda n: "@" not in n)[:5]
        return images

    def register_manifests(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": oci.go_arch(),
                    "tote.test/image-only": "true",
                },
            },
            "spec": {"taints": [{"key": self.TAINT_KEY, "value": "true", "effect": "NoSchedule"}]},
        }

    def status_patch(self) -> dict[str, Any]:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.ready_since = self.ready_since or now
        status: dict[str, Any] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "image-only test node (containerd, no kubelet)",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self.ready_since,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.address},
                {"type": "Hostname", "address": self.name},
            ],
            "capacity": {"cpu": "1", "memory": "1Gi", "pods": "0"},
            "allocatable": {"cpu": "1", "memory": "1Gi", "pods": "0"},
            "nodeInfo": {
                "containerRuntimeVersion": self.runtime_version,
                "kubeletVersion": "",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": oci.go_arch(),
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "tote image-only test node",
            },
        }
        if self.report_images:
            status["images"] = self.node_images()
        return {"status": status}

    def lease(self) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": 40,
                "renewTime": _microtime(),
            },
        }

    def stop(self) -> dict[str, list[str]]:
        if self._stopped:
            return {}
        self._stopped = True
        report: dict[str, list[str]] = {}
        try:
            report["tasks_killed"] = self.containerd.remove_all_tasks()
        except Exception as exc:
            report["tasks_killed"] = [f"<failed: {exc!r}>"]
        self.procs.stop_all(grace=10)
        pids = pids_referencing(str(self.workdir))
        leftovers = sorted(set(pids + descendants(pids)))
        report["leftover_pids"] = [describe_pid(p) for p in leftovers]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        report["still_mounted"] = unmount_all_under(self.workdir)
        return report


def start_image_node(
    workdir: Path, *, name: str, address: str, pause_image: str, report_images: bool = True
) -> ImageNode:
    """Start the containerd of an image-only node (the cluster registers its Node object)."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = ProcessGroup(log_dir=workdir / "logs")
    try:
        cd = start_containerd(procs, workdir / "containerd", name=name, pause_image=pause_image)
    except BaseException:
        procs.stop_all()
        unmount_all_under(workdir)
        raise
    out = cd.ctr("version", check=False).stdout
    # "Server:\n  Version:  1.6.20~ds1" → containerd://1.6.20
    versions = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Version:" in ln]
    version = versions[-1].split("~")[0] if versions else "unknown"
    return ImageNode(
        name=name, address=address, workdir=workdir, containerd=cd, procs=procs,
        report_images=report_images, runtime_version=f"containerd://{version}",
    )  # fmt: skip


@dataclass
class ImageNodes:
    """A cluster's image-only nodes and the kubelet's part for them: the Node object, its
    status (images, Ready) and Lease heartbeats every `interval`, from one thread."""

    cp: ControlPlane
    workdir: Path
    pause_image: str
    node_ready: Callable[[str], bool]
    interval: float = 5.0
    errors: list[str] = field(default_factory=list)  # heartbeats that failed
    nodes: list[ImageNode] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[ImageNode]:
        with self._lock:
            return iter(list(self.nodes))

    def add(self, name: str, *, address: str = "127.0.0.1", report_images: bool = True,
            timeout: float = 60) -> ImageNode:
        """Start a containerd standing in for node `name` (holds images, runs no pods),
        register its Node object and keep it Ready with Lease heartbeats; returns once the
        node is Ready without the not-ready taint."""
        node = start_image_node(self.workdir / name, name=name, address=address,
                                pause_image=self.pause_image, report_images=report_images)
        try:
            self.cp.apply(node.register_manifests())
            self._beat(node)
            with self._lock:
                self.nodes.append(node)
            self._ensure_thread()
            wait_until(lambda: self.node_ready(name), timeout=timeout, interval=0.5,
                       what=f"image node {name} Ready and untainted")
        except BaseException:
            self.remove(name, node=node)
            raise
        return node

    def get(self, name: str) -> ImageNode:
        return next(n for n in self if n.name == name)

    def remove(self, name: str, *, node: ImageNode | None = None) -> None:
        """Stop the node's containerd, delete its Node object and Lease."""
        node = node or self.get(name)
        with self._lock:
            if node in self.nodes:
                self.nodes.remove(node)
        node.stop()
        self.cp.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false",
                        check=False)
        self.cp.kubectl("delete", "lease", name, "-n", "kube-node-lease", "--ignore-not-found",
                        check=False)

    def sync(self) -> None:
        """Heartbeat now (e.g. right after importing an image, to publish status.images)."""
        for node in self:
            self._beat(node)

    def stop(self) -> dict[str, Any]:
        """End the heartbeats and stop every node; their teardown reports by node name."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return {node.name: node.stop() for node in self}

    def _beat(self, node: ImageNode) -> None:
        self.cp.kubectl("patch", "node", node.name, "--subresource=status", "--type=merge",
                        "-p", json.dumps(node.status_patch()))
        self.cp.apply(node.lease())

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                for node in self:
                    try:
                        self._beat(node)
                    except Exception as exc:  # keep beating for the others
                        self.errors.append(f"{node.name}: {exc}")

        self._thread = threading.Thread(target=loop, name="image-node-heartbeat", daemon=True)
        self._thread.start()
