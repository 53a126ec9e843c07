"""Transfers between real containerd instances through real agents (issue 3).

(1) copy + run + three CRI names, (2) dedupe, (3) resume after the source dies mid-blob,
(4) corrupt source bytes rejected, (5) multi-arch with one platform on the source,
(6) discarded layers, (7) GC during a transfer, (9) bad input. mTLS negatives (8) live in
test_containerd_security.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agent.errors import AgentError, DataLoss, InvalidArgument
from tote_containerd.agent.tokens import Signer
from tote_containerd.transfer import run_transfer

from tests.cluster.containerd_env import Env
from tests.cluster.images import layered_image, multiarch_image, runnable_image
from tests.cluster.prom import scrape_total
from tote_core.errors import PermanentError
from tote_core.hooks.types import TransferProgress, TransferRequest

MiB = 1024 * 1024
pytestmark = pytest.mark.integration


def _signer(env: Env) -> Signer:
    c = env.pki.controller
    return Signer(c.cert, c.key)


async def _import(env: Env, source: str, target: str, digest: str, names: list[str], *,
                  source_ep: str | None = None, progress: Any = None,
                  max_bytes: int = 0) -> ImportProgress:
    token = _signer(env).mint(digest=digest, source=source, target=target, ttl=60)
    async with env.open_agent(target) as agent:
        return await agent.import_from(ImportRequest(
            source_node=source, source_endpoint=source_ep or env.agents[source].endpoint,
            token=token, digest=digest, names=names, max_bytes=max_bytes), progress)


def _metric(env: Env, node: str, name: str) -> float:
    agent = env.agents[node] if node in env.agents else env.extra[node]
    return scrape_total(agent.metrics_port, name)


async def test_copy_runs_and_has_three_cri_names(env: Env) -> None:
    """(1) multi-layer image A→B through the plugin; runs on B; all three names, managed."""
    a, b = env.nodes["a"], env.nodes["b"]
    img = runnable_image("docker.io/tote/app:v1", [3 * MiB, 2 * MiB, 1 * MiB])
    a.import_archive(img.write_archive(env.base / "app.tar"))
    # A stale record for the pod's ref must be updated, not ignored.
    stale = layered_image("docker.io/tote/stale:v0", [1000], seed=99)
    b.import_archive(stale.write_archive(env.base / "stale.tar"))
    b.ctr("images", "tag", "docker.io/tote/stale:v0", "docker.io/tote/app:v1")

    seen: list[TransferProgress] = []

    async def progress(p: TransferProgress) -> None:
        seen.append(p)

    result = await run_transfer(
        TransferRequest(image_ref="docker.io/tote/app:v1", digest=img.digest,
                        source_node="a", target_node="b"),
        progress, env.client_agents())
    assert result.bytes_total == sum(x.size for x in img.blobs)
    assert seen and seen[-1].bytes_transferred == result.bytes_total

    cfg = img.configs["linux/amd64"].digest
    expected = {"docker.io/tote/app:v1", f"docker.io/tote/app@{img.digest}", cfg}
    listing = b.ctr("images", "ls").stdout
    for name in expected:
        line = next(ln for ln in listing.splitlines() if ln.startswith(name + " "))
        assert img.digest in line, line
        assert "io.cri-containerd.image=managed" in line, line
    b.ctr("images", "check")
    run = b.ctr("run", "--rm", "--snapshotter", "native", "--env", "TOTE_MARKER=salvaged-ok",
                "docker.io/tote/app:v1", "t-app")
    assert run.stdout.strip() == "salvaged-ok"
    # Parent → children GC labels on the manifest.
    info = b.ctr("content", "ls").stdout
    assert f"containerd.io/gc.ref.content.config={cfg}" in info


async def test_dedupe_moves_only_new_bytes(env: Env) -> None:
    """(2) a second image sharing base layers moves only the new layer + manifest/config."""
    a = env.nodes["a"]
    base_img = layered_image("docker.io/tote/base:v1", [4 * MiB, 3 * MiB], seed=21)
    shared = base_img.layers["linux/amd64"]
    top = layered_image("docker.io/tote/derived:v1", [2 * MiB], seed=22, extra_layers=shared)
    a.import_archive(base_img.write_archive(env.base / "base.tar"))
    a.import_archive(top.write_archive(env.base / "derived.tar"))
    before = _metric(env, "b", "tote_agent_bytes_received_total")
    first = await _import(env, "a", "b", base_img.digest, ["docker.io/tote/base:v1"])
    assert first.blobs_skipped == 0
    second = await _import(env, "a", "b", top.digest, ["docker.io/tote/derived:v1"])
    new_layer = top.layers["linux/amd64"][-1]
    expected_bytes = new_layer.size + top.configs["linux/amd64"].size + top.top.size
    assert second.blobs_skipped == len(shared)
    assert second.bytes_total == expected_bytes
    moved = _metric(env, "b", "tote_agent_bytes_received_total") - before
    assert moved == first.bytes_total + expected_bytes
    print(f"dedupe: second image moved {expected_bytes} bytes of "
          f"{sum(x.size for x in top.blobs)}")


@pytest.mark.parametrize("target", ["b", "d"], ids=["api", "fast"])
async def test_resume_after_source_killed_mid_blob(env: Env, target: str) -> None:
    """(3) source agent SIGKILLed mid-blob; nothing visible on the target; the retry resumes
    from the committed offset (API: containerd's ingest; fast path: the verified-so-far
    partial file, re-hashed)."""
    a, t = env.nodes["a"], env.nodes[target]
    fast = target == "d"
    size = 320 * MiB if fast else 160 * MiB
    name = f"docker.io/tote/big-{target}:v1"
    img = layered_image(name, [size], seed=31 + fast, spool_dir=env.base / "spool")
    a.import_archive(img.write_archive(env.base / f"big-{target}.tar"))
    flags = () if fast else ("--no-fast-path",)
    src = env.agent("a", *flags, name=f"agent-a-resume-{target}")
    killed = trio.Event()

    async def progress(p: ImportProgress) -> None:
        if p.bytes_transferred >= 24 * MiB and not killed.is_set():
            src.proc.kill()
            killed.set()

    with pytest.raises(AgentError):
        await _import(env, "a", target, img.digest, [name], source_ep=src.endpoint,
                      progress=progress)
    assert killed.is_set(), "the transfer finished before the source could be killed"
    assert not [n for n in t.image_names() if "tote/big" in n or img.digest in n]
    layer = img.layers["linux/amd64"][0]
    hexd = layer.digest.split(":")[1]
    assert not t.blob_present(layer.digest)
    if fast:
        part = t.content_root / "tote-tmp" / f"{hexd}.part"
        assert 0 < part.stat().st_size < layer.size
    else:
        assert "tote-" + hexd in t.ctr("content", "active").stdout

    src2 = env.agent("a", *flags, name=f"agent-a-resume2-{target}")
    try:
        done = await _import(env, "a", target, img.digest, [name], source_ep=src2.endpoint)
    finally:
        src2.proc.stop()
    assert done.path == ("fast" if fast else "api")
    assert done.bytes_resumed >= 16 * MiB, done
    assert done.bytes_resumed < layer.size
    assert name in t.image_names()
    t.ctr("images", "check")


@pytest.mark.parametrize("target", ["b", "d"], ids=["api", "fast"])
async def test_corrupt_source_bytes_rejected(env: Env, target: str) -> None:
    """(4) a source serving flipped bytes: rejected, nothing committed, clear error."""
    c, t = env.nodes["c"], env.nodes[target]
    img = layered_image(f"docker.io/tote/evil-{target}:v1", [2 * MiB, 1 * MiB],
                        seed=41 + ord(target))
    c.import_archive(img.write_archive(env.base / f"evil-{target}.tar"))
    layer = img.layers["linux/amd64"][0]
    blob = c.content_root / "blobs" / "sha256" / layer.digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    source_ep = env.extra["c-fast"].endpoint if target == "d" else None
    with pytest.raises(DataLoss) as err:
        await _import(env, "c", target, img.digest, [img.name], source_ep=source_ep)
    assert "do not match the digest" in str(err.value)
    assert err.value.reason == "digest_mismatch"
    assert not [n for n in t.image_names() if "evil" in n or img.digest in n]
    assert not t.blob_present(layer.digest)
    assert "tote-" + layer.digest.split(":")[1] not in t.ctr("content", "active").stdout
    # Fast path: the rejected bytes are not kept (other blobs' partial files may stay for
    # resume; they are swept after the import lease's lifetime).
    assert not (t.content_root / "tote-tmp" / (layer.digest.split(":")[1] + ".part")).exists()


async def test_multiarch_source_holds_one_platform(env: Env) -> None:
    """(5) index with amd64+arm64; the source holds only amd64: index + amd64 chain move."""
    a, b = env.nodes["a"], env.nodes["b"]
    img = multiarch_image("docker.io/tote/multi:v1", [1 * MiB, 512 * 1024])
    a.import_archive(img.write_archive(env.base / "multi.tar"))
    arm = img.manifests["linux/arm64"]
    # Like a node that pulled the index: only its own platform's chain is present.
    for blob in [arm, img.configs["linux/arm64"], *img.layers["linux/arm64"]]:
        a.ctr("content", "rm", blob.digest, check=False)
    assert a.blob_present(img.digest) and not a.blob_present(arm.digest)
    result = await run_transfer(
        TransferRequest(image_ref="docker.io/tote/multi:v1", digest=img.digest,
                        source_node="a", target_node="b"),
        _noop, env.client_agents())
    assert result.bytes_total > 0
    assert "docker.io/tote/multi:v1" in b.image_names()
    assert b.blob_present(img.manifests["linux/amd64"].digest)
    assert not b.blob_present(arm.digest)
    async with env.open_agent("b") as agent:
        info = await agent.inspect("docker.io/tote/multi:v1")
    assert info.complete and [x.role for x in info.blobs][:2] == ["index", "manifest"]
    assert "containerd.io/gc.ref.content.m.0=" + img.manifests["linux/amd64"].digest \
        in b.ctr("content", "ls").stdout


async def _noop(p: TransferProgress) -> None:
    return None


async def test_discarded_layers_not_salvageable(env: Env) -> None:
    """(6) layer blobs deleted after unpack: Inspect says so; the plugin fails permanently."""
    c = env.nodes["c"]
    img = layered_image("docker.io/tote/discarded:v1", [1 * MiB, 1 * MiB], seed=61)
    c.import_archive(img.write_archive(env.base / "discarded.tar"))
    for layer in img.layers["linux/amd64"]:
        c.ctr("content", "rm", layer.digest)
    async with env.open_agent("c") as agent:
        info = await agent.inspect("docker.io/tote/discarded:v1")
    assert not info.complete and info.layers_discarded
    assert "discard_unpacked_layers" in info.reason
    with pytest.raises(PermanentError) as err:
        await run_transfer(TransferRequest(image_ref=img.name, digest=img.digest,
                                           source_node="c", target_node="b"),
                           _noop, env.client_agents())
    assert err.value.reason == "layers_discarded"


@pytest.mark.parametrize("target", ["b", "d"], ids=["api", "fast"])
async def test_gc_during_transfer_deletes_nothing_in_flight(env: Env, target: str) -> None:
    """(7) containerd GC runs repeatedly during a transfer; every blob survives."""
    a, t = env.nodes["a"], env.nodes[target]
    img = layered_image(f"docker.io/tote/gc-{target}:v1", [24 * MiB, 24 * MiB, 8 * MiB],
                        seed=71 + ord(target))
    a.import_archive(img.write_archive(env.base / f"gc-{target}.tar"))
    dummy = layered_image("docker.io/tote/gc-dummy:v1", [1000], seed=79)
    archive = dummy.write_archive(env.base / "gc-dummy.tar")
    finished = trio.Event()
    runs = 0

    async def gc_loop() -> None:
        nonlocal runs
        while not finished.is_set():
            await trio.to_thread.run_sync(lambda: t.import_archive(archive))
            # Synchronous delete = a full GC pass before returning.
            await trio.to_thread.run_sync(lambda: t.ctr(
                "images", "rm", "--sync", "docker.io/tote/gc-dummy:v1", check=False))
            runs += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gc_loop)
        try:
            source_ep = env.extra["a-fast"].endpoint if target == "d" else None
            done = await _import(env, "a", target, img.digest, [img.name],
                                 source_ep=source_ep)
        finally:
            finished.set()
    assert done.path == ("fast" if target == "d" else "api")
    if target == "d":  # bulk bytes went over the data channel, read from the blob files
        assert _metric(env, "a-fast", 'tote_agent_bytes_sent_total{path="fast"}') >= 56 * MiB
    assert runs >= 1
    t.ctr("images", "rm", "--sync", "docker.io/tote/gc-dummy:v1", check=False)  # one more GC
    for blob in img.blobs:
        assert t.blob_present(blob.digest), blob
    t.ctr("images", "check")


async def test_bad_input_is_refused_and_agent_stays_up(env: Env) -> None:
    """(9) malformed digests, refs, ranges: clear errors; the agent keeps serving."""
    async with env.open_agent("b") as agent:
        for ref in ["", "not a ref", "sha256:xyz", "sha512:" + "a" * 128, "UPPER/Case:tag",
                    "docker.io/x@sha256:" + "g" * 64]:
            with pytest.raises(InvalidArgument):
                await agent.inspect(ref)
        with pytest.raises(InvalidArgument):
            await agent.inspect("docker.io/library/x:1", platform="linux")
        with pytest.raises(InvalidArgument):
            await agent.list_images(digest="sha256:short")
        with pytest.raises(InvalidArgument):
            await agent.remove_image(names=["::bad::"])
        with pytest.raises(InvalidArgument):
            await agent.import_from(ImportRequest(
                source_node="a", source_endpoint="nowhere", token="x",
                digest="sha256:" + "0" * 64, names=[]))
        with pytest.raises(InvalidArgument):
            await agent.import_from(ImportRequest(
                source_node="a", source_endpoint=env.agents["a"].endpoint, token="x",
                digest="md5:abc", names=[]))
        assert (await agent.health()).containerd_ok
    # Ranges on ReadBlob (agent identity, valid session).
    a = env.nodes["a"]
    img = layered_image("docker.io/tote/ranges:v1", [300 * 1024], seed=91)
    a.import_archive(img.write_archive(env.base / "ranges.tar"))
    layer = img.layers["linux/amd64"][0]
    from tote_containerd.agent.client import AgentClient
    from tote_containerd.agent.tls import client_context
    ag = env.pki.agent
    ctx = client_context(ag.cert, ag.key, ag.ca)
    token = _signer(env).mint(digest=img.digest, source="a", target="b", ttl=60)
    async with AgentClient.connect(env.agents["a"].endpoint, ssl_context=ctx) as peer:
        sess = await peer.open_session(token, "b")
        for off, length in [(-1, 0), (0, -5), (layer.size + 1, 0)]:
            with pytest.raises(InvalidArgument):
                async with peer.read_blob(sess.session, layer.digest, off, length) as chunks:
                    async for _ in chunks:
                        pass
        got = b""
        async with peer.read_blob(sess.session, layer.digest, 100, 1000) as chunks:
            async for _off, data, total in chunks:
                assert total == layer.size
                got += data
        assert len(got) == 1000
    assert env.agents["a"].proc.alive() and env.agents["b"].proc.alive()
