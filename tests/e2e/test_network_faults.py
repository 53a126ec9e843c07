"""The network as a fault: rows of the fault matrix that need a real network between nodes.

tote is installed with the chart's defaults (tests/cluster/tote_install.py): controller and
agents on the pod network, salvage data flowing agent to agent between node namespaces.
Each row salvages its own image (2 layers, 2 x 48 MiB, held by both source nodes node-b and
node-c) to node-a for an opted-in Deployment whose registry does not answer, injects its
fault (tests/cluster/netfaults.py) and checks what matters on a bad day:

* nothing lost: the pod ends Running on the image, node-a's copy is whole (`ctr images
  check`), the record Completed;
* nothing half-visible: a watcher polls node-a every 50 ms; whenever the image is listed,
  all its blobs are already there;
* no hot loop: for 3 s after the outcome, no new salvage attempt and under a CPU-second of
  controller time.

Rows: the link between source and target cut mid-transfer (another source takes over); 5 %
packet loss on the data path; 50 ms more round trip on it (a relay in user space: this
kernel has no netem); rate-limited sources (progress keeps moving, nothing kills a
slow live transfer); the controller cut from the source's agent, then from the target's,
while their nodes stay Ready; the leader cut from the API server while it holds the Lease
(it stops acting before another replica leads).
The table is printed with the fault matrix's (tests/cluster/fault_table.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import netfaults, prom, tote_install
from tests.cluster.cluster import KubeCluster
from tests.cluster.fault_table import ROWS, Row
from tests.cluster.node import KubeletNode
from tests.cluster.procs import cpu_seconds, wait_until
from tests.cluster.salvage_env import deployment, namespace, workload_image
from tests.cluster.tote_install import Install
from tests.cluster.visibility import Watch

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
FAST_LEASE = ["--lease-duration=6s", "--renew-deadline=4s", "--retry-period=1s"]


@pytest.fixture(scope="module")
def tote(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Install]:  # fmt: skip
    inst = tote_install.install_tote(kube_cluster, tmp_path_factory.mktemp("helm-faults"))
    try:
        yield inst
    finally:
        inst.uninstall()


def _node(cluster: KubeCluster, name: str) -> KubeletNode:
    return next(n for n in cluster.nodes if n.name == name)


@dataclass
class Salvage:
    """One row in progress."""

    tote: Install
    cluster: KubeCluster
    ns: str
    ref: str
    digest: str
    marker: str
    watch: Watch
    fault_at: float = 0.0
    attempts_before: int = 0

    # -- what the controller does ----------------------------------------------------------

    def controller(self) -> dict[str, Any]:
        pods = [p for p in self.tote.pods("controller") if p["status"].get("podIP")]
        holder = self.tote.lease_holder()
        return next((p for p in pods if holder.startswith(p["metadata"]["name"])), pods[0])

    def attempts(self) -> int:
        ip = self.controller()["status"]["podIP"]
        return int(prom.total(prom.parse(prom.fetch(8080, host=ip)),
                              "tote_salvage_attempts_total"))  # fmt: skip

    def controller_pid(self) -> int:
        pod = self.controller()
        cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        node = _node(self.cluster, pod["spec"]["nodeName"])
        for line in node.ctr("tasks", "ls").stdout.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == cid:
                return int(pid)
        raise LookupError(f"no task {cid} on {node.name}")

    def record(self) -> dict[str, Any] | None:
        items = json.loads(self.cluster.kubectl(
            "get", "salvagerecords", "-A", "-o", "json").stdout)["items"]  # fmt: skip
        return next((r for r in items if r["spec"]["digest"] == self.digest), None)

    # -- the story -------------------------------------------------------------------------

    def wait_moving(self) -> dict[str, Any]:
        """Bytes arriving on node-a (a fast-path `.part` file past 4 MiB): the fault's moment.
        Returns the record then."""
        tmp = self.cluster.node.containerd.content_root / "tote-tmp"

        def moving() -> bool:
            return any(p.is_file() and p.stat().st_size > 4 * MiB for p in tmp.rglob("*"))

        wait_until(moving, timeout=120, interval=0.02, what="bytes arriving on node-a")
        self.fault_at = time.monotonic()
        rec = self.record()
        assert rec is not None
        return rec

    def wait_running(self, timeout: float = 180) -> dict[str, Any]:
        def running() -> bool:
            pods = self.cluster.pods(self.ns, "app=web")
            return any(p["status"].get("phase") == "Running" and all(
                "running" in (c.get("state") or {})
                for c in p["status"].get("containerStatuses", [])) for p in pods)

        wait_until(running, timeout=timeout, interval=0.5, what=f"a web pod Running in {self.ns}")
        pod = next(p for p in self.cluster.pods(self.ns, "app=web")
                   if p["status"].get("phase") == "Running")  # fmt: skip
        assert pod["spec"]["nodeName"] == self.cluster.node.name
        assert pod["status"]["containerStatuses"][0]["imageID"].endswith(self.digest)
        return pod

    def check_whole(self) -> dict[str, Any]:
        # only this row's image: node-a may hold other tests' deliberately broken ones
        check = self.cluster.node.ctr("images", "check", f"name=={self.ref}").stdout
        line = next(ln for ln in check.splitlines() if self.ref in ln)
        assert "complete" in line and "incomplete" not in line, line
        wait_until(lambda: (self.record() or {}).get("status", {}).get("phase") == "Completed",
                   timeout=30, what="record Completed")  # fmt: skip
        rec = self.record()
        assert rec is not None
        return rec

    def check_quiet(self) -> int:
        attempts = self.attempts()
        pid = self.controller_pid()
        cpu0 = cpu_seconds(pid)
        time.sleep(3)
        assert self.attempts() == attempts
        spent = cpu_seconds(pid) - cpu0
        assert spent < 1.0, f"controller used {spent:.2f} CPU-s in 3 s after the outcome"
        return attempts

    def finish(self, fault: str, outcome: str) -> None:
        self.watch.stop()
        assert not self.watch.half_visible, self.watch.half_visible
        attempts = self.check_quiet()
        ROWS.append(Row(fault, outcome, time.monotonic() - self.fault_at - 3,
                        attempts - self.attempts_before))


@pytest.fixture
def salvage(tote: Install, kube_cluster: KubeCluster, tmp_path: Path) -> Iterator[Any]:
    """`salvage(name)` → a Salvage whose Deployment is applied: its image held by node-b and
    node-c only, its registry an address where nothing listens."""
    made: list[Salvage] = []

    def start(name: str) -> Salvage:
        cluster = kube_cluster
        gw = cluster.net.gateway
        marker = f"{name}-{time.monotonic_ns() % 10**8}"
        ref_tag = f"{gw}:1/faults/{name}:v1"  # nothing listens on port 1: refused at once
        img = workload_image(tmp_path / name, ref_tag, marker=marker, payload_mib=96,
                             payload_layers=2)  # fmt: skip
        for node in (cluster.node_b, cluster.node_c):
            node.import_image(img)
        ref = f"{gw}:1/faults/{name}@{img.digest}"
        blobs = {img.digest, *img.layer_digests}
        ns = namespace(cluster)
        row = Salvage(tote, cluster, ns, ref, img.digest, marker,
                   Watch(lambda: cluster.node, img.digest, blobs).start())  # fmt: skip
        made.append(row)
        row.attempts_before = row.attempts()
        cluster.apply(deployment("web", ns, ref))
        return row

    try:
        yield start
    finally:
        for r in made:
            r.watch.stop()
            kube_cluster.kubectl("delete", "namespace", r.ns, "--wait=false", check=False)


def _source(cluster: KubeCluster, rec: dict[str, Any]) -> KubeletNode:
    return _node(cluster, rec["spec"]["sourceNode"])


def test_nf_link_cut_mid_transfer(salvage: Any, kube_cluster: KubeCluster) -> None:
    row = salvage("linkcut")
    with netfaults.rate_limited(kube_cluster.node_b.net, "200mbit"), \
            netfaults.rate_limited(kube_cluster.node_c.net, "200mbit"):  # fmt: skip
        rec = row.wait_moving()
        source = _source(kube_cluster, rec)
        assert source.net is not None and kube_cluster.node.net is not None
        with netfaults.blocked(source.net, between=(source.net.pod_cidr,
                                                    kube_cluster.node.net.pod_cidr)):
            row.wait_running()
            rec = row.check_whole()
    other = rec["spec"]["sourceNode"]
    row.finish(f"link {source.name} ↔ node-a cut mid-transfer",
               f"Completed from {other}" + (" (resumed)" if other == source.name else ""))


def test_nf_packet_loss_on_the_data_path(salvage: Any, kube_cluster: KubeCluster) -> None:
    row = salvage("loss")
    b, c, a = kube_cluster.node_b.net, kube_cluster.node_c.net, kube_cluster.node.net
    assert b is not None and c is not None and a is not None
    with netfaults.blocked(b, between=(b.pod_cidr, a.pod_cidr), probability=0.05), \
            netfaults.blocked(c, between=(c.pod_cidr, a.pod_cidr), probability=0.05):
        row.fault_at = time.monotonic()
        row.wait_running()
        row.check_whole()
    row.finish("5 % packet loss between the sources and node-a", "Completed")


def test_nf_rate_limited_source_keeps_moving(salvage: Any, kube_cluster: KubeCluster) -> None:
    row = salvage("slow")
    b, c = kube_cluster.node_b.net, kube_cluster.node_c.net
    assert b is not None and c is not None
    # 96 MiB at 40 Mbit/s: about 20 s, longer than any single read or idle deadline
    with netfaults.rate_limited(b, "40mbit"), netfaults.rate_limited(c, "40mbit"):
        row.wait_moving()
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 4:
            st = (row.record() or {}).get("status", {})
            if st.get("phase") == "Completed":
                break
            moved = int(st.get("bytesTransferred", 0))
            if not seen or moved > seen[-1]:
                seen.append(moved)
            time.sleep(1)
        assert len(seen) >= 3, f"progress did not keep moving: {seen}"
        row.wait_running(timeout=240)
        rec = row.check_whole()
    assert row.attempts() >= 1
    row.finish("sources rate-limited to 40 Mbit/s", f"Completed, progress {len(seen)} steps "
               f"seen, retries {rec['status'].get('retryCount', 0)}")


def _agent_port(pod: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]
                    if p["name"] == name))


def test_nf_delay_on_the_data_path(salvage: Any, kube_cluster: KubeCluster,
                                   tote: Install) -> None:  # fmt: skip
    """50 ms more round trip on every source's data channel (a relay in user space)."""
    agents = {p["spec"]["nodeName"]: p for p in tote.pods("agent")}
    relays = []
    with contextlib.ExitStack() as stack:
        for node in (kube_cluster.node_b, kube_cluster.node_c):
            pod = agents[node.name]
            assert node.net is not None
            relays.append(stack.enter_context(netfaults.delayed(
                node.net, pod["status"]["podIP"], _agent_port(pod, "data"), 0.025)))
        row = salvage("delay")
        row.fault_at = time.monotonic()
        row.wait_running()
        row.check_whole()
    carried = sum(sum(r) for r in relays)
    assert carried > 96 * MiB, f"the relays carried {carried} bytes: not the data path?"
    row.finish("+50 ms round trip on the data channel (relay)",
               f"Completed ({carried / MiB:.0f} MiB through the relays)")


