"""Benchmark: the controller's inventory (`Inventory.find_image`) against thousands of agent
endpoints.

Simulated nodes, real server code: every node is the agent's own gRPC server (`serve()`:
grpclib, mTLS with the agent identity, the per-call authorisation, the wire conversion) on a
loopback address of its own (`127.1.x.y:19090`), backed by an in-memory stand-in for the
node's containerd image store and `Inspect` instead of a containerd. The servers run in
`--workers` child processes (2 500 listeners each at 5 000 nodes); the controller side is
this process: the plugin's `Agents` (static endpoints, the controller's mTLS identity), its
pooled connections (`AgentConnections.run`) and `Inventory`, exactly as in the controller.

Every node holds `--images` other images (of 400 common ones) so its record list is as long
as a real node's; test digest `j` is held by 3 nodes. "Listed" digests are in those nodes'
`status.images` (the hints: what `Caches.nodes_with_digest` answers); "unlisted" ones are not
(kubelet lists at most 50 images per node), so they are found through the record index.

Prints, each next to a same-run baseline where there is one:
- baselines: a raw TCP connect to every endpoint, and a bare TLS 1.3 handshake (the
  controller's client context) with every endpoint, both `MAX_IN_FLIGHT` at a time;
- the first lookup (cold pool, no index: the sweep, a handshake and a ListImages per node);
- cold lookups (answer not cached) of unlisted digests with the index made, of listed
  digests, of a digest no node holds (waits for a sweep begun after the question), and of a
  tag; a warm lookup (cached);
- a sweep again with the index dropped (the pool is bounded: most nodes get a connection
  for the call);
- a caller that gives up after 50 ms while the sweep goes on, then asks again;
- 200 concurrent lookups of one digest with nothing cached: fan-outs and agent calls,
  counted by the controller and by the servers (single flight);
- expiry: 200 callers looking up one digest in a loop for 10 s with the answer's TTL cut to
  2 s and the index's to 4 s: fan-outs, stale answers, the callers' worst latency;
- the controller's RSS, open fds and pooled connections.

Run: `python tests/bench/bench_fanout.py --nodes 5000 [--workers 2] [--sweeps 1]` (no root; the
soft fd limit must allow about 2 x nodes / workers per process plus nodes here).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

import trio  # noqa: E402

from tests.cluster.sim_agents import ip_of  # noqa: E402

PORT = 19090
HOLDERS_PER_DIGEST = 3


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def digest_of(j: int) -> str:
    return "sha256:" + f"{j:064x}"


def holders_of(j: int, n: int) -> list[int]:
    """The simulated nodes that hold digest j (spread over the workers)."""
    return sorted({(j * 7919 + k * (n // HOLDERS_PER_DIGEST + 1)) % n
                   for k in range(HOLDERS_PER_DIGEST)})


# ------------------------------------------------------------------ server side (workers)
def filler_of(i: int, images: int) -> list[str]:
    """Other images every node holds (`images` of 400 common ones), so a node's full record
    list is as long as a real node's."""
    return [f"sha256:{(1 << 200) + (i + k) % 400:064x}" for k in range(images)]


