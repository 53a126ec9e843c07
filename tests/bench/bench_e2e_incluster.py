"""P3': salvage with tote installed in-cluster by helm, next to a healthy pull of the same size.

`python -m tests.bench.bench_e2e --in-cluster [--size-mib 1024] [--pairs 3]` (root;
`.ci/install` done). tote is installed the way users install it (tests/cluster/tote_install.py:
image built here, imported into every node, `helm install` with the chart's defaults,
controller leading). Then `--pairs` times, alternating on the same kubelet node (node-a),
each with an image of its own (fresh random payload → fresh digest, so no node has any of
its blobs):

* **salvage**: the image is pushed to a registry on the host's bridge address and loaded
  onto node B only, the registry is stopped, the opted-in Deployment lands on node-a,
  kubelet's pull fails and tote's pods salvage the image from node B over the pod network.
  Measured: first pull failure (kubelet `Failed` event) → pod Running.
* **healthy pull**: an image of the same size is pushed to a registry that stays up and is
  on no node; the same Deployment lands on node-a and kubelet pulls it over the bridge.
  Measured: kubelet `Pulling` event → pod Running (pull, unpack, container start).

The summary adds the salvages' copy + unpack rate next to a plain TCP copy of the same size
between node B's and node-a's network namespaces, taken in the same run.

After each run the namespace is deleted and the image removed from both nodes, so disk use
stays at about one image. Times come from bench_e2e's `kubectl --watch` streams.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from tests.bench.bench_e2e import RunResult, watch_workload
from tests.bench.netns_baseline import tcp_copy
from tests.cluster import registry as registry_mod
from tests.cluster.cluster import KubeCluster
from tests.cluster.salvage_env import image_only_on_node_b, namespace, workload_image
from tests.cluster.tote_install import install_tote


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _cleanup(cluster: KubeCluster, ns: str, ref: str) -> None:
    """Delete the run's namespace (its pod stops using the image), then the image on every
    node, so the next run finds none of its blobs and the disk holds about one image."""
    cluster.kubectl("delete", "namespace", ns, "--timeout=180s", check=False)
    for node in cluster.nodes:
        node.ctr("images", "rm", "--sync", ref, check=False, timeout=300)


def one(cluster: KubeCluster, work: Path, *, label: str, size_mib: int, window: float,
        salvage: bool, layers: int = 1, discard_source: bool = False) -> RunResult:  # fmt: skip
    reg = registry_mod.start_registry(work / f"registry-{label}", address=cluster.net.gateway)
    for node in cluster.nodes:
        node.trust_registry(reg.host)
    ns = namespace(cluster, f"bench-{label}")
    marker = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    ref = f"{reg.host}/bench/app:v1"
    try:
        t = time.monotonic()
        if salvage:
            img = image_only_on_node_b(cluster, reg, work / f"img-{label}", "bench/app",
                                       marker=marker, payload_mib=size_mib,
                                       payload_layers=layers,
                                       discard_layers=discard_source)  # fmt: skip
            where = ("on node B (unpacked, layer blobs discarded)" if discard_source
                     else "on node B") + "; registry stopped"
        else:
            img = workload_image(work / f"img-{label}", ref, marker=marker, payload_mib=size_mib,
                                 payload_layers=layers)
            img.push(ref)
            where = "in the registry (up), on no node"
        shutil.rmtree(work / f"img-{label}", ignore_errors=True)
        print(f"[{label}] image {img.digest[:19]}… ({size_mib} MiB payload in {layers} "
              f"layer(s)) {where}, ready in "
              f"{time.monotonic() - t:.1f}s", flush=True)  # fmt: skip
        res = watch_workload(cluster, ns, img.name, label=label, window=window)
        out = cluster.kubectl("get", "salvagerecords", "-n", ns, "-o", "json", check=False)
        for r in json.loads(out.stdout or '{"items": []}')["items"]:
            st = r.get("status", {})
            res.bytes_moved = int(st.get("bytesTransferred") or 0)
            res.record_phase = str(st.get("phase", ""))
        return res
    finally:
        reg.stop()
        _cleanup(cluster, ns, ref)


def _steps(res: RunResult, keys: list[tuple[str, str, str]]) -> dict[str, float]:
    out = {}
    for name, a, b in keys:
        if a in res.first and b in res.first:
            out[name] = res.first[b] - res.first[a]
    return out


def salvage_breakdown(res: RunResult) -> dict[str, float]:
    """detection (pull error → ImageSalvageable), transfer (→ ImageSalvaged), then start:
    the same pod started in place (→ Running), or — should a replacement pod appear —
    pod replacement (→ its first sighting) and create/unpack (→ Running)."""
    f = dict(res.first)
    seen = sorted(res.pod_seen.values())
    steps = [("detection", "Failed", "ImageSalvageable"),
             ("transfer", "ImageSalvageable", "ImageSalvaged")]
    if len(seen) > 1:
        f["replacement"] = seen[1]
        steps += [("pod replacement", "ImageSalvaged", "replacement"),
                  ("create/unpack", "replacement", "Running")]
    else:
        steps.append(("start in place", "ImageSalvaged", "Running"))
    r = RunResult(label=res.label, first=f, counts={})
    return _steps(r, [*steps, ("total", "Failed", "Running")])


def healthy_breakdown(res: RunResult) -> dict[str, float]:
    """scheduling (apply → Pulling), pull + unpack (→ Pulled), container start (→ Running);
    plus kubelet's own pull duration from its `Pulled` message."""
    f = {**res.first, "apply": 0.0}
    out = _steps(RunResult(label=res.label, first=f, counts={}),
                 [("scheduling", "apply", "Pulling"), ("pull+unpack", "Pulling", "Pulled"),
                  ("container start", "Pulled", "Running"),
                  ("total", "Pulling", "Running")])  # fmt: skip
    m = re.search(r" in (?:(\d+)m)?([0-9.]+)(ms|s)\b", res.pulled_message)  # Go duration
    if m:
        secs = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
        out["kubelet pull"] = 60 * int(m.group(1) or 0) + secs
    return out


