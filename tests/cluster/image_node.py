"""An image-only node: a containerd without a kubelet whose Node object, status.images and
Lease the harness writes itself (scale tests with many nodes that hold images)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster import oci
from tests.cluster.containerd_node import Containerd, ContainerdBacked, start_containerd
from tests.cluster.host_cleanup import (
    descendants,
    describe_pid,
    pids_referencing,
    unmount_all_under,
)
from tests.cluster.procs import ProcessGroup

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