async def serve_nodes(first: int, count: int, args: argparse.Namespace) -> None:
    from tote_containerd.agent.asyncio_bridge import open_bridge
    from tote_containerd.agent.tls import server_context

    from tests.cluster.sim_agents import SimNode, listen, serve_node

    n, pki = args.nodes, args.pki
    held: dict[int, list[int]] = {}
    for j in range(args.digests):
        for i in holders_of(j, n):
            held.setdefault(i, []).append(j)
    ctx = server_context(str(pki / "tote-agent.crt"), str(pki / "tote-agent.key"),
                         str(pki / "tote-ca.crt"))
    nodes: list[SimNode] = []
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        for i in range(first, first + count):
            node = SimNode(node_name(i))
            for k, d in enumerate(filler_of(i, args.images)):
                node.hold(d, f"docker.io/bench/common-{k}:v1")
            for j in held.get(i, []):
                node.hold(digest_of(j), f"docker.io/bench/app-{j}:v1")
            nodes.append(node)
            await serve_node(nursery, bridge, node, listen(i, PORT), ctx)
        print("ready", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                nursery.cancel_scope.cancel()
                return
            buf += chunk
            while b"\n" in buf:
                _, buf = buf.split(b"\n", 1)
                print(f"calls {sum(x.calls for x in nodes)}", flush=True)


# ------------------------------------------------------------------ controller side
def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


class Workers:
    def __init__(self, procs: list[subprocess.Popen[str]]) -> None:
        self.procs = procs

    def calls(self) -> int:
        total = 0
        for p in self.procs:
            assert p.stdin and p.stdout
            p.stdin.write("count\n")
            p.stdin.flush()
            line = p.stdout.readline().split()
            total += int(line[1])
        return total


def start_workers(n: int, workers: int, digests: int, images: int, pki: Path) -> Workers:
    per = -(-n // workers)
    procs = []
    for w in range(workers):
        first, count = w * per, min(per, n - w * per)
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--serve", str(first), str(count), "--nodes", str(n),
             "--digests", str(digests), "--images", str(images), "--pki", str(pki)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:
        assert p.stdout
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"a server worker failed to start: {line!r}")
    return Workers(procs)


async def baseline_sweeps(n: int, pki: Path, concurrency: int) -> tuple[float, float]:
    """Seconds for a raw TCP connect to every endpoint, and for a TLS handshake with each
    (the controller's client context), `concurrency` at a time."""
    from tote_containerd.agent.tls import client_context

    ctx = client_context(str(pki / "tote-controller.crt"), str(pki / "tote-controller.key"),
                         str(pki / "tote-ca.crt"), peer_role="agent")

    async def sweep(tls: bool) -> float:
        limiter = trio.CapacityLimiter(concurrency)

        async def one(i: int) -> None:
            async with limiter:
                stream = await trio.open_tcp_stream(ip_of(i), PORT)
                if tls:
                    ssl_stream = trio.SSLStream(stream, ctx)
                    await ssl_stream.do_handshake()
                    await ssl_stream.aclose()
                else:
                    await stream.aclose()

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        return time.perf_counter() - t

    return await sweep(False), await sweep(True)


async def controller(args: argparse.Namespace, pki: Path, workers: Workers) -> None:
    from tote_containerd.agents import Agents
    from tote_containerd.discovery import AgentDiscovery
    from tote_containerd.inventory import MAX_IN_FLIGHT, Inventory

    from tote_core.settings import ControllerSettings

    n, digests = args.nodes, args.digests
    names = [node_name(i) for i in range(n)]
    hinted = {digest_of(j): [node_name(i) for i in holders_of(j, n)]
              for j in range(digests) if j % 2 == 0}
    settings = ControllerSettings(tls_cert=str(pki / "tote-controller.crt"),
                                  tls_key=str(pki / "tote-controller.key"),
                                  tls_ca=str(pki / "tote-ca.crt"))
    discovery = AgentDiscovery(endpoints={node_name(i): f"{ip_of(i)}:{PORT}" for i in range(n)})
    agents = Agents(settings, discovery=discovery)
    inventory = Inventory(agents, lambda d: hinted.get(d, ()))
    stats = inventory.stats
    expect = {digest_of(j): [node_name(i) for i in holders_of(j, n)] for j in range(digests)}
    unlisted = [digest_of(j) for j in range(digests) if j % 2 == 1]
    listed = [digest_of(j) for j in range(digests) if j % 2 == 0]

    def row(what: str, value: str, baseline: str = "") -> None:
        print(f"| {what} | {value} | {baseline} |", flush=True)

    def pool() -> int:
        return len(agents.connections._pool)

    rss0, fds0 = rss_mib(), open_fds()
    connect_s, tls_s = await baseline_sweeps(n, pki, MAX_IN_FLIGHT)
    print(f"{n} simulated nodes (real agent gRPC server code, {args.workers} server "
          f"processes), mTLS; {args.images} other images per node; each test digest held "
          f"by {HOLDERS_PER_DIGEST} nodes")
    print("| measure | tote | same-run baseline |")
    print("|---|---|---|")
    row("raw TCP connect to every endpoint", f"{connect_s:.2f} s")
    row("TLS handshake with every endpoint", f"{tls_s:.2f} s")

    async def lookup(digest: str) -> float:
        t = time.perf_counter()
        found = await inventory.find_image(digest, names)
        took = time.perf_counter() - t
        assert found == expect[digest], (digest, found, expect[digest])
        return took

    async with trio.open_nursery() as service:
        await service.start(agents.connections.run)
        await service.start(inventory.run)
        cpu = time.process_time()
        first = await lookup(unlisted[0])
        row("first lookup, unlisted digest, cold pool (index sweep: a handshake and a "
            "ListImages per node)", f"{first:.2f} s, {time.process_time() - cpu:.2f} CPU-s",
            f"TLS handshakes alone {tls_s:.2f} s")
        rss_warm, fds_warm, pool_warm = rss_mib(), open_fds(), pool()
        cold = []
        for d in unlisted[1:]:
            cold.append(await lookup(d))
        row(f"cold lookup, digest held but unlisted (index warm): p50 / p99 of {len(cold)}",
            f"{pct(cold, 50) * 1000:.1f} ms / {pct(cold, 99) * 1000:.1f} ms")
        hinted_t = [await lookup(d) for d in listed]
        row(f"cold lookup, digest listed in Node status: p50 / p99 of {len(hinted_t)}",
            f"{pct(hinted_t, 50) * 1000:.1f} ms / {pct(hinted_t, 99) * 1000:.1f} ms")
        nowhere = []
        for k in range(args.sweeps):
            d = f"sha256:{(1 << 250) + k:064x}"
            expect[d] = []
            nowhere.append(await lookup(d))
        row("cold lookup, digest no node holds (waits for a sweep begun after it): "
            f"p50 / max of {args.sweeps}", f"{pct(nowhere, 50):.2f} s / {max(nowhere):.2f} s")
        t = time.perf_counter()
        tag = await inventory.resolve_tag("docker.io/bench/app-1:v1", names)
        assert tag == digest_of(1), tag
        row("resolve_tag, cold (index warm)", f"{(time.perf_counter() - t) * 1000:.1f} ms")
        warm = [await lookup(listed[0]) for _ in range(100)]
        row("warm lookup (cached): p50 / p99 of 100",
            f"{pct(warm, 50) * 1e6:.0f} µs / {pct(warm, 99) * 1e6:.0f} µs")
        sweeps = []
        cpu = time.process_time()
        for d in unlisted[:args.sweeps]:
            inventory.invalidate()  # answers and the index
            sweeps.append(await lookup(d))
        row(f"sweep again (index dropped; pool bound {agents.connections.max_pooled}): "
            f"p50 / max of {args.sweeps}",
            f"{pct(sweeps, 50):.2f} s / {max(sweeps):.2f} s, "
            f"{(time.process_time() - cpu) / args.sweeps:.2f} CPU-s each",
            f"TCP connects alone {connect_s:.2f} s")

        # A caller whose deadline is shorter than the sweep: the sweep still finishes.
        inventory.invalidate()
        s0 = stats.sweeps
        with trio.move_on_after(0.05):
            await lookup(unlisted[1])
        t = time.perf_counter()
        while stats.sweeps == s0 or ("index",) in inventory._flights:
            await trio.sleep(0.01)
        await lookup(unlisted[1])
        row("caller gives up after 50 ms, asks again", f"{stats.sweeps - s0} sweep; answer "
            f"{time.perf_counter() - t:.2f} s later", "tied to the caller: a sweep per retry")

        # Single flight: 200 reconciles of one unlisted digest at once, index dropped.
        inventory.invalidate()
        f0, s0, c0, w0 = stats.fanouts, stats.sweeps, stats.calls, workers.calls()
        times: list[float] = []

        async def reconcile() -> None:
            times.append(await lookup(unlisted[0]))

        async with trio.open_nursery() as burst:
            for _ in range(200):
                burst.start_soon(reconcile)
        row("200 concurrent lookups of one unlisted digest (index dropped)",
            f"{stats.fanouts - f0} fan-outs ({stats.sweeps - s0} sweep), "
            f"{stats.calls - c0} agent calls (servers counted {workers.calls() - w0}), "
            f"slowest caller {max(times):.2f} s",
            f"one fan-out each: 200 sweeps, {200 * n} calls")

        # Expiry: 200 callers in a loop across expiries of the answer and of the index.
        inventory.ttl, inventory.index_ttl = 2.0, 4.0
        inventory.invalidate()
        await lookup(unlisted[1])
        f0, s0, c0, st0 = stats.fanouts, stats.sweeps, stats.calls, stats.stale
        worst = 0.0
        end = trio.current_time() + 10.0

        async def caller() -> None:
            nonlocal worst
            while trio.current_time() < end:
                worst = max(worst, await lookup(unlisted[1]))
                await trio.sleep(0.05)

        async with trio.open_nursery() as loop:
            for _ in range(200):
                loop.start_soon(caller)
        row("200 callers looping 10 s; answer TTL 2 s, index TTL 4 s",
            f"{stats.fanouts - f0} fan-outs ({stats.sweeps - s0} sweeps), "
            f"{stats.calls - c0} calls, {stats.stale - st0} stale answers, worst caller "
            f"{worst * 1000:.1f} ms", "no single flight: every caller fans out at expiry")
        row("controller RSS", f"{rss0:.0f} MiB before, {rss_warm:.0f} MiB after the first "
            f"sweep, {rss_mib():.0f} MiB at the end",
            f"{(rss_warm - rss0) * 1024 / n:.1f} KiB per node")
        row("controller open fds / pooled connections",
            f"{fds0} / 0 before, {fds_warm} / {pool_warm} after the first sweep, "
            f"{open_fds()} / {pool()} at the end",
            f"fd soft limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
        service.cancel_scope.cancel()


def make_pki(d: Path) -> None:
    from tests.cluster.pki import make_pki as mk

    mk(d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--digests", type=int, default=12)
    ap.add_argument("--images", type=int, default=30, help="other images on every node")
    ap.add_argument("--sweeps", type=int, default=2, help="repeats of the phases that sweep")
    ap.add_argument("--serve", type=int, nargs=2, metavar=("FIRST", "COUNT"))
    ap.add_argument("--pki", type=Path)
    args = ap.parse_args()
    if args.serve:
        trio.run(serve_nodes, args.serve[0], args.serve[1], args)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uptime = ["uptime"]
    print("before:", subprocess.run(uptime, capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="tote-bench-fanout-") as tmp:
        pki = Path(tmp)
        make_pki(pki)
        workers = start_workers(args.nodes, args.workers, args.digests, args.images, pki)
        try:
            trio.run(controller, args, pki, workers)
        finally:
            for p in workers.procs:
                assert p.stdin
                p.stdin.close()
            for p in workers.procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        print("after:", subprocess.run(uptime, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
