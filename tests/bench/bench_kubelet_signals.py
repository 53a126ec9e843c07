"""What kubelet offers a salvage, measured on the real kubelet (no tote running):

1. **Pull failure: Event or status.** A pod whose image cannot be pulled: when kubelet's
   `Failed to pull image` Event reaches a watcher, next to when the pod status saying
   `ErrImagePull`/`ImagePullBackOff` does (both `kubectl get --watch` streams opened before
   the pod is created; arrival times on this process's monotonic clock). Detection starts at
   whichever comes first (tote_core/detect/pull_failures.py).
2. **Image delivered: start in place or replace.** A Deployment's pod waits in
   ImagePullBackOff; its image is imported into the node's containerd; then either its
   annotations change (what tote does: kubelet syncs the pod, finds the image before its
   pull back-off and starts the container) or the pod is deleted (what tote did: the
   ReplicaSet creates a replacement, which is scheduled, gets a sandbox and starts). Time
   from that action to Running, each next to the other in the same run.

Run: `python -m tests.bench.bench_kubelet_signals [--rounds 4]` (root; `.ci/install` done).
Not a timed test: figures for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.cluster import oci, versions
from tests.cluster.cluster import KubeCluster, start_cluster
from tests.cluster.controlplane import binaries_dir

DELIVERED_AT = "salvage.tote.dev/delivered-at"


def _first_line(cmd: list[str], match: tuple[str, ...], out: dict[str, float], key: str,
                ) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if key not in out and any(m in line for m in match):
                out[key] = time.monotonic()

    threading.Thread(target=read, daemon=True).start()
    return proc


def event_or_status(cluster: KubeCluster, ns: str, rounds: int) -> list[dict[str, float]]:
    kc = ["kubectl", "--kubeconfig", str(cluster.admin_kubeconfig), "-n", ns]
    rows = []
    for _ in range(rounds):
        name = f"pull-{uuid.uuid4().hex[:8]}"
        seen: dict[str, float] = {}
        watches = [
            _first_line([*kc, "get", "events", "--watch-only", "-o", "json", "--field-selector",
                         f"involvedObject.name={name}"], ('"Failed to pull image',), seen,
                        "event"),
            _first_line([*kc, "get", "pods", "--watch-only", "-o", "json", "--field-selector",
                         f"metadata.name={name}"], ('"ErrImagePull"', '"ImagePullBackOff"'),
                        seen, "status"),
        ]
        try:
            time.sleep(1.5)  # both watches open
            t0 = time.monotonic()
            cluster.apply({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "namespace": ns},
                           "spec": {"nodeName": cluster.node.name,
                                    "terminationGracePeriodSeconds": 0,
                                    "containers": [{"name": "c",
                                                    "image": f"tote.test/none-{name}:1"}]}})
            while len(seen) < 2 and time.monotonic() < t0 + 60:
                time.sleep(0.01)
            rows.append({k: v - t0 for k, v in seen.items()})
        finally:
            for w in watches:
                w.kill()
                w.wait()
            cluster.kubectl("-n", ns, "delete", "pod", name, "--wait=false", check=False)
    return rows


def _pod(cluster: KubeCluster, ns: str, app: str, pred: Any, timeout: float
         ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in cluster.pods(ns, f"app={app}"):
            if pred(p):
                return p
        time.sleep(0.02)
    raise TimeoutError(f"{app}: no pod in the awaited state within {timeout:.0f}s")


def _backing_off(p: dict[str, Any]) -> bool:
    return any(s.get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff"
               for s in p.get("status", {}).get("containerStatuses", []))


def _running(p: dict[str, Any]) -> bool:
    return bool(p.get("status", {}).get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp"))


def start_after_delivery(cluster: KubeCluster, ns: str, work: Path, mode: str
                         ) -> tuple[float, bool]:
    """Seconds from the action to Running, and whether the same pod (UID) is the one
    running."""
    tag = uuid.uuid4().hex[:8]
    name = f"tote.test/start-{tag}:1"
    img = oci.build_hello(work / tag, name, marker=f"start-{tag}")
    app = f"{mode}-{tag}"
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                 "template": {"metadata": {"labels": {"app": app}},
                              "spec": {"nodeName": cluster.node.name,
                                       "terminationGracePeriodSeconds": 0,
                                       "containers": [{"name": "c", "image": name,
                                                       "imagePullPolicy": "IfNotPresent"}]}}}})
    try:
        pod = _pod(cluster, ns, app, _backing_off, 90)
        cluster.node.containerd.import_image(img, name)
        time.sleep(1.0)
        t0 = time.monotonic()
        pod_name = pod["metadata"]["name"]
        if mode == "annotate":
            cluster.kubectl("-n", ns, "annotate", "pod", pod_name,
                            f"{DELIVERED_AT}={time.time()}", "--overwrite")
        else:
            cluster.kubectl("-n", ns, "delete", "pod", pod_name, "--wait=false")
        running = _pod(cluster, ns, app, _running, 120)
        return time.monotonic() - t0, running["metadata"]["uid"] == pod["metadata"]["uid"]
    finally:
        cluster.kubectl("-n", ns, "delete", "deployment", app, "--wait=false", check=False)
        shutil.rmtree(work / tag, ignore_errors=True)


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f}, n={len(xs)})" \
        if xs else "none"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_kubelet_signals")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    bins = binaries_dir(build=True)
    versions.use_containerd(build=True)
    if bins is None:
        print("Kubernetes binaries missing: run tests/cluster/build-binaries.sh", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="tote-bench-kubelet-"))
    cluster = start_cluster(work / "cluster", bins)
    try:
        print(f"load before: {os.getloadavg()}", flush=True)
        ns = "bench-signals"
        cluster.kubectl("create", "namespace", ns)
        cluster.wait_default_service_account(ns)
        rows = event_or_status(cluster, ns, args.rounds)
        for r in rows:
            print(f"  pull failure: Event {r.get('event', float('nan')):.2f} s, status "
                  f"{r.get('status', float('nan')):.2f} s after the pod was created",
                  flush=True)
        starts: dict[str, list[float]] = {"annotate": [], "delete": []}
        for _ in range(args.rounds):
            for mode in starts:
                dt, same = start_after_delivery(cluster, ns, work, mode)
                starts[mode].append(dt)
                print(f"  image delivered, {mode}: Running after {dt:.2f} s "
                      f"({'same pod' if same else 'a replacement pod'})", flush=True)
        print(f"load after: {os.getloadavg()}")
        print("\nsummary")
        print(f"  kubelet's Failed Event : {_median([r['event'] for r in rows if 'event' in r])}")
        print(f"  pod status ErrImagePull: "
              f"{_median([r['status'] for r in rows if 'status' in r])}")
        print(f"  start in place (annotation): {_median(starts['annotate'])}")
        print(f"  replacement (delete)       : {_median(starts['delete'])}  <- baseline")
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
