"""P3 benchmark: time from the first `BackOff` event to pod Running on the real kubelet.

On the e2e cluster (real kubelet node `127.0.0.1` on containerd, source kubelet node
`127.0.0.2` (node B),
mTLS agents, `tote controller` with its restricted identity; tests/cluster/salvage_env.py):

* an image of ~`--size-mib` MiB (the hello program + an incompressible payload, one gzip
  layer) is pushed to a loopback registry and pulled onto node B (same digest), then the
  registry is stopped;
* a one-replica Deployment opted in to salvage is scheduled to 127.0.0.1 → kubelet fails to
  pull → `Failed`/`BackOff` events;
* **with tote**: tote salvages the image from node B and annotates the failing pod, which
  kubelet starts in place. Repeated `--runs` times, each with a fresh image (all bytes move);
* **without tote**: the same workload with tote switched off at runtime (ConfigMap
  `<harness namespace>/tote-config`, `enabled: "false"` — what a cluster without tote does); watched
  for `--window` seconds.

Times are taken when the test process *receives* the objects from `kubectl get --watch`
streams of events and pods (monotonic clock), so they include the watch latency (~tens of ms)
but not any polling interval.

Run: `python -m tests.bench.bench_e2e [--size-mib 100] [--runs 3] [--window 180]`
(root; `.ci/install` done). Not a timed test. With `--in-cluster [--pairs 3]`: P3', tote
installed by helm next to a healthy pull (tests/bench/bench_e2e_incluster.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import registry as registry_mod
from tests.cluster import versions
from tests.cluster.cluster import KubeCluster, start_cluster
from tests.cluster.controlplane import binaries_dir
from tests.cluster.salvage_env import (
    SalvageEnv,
    deployment,
    image_only_on_node_b,
    namespace,
    start_salvage_env,
)


@dataclass
class Watch:
    """`kubectl get <what> --watch -o json` in a thread; every object with its arrival time."""

    cluster: KubeCluster
    args: list[str]
    t0: float
    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Watch:
        cp = self.cluster.control_plane
        argv = ["kubectl", f"--kubeconfig={cp.admin_kubeconfig}", "get", *self.args,
                "--watch", "-o", "json"]  # fmt: skip
        kubectl = cp.bin_dir / "kubectl"
        if kubectl.exists():
            argv[0] = str(kubectl)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        dec = json.JSONDecoder()
        buf = ""
        for line in self.proc.stdout:
            buf += line
            while True:
                s = buf.lstrip()
                if not s:
                    buf = ""
                    break
                try:
                    obj, end = dec.raw_decode(s)
                except json.JSONDecodeError:
                    break
                with self.lock:
                    self.items.append((time.monotonic() - self.t0, obj))
                buf = s[end:]

    def snapshot(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.items)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _running(pod: dict[str, Any]) -> bool:
    st = pod.get("status", {})
    cs = st.get("containerStatuses", [])
    return (
        st.get("phase") == "Running"
        and bool(cs)
        and all("running" in (c.get("state") or {}) for c in cs)
        and not pod["metadata"].get("deletionTimestamp")
    )


@dataclass
class RunResult:
    label: str
    first: dict[str, float]  # event reason / "Running" → first arrival (s since apply)
    counts: dict[str, int]  # kubelet event reason → highest count seen
    bytes_moved: int = 0
    record_phase: str = ""
    window: float = 0.0
    pod_seen: dict[str, float] = field(default_factory=dict)  # pod UID → first arrival
    pulled_message: str = ""  # kubelet's `Pulled` event ("Successfully pulled ... in 9.1s")

    def since(self, start: str, end: str = "Running") -> float | None:
        if start in self.first and end in self.first:
            return self.first[end] - self.first[start]
        return None


def watch_workload(
    cluster: KubeCluster, ns: str, image: str, *, label: str, window: float
) -> RunResult:
    """Apply the one-replica Deployment `app` running `image` in `ns` and watch its events
    and pods until a pod is Running or `window` seconds passed. Also noted: when each pod
    UID was first seen (`pod_seen`, the replacement's arrival) and kubelet's `Pulled`
    message (it states the pull's own duration)."""
    t0 = time.monotonic()
    events = Watch(cluster, ["events", "-n", ns], t0).start()
    pods = Watch(cluster, ["pods", "-n", ns, "-l", "app=app"], t0).start()
    time.sleep(0.5)  # both watches established (they list first: the namespace is empty)
    t0 = time.monotonic()
    events.t0 = pods.t0 = t0
    cluster.apply(deployment("app", ns, image))
    res = RunResult(label=label, first={}, counts={}, window=window)
    deadline = t0 + window
    try:
        while time.monotonic() < deadline:
            for at, e in events.snapshot():
                if e.get("involvedObject", {}).get("kind") != "Pod":
                    continue
                r = e.get("reason", "")
                res.first.setdefault(r, at)
                res.counts[r] = max(res.counts.get(r, 0), int(e.get("count") or 1))
                if r == "Pulled":
                    res.pulled_message = str(e.get("message", ""))
            for at, p in pods.snapshot():
                res.pod_seen.setdefault(p["metadata"]["uid"], at)
                if _running(p):
                    res.first.setdefault("Running", at)
            if "Running" in res.first:
                break
            time.sleep(0.2)
    finally:
        events.stop()
        pods.stop()
    return res


def one_run(
    env: SalvageEnv, work: Path, *, label: str, size_mib: int, window: float, tote_on: bool
) -> RunResult:
    cluster = env.cluster
    reg = registry_mod.start_registry(work / f"registry-{label}", address=cluster.net.gateway)
    cluster.node.trust_registry(reg.host)
    ns = namespace(cluster, f"bench-{label}")
    try:
        t = time.monotonic()
        img = image_only_on_node_b(
            env.cluster, reg, work / f"img-{label}", "bench/app", payload_mib=size_mib,
            marker=f"bench-{label}-{uuid.uuid4().hex[:6]}",
        )  # fmt: skip
        print(f"[{label}] image {img.digest[:19]}… ({size_mib} MiB payload) on node B in "
              f"{time.monotonic() - t:.1f}s; registry stopped", flush=True)  # fmt: skip
        env.set_enabled(tote_on)
        res = watch_workload(cluster, ns, img.name, label=label, window=window)
        for r in env.records(ns):
            st = r.get("status", {})
            res.bytes_moved = int(st.get("bytesTransferred") or 0)
            res.record_phase = str(st.get("phase", ""))
        return res
    finally:
        reg.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def report(res: RunResult) -> str:
    f = res.first
    keys = ("Failed", "BackOff", "ImageSalvageable", "ImageSalvaged", "Running")
    parts = [f"{k}@{v:.2f}s" for k, v in sorted(f.items(), key=lambda kv: kv[1]) if k in keys]
    out = f"[{res.label}] " + ", ".join(parts)
    if "Running" in f:
        bo = res.since("BackOff")
        fl = res.since("Failed")
        out += (f"\n    first BackOff → Running: {bo:.2f}s" if bo is not None
                else "\n    no BackOff event before Running")  # fmt: skip
        if fl is not None:
            out += f"; first Failed (pull error) → Running: {fl:.2f}s"
        if res.bytes_moved:
            out += f"; {res.bytes_moved / 1e6:.1f} MB moved (record {res.record_phase})"
    else:
        out += (f"\n    NOT Running within the {res.window:.0f}s window; kubelet pull attempts "
                f"(Pulling count) {res.counts.get('Pulling', 0)}, BackOff count "
                f"{res.counts.get('BackOff', 0)}")  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_e2e")
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3, help="runs with tote")
    ap.add_argument("--window", type=float, default=180, help="seconds watched without tote")
    ap.add_argument("--skip-without", action="store_true", help="skip the run without tote")
    ap.add_argument("--in-cluster", action="store_true",
                    help="P3': tote installed by helm, salvage next to a healthy pull "
                         "(tests/bench/bench_e2e_incluster.py)")  # fmt: skip
    ap.add_argument("--pairs", type=int, default=3,
                    help="--in-cluster: salvage + healthy-pull pairs")  # fmt: skip
    ap.add_argument("--layers", type=int, default=1,
                    help="--in-cluster: split the payload into this many layers")
    ap.add_argument("--discard-source", action="store_true",
                    help="--in-cluster: node B holds the image as a node that discards its "
                         "layer blobs after unpack (EKS): snapshot salvage")
    args = ap.parse_args()
    bins = binaries_dir(build=True)
    versions.use_containerd(build=True)
    if bins is None:
        print("Kubernetes binaries missing: run tests/cluster/build-binaries.sh", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="tote-bench-e2e-"))
    cluster = start_cluster(work / "cluster", bins)
    if args.in_cluster:
        from tests.bench import bench_e2e_incluster

        try:
            return bench_e2e_incluster.run(cluster, work, size_mib=args.size_mib,
                                           pairs=args.pairs, window=args.window,
                                           layers=args.layers,
                                           discard_source=args.discard_source)  # fmt: skip
        finally:
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
    env: SalvageEnv | None = None
    results: list[RunResult] = []
    try:
        env = start_salvage_env(cluster, work / "tote")
        for i in range(args.runs):
            res = one_run(env, work, label=f"tote-{i + 1}", size_mib=args.size_mib,
                          window=args.window, tote_on=True)  # fmt: skip
            results.append(res)
            print(report(res), flush=True)
        if not args.skip_without:
            res = one_run(env, work, label="no-tote", size_mib=args.size_mib,
                          window=args.window, tote_on=False)  # fmt: skip
            results.append(res)
            print(report(res), flush=True)
            env.set_enabled(True)
        with_tote = [r for r in results if r.label.startswith("tote-")]
        bo = [x for r in with_tote if (x := r.since("BackOff")) is not None]
        fl = [x for r in with_tote if (x := r.since("Failed")) is not None]
        print("\nP3 summary")
        if bo:
            print(f"  with tote   : first BackOff → Running median {statistics.median(bo):.2f}s "
                  f"(min {min(bo):.2f}, max {max(bo):.2f}, n={len(bo)})")  # fmt: skip
        if fl:
            print(f"                first pull failure → Running median "
                  f"{statistics.median(fl):.2f}s (n={len(fl)})")  # fmt: skip
        for r in results:
            if r.label == "no-tote":
                state = ("Running after " + f"{r.since('BackOff'):.1f}s" if "Running" in r.first
                         else f"not Running within {r.window:.0f}s")  # fmt: skip
                print(f"  without tote: {state} (pull attempts {r.counts.get('Pulling', 0)}, "
                      f"BackOff events {r.counts.get('BackOff', 0)})")  # fmt: skip
        ok = all("Running" in r.first for r in with_tote) and not any(
            "Running" in r.first for r in results if r.label == "no-tote"
        )
        return 0 if ok else 1
    finally:
        if env is not None:
            env.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
