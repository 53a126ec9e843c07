"""The client of an `ImportFrom` disappears mid-transfer; the same image is imported again at
once, and twice concurrently (salvage test 6: leader SIGKILLed mid-transfer, the standby
re-issues the import ~0.5 s later).

Regression: a cancelled import left the target agent's gRPC channel to the source agent open
(`AgentClient.close` awaited a cancelled checkpoint, so `Channel.close()` never ran). When the
channel was garbage-collected later, grpclib's `Channel.__del__` reported "Unclosed
connection" to the asyncio exception handler, and trio-asyncio's default handler re-raises
such reports inside the loop's nursery: the whole agent process died (`RuntimeError:
Unclosed connection: Channel(...)`) and the standby's import failed with "Connection lost",
then "Connect call failed" on every retry.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import urllib.request

import pytest
import trio
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agent.tokens import Signer

from tests.cluster.containerd_env import REPO, Env, Node
from tests.cluster.images import Image, layered_image

MiB = 1024 * 1024
pytestmark = pytest.mark.integration

ROUNDS = 4
LAYER = 256 * MiB

CHILD = textwrap.dedent("""
    import json, sys
    import trio
    from tote_core.settings import ControllerSettings
    from tote_containerd.agent.api import ImportRequest
    from tote_containerd.agents import open_agent
    from tote_containerd.discovery import AgentDiscovery

    args = json.loads(sys.argv[1])

    async def main():
        settings = ControllerSettings(**args["settings"])
        discovery = AgentDiscovery(endpoints=args["endpoints"])

        async def progress(p):
            print(json.dumps({"bytes": p.bytes_transferred, "resumed": p.bytes_resumed,
                              "phase": p.phase}), flush=True)

        async with open_agent(args["target"], settings, discovery=discovery) as agent:
            await agent.import_from(ImportRequest(**args["request"]), progress)
        print(json.dumps({"done": True}), flush=True)

    trio.run(main)
