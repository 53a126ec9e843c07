"""Benchmark: the controller on 5 000 pods across 200 Nodes in a real kube-apiserver.

Prints controller RSS after cache sync (next to the RSS of an idle Python process that has
imported the controller: the baseline), and p50/p99 latency from a pod status change to
tote's event (next to the latency of the same change reaching a plain watch client: the
API server's own floor, measured in the same run).

Also (issue 12): idle cost — CPU seconds the controller, kube-apiserver and etcd use over
`--idle` seconds with every pod quiet; and a burst — `--burst` pods patched to ErrImagePull
as fast as the API server takes them, the time until each has its ImageSalvageable event,
and how many SalvageRecords (one per transfer job) exist per (digest, target node).
`--profile FILE` samples the controller with py-spy during the latency phase (py-spy must
be on PATH or in the venv; a profiling tool, not a dependency) and prints the hottest frames;
`--profile-burst FILE` does the same for the burst.

Scale (issue 26): pods are created by a fixed pool of senders (bound to their nodes at
create), start-up is process start to /readyz 200 (every informer listed), and RSS is
printed with its peak (VmHWM) and per pod; `--workers N` passes the controller's --workers.

Run: python -m tests.bench.bench_detection [--pods 5000] [--nodes 200] [--samples 200]
         [--idle 60] [--burst 1000] [--profile /tmp/detect.txt] [--profile-burst FILE]
         [--workers N] [--subscribers N] (N `tote status --follow --json` viewers)

P7 (issue 10): `--webhook-compare` measures the same latency twice in one run, on distinct
pods: first with no webhook, then with `--webhook-url` pointing at a receiver that accepts
connections and never answers. Prints both p50/p99 and the p99 ratio (goal <= 1.2x).

Over 400 lines on purpose: one benchmark, its workload generator and its report.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.cluster.controller import ControllerProcess, Controllers
from tests.cluster.controlplane import ControlPlane, binaries_dir, start_control_plane
from tests.cluster.procs import ProcessGroup, cpu_seconds, wait_until
from tests.cluster.webhook import Receiver

DIGEST = "sha256:" + "d" * 64
REPO = "127.0.0.1:5999/bench"
NS_COUNT = 50


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hwm_mib(pid: int) -> float:
    """Peak RSS so far (the initial list's high-water mark)."""
    return rss_mib(pid, "VmHWM")


def loadavg() -> str:
    """The load average, with uptime's clock: every reported figure carries the machine's
    load next to it (the machine is shared)."""
    now = time.strftime("%H:%M:%S", time.gmtime())
    return f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at {now} UTC"


def client(cp: ControlPlane, timeout: float = 60) -> httpx.AsyncClient:
    """An admin client (client certificate) for driving the API server at full speed."""
    assert cp.admin_cert is not None
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.admin_cert.cert), str(cp.admin_cert.key))
    return httpx.AsyncClient(base_url=cp.server, verify=ctx, timeout=timeout,
                             limits=httpx.Limits(max_connections=16))


def target_of(i: int, targets: list[str]) -> str:
    """Runs of 5 consecutive pods (5 namespaces) share a node: a burst then has pods of
    several namespaces failing for one (digest, node)."""
    return targets[(i // 5) % len(targets)]


async def populate(cp: ControlPlane, pods: int, nodes: int) -> float:
    t0 = time.monotonic()
    async with client(cp) as http:
        limiter = trio.CapacityLimiter(16)

        async def send(method: str, url: str, body: Any, ctype: str = "application/json") -> None:
            async with limiter:
                r = await http.request(method, url, content=json.dumps(body),
                                       headers={"Content-Type": ctype})
                if r.status_code >= 400 and r.status_code != 409:
                    raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:200]}")

        async with trio.open_nursery() as n:
            for i in range(NS_COUNT):
                n.start_soon(send, "POST", "/api/v1/namespaces", {
                    "metadata": {"name": f"bench-{i}", "annotations": {"tote.dev/allow": "true"}}})
        async with trio.open_nursery() as n:
            for i in range(nodes):
                n.start_soon(send, "POST", "/api/v1/nodes", {"metadata": {"name": f"bn-{i}"}})
        images = [{"names": [f"{REPO}{k}@sha256:{k:064x}", f"{REPO}{k}:v1"], "sizeBytes": 10**7}
                  for k in range(40)]
        async with trio.open_nursery() as n:
            for i in range(nodes):
                imgs = images + ([{"names": [f"{REPO}@{DIGEST}"], "sizeBytes": 10**7}]
                                 if i % 10 == 0 else [])
                n.start_soon(send, "PATCH", f"/api/v1/nodes/bn-{i}/status",
                             {"status": {"images": imgs}}, "application/merge-patch+json")
        # Pods run on nodes that lack the digest (holders are every tenth node), so every
        # sampled failure is salvageable rather than "target already holds it".
        targets = [f"bn-{i}" for i in range(nodes) if i % 10 != 0]
        # A fixed pool of senders, not a task per pod: 150 000 waiting tasks would cost the
        # benchmark process more memory than the controller it measures.
        todo = iter(range(pods))

        async def sender() -> None:
            for i in todo:
                ns = f"bench-{i % NS_COUNT}"
                await send("POST", f"/api/v1/namespaces/{ns}/pods", {
                    "metadata": {"name": f"p-{i}",
                                 "annotations": {"tote.dev/auto-salvage": "true"}},
                    "spec": {"nodeName": target_of(i, targets),
                             "containers": [{"name": "app", "image": f"{REPO}@{DIGEST}"}]}})
                if i and i % 25000 == 0:
                    print(f"  {i} pods created after {time.monotonic() - t0:.0f}s "
                          f"(load average {loadavg()})", flush=True)

        async with trio.open_nursery() as n:
            for _ in range(16):
                n.start_soon(sender)
    return time.monotonic() - t0


