"""Benchmark: a 1 GiB image (4 layers) from node A to node B through two tote agents with
mTLS, API path and fast path, next to baselines measured in the same run:

* disk ceiling: 1 GiB written with fsync to the same filesystem as the content stores;
* one-process containerd → containerd copy through the content API (no agents, no TLS);
* dedupe: bytes moved for a second image that shares 3 of its 4 layers;
* snapshot salvage: the same image from a source that discarded its layer blobs after
  unpacking (containerd `discard_unpacked_layers`, as on EKS) — each layer regenerated from
  its snapshot by the source's containerd diff service — next to the blob path between the
  same two CRI nodes (both unpack into the target's snapshotter while the bytes arrive).

Each agent transfer is also charged its CPU time: user+system seconds of the four processes
that do the work (source agent, target agent, both containerds; from /proc/<pid>/stat before
and after), per GiB moved (2^30 bytes), with the share of each process.

Run: `TOTE_CONTAINERD_VERSION=v2.4.2 python tests/bench/bench_transfer.py [--size-mib 1024]`
(root; the pinned containerd built by tests/cluster/build-containerd.sh, or `system`).
`--profile DIR` records, during the fast-path transfer, `perf record -g` of all four processes
and py-spy profiles (collapsed stacks of on-CPU Python samples) of both agents into DIR; the CPU
figures of a profiled run include the profilers' overhead. `--parallelism N` sets the blob
streams per import (default: the agent's, 4). Prints MB/s (10^6 bytes/s).
Not a timed test.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

import trio  # noqa: E402

from tests.cluster import versions  # noqa: E402
from tests.cluster.containerd_env import Env, containerd_env  # noqa: E402
from tests.cluster.images import CACHE, Image, layered_image  # noqa: E402
from tests.cluster.procs import Proc, ProcessGroup, cpu_seconds  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB


class CpuMeter:
    """CPU seconds spent by named processes between `start()` and `stop()`."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = procs
        self._t0: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = {n: cpu_seconds(p, children=True) for n, p in self.procs.items()}

    def stop(self) -> None:
        self.used = {n: cpu_seconds(p, children=True) - self._t0[n] for n, p in self.procs.items()}

    def per_gib(self, nbytes: int) -> str:
        gib = nbytes / GiB
        total = sum(self.used.values()) / gib
        parts = ", ".join(f"{n} {v / gib:.2f}" for n, v in self.used.items())
        return f"{total:.2f} CPU-s/GiB ({parts})"


def disk_ceiling(d: Path, size: int, *, direct: bool = False) -> float:
    """MB/s writing `size` random bytes in 4 MiB pieces and fsync: through the page cache,
    or with O_DIRECT (how the fast path's target writes blob files)."""
    buf = mmap.mmap(-1, 4 * MiB)  # page aligned, as O_DIRECT needs
    buf.write(os.urandom(4 * MiB))
    p = d / "disk-ceiling.bin"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0))
    t = time.monotonic()
    try:
        left = size
        while left:
            left -= os.write(fd, memoryview(buf)[:min(left, len(buf))])
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.monotonic() - t
    p.unlink()
    return size / dt / 1e6


async def api_copy(src_sock: str, dst_sock: str, blobs: list[tuple[str, int]]) -> float:
    from tote_containerd.agent.asyncio_bridge import open_bridge
    from tote_containerd.agent.containerd import ContainerdClient

    async with open_bridge() as bridge:
        a = ContainerdClient(bridge, src_sock)
        b = ContainerdClient(bridge, dst_sock)
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


def profile(group: ProcessGroup, out: Path, procs: dict[str, int]) -> list[Proc]:
    """While the fast-path transfer runs: `perf record` of every process (user + kernel
    time by library and symbol) when perf is installed, and py-spy (from this venv) of the
    agents (Python call sites of on-CPU samples; time in C shows at the calling line)."""
    spy = Path(sys.executable).parent / "py-spy"
    out.mkdir(parents=True, exist_ok=True)
    started = []
    for n, pid in procs.items():
        if shutil.which("perf"):
            started.append(group.start(f"perf-{n}", ["perf", "record", "-F", "499", "-g",
                                                     "-o", str(out / f"{n}.perf"),
                                                     "-p", str(pid)]))
        if n.startswith("agent") and spy.exists():
            started.append(group.start(f"py-spy-{n}", [
                str(spy), "record", "--nonblocking", "--rate", "200",
                "--format", "raw", "-o", str(out / f"{n}.txt"), "-p", str(pid)]))
    time.sleep(3)  # attached before the transfer starts
    return started


