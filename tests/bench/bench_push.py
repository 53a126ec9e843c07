"""Benchmark P6: backup push of a 1 GiB image (4 layers) from a node's containerd through its
tote agent to a registry, next to `skopeo copy` of the same image to the same registry in the
same run (issue 10).

* tote: the controller identity calls the agent's Push RPC over mTLS; the agent (fast path:
  blob files read directly) streams the blobs to a local `docker-registry` (plain HTTP on
  loopback); the registry's storage is emptied before each push so every byte is uploaded;
* skopeo: `skopeo copy --preserve-digests oci:<layout dir> docker://127.0.0.1:PORT/...`
  from an OCI layout directory holding the same blobs, to the same (emptied) registry.

Rounds alternate tote, skopeo, tote, skopeo, so a load spike from other users of the machine
hits both. Prints MB/s (10^6 bytes/s) per run, the best of each and their ratio, and the RSS
growth (peak during the push minus before) of the agent and of this process, which plays the
controller (it only reads credentials and makes one RPC; no blob byte passes through it).

Run: `python tests/bench/bench_push.py [--size-mib 1024] [--rounds 2]` (root; containerd,
docker-registry and skopeo installed). Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

import trio  # noqa: E402

from tests.cluster.containerd_env import Env, containerd_env  # noqa: E402
from tests.cluster.images import CACHE, layered_image  # noqa: E402
from tests.cluster.procs import cpu_seconds  # noqa: E402
from tests.cluster.registry import start_registry  # noqa: E402

MiB = 1024 * 1024


def rss(pid: int) -> int:
    """Resident set size in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples the RSS of some processes every 20 ms while in the block."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before = {p: rss(p) for p in pids}
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for p in self.pids:
                self.peak[p] = max(self.peak[p], rss(p))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self, pid: int) -> float:
        return (self.peak[pid] - self.before[pid]) / MiB


async def tote_push(env: Env, url: str, digest: str, repo: str) -> tuple[float, int]:
    from tote_containerd.agent.api import PushRequest

    t = time.monotonic()
    async with env.open_agent("a", rpc_timeout=900) as agent:
        res = await agent.push(PushRequest(digest=digest, registry_url=url, repository=repo,
                                           tag="v1"), deadline=900)
    dt = time.monotonic() - t
    assert res.blobs_uploaded == res.blobs_total, res
    return res.bytes_uploaded / dt / 1e6, res.bytes_uploaded


def skopeo_copy(layout: Path, host: str, repo: str, size: int) -> float:
    t = time.monotonic()
    subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", f"oci:{layout}:v1",
                    f"docker://{host}/{repo}:v1", "--dest-tls-verify=false"],
                   check=True, capture_output=True, text=True, timeout=900)
    return size / (time.monotonic() - t) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    size = args.size_mib * MiB
    layer = size // 4
    spool = CACHE / "bench"
    print(f"building image: 4 x {layer // MiB} MiB (cached in {spool}) ...", flush=True)
    img = layered_image("docker.io/tote/bench:v1", [layer] * 4, seed=501, spool_dir=spool)
    moved = sum(b.size for b in img.blobs[1:])  # config + layers (the manifest is tiny)

    results: list[tuple[str, str]] = []
    reg = None
    with containerd_env("tote-bench-push-", ["a"], agents={},
                        base_dir=os.environ.get("TOTE_BENCH_DIR")) as env:
        base = env.base
        try:
            archive = img.write_archive(base / "img.tar")
            print("importing into node a; unpacking the OCI layout for skopeo ...", flush=True)
            env.nodes["a"].import_archive(archive)
            layout = base / "layout"
            with tarfile.open(archive) as tar:
                tar.extractall(layout, filter="data")
            archive.unlink()
            # skopeo's oci: transport finds images by the ref-name annotation ("v1").
            env.agents["a"] = env.agent("a")
            reg = start_registry(base / "registry")
            url = f"http://{reg.host}"
            print(f"load average before: {os.getloadavg()}", flush=True)
            agent_pid = env.agents["a"].proc.pid
            tote_runs: list[float] = []
            skopeo_runs: list[float] = []
            growth_agent: list[float] = []
            growth_self: list[float] = []
            cpu_agent: list[float] = []
            for r in range(args.rounds):
                reg.empty()
                cpu0 = cpu_seconds(agent_pid, children=True)
                with PeakRSS([agent_pid, os.getpid()]) as peak:
                    mbps, n = trio.run(tote_push, env, url, img.digest, f"tote/bench{r}")
                assert n == moved, (n, moved)
                tote_runs.append(mbps)
                cpu_agent.append(cpu_seconds(agent_pid, children=True) - cpu0)
                growth_agent.append(peak.growth(agent_pid))
                growth_self.append(peak.growth(os.getpid()))
                print(f"round {r + 1}: tote push {mbps:7.1f} MB/s (agent RSS +"
                      f"{growth_agent[-1]:.1f} MiB, CPU {cpu_agent[-1]:.1f} s; controller RSS +"
                      f"{growth_self[-1]:.1f} MiB)", flush=True)
                reg.empty()
                mbps = skopeo_copy(layout, reg.host, f"skopeo/bench{r}", moved)
                skopeo_runs.append(mbps)
                print(f"round {r + 1}: skopeo copy {mbps:7.1f} MB/s", flush=True)
            best_t, best_s = max(tote_runs), max(skopeo_runs)
            results += [
                ("image", f"{args.size_mib} MiB, 4 layers, {moved} bytes uploaded per push"),
                ("tote push (agent, fast path) MB/s per round",
                 ", ".join(f"{x:.1f}" for x in tote_runs)),
                ("skopeo copy (oci layout → registry) MB/s per round",
                 ", ".join(f"{x:.1f}" for x in skopeo_runs)),
                ("best tote / best skopeo", f"{best_t:.1f} / {best_s:.1f} = "
                                            f"{100 * best_t / best_s:.0f} %"),
                ("agent RSS growth during push (max)", f"{max(growth_agent):.1f} MiB"),
                ("controller (this process) RSS growth (max)", f"{max(growth_self):.1f} MiB"),
                ("agent CPU seconds per push", ", ".join(f"{x:.1f}" for x in cpu_agent)),
                ("load average at the end", " ".join(f"{x:.2f}" for x in os.getloadavg())),
            ]
        finally:
            if reg is not None and reg.procs is not None:
                reg.procs.stop_all()

    print("\n| measurement | result |\n|---|---|")
    for k, v in results:
        print(f"| {k} | {v.strip()} |")


if __name__ == "__main__":
    main()
