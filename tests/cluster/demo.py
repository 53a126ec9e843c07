"""The embedded default: a real one-machine cluster, a registry outage, and tote saving the day.

Brings up the e2e cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
three real kubelet nodes `node-a`, `node-b` ("node B") and `node-c`, each a host of its own:
its containerd, kubelet, kube-proxy and kube-router in its own network namespace on a bridge,
pods on a pod network, cluster DNS; Kubernetes, containerd, CoreDNS and kube-router built
from Go modules and cached), builds the tote image offline, imports it into every node and
installs tote with `helm install` of deploy/helm/tote into `tote-system` with the chart's
defaults — a controller Deployment and an agent DaemonSet with mTLS on the pod network, as a
user would (tests/cluster/tote_install.py). Then it plays the incident:

1. image `shop/web:v1` is pushed to a registry; node B pulled it earlier (its
   containerd holds the exact digest); the registry goes down;
2. a Deployment opted in to salvage is scheduled to node `node-a`, which does not have the
   image: kubelet fails to pull it (ErrImagePull → ImagePullBackOff);
3. tote's pods find the digest on node B, stream it agent to agent into node-a's
   containerd and annotate the failing pod; kubelet syncs it and starts its container in
   place from the salvaged image (same pod, no replacement).

Every event is printed as it happens, then a summary (what failed, which node had the
image, bytes moved, time to Running). Everything is torn down at the end; `--keep` leaves the
cluster up until Ctrl-C and prints how to look around. Needs root and what `.ci/install`
installs.

Run: .venv/bin/python -m tests.cluster.demo [--keep] [--payload-mib N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.cluster import prom, versions
from tests.cluster import registry as registry_mod
from tests.cluster.cluster import KubeCluster, missing_prerequisites, start_cluster
from tests.cluster.controlplane import binaries_dir
from tests.cluster.objects import pod_running
from tests.cluster.salvage_env import deployment, image_only_on_node_b, namespace
from tests.cluster.tote_install import Install, install_tote

NS = "shop"
APP = "web"


def say(text: str = "") -> None:
    print(f"[tote demo] {text}" if text else "", flush=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


class Narrator:
    """Prints each new event of the namespace once (and again when its count grows)."""

    def __init__(self, cluster: KubeCluster, t0: float) -> None:
        self.cluster = cluster
        self.t0 = t0
        self.seen: dict[str, int] = {}
        self.first: dict[str, float] = {}

    def poll(self) -> None:
        res = self.cluster.kubectl("get", "events", "-n", NS, "-o", "json", check=False)
        if res.returncode != 0:
            return
        items = json.loads(res.stdout)["items"]
        items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        now = time.monotonic() - self.t0
        for e in items:
            uid, count = e["metadata"]["uid"], int(e.get("count") or 1)
            if self.seen.get(uid, 0) >= count:
                continue
            repeat = uid in self.seen
            self.seen[uid] = count
            obj = e.get("involvedObject", {})
            if obj.get("kind") not in ("Pod", "ReplicaSet"):
                continue
            reason = e.get("reason", "")
            self.first.setdefault(reason, now)
            src = e.get("reportingComponent") or (e.get("source") or {}).get("component", "")
            who = "tote" if "tote" in src else (src or "?")
            again = f" (x{count})" if repeat else ""
            msg = e.get("message", "")
            if len(msg) > 300:
                msg = msg[:300] + "…"
            kind = str(obj.get("kind", "")).lower()
            say(f"  +{now:5.1f}s  {who:>17}  {e.get('type', ''):7} {reason}{again} "
                f"{kind}/{obj.get('name')}: {msg}")  # fmt: skip


def _running_pod(cluster: KubeCluster) -> dict[str, Any] | None:
    return next((p for p in cluster.pods(NS, f"app={APP}") if pod_running(p)), None)


def _controller_metrics(tote: Install) -> dict[str, float]:
    """The controller's counters summed over their labels, from its /metrics at its pod IP
    (the host routes to the pod network); empty if it cannot be reached."""
    try:
        pod = tote.pods("controller")[0]
        port = next(p["containerPort"] for p in pod["spec"]["containers"][0].get("ports", [])
                    if p.get("name") == "metrics")
        samples = prom.parse(prom.fetch(port, host=pod["status"]["podIP"], timeout=3))
    except (OSError, IndexError, KeyError, StopIteration):
        return {}
    out: dict[str, float] = {}
    for sample, value in samples.items():
        name = sample.split("{", 1)[0]
        if name.startswith("tote_"):
            out[name] = out.get(name, 0.0) + value
    return out


def _stage_the_outage(cluster: KubeCluster, reg: registry_mod.Registry, work: Path,
                      payload_mib: int) -> Any:
    """Steps 1 and 2: image X pushed and pulled by node B only, then the registry down."""
    cluster.node.trust_registry(reg.host)
    namespace(cluster, NS)
    say(f'namespace {NS} opted in (annotation tote.dev/allow="true")')
    say()
    say(f"1. building image X = {reg.host}/shop/web:v1 (payload {payload_mib} MiB), pushing "
        f"it to the registry at {reg.host}, and letting node B pull it…")  # fmt: skip
    img = image_only_on_node_b(cluster, reg, work / "img", "shop/web", payload_mib=payload_mib,
                               marker="hello from image X, salvaged by tote",
                               stop_registry=False)  # fmt: skip
    say(f"   node B's containerd holds {img.name} = {img.digest}")
    has = img.name in cluster.node.image_names()
    say(f"   node {cluster.node.name} (the only node that runs pods) has it: "
        f"{'yes' if has else 'no'}")
    reg.stop()
    say(f"2. the registry at {reg.host} is DOWN now (process stopped)")
    return img


def _apply_and_wait_running(cluster: KubeCluster, image: str, timeout: float
                            ) -> tuple[Narrator, dict[str, Any] | None, float | None]:
    """Step 3: the Deployment applied; its events narrated until a pod runs or `timeout`.
    The narrator, the Running pod and when it ran (seconds since applying), or Nones."""
    say(f"3. applying Deployment {NS}/{APP} (image {image}, imagePullPolicy IfNotPresent,"
        " pod template annotated tote.dev/auto-salvage=\"true\")…")  # fmt: skip
    say()
    t0 = time.monotonic()
    narr = Narrator(cluster, t0)
    cluster.apply(deployment(APP, NS, image))
    pod = None
    t_running = None
    while time.monotonic() - t0 < timeout:
        narr.poll()
        pod = _running_pod(cluster)
        if pod is not None:
            t_running = time.monotonic() - t0
            break
        time.sleep(0.3)
    narr.poll()
    say()
    return narr, pod, t_running


def _show_the_running_pod(cluster: KubeCluster, pod: dict[str, Any], t_running: float) -> None:
    name = pod["metadata"]["name"]
    say(f"pod {NS}/{name} is Running at +{t_running:.1f}s on node {pod['spec']['nodeName']}, "
        f"image {pod['status']['containerStatuses'][0]['imageID']}")  # fmt: skip
    log = ""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "salvaged" not in log:
        log = cluster.kubectl("logs", name, "-n", NS, check=False).stdout
        time.sleep(0.3)
    say(f"its output: {log.strip()!r}")
    say()


def _print_summary(cluster: KubeCluster, tote: Install, image: str, narr: Narrator,
                   t_running: float) -> None:
    """What failed, who had the image, bytes moved, time to Running; then the records,
    events and the controller's counters."""
    recs = json.loads(cluster.kubectl("get", "salvagerecords", "-n", NS, "-o", "json")
                      .stdout)["items"]  # fmt: skip
    fail_key = min((k for k in ("Failed", "BackOff") if k in narr.first),
                   key=lambda k: narr.first[k], default=None)  # fmt: skip
    failed_msgs = [
        e["message"] for e in json.loads(cluster.kubectl(
            "get", "events", "-n", NS, "--field-selector", "reason=Failed", "-o", "json"
        ).stdout)["items"] if "Failed to pull" in e.get("message", "")
    ]  # fmt: skip
    say("SUMMARY")
    say(f"  what failed : kubelet on {cluster.node.name} could not pull {image}")
    if failed_msgs:
        say(f"                ({failed_msgs[0].split(': ')[-1]})")
    for r in recs:
        st, spec = r.get("status", {}), r["spec"]
        say(f"  who had it  : node {spec['sourceNode']} (digest {spec['digest'][:19]}…)")
        say(f"  bytes moved : {_human(st.get('bytesTransferred', 0))} of "
            f"{_human(st.get('bytesTotal', 0))} "
            f"({st.get('blobsSkipped', 0)} blobs already on the target), "
            f"node B → {spec['targetNode']}; SalvageRecord {r['metadata']['name'][:16]}… "
            f"{st.get('phase')}")  # fmt: skip
    if fail_key:
        say(f"  time        : first pull failure → Running in "
            f"{t_running - narr.first[fail_key]:.1f}s")  # fmt: skip
    if "BackOff" in narr.first:
        say(
            f"                first BackOff event → Running in "
            f"{t_running - narr.first['BackOff']:.1f}s "
            "(kubelet alone would keep backing off while the registry is down)"
        )
    say()
    say("kubectl get salvagerecords -n shop:")
    print(cluster.kubectl("get", "salvagerecords", "-n", NS).stdout, flush=True)
    say("kubectl events -n shop:")
    print(cluster.kubectl("events", "-n", NS).stdout, flush=True)
    m = _controller_metrics(tote)
    say("controller metrics: " + ", ".join(
        f"{k}={v:g}" for k, v in sorted(m.items())
        if k.startswith("tote_") and k.endswith("_total") and v
    ))  # fmt: skip