def test_nf_controller_cut_from_the_source_agent(salvage: Any, kube_cluster: KubeCluster,
                                                 tote: Install) -> None:  # fmt: skip
    """The controller never needs the source's agent: the target's agent reads from it."""
    b = kube_cluster.node_b.net
    assert b is not None
    ctl_ip = tote.pods("controller")[0]["status"]["podIP"]
    with netfaults.blocked(b, between=(f"{ctl_ip}/32", b.pod_cidr)):
        assert kube_cluster.node_ready("node-b")
        row = salvage("ctlcut")
        row.fault_at = time.monotonic()
        row.wait_running()
        rec = row.check_whole()
        assert kube_cluster.node_ready("node-b")
    row.finish("controller cut from node-b's agent (node Ready)",
               f"Completed from {rec['spec']['sourceNode']}")


def test_nf_controller_cut_from_the_target_agent(salvage: Any, kube_cluster: KubeCluster,
                                                 tote: Install) -> None:  # fmt: skip
    """Nobody can order the import: the attempt fails with a clear reason, the controller
    backs off instead of hammering, and the salvage completes once the path is back."""
    a = kube_cluster.node.net
    assert a is not None
    ctl_ip = tote.pods("controller")[0]["status"]["podIP"]
    agent_ip = next(p for p in tote.pods("agent")
                    if p["spec"]["nodeName"] == kube_cluster.node.name)["status"]["podIP"]
    with netfaults.blocked(a, between=(f"{ctl_ip}/32", f"{agent_ip}/32")):
        row = salvage("targetcut")
        row.fault_at = time.monotonic()

        def failed_once() -> bool:
            st = (row.record() or {}).get("status", {})
            return bool(st.get("error")) or int(st.get("retryCount", 0)) > 0

        wait_until(failed_once, timeout=120, interval=0.5, what="the attempt failed")
        st = (row.record() or {}).get("status", {})
        assert kube_cluster.node_ready(kube_cluster.node.name)
        attempts = row.attempts()
        time.sleep(5)  # backing off: no new attempt right away
        assert row.attempts() == attempts, "the controller retried at once"
        error = str(st.get("error", ""))
    cut_for = time.monotonic() - row.fault_at
    row.wait_running(timeout=400)  # the next retry after the back-off
    row.check_whole()
    row.finish("controller cut from the target's agent (node Ready)",
               f"failed ({error[:60]}), Completed after the path came back "
               f"(cut {cut_for:.0f} s)")


