"""Benchmark: a 1 GiB image (4 layers) from node A to node B through two tote agents with
mTLS, API path and fast path, next to baselines measured in the same run:

* disk ceiling: 1 GiB written with fsync to the same filesystem as the content stores;
* one-process containerd → containerd copy through the content API (no agents, no TLS);
* dedupe: bytes moved for a second image that shares 3 of its 4 layers.

Run: `python tests/bench/bench_transfer.py [--size-mib 1024]` (root; containerd installed).
Prints MB/s (10^6 bytes/s). Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

import trio  # noqa: E402

from tests.cluster.procs import ProcessGroup  # noqa: E402
from tests.images.build import CACHE, layered_image  # noqa: E402
from tests.integration.containerd.certs import make_pki  # noqa: E402
from tests.integration.containerd.nodes import Env, start_node  # noqa: E402

MiB = 1024 * 1024


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU time of processes (and their reaped children) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick
    return total


def disk_ceiling(d: Path, size: int) -> float:
    buf = os.urandom(4 * MiB)
    p = d / "disk-ceiling.bin"
    t = time.monotonic()
    with p.open("wb") as f:
        left = size
        while left:
            n = min(left, len(buf))
            f.write(buf[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    dt = time.monotonic() - t
    p.unlink()
    return size / dt / 1e6


async def api_copy(src_sock: str, dst_sock: str, blobs: list[tuple[str, int]]) -> float:
    from tote_containerd.agent import _aio
    from tote_containerd.agent.containerd import ContainerdClient

    async with _aio.open_loop():
        a = ContainerdClient(src_sock)
        b = ContainerdClient(dst_sock)
        await a.connect()
        await b.connect()
        await b.create_lease("bench", expire_in=3600)
        total = sum(s for _, s in blobs)
        t = time.monotonic()

        async def one(digest: str, size: int) -> None:
            async with b.writer("bench-" + digest[7:], size, digest, lease="bench") as w, \
                    a.read(digest) as chunks:
                async for data in chunks:
                    await w.write(data)
                await w.commit()

        async with trio.open_nursery() as n:
            for d, s in blobs:
                n.start_soon(one, d, s)
        dt = time.monotonic() - t
        await a.close()
        await b.close()
    return total / dt / 1e6


async def agent_copy(env: Env, src_ep: str, target: str, digest: str, name: str
                     ) -> tuple[float, int]:
    from tote_containerd.agent.api import ImportRequest
    from tote_containerd.agent.tokens import Signer
    from tote_containerd.plugin import open_agent

    ctl = env.pki.controller
    token = Signer(ctl.cert, ctl.key).mint(digest=digest, source="a", target=target, ttl=60)
    t = time.monotonic()
    async with open_agent(target, env.settings()) as agent:
        done = await agent.import_from(ImportRequest(
            source_node="a", source_endpoint=src_ep, token=token, digest=digest,
            names=[name]))
    dt = time.monotonic() - t
    return done.bytes_total / dt / 1e6, done.bytes_total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    size = args.size_mib * MiB
    layer = size // 4
    spool = CACHE / "bench"
    print(f"building image: 4 x {layer // MiB} MiB (cached in {spool}) ...", flush=True)
    img = layered_image("docker.io/tote/bench:v1", [layer] * 4, seed=501, spool_dir=spool)
    shared = img.layers["linux/amd64"][:3]
    img2 = layered_image("docker.io/tote/bench:v2", [64 * MiB], seed=502, spool_dir=spool,
                         extra_layers=shared)

    base = Path(tempfile.mkdtemp(prefix="tote-bench-", dir=os.environ.get("TOTE_BENCH_DIR")))
    group = ProcessGroup(base / "logs")
    env = Env(base=base, group=group, pki=make_pki(base / "pki"))
    results: list[tuple[str, str]] = []
    try:
        for n in ("a", "b1", "b2", "b3"):
            env.nodes[n] = start_node(group, base / "nodes", n)
        a = env.nodes["a"]
        print("importing into node a ...", flush=True)
        a.import_archive(img.write_archive(base / "img.tar"))
        a.import_archive(img2.write_archive(base / "img2.tar"))
        (base / "img.tar").unlink()
        (base / "img2.tar").unlink()
        print(f"load average: {os.getloadavg()}", flush=True)

        ceiling = disk_ceiling(base, size)
        results.append((f"disk write ceiling ({args.size_mib} MiB, fsync)", f"{ceiling:7.1f} MB/s"))
        print(results[-1], flush=True)

        blobs = [(x.digest, x.size) for x in img.blobs]
        api = trio.run(api_copy, a.socket, env.nodes["b3"].socket, blobs)
        results.append(("containerd→containerd, one process, API", f"{api:7.1f} MB/s"))
        print(results[-1], flush=True)

        src_api = env.agent("a", "--no-fast-path", name="agent-a-api")
        src_fast = env.agent("a", name="agent-a-fast")
        env.agents["b1"] = env.agent("b1", "--no-fast-path")
        env.agents["b2"] = env.agent("b2")

        mbps, _ = trio.run(agent_copy, env, src_api.endpoint, "b1", img.digest, img.name)
        results.append(("agents A→B, mTLS, API path", f"{mbps:7.1f} MB/s"))
        print(results[-1], flush=True)
        pids = [src_fast.proc.pid, env.agents["b2"].proc.pid, a.proc.pid,
                env.nodes["b2"].proc.pid]
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        mbps_fast, _ = trio.run(agent_copy, env, src_fast.endpoint, "b2", img.digest,
                                img.name)
        cpu = (cpu_seconds(pids) - cpu0) / (time.monotonic() - t0)
        results.append(("agents A→B, mTLS, fast path",
                         f"{mbps_fast:7.1f} MB/s ({100 * mbps_fast / ceiling:.0f}% of disk; "
                         f"agents+containerds used {cpu:.2f} of {os.cpu_count()} CPUs)"))
        print(results[-1], flush=True)
        _, moved = trio.run(agent_copy, env, src_fast.endpoint, "b2", img2.digest, img2.name)
        whole = sum(x.size for x in img2.blobs)
        results.append(("dedupe: second image (shares 3 of 4 layers)",
                        f"{moved} of {whole} bytes moved"))
        print(results[-1], flush=True)
        after = disk_ceiling(base, size)
        results.append(("disk write ceiling again, after the transfers", f"{after:7.1f} MB/s"))
        print(results[-1], flush=True)
        results.append(("load average at the end", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    finally:
        group.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    print("\n| measurement | result |\n|---|---|")
    for k, v in results:
        print(f"| {k} | {v.strip()} |")


if __name__ == "__main__":
    main()