def play(cluster: KubeCluster, tote: Install, work: Path, payload_mib: int,
         timeout: float) -> bool:  # fmt: skip
    """The incident (see the module docstring); True when the workload ran."""
    reg = registry_mod.start_registry(work / "registry", address=cluster.net.gateway)
    try:
        img = _stage_the_outage(cluster, reg, work, payload_mib)
        narr, pod, t_running = _apply_and_wait_running(cluster, img.name, timeout)
        if pod is None or t_running is None:
            say(f"the pod did not reach Running within {timeout:.0f}s — see the events above")
            print(cluster.kubectl("get", "pods,salvagerecords", "-n", NS, "-o", "wide").stdout)
            say(f"controller log: kubectl logs -n {tote.namespace} deploy/tote-controller")
            return False
        _show_the_running_pod(cluster, pod, t_running)
        _print_summary(cluster, tote, img.name, narr, t_running)
        return True
    finally:
        reg.stop()


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m tests.cluster.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--keep", action="store_true", help="leave the cluster up until Ctrl-C")
    ap.add_argument(
        "--payload-mib",
        type=int,
        default=16,
        help="size of the incompressible payload in image X (default 16)",
    )
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for Running")
    return ap.parse_args()


def _locate_binaries() -> Path | None:
    """The Kubernetes and containerd binaries (built from Go modules when missing); None,
    said why, when this machine cannot run the cluster."""
    say("locating (or building from Go modules, cached) the Kubernetes and containerd binaries…")
    bins = binaries_dir(build=True)
    versions.use_containerd(build=True)
    missing = missing_prerequisites(bins)
    if missing or bins is None:
        say(f"this machine cannot run the demo cluster, missing: {missing}")
        say("run `bash .ci/install` first (as root)")
        return None
    return bins


