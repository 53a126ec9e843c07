"""Soak: tote installed by helm on the real three-kubelet cluster, under churn, for a while.

Run by tests/bench/bench_soak.py (`python -m tests.bench.bench_soak --minutes 60`) and, in
its short version (5 minutes), in CI by tests/e2e/test_soak.py. Documented in docs/benchmarks.md
("Soak"); run it for 24 h elsewhere with `--minutes 1440`.

What runs (times drawn from a seeded random generator, so a run can be repeated):

* **a salvage every few seconds** (`--every`): a fresh image (the hello program plus
  `--payload-mib` of random bytes: a new digest and a new layer each time) is loaded onto
  one node — what an earlier pull left there — and a bare opted-in pod asking for it is
  bound to another node. If the registry is up at that moment the image is pushed too and
  the pod may simply pull it; if it is down (or goes down mid-pull) kubelet fails and tote
  salvages it. Each pod is deleted a few seconds after it runs, and its image removed from
  every node once the pod is gone (disk stays bounded over hours);
* **the registry flapping** up and down;
* **an agent pod deleted** (the DaemonSet recreates it), **a node's containerd restarted**
  (its containers keep running), **the leader killed** (SIGKILL to its process; the other
  replica takes the Lease), and **transfer faults** (packets between two nodes' pod
  networks dropped at random for a few seconds).

Sampled every `--sample-every` seconds: RSS and open file descriptors of every tote process
(found through its node's containerd task, by PID). At the end, with churn stopped and every
pod gone: leaked containerd leases, active ingests, partial fast-path files, extraction
snapshots, duplicate SalvageRecords per (digest, node), pinned images without a record.

Over 400 lines on purpose: one benchmark, its workload, its churn and its report.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tote_containerd.agent.transfer_target import LEASE_CHECK_INTERVAL

from tests.cluster import netfaults
from tests.cluster import registry as registry_mod
from tests.cluster.cluster import KubeCluster
from tests.cluster.containerd_node import Containerd
from tests.cluster.manifests import pod_manifest
from tests.cluster.node import KubeletNode
from tests.cluster.objects import pod_running
from tests.cluster.procs import wait_until
from tests.cluster.salvage_env import OPT_IN, namespace, workload_image
from tests.cluster.tote_install import Install

PIN = "io.cri-containerd.pinned=pinned"
# Two controller replicas, as an operator who cares about a killed leader runs them.
SOAK_VALUES: dict[str, Any] = {"controller": {"replicas": 2}}
RUN_DEADLINE = 300.0  # a pod not Running this long after creation counts as never Running


@dataclass
class Knobs:
    """The soak's schedule (seconds; churn intervals are means of uniform draws ±50 %)."""

    minutes: float = 60.0
    every: float = 5.0  # a new salvage workload
    payload_mib: int = 2
    hold: float = 5.0  # a Running pod lives this long before it is deleted
    registry_flap: float = 30.0
    agent_restart: float = 90.0
    containerd_restart: float = 180.0
    leader_kill: float = 240.0
    fault: float = 60.0
    fault_length: float = 10.0
    sample_every: float = 60.0
    seed: int = 26


@dataclass
class Cycle:
    """One workload: its image on `source`, its pod bound to `target`."""

    n: int
    ref: str
    digest: str
    source: str
    target: str
    registry_up: bool
    created: float
    running: float | None = None
    deleted: float | None = None
    gone: float | None = None
    cleaned: bool = False


@dataclass
class Sample:
    t: float
    pod: str
    component: str
    pid: int
    rss_mib: float
    fds: int


@dataclass
class Report:
    knobs: Knobs
    cycles: int = 0
    running: int = 0
    salvaged: int = 0  # a Completed SalvageRecord for its digest and node
    never_running: list[str] = field(default_factory=list)
    time_to_running: dict[str, float] = field(default_factory=dict)
    churn: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    leaks: dict[str, list[str]] = field(default_factory=dict)
    seen: dict[str, list[str]] = field(default_factory=dict)  # not leaks: see `leaks`
    load: list[str] = field(default_factory=list)

    def leaked(self) -> int:
        return sum(len(v) for v in self.leaks.values())


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _task_pid(node: KubeletNode, container_id: str) -> int | None:
    """The host PID of a container's process, from its node's containerd."""
    res = node.ctr("tasks", "ls", check=False)
    for line in res.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == container_id and parts[1].isdigit():
            return int(parts[1])
    return None


