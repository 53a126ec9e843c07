"""Imports while the controller's inventory calls hammer the same agents (salvage test 8).

Regression: an `ImportFrom` of an image whose manifest (or index) is already in the target's
content store re-commits it with its GC labels. containerd answers the Write stream's STAT
with ALREADY_EXISTS as a trailers-only response and, because the client has not half-closed
the stream yet, follows it with RST_STREAM(NO_ERROR) in the same write. When both frames
arrive in one socket read grpclib marks the stream terminated before the waiting task picks
up the headers, so the agent reported "containerd unreachable: Stream reset by remote party,
error_code: 0" for an import that had nothing left to do. The controller saw a failure and
retried 30 s later. (The parallel calls are what the controller does meanwhile; the re-import
alone already failed every time.)
"""

from __future__ import annotations

import contextlib

import pytest
import trio
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agent.errors import AgentError
from tote_containerd.agent.tokens import Signer

from tests.cluster.containerd_env import Env
from tests.cluster.images import layered_image

MiB = 1024 * 1024
pytestmark = pytest.mark.integration

ROUNDS = 12


async def _import(env: Env, source: str, target: str, digest: str, names: list[str]
                  ) -> ImportProgress:
    token = Signer(env.pki.controller.cert, env.pki.controller.key).mint(
        digest=digest, source=source, target=target, ttl=60)
    async with env.open_agent(target) as agent:
        return await agent.import_from(ImportRequest(
            source_node=source, source_endpoint=env.agents[source].endpoint,
            token=token, digest=digest, names=names))


async def _hammer(env: Env, node: str, ref: str, digest: str, stop: trio.Event,
                  calls: list[int]) -> None:
    """What `inventory.find_image` does, in a loop: ListImages, ResolveTag, Inspect."""
    async with env.open_agent(node) as agent:
        while not stop.is_set():
            await agent.list_images()
            await agent.list_images(digest)
            await agent.resolve_tag(ref)
            with contextlib.suppress(AgentError):  # absent on the target at first: fine
                await agent.inspect(digest)
            calls[0] += 1
            await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("target", ["b", "d"], ids=["api", "fast"])
async def test_reimport_under_concurrent_inventory_calls(env: Env, target: str) -> None:
    """An image imported, then imported again and again (all blobs present), while
    ListImages / ResolveTag / Inspect run in parallel against source and target: every
    import reports success and the image stays complete."""
    a = env.nodes["a"]
    img = layered_image(f"127.0.0.1:5999/shop/again-{target}:v1", [1 * MiB, 64 * 1024],
                        seed=301 + (target == "d"))
    a.import_archive(img.write_archive(env.base / f"again-{target}.tar"))
    ref = f"127.0.0.1:5999/shop/again-{target}@{img.digest}"
    calls = [0]
    failures: list[str] = []
    results: list[ImportProgress] = []
    stop = trio.Event()

    async def importer() -> None:
        try:
            for _ in range(ROUNDS):
                try:
                    results.append(await _import(env, "a", target, img.digest, [ref]))
                except Exception as exc:  # collect: the assertion below shows them all
                    failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            stop.set()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for node in ("a", target):
                for _ in range(3):
                    nursery.start_soon(_hammer, env, node, ref, img.digest, stop, calls)
            nursery.start_soon(importer)
    print(f"re-import: {len(results)} ok, {len(failures)} failed, "
          f"{calls[0]} inventory rounds in parallel")
    assert not failures, failures
    assert len(results) == ROUNDS
    assert results[0].bytes_total == sum(x.size for x in img.blobs)
    assert all(r.done and r.bytes_total == 0 for r in results[1:])
    async with env.open_agent(target) as agent:
        res = await agent.inspect(ref)
    assert res.complete, res.reason
    env.nodes[target].ctr("images", "check")


async def test_find_image_skips_nodes_with_discarded_layers(env: Env) -> None:
    """The inventory hook counts a node only if its content is complete: a record whose
    layers were discarded after unpack is not a holder (ListImages alone would say it is)."""
    from tote_containerd.inventory import Inventory

    a, c = env.nodes["a"], env.nodes["c"]
    img = layered_image("docker.io/tote/inv-discarded:v1", [256 * 1024, 128 * 1024], seed=311)
    archive = img.write_archive(env.base / "inv-discarded.tar")
    a.import_archive(archive)
    c.import_archive(archive)
    for layer in img.layers["linux/amd64"]:
        c.ctr("content", "rm", layer.digest)
    inventory = Inventory(env.client_agents())
    async with env.open_agent("c") as agent:
        assert [r.digest for r in await agent.list_images(img.digest)] == [img.digest]
    found = await inventory.find_image(img.digest, ["a", "b", "c"])
    assert found == ["a"]