def failing_status() -> dict[str, Any]:
    return {"status": {"containerStatuses": [{
        "name": "app", "image": f"{REPO}@{DIGEST}", "imageID": "", "ready": False,
        "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull",
                                                 "message": "connection refused"}}}]}}


def pod_ref(idx: int) -> tuple[str, str]:
    return f"bench-{idx % NS_COUNT}", f"p-{idx}"


async def observe(
    cp: ControlPlane, drive: Any, *, wait: float = 60
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Run `drive(http, sent)` (which patches pods and records send times in `sent`) while a
    plain pod watch and an event watch record when each key shows up; wait for the events.

    Returns (sent, seen by the pod watch, seen as ImageSalvageable event), monotonic times.
    """
    sent: dict[str, float] = {}
    seen_watch: dict[str, float] = {}
    seen_event: dict[str, float] = {}
    async with client(cp) as http:
        async def watch(path: str, into: dict[str, float], key_of: Any,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            lst = await http.get(path, params={"limit": "1"})
            rv = lst.json()["metadata"]["resourceVersion"]
            async with http.stream("GET", path, params={"watch": "1", "resourceVersion": rv},
                                   timeout=None) as resp:
                task_status.started()
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    obj = json.loads(line)["object"]
                    key = key_of(obj)
                    if key and key in sent and key not in into:
                        into[key] = time.monotonic()

        def pod_key(obj: dict[str, Any]) -> str | None:
            st = obj.get("status", {}).get("containerStatuses") or []
            if st and st[0].get("state", {}).get("waiting"):
                return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            return None

        def event_key(obj: dict[str, Any]) -> str | None:
            if obj.get("reason") != "ImageSalvageable":
                return None
            reg = obj.get("regarding", {})
            return f"{reg.get('namespace')}/{reg.get('name')}"

        async with trio.open_nursery() as n:
            await n.start(watch, "/api/v1/pods", seen_watch, pod_key)
            await n.start(watch, "/apis/events.k8s.io/v1/events", seen_event, event_key)
            await trio.sleep(1)
            await drive(http, sent)
            with trio.move_on_after(wait):
                while len(seen_event) < len(sent):
                    await trio.sleep(0.1)
            n.cancel_scope.cancel()
    return sent, seen_watch, seen_event


def sample_pods(pods: int, samples: int, offset: int) -> list[tuple[str, str]]:
    """`samples` distinct (namespace, name) spread over the pods, starting at `offset`."""
    stride = 23 if math.gcd(23, pods) == 1 else 1
    picked = [(i + offset) * stride % pods for i in range(samples)]
    return [pod_ref(idx) for idx in picked]


async def clear_waiting(cp: ControlPlane, pods: list[tuple[str, str]]) -> None:
    """Put sampled pods back to running, so a later controller does not start on them."""
    async with client(cp) as http:
        for ns, name in pods:
            body = {"status": {"containerStatuses": [{
                "name": "app", "image": f"{REPO}@{DIGEST}", "imageID": "", "ready": True,
                "restartCount": 0, "state": {"running": {}}}]}}
            r = await http.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status",
                                 content=json.dumps(body),
                                 headers={"Content-Type": "application/merge-patch+json"})
            r.raise_for_status()


async def measure_latency(cp: ControlPlane, pods: list[tuple[str, str]]
                          ) -> tuple[list[float], list[float]]:
    """Patch `pods` to ErrImagePull, 50 ms apart; time (a) a plain pod watch seeing it (the
    API floor), (b) the event."""

    async def drive(http: httpx.AsyncClient, sent: dict[str, float]) -> None:
        for ns, name in pods:
            sent[f"{ns}/{name}"] = time.monotonic()
            r = await http.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status",
                                 content=json.dumps(failing_status()),
                                 headers={"Content-Type": "application/merge-patch+json"})
            r.raise_for_status()
            await trio.sleep(0.05)

    sent, seen_watch, seen_event = await observe(cp, drive)
    watch_lat = [seen_watch[k] - sent[k] for k in sent if k in seen_watch]
    event_lat = [seen_event[k] - sent[k] for k in sent if k in seen_event]
    return watch_lat, event_lat


async def burst(cp: ControlPlane, count: int, pods: int, samples: int) -> dict[str, Any]:
    """Patch `count` not-yet-failing pods to ErrImagePull as fast as the API server takes
    them (64 in flight); per-pod time until its event, and until the last event."""
    used = set(sample_pods(pods, samples, 0))
    chosen = [ref for ref in map(pod_ref, range(pods)) if ref not in used][:count]

    async def drive(http: httpx.AsyncClient, sent: dict[str, float]) -> None:
        limiter = trio.CapacityLimiter(64)

        async def one(ref: tuple[str, str]) -> None:
            ns, name = ref
            async with limiter:
                sent[f"{ns}/{name}"] = time.monotonic()
                r = await http.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status",
                                     content=json.dumps(failing_status()),
                                     headers={"Content-Type": "application/merge-patch+json"})
                r.raise_for_status()

        async with trio.open_nursery() as n:
            for ref in chosen:
                n.start_soon(one, ref)

    sent, seen_watch, seen_event = await observe(cp, drive, wait=180)
    first, last_sent = min(sent.values()), max(sent.values())
    return {
        "pods": len(sent),
        "spread": last_sent - first,
        "watch": [seen_watch[k] - sent[k] for k in sent if k in seen_watch],
        "event": [seen_event[k] - sent[k] for k in sent if k in seen_event],
        "all_events_after": (max(seen_event.values()) - first) if seen_event else float("nan"),
    }


async def records_per_target(cp: ControlPlane) -> collections.Counter[tuple[str, str]]:
    async with client(cp) as http:
        r = await http.get("/apis/tote.dev/v1alpha1/salvagerecords")
        r.raise_for_status()
        return collections.Counter(
            (item["spec"]["digest"], item["spec"]["targetNode"]) for item in r.json()["items"]
        )


def top_frames(raw: Path, limit: int = 12) -> list[tuple[float, str]]:
    """Share of samples per leaf frame and per tote frame (inclusive) from py-spy's raw
    (collapsed-stack) output."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        for frame in set(stack.split(";")):
            if "tote" in frame or "plugins" in frame:
                inclusive[frame] += count
    return [(c / max(total, 1), f) for f, c in inclusive.most_common(limit)]


def start_profile(pid: int, out: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` at 100 Hz into `out` (raw), if asked for and installed."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not out or not Path(py_spy).exists():
        return None
    spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-r", "100",
                            "--format", "raw", "-o", out, "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return spy


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)


def print_profile(out: str) -> None:
    if out and Path(out).exists():
        print(f"profile (py-spy, {out}): inclusive share of samples")
        for share, frame in top_frames(Path(out)):
            print(f"  {share * 100:5.1f}%  {frame}")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000


def start_controller(cp: ControlPlane, work: Path, name: str, extra: list[str]
                     ) -> ControllerProcess:
    ctl = Controllers(cp, work).start(name, "--log-level=info", *extra, lease=name,
                                      wait_lead=True)
    time.sleep(2)
    return ctl


def latency_line(what: str, lat: list[float], samples: int) -> str:
    return (f"{what}: p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms "
            f"(n={len(lat)}/{samples})")


def webhook_compare(cp: ControlPlane, work: Path, pods: int, samples: int) -> None:
    """P7: detection latency with no webhook, then with a webhook that never answers."""
    quiet = sample_pods(pods, samples, 0)
    hung = sample_pods(pods, samples, samples)
    ctl = start_controller(cp, work, "bench-nohook", [])
    try:
        watch_a, event_a = trio.run(measure_latency, cp, quiet)
    finally:
        ctl.stop()
    trio.run(clear_waiting, cp, quiet)
    receiver = Receiver(mode="hang").start()
    ctl = start_controller(cp, work, "bench-hook", [f"--webhook-url={receiver.url}"])
    try:
        watch_b, event_b = trio.run(measure_latency, cp, hung)
        metrics = ctl.metrics()
    finally:
        ctl.stop()
        receiver.stop()
    print(latency_line("no webhook:      pod status change → plain watch (API floor)",
                       watch_a, samples))
    print(latency_line("no webhook:      pod status change → ImageSalvageable seen",
                       event_a, samples))
    print(latency_line("hanging webhook: pod status change → plain watch (API floor)",
                       watch_b, samples))
    print(latency_line("hanging webhook: pod status change → ImageSalvageable seen",
                       event_b, samples))
    print(f"hanging webhook: {len(receiver.requests)} requests reached the receiver, "
          f"tote_webhook_failures_total {metrics.get('tote_webhook_failures_total', 0):.0f}, "
          f"tote_webhook_dropped_total {metrics.get('tote_webhook_dropped_total', 0):.0f}")
    if event_a and event_b:
        print(f"P7 detection p99 with a hanging webhook / without: "
              f"{pct(event_b, 99) / pct(event_a, 99):.2f}x (goal <= 1.2x); p50 "
              f"{pct(event_b, 50) / pct(event_a, 50):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle CPU (0 = skip)")
    ap.add_argument("--burst", type=int, default=1000, help="pods in the burst (0 = skip)")
    ap.add_argument("--profile", default="", help="py-spy raw profile of the latency phase")
    ap.add_argument("--profile-burst", default="", help="py-spy raw profile of the burst")
    ap.add_argument("--webhook-compare", action="store_true",
                    help="P7: latency without a webhook, then with one that never answers")
    ap.add_argument("--workers", type=int, default=0,
                    help="the controller's --workers (detection reconcile workers; 0 = its "
                         "default)")
    ap.add_argument("--subscribers", type=int, default=0,
                    help="`tote status --follow --json` viewers connected while measuring")
    args = ap.parse_args()
    if args.samples * (2 if args.webhook_compare else 1) > args.pods:
        ap.error("not enough pods for distinct samples (each sample patches a different pod)")
    bins = binaries_dir(build=True)
    assert bins is not None
    work = Path(tempfile.mkdtemp(prefix="tote-bench-"))
    cp = start_control_plane(work / "cp", bins)
    ctl = None
    spy = None
    print(f"load average at start: {loadavg()} ({os.cpu_count()} CPUs)")
    try:
        took = trio.run(populate, cp, args.pods, args.nodes)
        print(f"created {args.pods} pods, {args.nodes} nodes, {NS_COUNT} namespaces "
              f"through the API in {took:.1f}s (load average {loadavg()})")
        if args.webhook_compare:
            webhook_compare(cp, work, args.pods, args.samples)
            return
        base = subprocess.Popen([sys.executable, "-c",
                                 "import tote_core.components.manager, time; time.sleep(30)"])
        time.sleep(3)
        base_rss = rss_mib(base.pid)
        base.kill()
        base.wait()
        t0 = time.monotonic()
        flags = [f"--workers={args.workers}"] if args.workers else []
        ctl = Controllers(cp, work).start("bench", "--log-level=info", *flags, lease="bench",
                                          wait_ready=False)
        # Start-up: process start → /readyz 200 (every informer listed: caches synced).
        wait_until(ctl.ready, timeout=60 + args.pods / 500, what="controller ready",
                   proc=ctl.proc, interval=0.05)
        sync = time.monotonic() - t0
        wait_until(ctl.leading, timeout=30, what="leads")
        viewers = ProcessGroup(work / "viewers")
        followers = [viewers.start(f"status-{i}", [
            sys.executable, "-m", "tote_core.cli", "status", "--follow", "--json",
            f"--url={ctl.status_url}"]) for i in range(args.subscribers)]
        for f in followers:
            wait_until(lambda f=f: '"type":"synced"' in f.log_path.read_text(), timeout=60,
                       what=f"{f.name} synced", proc=f)
        if args.subscribers:
            print(f"{args.subscribers} status feed subscriber(s) connected and synced")
        time.sleep(2)
        assert ctl.proc is not None
        pid = ctl.proc.pid
        rss = rss_mib(pid)
        print(f"controller ready (caches synced) after start: {sync:.2f}s "
              f"(load average {loadavg()})")
        print(f"controller RSS after sync: {rss:.1f} MiB, peak {hwm_mib(pid):.1f} MiB "
              f"(baseline: idle python with the controller imported {base_rss:.1f} MiB; "
              f"cache cost {rss - base_rss:.1f} MiB, "
              f"{(rss - base_rss) * 1024 / max(args.pods, 1):.2f} KiB per pod)")
        if args.idle > 0:
            others = {p.name: p.pid for p in (cp.procs.procs if cp.procs else [])
                      if p.name in ("kube-apiserver", "etcd")}
            before = {"controller": cpu_seconds(pid)} | {
                n: cpu_seconds(q) for n, q in others.items()}
            time.sleep(args.idle)
            used = {n: cpu_seconds({"controller": pid, **others}[n]) - v
                    for n, v in before.items()}
            print(f"idle {args.idle:.0f}s with {args.pods} quiet pods, CPU seconds: "
                  + ", ".join(f"{n} {v:.2f}" for n, v in used.items())
                  + f" (load average {loadavg()})")
        spy = start_profile(pid, args.profile)
        cpu0 = cpu_seconds(pid)
        watch_lat, event_lat = trio.run(measure_latency, cp,
                                        sample_pods(args.pods, args.samples, 0))
        cpu_samples = cpu_seconds(pid) - cpu0
        stop_profile(spy)
        rss_after = rss_mib(pid)
        print(f"pod status change → plain watch sees it (API floor): "
              f"p50 {pct(watch_lat, 50):.0f} ms, p99 {pct(watch_lat, 99):.0f} ms "
              f"(n={len(watch_lat)})")
        print(f"pod status change → tote ImageSalvageable event seen: "
              f"p50 {pct(event_lat, 50):.0f} ms, p99 {pct(event_lat, 99):.0f} ms, "
              f"max {pct(event_lat, 100):.0f} ms (n={len(event_lat)}/{args.samples})")
        for f in followers:  # the feed really carried the incidents being measured
            seen = f.log_path.read_text().count('"phase":"ImageSalvageable"')
            print(f"{f.name} received {seen} ImageSalvageable incident messages")
        if event_lat and watch_lat:
            print(f"ratios to the API floor: p50 {pct(event_lat, 50) / pct(watch_lat, 50):.1f}x, "
                  f"p99 {pct(event_lat, 99) / pct(watch_lat, 99):.1f}x; mean "
                  f"{statistics.mean(event_lat) * 1000:.0f} ms; controller CPU during the "
                  f"samples {cpu_samples:.2f}s; RSS after {rss_after:.1f} MiB "
                  f"(load average {loadavg()})")
        print_profile(args.profile)
        if args.burst > 0:
            spy = start_profile(pid, args.profile_burst)
            cpu0 = cpu_seconds(pid)
            b = trio.run(burst, cp, args.burst, args.pods, args.samples)
            cpu_burst = cpu_seconds(pid) - cpu0
            stop_profile(spy)
            print(f"burst: {b['pods']} pods patched to ErrImagePull within {b['spread']:.2f}s; "
                  f"API floor p50 {pct(b['watch'], 50):.0f} ms p99 {pct(b['watch'], 99):.0f} ms; "
                  f"event p50 {pct(b['event'], 50):.0f} ms p99 {pct(b['event'], 99):.0f} ms "
                  f"max {pct(b['event'], 100):.0f} ms (n={len(b['event'])}); every pod had its "
                  f"event {b['all_events_after']:.2f}s after the first patch; controller CPU "
                  f"{cpu_burst:.2f}s (load average {loadavg()})")
            if b["event"] and b["watch"]:
                print(f"burst: slowest event / API floor p99 "
                      f"{pct(b['event'], 100) / pct(b['watch'], 99):.2f}x, event p99 / floor "
                      f"p99 {pct(b['event'], 99) / pct(b['watch'], 99):.2f}x")
            time.sleep(10)
            per = trio.run(records_per_target, cp)
            dup = {k: v for k, v in per.items() if v > 1}
            print_profile(args.profile_burst)
            print(f"SalvageRecords (transfer jobs): {sum(per.values())} for {len(per)} "
                  f"(digest, node) pairs; pairs with more than one: {len(dup)} "
                  f"(max {max(per.values(), default=0)}); salvage attempts "
                  f"{ctl.metric('tote_salvage_attempts_total'):.0f}")
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if ctl is not None:
            ctl.stop()
        if "viewers" in locals():
            viewers.stop_all()
        cp.stop()
        if os.environ.get("TOTE_BENCH_KEEP") is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