def _proc_figures(pid: int) -> tuple[float, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next((int(line.split()[1]) / 1024 for line in status.splitlines()
                if line.startswith("VmRSS:")), float("nan"))  # fmt: skip
    return rss, fds


class Soak:
    """The running soak: workloads, churn and samples, one tick at a time."""

    def __init__(self, cluster: KubeCluster, tote: Install, workdir: Path, knobs: Knobs
                 ) -> None:  # fmt: skip
        self.cluster, self.tote, self.workdir, self.k = cluster, tote, workdir, knobs
        self.rng = random.Random(knobs.seed)
        self.report = Report(knobs=knobs)
        self.ns = namespace(cluster, f"soak-{os.urandom(3).hex()}")
        self.reg = registry_mod.start_registry(workdir / "registry", address=cluster.net.gateway)
        for node in cluster.nodes:
            node.trust_registry(self.reg.host)
        self.cycles: list[Cycle] = []
        self.t0 = time.monotonic()
        self.due: dict[str, float] = {}
        self.fault: contextlib.ExitStack | None = None
        self.fault_until = 0.0

    # -- helpers ---------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def node(self, name: str) -> KubeletNode:
        return next(n for n in self.cluster.nodes if n.name == name)

    def log(self, what: str) -> None:
        print(f"[{self.now():7.1f}s] {what}", flush=True)

    def draw(self, mean: float) -> float:
        return self.rng.uniform(0.5 * mean, 1.5 * mean)

    def tote_pods(self) -> list[dict[str, Any]]:
        return [*self.tote.pods("controller"), *self.tote.pods("agent")]

    def pid_of(self, pod: dict[str, Any]) -> int | None:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        cid = (statuses[0].get("containerID") or "") if statuses else ""
        if "://" not in cid or not pod["spec"].get("nodeName"):
            return None
        return _task_pid(self.node(pod["spec"]["nodeName"]), cid.split("://", 1)[1])

    # -- workloads -------------------------------------------------------------------------

    def start_cycle(self) -> None:
        n = len(self.cycles)
        names = [node.name for node in self.cluster.nodes]
        source, target = self.rng.sample(names, 2)
        ref = f"{self.reg.host}/soak/c{n}:v1"
        marker = f"soak-{n}-{os.urandom(4).hex()}"
        img = workload_image(self.workdir / "img" / str(n), ref, marker=marker,
                             payload_mib=self.k.payload_mib)  # fmt: skip
        up = self.reg.running()
        if up:
            with contextlib.suppress(Exception):  # the registry may go down mid-push
                img.push(ref)
        self.node(source).import_image(img)
        pod = pod_manifest(f"c{n}", self.ns, ref, annotations=OPT_IN,
                           labels={"soak": "1"})  # fmt: skip
        pod["spec"]["nodeName"] = target
        self.cluster.apply(pod)
        self.cycles.append(Cycle(n=n, ref=ref, digest=img.digest, source=source, target=target,
                                 registry_up=up, created=self.now()))  # fmt: skip
        with contextlib.suppress(OSError):
            for f in (self.workdir / "img" / str(n)).rglob("*"):
                if f.is_file():
                    f.unlink()

    def poll(self) -> None:
        res = self.cluster.kubectl("get", "pods", "-n", self.ns, "-l", "soak=1", "-o", "json",
                                   check=False)  # fmt: skip
        if res.returncode != 0:
            return  # the API server is busy; next tick
        pods = {p["metadata"]["name"]: p for p in json.loads(res.stdout)["items"]}
        now = self.now()
        for c in self.cycles:
            p = pods.get(f"c{c.n}")
            if c.running is None and p is not None and pod_running(p):
                c.running = now
            if c.running is not None and c.deleted is None and now - c.running >= self.k.hold:
                self.cluster.kubectl("delete", "pod", f"c{c.n}", "-n", self.ns, "--wait=false",
                                     check=False)  # fmt: skip
                c.deleted = now
            if c.deleted is not None and c.gone is None and p is None:
                c.gone = now
            if c.gone is not None and not c.cleaned:
                for node in self.cluster.nodes:
                    node.ctr("images", "rm", c.ref, check=False)
                c.cleaned = True

    # -- churn -----------------------------------------------------------------------------

    def churn(self, what: str) -> None:
        self.report.churn[what] = self.report.churn.get(what, 0) + 1

    def flap_registry(self) -> None:
        if self.reg.running():
            self.reg.stop()
            self.log("registry down")
        else:
            self.reg.start()
            self.log("registry up")
        self.churn("registry flaps")

    def restart_agent(self) -> None:
        pods = self.tote.pods("agent")
        if pods:
            p = self.rng.choice(pods)
            self.cluster.kubectl("delete", "pod", "-n", self.tote.namespace,
                                 p["metadata"]["name"], "--wait=false", check=False)
            self.log(f"agent pod {p['metadata']['name']} on {p['spec'].get('nodeName')} deleted")
            self.churn("agent pods deleted")

    def restart_containerd(self) -> None:
        node = self.rng.choice(self.cluster.nodes)
        cd: Containerd = node.containerd
        cd.proc.stop(grace=10)
        cd.proc = node.procs.start(cd.proc.name, cd.proc.argv)
        wait_until(lambda: cd.ctr("version", check=False).returncode == 0, timeout=60,
                   what=f"containerd on {node.name} back", proc=cd.proc)  # fmt: skip
        self.log(f"containerd on {node.name} restarted")
        self.churn("containerd restarts")

    def kill_leader(self) -> None:
        holder = self.tote.lease_holder()
        leader = next((p for p in self.tote.pods("controller")
                       if holder.startswith(p["metadata"]["name"])), None)  # fmt: skip
        pid = self.pid_of(leader) if leader else None
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        self.log(f"leader {leader['metadata']['name']} killed (pid {pid})")  # type: ignore[index]
        self.churn("leader kills")

    def start_fault(self) -> None:
        a, b = self.rng.sample(self.cluster.nodes, 2)
        assert a.net is not None and b.net is not None
        stack = contextlib.ExitStack()
        stack.enter_context(netfaults.blocked(a.net, between=(a.net.pod_cidr, b.net.pod_cidr),
                                              probability=0.5))  # fmt: skip
        self.fault, self.fault_until = stack, self.now() + self.k.fault_length
        self.log(f"transfer fault: half the packets between {a.name} and {b.name} dropped")
        self.churn("transfer faults")

    def end_fault(self) -> None:
        if self.fault is not None:
            self.fault.close()
            self.fault = None

    # -- samples ---------------------------------------------------------------------------

    def sample(self) -> None:
        now = self.now()
        for p in self.tote_pods():
            pid = self.pid_of(p)
            figures = _proc_figures(pid) if pid else None
            if pid and figures:
                comp = p["metadata"].get("labels", {}).get("app.kubernetes.io/component", "?")
                self.report.samples.append(Sample(t=round(now, 1), pod=p["metadata"]["name"],
                                                  component=comp, pid=pid,
                                                  rss_mib=round(figures[0], 1),
                                                  fds=figures[1]))  # fmt: skip
        self.report.load.append(f"{now:.0f}s {_uptime()}")
        running = sum(1 for c in self.cycles if c.running is not None)
        self.log(f"{len(self.cycles)} workloads, {running} ran; " + ", ".join(
            f"{s.pod} {s.rss_mib} MiB {s.fds} fds" for s in self.report.samples if s.t == round(
                now, 1)))

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Report:
        k = self.k
        end = k.minutes * 60
        self.due = {"cycle": 0.0, "sample": 0.0, "registry": self.draw(k.registry_flap),
                    "agent": self.draw(k.agent_restart),
                    "containerd": self.draw(k.containerd_restart),
                    "leader": self.draw(k.leader_kill), "fault": self.draw(k.fault)}
        actions = {"registry": (self.flap_registry, k.registry_flap),
                   "agent": (self.restart_agent, k.agent_restart),
                   "containerd": (self.restart_containerd, k.containerd_restart),
                   "leader": (self.kill_leader, k.leader_kill),
                   "fault": (self.start_fault, k.fault)}  # fmt: skip
        self.log(f"soak for {k.minutes} min in {self.ns}; {_uptime()}")
        try:
            while self.now() < end:
                now = self.now()
                if now >= self.due["cycle"]:
                    self.start_cycle()
                    self.due["cycle"] = now + k.every
                if now >= self.due["sample"]:
                    self.sample()
                    self.due["sample"] = now + k.sample_every
                if self.fault is not None and now >= self.fault_until:
                    self.end_fault()
                for name, (act, mean) in actions.items():
                    if now >= self.due[name] and not (name == "fault" and self.fault):
                        act()
                        self.due[name] = self.now() + self.draw(mean)
                self.poll()
                time.sleep(max(0.0, 1.0 - (self.now() - now)))
            self.log("churn stopped; the registry stays down, last pods finishing")
        finally:
            self.end_fault()
            self.reg.stop()
        self.finish()
        return self.report

    def finish(self) -> None:
        """Let every workload end (Running, deleted, gone) or time out, then take stock."""
        def settled() -> bool:
            self.poll()
            now = self.now()
            return all(c.cleaned or (c.running is None and now - c.created > RUN_DEADLINE)
                       for c in self.cycles)  # fmt: skip

        wait_until(settled, timeout=RUN_DEADLINE + 120, interval=2, what="workloads settled")
        self.sample()
        # Transfers that were cancelled clean up after themselves, and each agent releases
        # kept import leases whose image is whole by now every LEASE_CHECK_INTERVAL: a
        # lease still there after two rounds is a leak.
        deadline = time.monotonic() + 2 * LEASE_CHECK_INTERVAL + 15
        time.sleep(10)
        while time.monotonic() < deadline and any(
                lease.startswith("tote-import-")
                for node in self.cluster.nodes for lease, _ in _leases(node)):
            time.sleep(5)
        r = self.report
        r.cycles = len(self.cycles)
        r.running = sum(1 for c in self.cycles if c.running is not None)
        r.never_running = [f"c{c.n} ({c.source}→{c.target})" for c in self.cycles
                           if c.running is None]  # fmt: skip
        r.time_to_running = _spread([c.running - c.created for c in self.cycles
                                     if c.running is not None])  # fmt: skip
        records = self.cluster.get_json("salvagerecords", "-A")["items"]
        done = {(x["spec"]["digest"], x["spec"]["targetNode"]) for x in records
                if x.get("status", {}).get("phase") == "Completed"}  # fmt: skip
        r.salvaged = sum(1 for c in self.cycles if (c.digest, c.target) in done)
        r.leaks, r.seen = leaks(self.cluster, records, self.cycles)
        r.load.append(f"end {_uptime()}")


def _spread(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 2),
            "p99": round(xs[min(len(xs) - 1, int(0.99 * len(xs)))], 2),
            "max": round(xs[-1], 2)}  # fmt: skip


