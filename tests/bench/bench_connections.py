"""Benchmark: the controller's inventory fan-out (`find_image` over every agent) on pooled
connections against a fresh loop and mTLS connection per call, in the same run.

Three containerd nodes with real agents (mTLS); node a and b hold a small image. A round is
one `Inventory.find_image` over the three nodes with its answer cache cleared (the fresh
side opens one asyncio loop per round around it, as each hook call did before the pool), i.e. what a
reconcile of a failing pod costs when the cache is cold: ListImages on every agent, Inspect
on the holders. Blocks of rounds alternate fresh, pooled, fresh, pooled so a load spike hits
both. Prints the median round latency, this process's CPU per round (the controller's side)
and the agents' CPU per round (the server side of each handshake), and the ratios.

Run: `python tests/bench/bench_connections.py [--rounds 100] [--blocks 4]` (root; containerd
installed). Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

import trio  # noqa: E402

from tests.cluster.containerd_env import Env, containerd_env  # noqa: E402
from tests.cluster.images import layered_image  # noqa: E402
from tests.cluster.procs import cpu_seconds  # noqa: E402

NODES = ("a", "b", "c")


class Block:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.own_cpu = 0.0
        self.agent_cpu = 0.0
        self.rounds = 0


async def run_block(env: Env, pooled: bool, rounds: int, digest: str) -> Block:
    from tote_containerd.inventory import Inventory

    agents = env.client_agents()  # the controller's view: discovery + mTLS identity
    inventory = Inventory(agents)
    pids = [env.agents[n].proc.pid for n in NODES]
    out = Block()
    async with trio.open_nursery() as nursery:
        if pooled:
            await nursery.start(agents.connections.run)
        own0, agent0 = time.process_time(), sum(cpu_seconds(p) for p in pids)
        for _ in range(rounds):
            inventory.invalidate()
            t = time.perf_counter()
            # Without the pool's service every agent call opens a bridge and a connection of
            # its own (what each hook call did before the pool, plus a loop per call).
            found = await inventory.find_image(digest, list(NODES))
            out.latency.append(time.perf_counter() - t)
            assert found == ["a", "b"], found
        out.own_cpu = time.process_time() - own0
        out.agent_cpu = sum(cpu_seconds(p) for p in pids) - agent0
        out.rounds = rounds
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--blocks", type=int, default=4)
    args = ap.parse_args()
    api_path = {n: ("--no-fast-path",) for n in NODES}
    with containerd_env("tote-bench-conn-", NODES, agents=api_path,
                        base_dir=os.environ.get("TOTE_BENCH_DIR")) as env:
        base = env.base
        img = layered_image("docker.io/tote/conn:v1", [64 * 1024], seed=71)
        archive = img.write_archive(base / "img.tar")
        for n in ("a", "b"):
            env.nodes[n].import_archive(archive)
        print(f"load average before: {os.getloadavg()}", flush=True)
        results: dict[bool, list[Block]] = {False: [], True: []}
        for i in range(args.blocks * 2):
            pooled = bool(i % 2)
            results[pooled].append(trio.run(run_block, env, pooled, args.rounds, img.digest))
        print(f"{args.blocks} blocks x {args.rounds} rounds each, 3 agents, mTLS")
        print("| connections | median round | controller CPU / round | agents' CPU / round |")
        print("|---|---|---|---|")
        rows = {}
        for pooled, blocks in results.items():
            lat = statistics.median(x for b in blocks for x in b.latency) * 1000
            n = sum(b.rounds for b in blocks)
            own = sum(b.own_cpu for b in blocks) / n * 1000
            agent = sum(b.agent_cpu for b in blocks) / n * 1000
            rows[pooled] = (lat, own, agent)
            label = "pooled (service running)" if pooled else "fresh loop + connection per call"
            print(f"| {label} | {lat:.1f} ms | {own:.1f} ms | {agent:.1f} ms |")
        (fl, fo, fa), (pl, po, pa) = rows[False], rows[True]
        print(f"pooled / fresh: latency {pl / fl:.2f}x, controller CPU {po / fo:.2f}x, "
              f"agents' CPU {pa / fa:.2f}x")
        print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