""")


def _request(env: Env, source: str, source_ep: str, target: str, img: Image,
             name: str) -> ImportRequest:
    token = Signer(env.pki.controller.cert, env.pki.controller.key).mint(
        digest=img.digest, source=source, target=target, ttl=60)
    return ImportRequest(source_node=source, source_endpoint=source_ep, token=token,
                         digest=img.digest, names=[name])


async def _import(env: Env, target: str, req: ImportRequest) -> ImportProgress:
    async with env.open_agent(target) as agent:
        return await agent.import_from(req)


async def _cancelled_import(env: Env, target: str, req: ImportRequest) -> int:
    """Import until some bytes moved, then cancel abruptly (stream reset, channel closed)."""
    moved = [0]
    with trio.CancelScope() as scope:
        async def progress(p: ImportProgress) -> None:
            if p.bytes_transferred > p.bytes_resumed:
                moved[0] = p.bytes_transferred
                scope.cancel()

        async with env.open_agent(target) as agent:
            await agent.import_from(req, progress)
    assert scope.cancelled_caught, "the import finished before it could be cancelled"
    return moved[0]


async def _killed_import(env: Env, target: str, req: ImportRequest) -> int:
    """The client is a process of its own, SIGKILLed (by PID) once some bytes moved: its
    HTTP/2 connection just drops, as when the controller leader dies."""
    c = env.pki.controller
    args = {"target": target,
            "settings": {"tls_cert": c.cert, "tls_key": c.key, "tls_ca": c.ca},
            "endpoints": {n: a.endpoint for n, a in env.agents.items()},
            "request": {"source_node": req.source_node, "source_endpoint": req.source_endpoint,
                        "token": req.token, "digest": req.digest, "names": req.names}}
    env_vars = {"PYTHONPATH": f"{REPO}:{REPO / 'plugins'}", "PATH": "/usr/bin:/bin"}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=env_vars, cwd=str(REPO))
    moved = 0
    try:
        assert proc.stdout is not None
        buf = b""
        with trio.fail_after(60):
            while not moved:
                data = await proc.stdout.receive_some()
                assert data, "the client ended before any bytes moved"
                buf += data
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    msg = json.loads(line)
                    assert not msg.get("done"), "the import finished before the client died"
                    if msg["bytes"] > msg["resumed"]:
                        moved = msg["bytes"]
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()
    return moved


def _healthy(env: Env, target: str) -> None:
    agent = env.agents[target]
    assert agent.proc.alive(), f"agent {target} died:\n{agent.proc.log_tail()}"
    body = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/healthz",
                                  timeout=5).read()
    assert body, "empty /healthz"


async def _health_rpc(env: Env, target: str) -> None:
    async with env.open_agent(target) as agent:
        h = await agent.health()
    assert h.containerd_ok, h


def _no_garbage(t: Node, img: Image) -> None:
    """After a successful import: no ingest, partial file or import lease of this image."""
    hexes = [b.digest.split(":")[1] for b in img.blobs]
    active = t.ctr("content", "active").stdout
    assert not [h for h in hexes if h in active], active
    parts = t.content_root / "tote-tmp"
    assert not [h for h in hexes if (parts / f"{h}.part").exists()]
    leases = t.ctr("leases", "ls").stdout
    assert f"tote-import-{img.digest.split(':')[1][:32]}" not in leases, leases


def _complete(t: Node, name: str) -> None:
    check = t.ctr("images", "check").stdout
    line = next(ln for ln in check.splitlines() if ln.startswith(name))
    assert "complete" in line and "incomplete" not in line, line


def _wipe(t: Node, img: Image) -> None:
    """Remove the image from the target entirely, so the next round transfers again."""
    for line in t.ctr("images", "ls").stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 2 and img.digest in cols:
            t.ctr("images", "rm", "--sync", cols[0], check=False)
    t.ctr("content", "rm", *[b.digest for b in img.blobs], check=False)
    for b in img.blobs:
        hexd = b.digest.split(":")[1]
        (t.content_root / "blobs" / "sha256" / hexd).unlink(missing_ok=True)
        (t.content_root / "tote-tmp" / f"{hexd}.part").unlink(missing_ok=True)


@pytest.mark.parametrize("target", ["b", "d"], ids=["api", "fast"])
async def test_client_lost_mid_import_then_reimport(env: Env, target: str) -> None:
    """Each round: an import is abandoned mid-transfer by its client (cancelled in-process,
    or the client process SIGKILLed), then at once two clients import the same digest to the
    same target concurrently. The agent stays up, both imports succeed, the image is complete,
    nothing is left over; a final Health after several rounds proves the agent survived the
    garbage-collected leftovers of the abandoned imports."""
    a, t = env.nodes["a"], env.nodes[target]
    fast = target == "d"
    name = f"127.0.0.1:5999/lost/app-{target}:v1"
    # Large enough that bytes are still moving at the agent's first progress report (every
    # 250 ms): on a fast disk the fast path moved 2 x 96 MiB before it (~900 MB/s).
    img = layered_image(name, [LAYER, LAYER], seed=601 + fast,
                        spool_dir=env.base / "spool")
    a.import_archive(img.write_archive(env.base / f"lost-{target}.tar"))
    source = "a"
    source_ep = env.extra["a-fast"].endpoint if fast else env.agents["a"].endpoint
    for rnd in range(ROUNDS):
        _wipe(t, img)
        first = _request(env, source, source_ep, target, img, name)
        if rnd % 2:
            moved = await _killed_import(env, target, first)
        else:
            moved = await _cancelled_import(env, target, first)
        assert 0 < moved < 2 * LAYER
        results: list[ImportProgress] = []

        async def again(out: list[ImportProgress]) -> None:
            req = _request(env, source, source_ep, target, img, name)
            out.append(await _import(env, target, req))

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(again, results)
                nursery.start_soon(again, results)
        assert [r.done for r in results] == [True, True], results
        assert {r.path for r in results} == {"fast" if fast else "api"}
        _healthy(env, target)
        await _health_rpc(env, target)
        assert name in t.image_names()
        _complete(t, name)
        _no_garbage(t, img)
    # Leftovers of abandoned imports are collected at some later point; the agent must
    # survive that too.
    for _ in range(20):
        await _health_rpc(env, target)
        await trio.sleep(0.1)
    _healthy(env, target)
    for ag in ("a-fast",) if fast else ("a",):
        proc = (env.extra.get(ag) or env.agents[ag]).proc
        assert proc.alive(), proc.log_tail()