def _leases(node: KubeletNode) -> list[tuple[str, dict[str, str]]]:
    """`ctr leases ls`: (id, labels) per lease."""
    out = []
    for line in node.ctr("leases", "ls").stdout.splitlines()[1:]:
        parts = line.split()
        if not parts:
            continue
        labels = dict(kv.split("=", 1) for kv in (parts[-1] if len(parts) > 2 else "").split(",")
                      if "=" in kv)  # fmt: skip
        out.append((parts[0], labels))
    return out


def leaks(cluster: KubeCluster, records: list[dict[str, Any]], cycles: list[Cycle] | None = None
          ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:  # fmt: skip
    """What a quiet cluster must not hold: per node, tote's import leases (`tote-import-*`:
    kept for a resume, and released by the agent once the image is whole) and any tote lease
    without an expiry — a transfer's replay marker (`tote-token-*`, until its token expires)
    and a regenerated layer's lease (`tote-export-*`, 10 minutes) expire on their own by
    design and are reported apart —, active ingests, partial fast-path files and extraction
    snapshots; duplicate SalvageRecords per (digest, node); images pinned by tote without a
    SalvageRecord for them on that node. Second dict: what was seen that is not tote's to
    clean (other components' leases, unexpired token markers)."""
    found: dict[str, list[str]] = {k: [] for k in (
        "leases", "ingests", "partial files", "extraction snapshots", "duplicate records",
        "pinned images without a record")}  # fmt: skip
    seen: dict[str, list[str]] = collections.defaultdict(list)
    fate = {c.digest: f"c{c.n} {c.source}→{c.target} ran={c.running is not None}"
            for c in cycles or []}  # fmt: skip
    by_pair = collections.Counter((x["spec"]["digest"], x["spec"]["targetNode"])
                                  for x in records)  # fmt: skip
    found["duplicate records"] = [f"{d} on {n}: {c}" for (d, n), c in by_pair.items() if c > 1]
    for node in cluster.nodes:
        for lease, labels in _leases(node):
            digest = labels.get("tote.dev/import") or labels.get("tote.dev/export") or ""
            what = f"{node.name}: {lease} {labels} {fate.get(digest, '')}".rstrip()
            if not lease.startswith("tote-"):
                seen["leases that are not tote's"].append(what)
            elif "containerd.io/gc.expire" not in labels or lease.startswith("tote-import-"):
                found["leases"].append(what)
            else:
                seen["token markers and layer exports (expire on their own)"].append(what)
        for line in node.ctr("content", "active").stdout.splitlines()[1:]:
            found["ingests"].append(f"{node.name}: {line.split()[0]}")
        tmp = node.containerd.content_root / "tote-tmp"
        if tmp.exists():
            found["partial files"] += [f"{node.name}: {p.name}" for p in tmp.rglob("*")
                                       if p.is_file()]  # fmt: skip
        for line in node.ctr("snapshots", "ls").stdout.splitlines()[1:]:
            if line.startswith("extract-"):
                found["extraction snapshots"].append(f"{node.name}: {line.split()[0]}")
        salvaged_here = {d for (d, n) in by_pair if n == node.name}
        for line in node.ctr("images", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if (PIN in line and len(parts) >= 3 and "/soak/" in parts[0]
                    and parts[2] not in salvaged_here):
                found["pinned images without a record"].append(f"{node.name}: {parts[0]}")
    return found, dict(seen)


def growth(samples: list[Sample], warmup: float) -> dict[str, dict[str, float]]:
    """Per process lifetime with at least two samples after `warmup`: RSS and fd change
    from its first sample after warm-up to its last (a process restarted by the churn
    starts a new lifetime)."""
    lives: dict[tuple[str, int], list[Sample]] = collections.defaultdict(list)
    for s in samples:
        if s.t >= warmup:
            lives[(s.pod, s.pid)].append(s)
    out = {}
    for (pod, pid), ss in lives.items():
        if len(ss) >= 2:
            out[f"{pod} pid {pid}"] = {
                "minutes": round((ss[-1].t - ss[0].t) / 60, 1),
                "rss_first": ss[0].rss_mib, "rss_last": ss[-1].rss_mib,
                "rss_max": max(s.rss_mib for s in ss),
                "fds_first": ss[0].fds, "fds_last": ss[-1].fds,
            }
    return out


def print_report(r: Report) -> None:
    print("\n== soak report ==")
    print(f"workloads {r.cycles}, Running {r.running}, salvaged by tote {r.salvaged}, "
          f"pulled from the registry {r.running - r.salvaged}")
    print(f"never Running: {len(r.never_running)} {r.never_running[:10]}")
    print(f"creation → Running: {r.time_to_running}")
    print(f"churn: {r.churn}")
    for life, g in growth(r.samples, warmup=min(300.0, r.knobs.minutes * 60 / 5)).items():
        print(f"  {life}: {g}")
    for what, items in r.leaks.items():
        print(f"leaked {what}: {len(items)} {items[:5]}")
    for what, items in r.seen.items():
        print(f"seen, not leaked: {what}: {len(items)} {items[:3]}")
    for line in r.load:
        print(f"  load {line}")
