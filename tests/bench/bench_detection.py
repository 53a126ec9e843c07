"""Benchmark: the controller on 5 000 pods across 200 Nodes in a real kube-apiserver.

Prints controller RSS after cache sync (next to the RSS of an idle Python process that has
imported the controller: the baseline), and p50/p99 latency from a pod status change to
tote's event (next to the latency of the same change reaching a plain watch client: the
API server's own floor, measured in the same run).

Run: python -m tests.bench.bench_detection [--pods 5000] [--nodes 200] [--samples 200]
[--subscribers N] (N `tote status --follow --json` viewers connected while measuring)
"""

from __future__ import annotations

import argparse
import json
import os
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

from tests.cluster.controller import ControllerProcess
from tests.cluster.controlplane import ControlPlane, binaries_dir, start_control_plane
from tests.cluster.procs import ProcessGroup, wait_until

DIGEST = "sha256:" + "d" * 64
REPO = "127.0.0.1:5999/bench"
NS_COUNT = 50


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client(cp: ControlPlane, timeout: float = 60) -> httpx.AsyncClient:
    """An admin client (client certificate) for driving the API server at full speed."""
    assert cp.admin_cert is not None
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    ctx.load_cert_chain(str(cp.admin_cert.cert), str(cp.admin_cert.key))
    return httpx.AsyncClient(base_url=cp.server, verify=ctx, timeout=timeout,
                             limits=httpx.Limits(max_connections=16))


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
        async with trio.open_nursery() as n:
            for i in range(pods):
                ns = f"bench-{i % NS_COUNT}"
                n.start_soon(send, "POST", f"/api/v1/namespaces/{ns}/pods", {
                    "metadata": {"name": f"p-{i}",
                                 "annotations": {"tote.dev/auto-salvage": "true"}},
                    "spec": {"nodeName": targets[i % len(targets)],
                             "containers": [{"name": "app", "image": f"{REPO}@{DIGEST}"}]}})
    return time.monotonic() - t0


async def measure_latency(cp: ControlPlane, samples: int, pods: int
                          ) -> tuple[list[float], list[float]]:
    """Patch `samples` pods to ErrImagePull; time (a) a plain pod watch seeing it, (b) the event."""
    sent: dict[str, float] = {}
    seen_watch: dict[str, float] = {}
    seen_event: dict[str, float] = {}
    async with client(cp) as http:
        async def watch(path: str, into: dict[str, float], key_of: Any) -> None:
            lst = await http.get(path, params={"limit": "1"})
            rv = lst.json()["metadata"]["resourceVersion"]
            async with http.stream("GET", path, params={"watch": "1", "resourceVersion": rv},
                                   timeout=None) as resp:
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
            n.start_soon(watch, "/api/v1/pods", seen_watch, pod_key)
            n.start_soon(watch, "/apis/events.k8s.io/v1/events", seen_event, event_key)
            await trio.sleep(2)
            for i in range(samples):
                idx = i * 23 % pods  # distinct: samples <= pods, 23 ∤ pods (main)
                ns, name = f"bench-{idx % NS_COUNT}", f"p-{idx}"
                key = f"{ns}/{name}"
                body = {"status": {"containerStatuses": [{
                    "name": "app", "image": f"{REPO}@{DIGEST}", "imageID": "", "ready": False,
                    "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull",
                                                             "message": "connection refused"}}}]}}
                sent[key] = time.monotonic()
                r = await http.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status",
                                     content=json.dumps(body),
                                     headers={"Content-Type": "application/merge-patch+json"})
                r.raise_for_status()
                await trio.sleep(0.05)
            with trio.move_on_after(60):
                while len(seen_event) < len(sent):
                    await trio.sleep(0.2)
            n.cancel_scope.cancel()
    watch_lat = [seen_watch[k] - sent[k] for k in sent if k in seen_watch]
    event_lat = [seen_event[k] - sent[k] for k in sent if k in seen_event]
    return watch_lat, event_lat


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--subscribers", type=int, default=0,
                    help="`tote status --follow --json` viewers connected while measuring")
    args = ap.parse_args()
    if args.samples > args.pods or args.pods % 23 == 0:
        ap.error("--samples must not exceed --pods, and --pods must not be a multiple of 23 "
                 "(each sample patches a different pod)")
    bins = binaries_dir(build=True)
    assert bins is not None
    work = Path(tempfile.mkdtemp(prefix="tote-bench-"))
    cp = start_control_plane(work / "cp", bins)
    ctl = None
    try:
        took = trio.run(populate, cp, args.pods, args.nodes)
        print(f"created {args.pods} pods, {args.nodes} nodes, {NS_COUNT} namespaces "
              f"through the API in {took:.1f}s")
        base = subprocess.Popen([sys.executable, "-c",
                                 "import tote_core.components.manager, time; time.sleep(30)"])
        time.sleep(3)
        base_rss = rss_mib(base.pid)
        base.kill()
        base.wait()
        ctl = ControllerProcess(cp, work / "ctl", identity="bench",
                                extra_args=["--lease-name=bench", "--log-level=info"])
        t0 = time.monotonic()
        ctl.start()
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
        rss = rss_mib(ctl.proc.pid)
        watch_lat, event_lat = trio.run(measure_latency, cp, args.samples, args.pods)
        rss_after = rss_mib(ctl.proc.pid)
        print(f"controller ready (caches synced) after start: {sync:.2f}s")
        print(f"controller RSS after sync: {rss:.1f} MiB "
              f"(baseline: idle python with the controller imported {base_rss:.1f} MiB; "
              f"cache cost {rss - base_rss:.1f} MiB); after {args.samples} incidents "
              f"{rss_after:.1f} MiB")
        print(f"pod status change → plain watch sees it (API floor): "
              f"p50 {pct(watch_lat, 50):.0f} ms, p99 {pct(watch_lat, 99):.0f} ms "
              f"(n={len(watch_lat)})")
        print(f"pod status change → tote ImageSalvageable event seen: "
              f"p50 {pct(event_lat, 50):.0f} ms, p99 {pct(event_lat, 99):.0f} ms "
              f"(n={len(event_lat)}/{args.samples})")
        for f in followers:  # the feed really carried the incidents being measured
            seen = f.log_path.read_text().count('"phase":"ImageSalvageable"')
            print(f"{f.name} received {seen} ImageSalvageable incident messages")
        if event_lat and watch_lat:
            print(f"tote's own share at p50: {pct(event_lat, 50) - pct(watch_lat, 50):.0f} ms "
                  f"(includes the event write and its watch delivery); mean "
                  f"{statistics.mean(event_lat) * 1000:.0f} ms")
    finally:
        if ctl is not None:
            ctl.stop()
        if "viewers" in locals():
            viewers.stop_all()
        cp.stop()
        if os.environ.get("TOTE_BENCH_KEEP") is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
