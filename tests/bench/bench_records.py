"""Benchmark: SalvageRecord lookup latency with 100, 1 000 and 10 000 records.

tote's idempotency lookup is a GET by deterministic name (digest, target node); lookups by
(digest, target node) across namespaces use a label selector. Both are timed at each record
count next to a baseline from the same run: a GET of one tiny object (the `default`
namespace), i.e. the API server's floor. A full list is timed too, to show what a list scan
would have cost.

Run: python -m tests.bench.bench_records [--counts 100,1000,10000] [--lookups 200]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import trio

from tests.bench.bench_detection import client
from tests.cluster.controlplane import ControlPlane, binaries_dir, start_control_plane
from tote_core.salvage.planner import record_labels, record_name

NS = "bench-records"
BASE = f"/apis/tote.dev/v1alpha1/namespaces/{NS}/salvagerecords"


def digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()


async def fill(http: httpx.AsyncClient, start: int, end: int) -> None:
    limiter = trio.CapacityLimiter(16)

    async def one(i: int) -> None:
        d, node = digest(i), f"node-{i % 50}"
        body = {"apiVersion": "tote.dev/v1alpha1", "kind": "SalvageRecord",
                "metadata": {"name": record_name(d, node), "labels": record_labels(d, node)},
                "spec": {"podName": f"p{i}", "podUID": str(i), "digest": d, "imageRef": "x",
                         "sourceNode": "a", "targetNode": node}}
        async with limiter:
            r = await http.post(BASE, content=json.dumps(body),
                                headers={"Content-Type": "application/json"})
            if r.status_code not in (201, 409):
                raise RuntimeError(r.text[:200])

    async with trio.open_nursery() as n:
        for i in range(start, end):
            n.start_soon(one, i)


async def timed(http: httpx.AsyncClient, path: str, params: dict[str, str] | None = None
                ) -> float:
    t0 = time.perf_counter()
    r = await http.get(path, params=params)
    r.raise_for_status()
    elapsed = (time.perf_counter() - t0) * 1000
    LAST_SIZE[0] = len(r.content)
    return elapsed


LAST_SIZE = [0]


async def run(cp: ControlPlane, counts: list[int], lookups: int) -> list[str]:
    rows = []
    async with client(cp, timeout=120) as http:
        r = await http.post("/api/v1/namespaces", content=json.dumps({"metadata": {"name": NS}}),
                            headers={"Content-Type": "application/json"})
        assert r.status_code in (201, 409)
        have = 0
        for count in counts:
            t0 = time.monotonic()
            await fill(http, have, count)
            fill_s = time.monotonic() - t0
            have = count
            floor = [await timed(http, "/api/v1/namespaces/default") for _ in range(lookups)]
            get = []
            sel = []
            for k in range(lookups):
                i = (k * 7919) % count
                d, node = digest(i), f"node-{i % 50}"
                get.append(await timed(http, f"{BASE}/{record_name(d, node)}"))
                if k < lookups // 4:
                    labels = record_labels(d, node)
                    selector = ",".join(f"{a}={b}" for a, b in labels.items())
                    sel.append(await timed(http, "/apis/tote.dev/v1alpha1/salvagerecords",
                                           {"labelSelector": selector}))
            full = [await timed(http, BASE) for _ in range(3)]
            full_items = len(json.loads((await http.get(BASE)).content)["items"])
            rows.append(
                f"{count:>6} records (created in {fill_s:5.1f}s): "
                f"GET by name p50 {statistics.median(get):6.2f} ms | "
                f"label selector p50 {statistics.median(sel):7.2f} ms | "
                f"baseline GET namespace p50 {statistics.median(floor):5.2f} ms | "
                f"full list ({full_items} items, {LAST_SIZE[0] / 1e6:.1f} MB) "
                f"{statistics.median(full):8.1f} ms"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="100,1000,10000")
    ap.add_argument("--lookups", type=int, default=200)
    args = ap.parse_args()
    bins = binaries_dir(build=True)
    assert bins is not None
    cp = start_control_plane(Path(tempfile.mkdtemp(prefix="tote-bench-rec-")), bins)
    try:
        trio.run(run, cp, [int(c) for c in args.counts.split(",")], args.lookups)
    finally:
        cp.stop()


if __name__ == "__main__":
    main()