def _start_the_cluster(work: Path, bins: Path) -> KubeCluster:
    t = time.monotonic()
    p = versions.pins()
    say(f"starting the cluster (Kubernetes {p['K8S_VERSION']}, containerd "
        f"{p['CONTAINERD_VERSION']}) under {work} …")  # fmt: skip
    cluster = start_cluster(work / "cluster", bins)
    say(
        f"cluster up in {time.monotonic() - t:.1f}s: etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler, kubelet nodes "
        + ", ".join(f"{n.name} ({n.node_ip})" for n in cluster.nodes)
    )
    return cluster


def _install_tote(cluster: KubeCluster, work: Path) -> Install:
    t = time.monotonic()
    say("building the tote image (offline, cached), importing it into every node, "
        "helm install tote deploy/helm/tote -n tote-system --create-namespace …")
    tote = install_tote(cluster, work / "tote")
    say(f"tote installed in {time.monotonic() - t:.1f}s ({tote.startup_seconds}):")
    print(cluster.kubectl("get", "pods", "-n", tote.namespace, "-o", "wide").stdout,
          flush=True)  # fmt: skip
    return tote


def _keep_until_interrupted(cluster: KubeCluster, tote: Install) -> None:
    """`--keep`: how to look around, then wait for Ctrl-C (or SIGTERM)."""
    kc = cluster.admin_kubeconfig
    say("the cluster stays up. Look around:")
    say(f"  export KUBECONFIG={kc}")
    say(f"  kubectl get pods -n {tote.namespace} -o wide   # tote's controller, agents")
    say(f"  kubectl events -n {NS}                          # the story, as events")
    say(f"  kubectl get salvagerecords -n {NS}              # what was moved")
    say(f"  kubectl logs -n {tote.namespace} deploy/tote-controller")
    say("Ctrl-C (or SIGTERM) tears everything down.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _tear_down(cluster: KubeCluster, work: Path) -> None:
    # a second Ctrl-C / SIGTERM (e.g. `timeout` signals the child and its group) must
    # not cut the teardown short and leave daemons behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    say("tearing down…")
    report = cluster.stop()
    left = {k: v for k, v in report.items() if isinstance(v, dict)
            and (v.get("leftover_pids") or v.get("still_mounted"))}  # fmt: skip
    if left:
        say(f"teardown had to clean up: {left}")
    if os.environ.get("TOTE_KEEP_DEMO_WORKDIR") != "1":
        shutil.rmtree(work, ignore_errors=True)
    say("stopped every process the demo started")


def main() -> int:
    args = _parse_args()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    bins = _locate_binaries()
    if bins is None:
        return 1
    work = Path(tempfile.mkdtemp(prefix="tote-demo-"))
    cluster = _start_the_cluster(work, bins)
    ok = False
    try:
        tote = _install_tote(cluster, work)
        ok = play(cluster, tote, work, args.payload_mib, args.timeout)
        say("DONE: the workload survived the registry outage." if ok else "FAILED")
        if args.keep:
            _keep_until_interrupted(cluster, tote)
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        _tear_down(cluster, work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
