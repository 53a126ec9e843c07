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
from typing import TypeVar

import trio

from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.errors import NotFound
from tote_containerd.agents import Agents
from tote_core.errors import ToteError
from tote_core.ttlcache import TTLCache

log = logging.getLogger("tote.plugin.containerd.inventory")

PER_AGENT_TIMEOUT = 4.0
CACHE_TTL = 10.0
CACHE_MAX = 4096
T = TypeVar("T")


class Inventory:
    def __init__(self, agents: Agents) -> None:
        self.agents = agents
        self._holders: TTLCache[str, list[str]] = TTLCache(
            CACHE_TTL, CACHE_MAX, trio.current_time)
        self._tags: TTLCache[str, str | None] = TTLCache(CACHE_TTL, CACHE_MAX, trio.current_time)

    def invalidate(self) -> None:
        """Forget cached answers (after a transfer changed what a node holds)."""
        self._holders.clear()
        self._tags.clear()

    async def _ask_all(self, nodes: list[str], call: Callable[[AgentClient], Awaitable[T]]
                       ) -> dict[str, T]:
        """Run `call(agent_client)` on every node's agent in parallel; collect successes."""
        answers: dict[str, T] = {}
        # Only nodes with a known agent: a task per node that fails at once still cost
        # ~0.1 ms each, 50-300 ms of event loop per 500-node fan-out (issue 12's tail).
        known = self.agents.known()
        skipped = [n for n in nodes if n not in known]
        if skipped:
            log.debug("no agent known on %d of %d nodes (e.g. %s)", len(skipped), len(nodes),
                      skipped[0])

        async def one(node: str) -> None:
            try:
                with trio.fail_after(PER_AGENT_TIMEOUT):
                    async with self.agents.at(known[node], PER_AGENT_TIMEOUT) as agent:
                        answers[node] = await call(agent)
            except (ToteError, trio.TooSlowError, OSError) as exc:
                log.debug("agent on %s: %s", node, exc)
            except Exception as exc:  # an agent bug must not fail the reconcile
                log.debug("agent on %s failed: %s: %s", node, type(exc).__name__, exc)

        async with trio.open_nursery() as nursery:
            for node in nodes:
                if node in known:
                    nursery.start_soon(one, node)
        return answers

    async def find_image(self, digest: str, nodes: list[str]) -> list[str] | None:
        hit, holders = self._holders.get(digest)
        if hit:
            return list(holders or [])

        async def holds(agent: AgentClient) -> bool:
            records = await agent.list_images(digest)
            if not any(r.digest == digest for r in records):
                return False
            # A record is not the image: containerd keeps records whose layers were
            # discarded after unpack (discard_unpacked_layers) or whose blobs are gone. Such
            # a node can neither serve the image nor is it done as a target. Inspect for the
            # node's own platform (what it runs and what a salvage would have put there).
            try:
                info = await agent.inspect(digest)
            except NotFound:
                return False
            if not info.complete:
                log.debug("%s on a node is incomplete: %s", digest, info.reason)
            return bool(info.complete)

        answers = await self._ask_all(nodes, holds)
        found = sorted(n for n, yes in answers.items() if yes)
        self._holders.put(digest, found)
        return found

    async def resolve_tag(self, image_ref: str, nodes: list[str]) -> str | None:
        hit, cached = self._tags.get(image_ref)
        if hit:
            return cached

        async def resolve(agent: AgentClient) -> str:
            got = await agent.resolve_tag(image_ref)
            return str(got.digest) if got.found else ""

        answers = await self._ask_all(nodes, resolve)
        digests = sorted({d for d in answers.values() if d})
        if len(digests) > 1:
            log.warning("nodes disagree on %s: %s; taking none", image_ref, digests)
        digest = digests[0] if len(digests) == 1 else None
        self._tags.put(image_ref, digest)
        return digest

    async def remove_image(self, node: str, image_ref: str, digest: str | None
                           ) -> bool | None:
        async with self.agents.agent(node) as agent:
            removed = await agent.remove_image([image_ref], digest or "")
        self.invalidate()
        log.info("removed image records on %s: %s", node, removed)
        return bool(removed)