def _log_times(text: str, phrase: str) -> list[datetime]:
    out = []
    for line in text.splitlines():
        if phrase in line:
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            if m:
                out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return out


def test_nf_leader_cut_from_the_api_server(salvage: Any, kube_cluster: KubeCluster,
                                           tote: Install) -> None:  # fmt: skip
    """Two replicas on fast lease timings; the leader loses the API server but keeps running.
    It must stop leading (renew deadline) before the other replica acquires (lease
    duration): never two leaders acting. Then a salvage is done by the new leader."""
    ns_tote, release = tote.namespace, tote.release
    tote.helm("upgrade", release, str(tote_install.CHART), "-n", ns_tote, "--reuse-values",
              "--set", "controller.replicas=2",
              "--set-json", f"controller.extraArgs={json.dumps(FAST_LEASE)}",
              "--wait", "--timeout", "300s")  # fmt: skip
    try:
        wait_until(lambda: len([p for p in tote.pods("controller")
                                if p["status"].get("phase") == "Running"]) == 2,
                   timeout=120, what="two controller replicas")  # fmt: skip
        holder = tote.wait_leading()
        pods = tote.pods("controller")
        old = next(p for p in pods if holder.startswith(p["metadata"]["name"]))
        new = next(p for p in pods if p is not old)
        a = kube_cluster.node.net
        assert a is not None
        old_ip = old["status"]["podIP"]
        api = f"{kube_cluster.net.gateway}/32"
        cut_at = datetime.now()
        with netfaults.blocked(a, between=(f"{old_ip}/32", api), port=6443):
            wait_until(lambda: tote.lease_holder().startswith(new["metadata"]["name"]),
                       timeout=60, interval=0.5, what="the other replica leads")  # fmt: skip
            took = (datetime.now() - cut_at).total_seconds()
            row = salvage("leadercut")
            row.fault_at = time.monotonic()
            row.wait_running()
            row.check_whole()
            old_log = kube_cluster.kubectl("logs", old["metadata"]["name"], "-n", ns_tote).stdout
            new_log = kube_cluster.kubectl("logs", new["metadata"]["name"], "-n", ns_tote).stdout
        lost = [t for t in _log_times(old_log, "lost leadership") if t >= cut_at]
        became = [t for t in _log_times(new_log, "became leader") if t >= cut_at]
        assert lost and became, (old_log[-2000:], new_log[-2000:])
        gap = (became[0] - lost[0]).total_seconds()
        # the old leader stops renew-deadline after its last renewal began, the Lease is free
        # lease-duration after it: 6 s - 4 s apart, less polling
        assert gap >= 1.0, f"old leader stopped at {lost[0]}, the new one led at {became[0]}"
        row.finish("leader cut from the API server (Lease held)",
                   f"old leader stopped {gap:.1f} s before the new one led "
                   f"(handover {took:.0f} s); Completed")
    finally:
        tote.helm("upgrade", release, str(tote_install.CHART), "-n", ns_tote, "--reuse-values",
                  "--set", "controller.replicas=1", "--set-json", "controller.extraArgs=[]",
                  "--wait", "--timeout", "300s", check=False)  # fmt: skip