async def agent_copy(env: Env, src_ep: str, target: str, digest: str, name: str,
                     parallelism: int = 0, source: str = "a") -> tuple[float, int]:
    from tote_containerd.agent.api import ImportRequest
    from tote_containerd.agent.tokens import Signer

    ctl = env.pki.controller
    token = Signer(ctl.cert, ctl.key).mint(digest=digest, source=source, target=target,
                                           ttl=60)
    t = time.monotonic()
    async with env.open_agent(target) as agent:
        done = await agent.import_from(ImportRequest(
            source_node=source, source_endpoint=src_ep, token=token, digest=digest,
            names=[name], parallelism=parallelism))
    dt = time.monotonic() - t
    if done.layers_regenerated:
        print(f"  mode {done.mode}: {done.layers_regenerated} layers regenerated, "
              f"{done.layers_verified} of them hash to their diff IDs", flush=True)
    return done.bytes_total / dt / 1e6, done.bytes_total


def snapshot_rows(env: Env, group: ProcessGroup, base: Path, img: Image, archive: Path,
                  parallelism: int) -> list[tuple[str, str]]:
    """Blob path and snapshot path between CRI nodes, the same image, one run."""
    rows = []
    for n, discard in (("s", True), ("c1", False), ("c2", False)):
        env.add_node(n, cri=True, discard_layers=discard)
    s = env.nodes["s"]
    print("importing (and unpacking) into node s ...", flush=True)
    s.ctr("images", "import", "--snapshotter", "overlayfs", str(archive))
    src = env.agent("s", name="agent-s")
    env.agents["c1"] = env.agent("c1")
    env.agents["c2"] = env.agent("c2")
    runs = {}
    for target, mode in (("c1", "blob path"), ("c2", "snapshot salvage")):
        if target == "c2":  # now s holds the image as a discarding node does
            for layer in img.layers["linux/amd64"]:
                s.delete_blob(layer.digest)
        meter = CpuMeter({"agent-src": src.proc.pid, "agent-dst": env.agents[target].proc.pid,
                          "ctd-src": s.proc.pid, "ctd-dst": env.nodes[target].proc.pid})
        meter.start()
        mbps, moved = trio.run(agent_copy, env, src.endpoint, target, img.digest, img.name,
                               parallelism, "s")
        meter.stop()
        runs[mode] = mbps
        rows.append((f"CRI nodes, fast path, unpacked on arrival: {mode}",
                     f"{mbps:7.1f} MB/s; {meter.per_gib(moved)}"))
        print(rows[-1], flush=True)
    rows.append(("snapshot salvage / blob path",
                 f"{100 * runs['snapshot salvage'] / runs['blob path']:.0f}%"))
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--profile", type=Path, default=None,
                    help="directory for py-spy profiles of the fast-path agents")
    ap.add_argument("--parallelism", type=int, default=0,
                    help="blob streams per import (0: the agent's default, 4)")
    args = ap.parse_args()
    ctd = versions.use_containerd()
    if ctd is None:
        sys.exit(f"containerd {versions.pin('CONTAINERD_VERSION')} is not built "
                 "(bash tests/cluster/build-containerd.sh)")
    ctd_version = subprocess.run(["containerd", "--version"], capture_output=True,
                                 text=True).stdout.split()[2]
    print(f"containerd {ctd_version} from {ctd}", flush=True)
    size = args.size_mib * MiB
    layer = size // 4
    spool = CACHE / "bench"
    print(f"building image: 4 x {layer // MiB} MiB (cached in {spool}) ...", flush=True)
    img = layered_image("docker.io/tote/bench:v1", [layer] * 4, seed=501, spool_dir=spool)
    shared = img.layers["linux/amd64"][:3]
    img2 = layered_image("docker.io/tote/bench:v2", [64 * MiB], seed=502, spool_dir=spool,
                         extra_layers=shared)

    results: list[tuple[str, str]] = []
    with containerd_env("tote-bench-", ("a", "b1", "b2", "b3"), agents={},
                        base_dir=os.environ.get("TOTE_BENCH_DIR")) as env:
        base, group = env.base, env.group
        a = env.nodes["a"]
        print("importing into node a ...", flush=True)
        archive = img.write_archive(base / "img.tar")
        a.import_archive(archive)
        a.import_archive(img2.write_archive(base / "img2.tar"))
        (base / "img2.tar").unlink()
        print(f"load average: {os.getloadavg()}", flush=True)

        ceiling = disk_ceiling(base, size)
        results.append((f"disk write ceiling ({args.size_mib} MiB, page cache + fsync)",
                        f"{ceiling:7.1f} MB/s"))
        print(results[-1], flush=True)
        direct = disk_ceiling(base, size, direct=True)
        results.append((f"disk write ceiling ({args.size_mib} MiB, O_DIRECT + fsync)",
                        f"{direct:7.1f} MB/s"))
        print(results[-1], flush=True)

        blobs = [(x.digest, x.size) for x in img.blobs]
        api = trio.run(api_copy, a.socket, env.nodes["b3"].socket, blobs)
        results.append(("containerd→containerd, one process, API", f"{api:7.1f} MB/s"))
        print(results[-1], flush=True)

        src_api = env.agent("a", "--no-fast-path", name="agent-a-api")
        src_fast = env.agent("a", name="agent-a-fast")
        env.agents["b1"] = env.agent("b1", "--no-fast-path")
        env.agents["b2"] = env.agent("b2")

        meter = CpuMeter({"agent-src": src_api.proc.pid, "agent-dst": env.agents["b1"].proc.pid,
                          "ctd-src": a.proc.pid, "ctd-dst": env.nodes["b1"].proc.pid})
        meter.start()
        mbps, moved = trio.run(agent_copy, env, src_api.endpoint, "b1", img.digest, img.name,
                               args.parallelism)
        meter.stop()
        results.append(("agents A→B, mTLS, API path",
                        f"{mbps:7.1f} MB/s; {meter.per_gib(moved)}"))
        print(results[-1], flush=True)
        fast_procs = {"agent-src": src_fast.proc.pid, "agent-dst": env.agents["b2"].proc.pid,
                      "ctd-src": a.proc.pid, "ctd-dst": env.nodes["b2"].proc.pid}
        spies = profile(group, args.profile, fast_procs) if args.profile else []
        meter = CpuMeter(fast_procs)
        meter.start()
        t0 = time.monotonic()
        mbps_fast, moved = trio.run(agent_copy, env, src_fast.endpoint, "b2", img.digest,
                                    img.name, args.parallelism)
        wall = time.monotonic() - t0
        meter.stop()
        for spy in spies:
            spy.stop(grace=60, sig=signal.SIGINT)  # both write their files on SIGINT
        results.append(("agents A→B, mTLS, fast path",
                        f"{mbps_fast:7.1f} MB/s ({100 * mbps_fast / ceiling:.0f}% / "
                        f"{100 * mbps_fast / direct:.0f}% of the two disk ceilings); "
                        f"{meter.per_gib(moved)}; "
                        f"{sum(meter.used.values()) / wall:.2f} of {os.cpu_count()} CPUs busy"))
        print(results[-1], flush=True)
        _, moved = trio.run(agent_copy, env, src_fast.endpoint, "b2", img2.digest, img2.name,
                             args.parallelism)
        whole = sum(x.size for x in img2.blobs)
        results.append(("dedupe: second image (shares 3 of 4 layers)",
                        f"{moved} of {whole} bytes moved"))
        print(results[-1], flush=True)
        results += snapshot_rows(env, group, base, img, archive, args.parallelism)
        archive.unlink()
        after = disk_ceiling(base, size)
        after_d = disk_ceiling(base, size, direct=True)
        results.append(("disk write ceilings again, after the transfers",
                        f"{after:7.1f} / {after_d:.1f} MB/s"))
        print(results[-1], flush=True)
        results.append(("load average at the end", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    print(f"\ncontainerd {ctd_version}, {args.size_mib} MiB image")
    print("| measurement | result |\n|---|---|")
    for k, v in results:
        print(f"| {k} | {v.strip()} |")


if __name__ == "__main__":
    main()