def _throughput(cluster: KubeCluster, salv: list[RunResult], size_mib: int) -> None:
    """The salvages' copy + unpack rate (bytes moved / ImageSalvageable → ImageSalvaged),
    next to a plain TCP copy of the same size from node B's namespace to the workload
    node's over the same bridge, taken now (tests/bench/netns_baseline.py)."""
    rates = [r.bytes_moved / t for r in salv
             if r.bytes_moved and (t := salvage_breakdown(r).get("transfer"))]
    src, dst = cluster.node_b.net, cluster.node.net
    if not rates or src is None or dst is None:
        return
    tcp = [tcp_copy(src, dst, size_mib << 20) for _ in range(3)]
    print(f"  node B → {cluster.node.name}: salvage copy + unpack median "
          f"{statistics.median(rates) / 1e6:.0f} MB/s (runs "
          f"{', '.join(f'{x / 1e6:.0f}' for x in rates)}); plain TCP copy of {size_mib} MiB "
          f"between the same namespaces median {statistics.median(tcp) / 1e6:.0f} MB/s (runs "
          f"{', '.join(f'{x / 1e6:.0f}' for x in tcp)}): "
          f"{statistics.median(rates) / statistics.median(tcp):.0%}")  # fmt: skip


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in d.items())


def run(cluster: KubeCluster, work: Path, *, size_mib: int, pairs: int, window: float,
        layers: int = 1, discard_source: bool = False) -> int:
    print(f"load before: {_uptime()}", flush=True)
    inst = install_tote(cluster, work / "tote")
    print(f"tote installed by helm: {inst.startup_seconds}", flush=True)
    salv: list[RunResult] = []
    heal: list[RunResult] = []
    try:
        for i in range(pairs):
            for salvage in (True, False):
                label = f"{'salvage' if salvage else 'healthy'}-{i + 1}"
                res = one(cluster, work, label=label, size_mib=size_mib, window=window,
                          salvage=salvage, layers=layers,
                          discard_source=discard_source)  # fmt: skip
                (salv if salvage else heal).append(res)
                bd = salvage_breakdown(res) if salvage else healthy_breakdown(res)
                moved = f"; {res.bytes_moved / 1e6:.1f} MB moved ({res.record_phase})" if (
                    res.bytes_moved) else ""  # fmt: skip
                state = "Running" if "Running" in res.first else f"NOT Running in {window:.0f}s"
                print(f"[{label}] {state}: {_fmt(bd)}{moved}", flush=True)
    finally:
        inst.uninstall()
    print(f"load after: {_uptime()}")
    s = [x for r in salv if (x := salvage_breakdown(r).get("total")) is not None]
    h = [x for r in heal if (x := healthy_breakdown(r).get("total")) is not None]
    mode = ", snapshot salvage (source discarded its layer blobs)" if discard_source else ""
    print(f"\nP3' summary ({size_mib} MiB payload in {layers} layer(s), {pairs} pairs{mode})")
    if s:
        print(f"  salvage (first pull failure → Running): median {statistics.median(s):.2f}s "
              f"(runs {', '.join(f'{x:.2f}' for x in s)})")  # fmt: skip
    if h:
        print(f"  healthy pull (Pulling → Running)    : median {statistics.median(h):.2f}s "
              f"(runs {', '.join(f'{x:.2f}' for x in h)})")  # fmt: skip
    _throughput(cluster, salv, size_mib)
    if s and h:
        ratio = statistics.median(s) / statistics.median(h)
        print(f"  ratio {ratio:.2f}x (P3' goal <= 1.5x; P3'' goal <= 1.0x)")
        for name, rs, fn in (("salvage", salv, salvage_breakdown),
                             ("healthy", heal, healthy_breakdown)):  # fmt: skip
            keys = {k for r in rs for k in fn(r)}
            med = {k: statistics.median([fn(r)[k] for r in rs if k in fn(r)]) for k in keys}
            print(f"  {name} median breakdown: {_fmt(dict(sorted(med.items())))}")
    return 0 if len(s) == pairs and len(h) == pairs else 1
