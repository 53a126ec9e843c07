"""Inventory hooks answered by the agents: who holds a digest, what a tag points to, and
removal of stale image records.

`find_image` counts a node only when it has an image record for the digest *and* `Inspect`
finds the whole chain for its platform present (records of images whose layers were
discarded after unpack do not count).

Fan-outs run in parallel with a per-agent deadline; a dead or unknown agent only removes its
node from the answer (logged at debug level: per-reconcile chatter). Answers are cached for
a few seconds so a burst of failing pods costs one round of RPCs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from tote_core.errors import ToteError
from tote_core.hooks.hookspecs import hookimpl

log = logging.getLogger("tote.plugin.containerd.inventory")

PER_AGENT_TIMEOUT = 4.0
CACHE_TTL = 10.0
T = TypeVar("T")

_cache: dict[tuple[str, str], tuple[float, Any]] = {}


def _cached(kind: str, key: str) -> tuple[bool, Any]:
    hit = _cache.get((kind, key))
    if hit is not None and trio.current_time() - hit[0] < CACHE_TTL:
        return True, hit[1]
    return False, None


def _store(kind: str, key: str, value: Any) -> None:
    if len(_cache) > 4096:
        _cache.clear()
    _cache[(kind, key)] = (trio.current_time(), value)


def invalidate() -> None:
    """Forget cached answers (after a transfer changed what a node holds)."""
    _cache.clear()


async def _ask_all(
    nodes: list[str], call: Callable[[Any], Awaitable[T]]
) -> dict[str, T]:
    """Run `call(agent_client)` on every node's agent in parallel; collect successes."""
    from tote_containerd import plugin

    answers: dict[str, T] = {}
    # Only nodes with a known agent: a task per node that fails at once still cost ~0.1 ms
    # each, 50-300 ms of event loop per 500-node fan-out (issue 12's residual tail).
    known = plugin.agent_endpoints(plugin._state.settings, plugin._state.cache)
    skipped = [n for n in nodes if n not in known]
    if skipped:
        log.debug("no agent known on %d of %d nodes (e.g. %s)", len(skipped), len(nodes),
                  skipped[0])

    async def one(node: str) -> None:
        try:
            with trio.fail_after(PER_AGENT_TIMEOUT):
                async with plugin.open_agent(node, rpc_timeout=PER_AGENT_TIMEOUT) as agent:
                    answers[node] = await call(agent)
        except (ToteError, trio.TooSlowError, OSError) as exc:
            log.debug("agent on %s: %s", node, exc)
        except Exception as exc:  # an agent bug must not fail the reconcile
            log.debug("agent on %s failed: %s: %s", node, type(exc).__name__, exc)

    from tote_containerd.agent.client import ensure_loop

    async with ensure_loop(), trio.open_nursery() as nursery:
        for node in nodes:
            if node in known:
                nursery.start_soon(one, node)
    return answers


def _has_agents() -> bool:
    from tote_containerd import plugin

    return plugin._state.settings is not None


@hookimpl
async def find_image(digest: str, nodes: list[str]) -> list[str] | None:
    if not _has_agents():
        return None
    hit, value = _cached("find", digest)
    if hit:
        return list(value)

    async def holds(agent: Any) -> bool:
        records = await agent.list_images(digest)
        if not any(r.digest == digest for r in records):
            return False
        # A record is not the image: containerd keeps records whose layers were discarded
        # after unpack (discard_unpacked_layers) or whose blobs are gone. Such a node can
        # neither serve the image nor is it done as a target. Inspect for the node's own
        # platform (what it runs and what a salvage would have put there).
        from tote_containerd.agent.errors import NotFound

        try:
            info = await agent.inspect(digest)
        except NotFound:
            return False
        if not info.complete:
            log.debug("%s on a node is incomplete: %s", digest, info.reason)
        return bool(info.complete)

    answers = await _ask_all(nodes, holds)
    found = sorted(n for n, yes in answers.items() if yes)
    _store("find", digest, found)
    return found


@hookimpl
async def resolve_tag(image_ref: str, nodes: list[str]) -> str | None:
    if not _has_agents():
        return None
    hit, value = _cached("tag", image_ref)
    if hit:
        return value  # type: ignore[no-any-return]

    async def resolve(agent: Any) -> str:
        got = await agent.resolve_tag(image_ref)
        return str(got.digest) if got.found else ""

    answers = await _ask_all(nodes, resolve)
    digests = sorted({d for d in answers.values() if d})
    if len(digests) > 1:
        log.warning("nodes disagree on %s: %s; taking none", image_ref, digests)
    digest = digests[0] if len(digests) == 1 else None
    _store("tag", image_ref, digest)
    return digest


@hookimpl
async def remove_image(node: str, image_ref: str, digest: str | None) -> bool | None:
    if not _has_agents():
        return None
    from tote_containerd import plugin
    from tote_containerd.agent.client import ensure_loop

    async with ensure_loop(), plugin.open_agent(node) as agent:
        removed = await agent.remove_image([image_ref], digest or "")
    invalidate()
    log.info("removed image records on %s: %s", node, removed)
    return bool(removed)
