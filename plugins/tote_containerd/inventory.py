"""Inventory hooks answered by the agents: who holds a digest, what a tag points to, and
removal of stale image records.

`find_image` counts a node only when it has an image record for the digest *and* `Inspect`
finds the whole chain for its platform: as blobs, or — on nodes that discard their layer
blobs after unpacking — as unpacked snapshots (then the node is a snapshot-mode source, and
as a target it has the image). It remembers which holders are snapshot-only, so sources
with the blobs can be preferred (`blob_sources_first`).

What a lookup costs grows with the cluster, so it is shaped for thousands of nodes: a
2-core controller pays about a millisecond of CPU per agent call and more per TLS handshake,
so asking 5 000 agents is seconds, whatever the concurrency.

- **Hinted first.** The nodes whose `Node.status.images` already lists the digest (`hints`,
  the controller's node index) are asked first; when at least `ENOUGH_HOLDERS` of them
  confirm, that is the answer and no other node is asked. Two, so that at least one holder
  is not the caller's own target.
- **One sweep answers every digest.** Otherwise the answer comes from the *record index*:
  every agent's image records (one `ListImages` per node, no filter), kept for `INDEX_TTL`.
  Only the nodes the index names are then asked (`ListImages` for the digest and
  `Inspect`), so a cold lookup of another digest, or a tag (`resolve_tag` reads record
  names), costs a few calls instead of a call per node. An index older than `INDEX_TTL`
  is still used (for up to `INDEX_STALE`) while one sweep refreshes it in the background:
  only the first lookup after start, or after a long quiet spell, waits for a sweep.
  "None" is answered only from a sweep that began after the digest or tag was first asked
  about (within `MISS_REFRESH`): a node may have pulled it since the index was made. So a
  lookup of an image no node holds waits for a sweep, as each lookup did before the
  index, but one sweep serves every such digest and tag asked about before it began.
- **Bounded.** All fan-outs share `MAX_IN_FLIGHT` agent calls; a sweep runs that many
  workers, not a task per node, and it never pushes a connection out of the (bounded)
  pool: beyond it, a connection per call (`connections`). An agent that failed in
  transport is left out of sweeps for `DOWN_FOR` seconds, so one black-holed node does not
  hold every sweep for the full per-agent deadline (hinted nodes are always asked).
- **Single flight, finished in the background.** Concurrent lookups of one digest (or tag,
  or the index) share one fan-out. While the plugin's service (`run`) runs, a fan-out runs
  there: a caller whose deadline expires stops waiting, the fan-out finishes and is cached,
  so a sweep longer than the callers' deadlines is not restarted by every retry.
- **No herd at expiry.** Answers are fresh for `CACHE_TTL` less a random share of up to
  `CACHE_JITTER` (answers cached together expire apart), then served stale for up to
  `STALE_GRACE` more to every caller while one fan-out refreshes them (holders only: an
  expired "none" is looked up again, since it may hide a node that has the image now).

A dead or unknown agent only removes its node from the answer (logged at debug level:
per-reconcile chatter). A transfer or a removal forgets the answers about its digest and
reference only (`invalidate`); answers about other images stay.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from tote_containerd.agent import errors
from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.errors import NotFound
from tote_containerd.agents import Agents
from tote_core.errors import ToteError
from tote_core.ttlcache import TTLCache

log = logging.getLogger("tote.plugin.containerd.inventory")

PER_AGENT_TIMEOUT = 4.0
CACHE_TTL = 10.0
CACHE_JITTER = 0.2
STALE_GRACE = 30.0
CACHE_MAX = 4096
ENOUGH_HOLDERS = 2
INDEX_TTL = 60.0
INDEX_STALE = 600.0
MISS_REFRESH = 10.0
MAX_IN_FLIGHT = 64
DOWN_FOR = 30.0
T = TypeVar("T")
V = TypeVar("V")


@dataclass
class InventoryStats:
    """Counters for tests and the fan-out benchmark."""

    fanouts: int = 0  # fan-outs started (digest, tag or index; one per miss not joined)
    sweeps: int = 0  # record-index sweeps (a call to every agent)
    calls: int = 0  # agent calls made (an RPC each, an Inspect counted on its own)
    joined: int = 0  # lookups that waited for a fan-out another caller started
    stale: int = 0  # lookups answered from an expired answer while it was refreshed
    skipped_down: int = 0  # sweep targets left out because their agent recently failed


class _NoStale:
    """No expired answer to serve while refreshing."""


_NO_STALE = _NoStale()


@dataclass(eq=False)
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    failed: bool = False  # raised in the background: waiters answer "cannot tell"
    value: object = None
    keep: bool = True  # False: invalidated while running, do not cache the answer


class _Answers(Generic[V]):
    """key → value, fresh until one time and usable (stale) until a later one. Full: the
    oldest entry goes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._entries: dict[Hashable, tuple[float, float, V]] = {}

    def get(self, key: Hashable) -> tuple[str, V | None]:
        """("fresh" | "stale" | "miss", value)."""
        entry = self._entries.get(key)
        if entry is None:
            return "miss", None
        fresh_until, stale_until, value = entry
        now = self.clock()
        if now < fresh_until:
            return "fresh", value
        if now < stale_until:
            return "stale", value
        del self._entries[key]
        return "miss", None

    def put(self, key: Hashable, value: V, fresh_for: float, stale_for: float) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= CACHE_MAX:
            del self._entries[next(iter(self._entries))]
        now = self.clock()
        self._entries[key] = (now + fresh_for, now + fresh_for + stale_for, value)

    def drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class RecordIndex:
    """What one sweep saw: digest → nodes with a record for it, tagged record name →
    digests, and the nodes that answered (a node missing here was not seen at all)."""

    swept_at: float = 0.0  # when the sweep began
    by_digest: dict[str, list[str]] = field(default_factory=dict)
    by_tag: dict[str, set[str]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)

    def add(self, node: str, records: list[tuple[str, str]]) -> None:
        self.answered.add(node)
        for name, digest in records:
            holders = self.by_digest.setdefault(digest, [])
            if not holders or holders[-1] != node:
                holders.append(node)
            if "@" not in name:  # `repository:tag` (`repository@digest` names no tag)
                self.by_tag.setdefault(name, set()).add(digest)


def _transport_failure(exc: BaseException) -> bool:
    """Did the call fail to reach the agent (rather than the agent answering an error)?"""
    if isinstance(exc, errors.AgentError):
        return isinstance(exc, (errors.Unavailable, errors.DeadlineExceeded))
    return isinstance(exc, (trio.TooSlowError, OSError))


class Inventory:
    """`agents`: how to reach each node's agent. `hints(digest)`: nodes believed to hold
    `digest` (the controller's `Node.status.images` index), asked first. `ttl`,
    `stale_grace`, `index_ttl`, `clock` and `rng` shape the caches (tests and the benchmark
    shorten or drive them); `max_in_flight` bounds the agent calls of every fan-out."""

    def __init__(self, agents: Agents, hints: Callable[[str], Iterable[str]] | None = None, *,
                 ttl: float = CACHE_TTL, stale_grace: float = STALE_GRACE,
                 index_ttl: float = INDEX_TTL,
                 clock: Callable[[], float] = trio.current_time,
                 rng: Callable[[], float] = random.random,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.agents = agents
        self.hints = hints or (lambda digest: ())
        self.ttl = ttl
        self.stale_grace = stale_grace
        self.index_ttl = index_ttl
        self.clock = clock
        self.rng = rng
        self.stats = InventoryStats()
        self._holders: _Answers[list[str]] = _Answers(clock)
        self._index: _Answers[RecordIndex] = _Answers(clock)
        self._snapshot_only: TTLCache[str, set[str]] = TTLCache(ttl + stale_grace, CACHE_MAX,
                                                                clock)
        self._flights: dict[Hashable, _Flight] = {}
        self._misses: TTLCache[Hashable, float] = TTLCache(MISS_REFRESH, CACHE_MAX, clock)
        self._down: dict[str, float] = {}  # endpoint → left out of sweeps until
        self._max_in_flight = max_in_flight
        self._limiter: trio.CapacityLimiter | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The plugin service: where fan-outs run while this replica leads, so they finish
        (and are cached) after the caller that started them has given up waiting."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:  # no new fan-out here once the service is ending
                self._nursery = None

    def invalidate(self, digest: str | None = None) -> None:
        """Forget cached answers after a transfer or a removal changed what a node holds:
        those about `digest`, or every answer and the record index when no digest is
        given. A fan-out already running for them still answers its callers but is not
        cached. The record index stays for a digest: the hinted nodes and the salvager's
        own list of deliveries cover the node that changed until the next sweep."""
        keys: list[Hashable] = [("holders", digest)] if digest else list(self._flights)
        for key in keys:
            if (flight := self._flights.get(key)) is not None:
                flight.keep = False
        if digest:
            self._holders.drop(digest)
            self._snapshot_only.put(digest, set(), ttl=0)
            return
        self._holders.clear()
        self._index.clear()
        self._snapshot_only.clear()

    def _fresh_for(self, ttl: float) -> float:
        return ttl * (1 - CACHE_JITTER * self.rng())

    async def _single(self, key: Hashable, compute: Callable[[], Awaitable[T]],
                      store: Callable[[T], None], failed: T,
                      stale: T | _NoStale = _NO_STALE) -> T:
        """`compute()` once for every concurrent caller with this `key`; `store` caches the
        answer unless it was invalidated meanwhile. With the service running, the fan-out
        runs there and outlives its callers, and a caller holding an expired answer
        (`stale`) gets it at once while the fan-out refreshes it; without the service, the
        fan-out runs in the first caller's task, and should that caller leave (its
        deadline) a waiting caller starts its own. `failed`: what callers get if the
        fan-out raised (an agent-side bug)."""
        while True:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
                self.stats.fanouts += 1
                if self._nursery is None:
                    await self._complete(key, flight, compute, store, background=False)
                    return flight.value  # type: ignore[return-value]
                self._nursery.start_soon(self._complete, key, flight, compute, store)
            elif isinstance(stale, _NoStale):
                self.stats.joined += 1
            if not isinstance(stale, _NoStale):
                self.stats.stale += 1
                return stale
            await flight.done.wait()
            if flight.ok:
                return flight.value  # type: ignore[return-value]
            if flight.failed:
                return failed

    async def _complete(self, key: Hashable, flight: _Flight,
                        compute: Callable[[], Awaitable[T]], store: Callable[[T], None], *,
                        background: bool = True) -> None:
        try:
            value = await compute()
            flight.value, flight.ok = value, True
            if flight.keep:
                store(value)
        except Exception as exc:
            if not background:
                raise
            flight.failed = True
            log.warning("inventory fan-out %s failed: %s: %s", key, type(exc).__name__, exc)
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()

    def _in_flight(self) -> trio.CapacityLimiter:
        if self._limiter is None:  # made lazily: needs a running trio loop
            self._limiter = trio.CapacityLimiter(self._max_in_flight)
        return self._limiter

    def _is_down(self, endpoint: str, now: float) -> bool:
        until = self._down.get(endpoint)
        if until is None:
            return False
        if now >= until:
            del self._down[endpoint]
            return False
        return True

    async def _ask(self, nodes: list[str], known: dict[str, str],
                   call: Callable[[AgentClient], Awaitable[T]], *, pooled: bool = True
                   ) -> dict[str, T]:
        """Run `call(agent_client)` on the agent of each of `nodes` (all known), at most
        `MAX_IN_FLIGHT` at a time over every fan-out; collect the successes. `pooled`:
        False for a sweep (a connection for the call unless one is pooled already)."""
        answers: dict[str, T] = {}
        todo = iter(nodes)
        limiter = self._in_flight()

        async def one(node: str) -> None:
            endpoint = known[node]
            self.stats.calls += 1
            try:
                with trio.fail_after(PER_AGENT_TIMEOUT):
                    async with self.agents.at(endpoint, PER_AGENT_TIMEOUT,
                                              pooled=pooled) as agent:
                        answers[node] = await call(agent)
                self._down.pop(endpoint, None)
            except (ToteError, trio.TooSlowError, OSError) as exc:
                if _transport_failure(exc):
                    self._down[endpoint] = self.clock() + DOWN_FOR
                log.debug("agent on %s: %s", node, exc)
            except Exception as exc:  # an agent bug must not fail the reconcile
                log.debug("agent on %s failed: %s: %s", node, type(exc).__name__, exc)

        async def worker() -> None:
            for node in todo:  # one iterator: each node is taken by one worker
                async with limiter:
                    await one(node)

        async with trio.open_nursery() as nursery:
            for _ in range(min(len(nodes), self._max_in_flight)):
                nursery.start_soon(worker)
        return answers

    def _sweep_targets(self, nodes: Iterable[str], known: dict[str, str]) -> list[str]:
        """Nodes of `nodes` with a known agent that did not fail in transport recently."""
        now = self.clock()
        # Forget lapsed failures: endpoints of restarted agents (new pod IPs) would pile up.
        self._down = {e: until for e, until in self._down.items() if until > now}
        out: list[str] = []
        missing = 0
        for n in dict.fromkeys(nodes):
            endpoint = known.get(n)
            if endpoint is None:
                missing += 1
            elif self._is_down(endpoint, now):
                self.stats.skipped_down += 1
            else:
                out.append(n)
        if missing:
            log.debug("no agent known on %d of the nodes", missing)
        return out

    async def _record_index(self, nodes: list[str], since: float | None = None
                            ) -> RecordIndex:
        """The record index: fresh, or stale while one sweep refreshes it, or swept now
        (none yet, or none that began at `since` or later)."""
        state, index = self._index.get("index")
        if index is not None and since is not None and index.swept_at < since:
            state, index = "miss", None
        if state == "fresh" and index is not None:
            return index

        async def sweep() -> RecordIndex:
            self.stats.sweeps += 1
            known = self.agents.known()

            async def records(agent: AgentClient) -> list[tuple[str, str]]:
                return [(r.name, r.digest) for r in await agent.list_images()]

            out = RecordIndex(swept_at=self.clock())
            for node, recs in (await self._ask(self._sweep_targets(nodes, known), known,
                                               records, pooled=False)).items():
                out.add(node, recs)
            return out

        def store(index: RecordIndex) -> None:
            self._index.put("index", index, self._fresh_for(self.index_ttl), INDEX_STALE)

        return await self._single(("index",), sweep, store, RecordIndex(),
                                  index if state == "stale" and index else _NO_STALE)

    def _asked_since(self, key: Hashable) -> float:
        """When a lookup first found nothing for `key`, within the last `MISS_REFRESH`
        seconds (now, if none did): "none" needs a sweep that began at that time or later.
        Read once per lookup: a sweep may take longer than `MISS_REFRESH` (thousands of
        nodes), and the lookup waiting for it must not then ask for yet another."""
        hit, since = self._misses.get(key)
        if hit and since is not None:
            return since
        now = self.clock()
        self._misses.put(key, now)
        return now

    async def find_image(self, digest: str, nodes: list[str]) -> list[str] | None:
        state, holders = self._holders.get(digest)
        if state == "fresh":
            return list(holders or [])

        def store(answer: tuple[list[str], set[str]] | None) -> None:
            if answer is None:
                return
            fresh = self._fresh_for(self.ttl)
            self._holders.put(digest, answer[0], fresh, self.stale_grace)
            self._snapshot_only.put(digest, answer[1], ttl=fresh + self.stale_grace)

        stale: tuple[list[str], set[str]] | _NoStale = _NO_STALE
        if state == "stale" and holders:  # an old "none" is not served: it may hide a holder
            stale = (holders, set())
        answer = await self._single(("holders", digest), lambda: self._find(digest, nodes),
                                    store, None, stale)
        return None if answer is None else list(answer[0])

    async def _find(self, digest: str, nodes: list[str]
                    ) -> tuple[list[str], set[str]] | None:
        async def holds(agent: AgentClient) -> str:
            """"blobs", "snapshots" or "" (does not hold it)."""
            records = await agent.list_images(digest)
            if not any(r.digest == digest for r in records):
                return ""
            # A record is not the image: containerd keeps records whose blobs are gone, and
            # nodes that discard their layer blobs after unpack keep only manifest, config
            # and snapshots. Inspect for the node's own platform (what it runs and what a
            # salvage would have put there).
            self.stats.calls += 1
            try:
                info = await agent.inspect(digest)
            except NotFound:
                return ""
            if info.complete:
                return "blobs"
            if info.unpacked:
                return "snapshots"
            log.debug("%s on a node is incomplete: %s", digest, info.reason)
            return ""

        known = self.agents.known()
        wanted = set(nodes)
        hinted = [n for n in dict.fromkeys(self.hints(digest)) if n in wanted and n in known]
        answers = await self._ask(hinted, known, holds)
        if sum(1 for how in answers.values() if how) < ENOUGH_HOLDERS:
            index = await self._record_index(nodes)
            since: float | None = None  # when this question was first asked
            while True:
                more = [n for n in index.by_digest.get(digest, ())
                        if n in wanted and n in known and n not in answers]
                answers.update(await self._ask(more, known, holds))
                if any(answers.values()):
                    break
                if since is None:
                    since = self._asked_since(("holders", digest))
                if index.swept_at >= since:
                    break
                index = await self._record_index(nodes, since)
        found = sorted(n for n, how in answers.items() if how)
        return found, {n for n, how in answers.items() if how == "snapshots"}

    def blob_sources_first(self, digest: str, order: list[str]) -> list[str]:
        """`order` with the nodes known to hold `digest` only as snapshots moved to the end
        (stable): the blob path moves the original bytes and is preferred whenever a
        source has them."""
        hit, snapshot_only = self._snapshot_only.get(digest)
        if not hit or not snapshot_only:
            return order
        return ([n for n in order if n not in snapshot_only]
                + [n for n in order if n in snapshot_only])

    async def resolve_tag(self, image_ref: str, nodes: list[str]) -> str | None:
        """The digest the nodes' records name for `image_ref`, from the record index (each
        record as the agent's ResolveTag reads it, by name); None when no node has it, or
        when nodes disagree."""
        index = await self._record_index(nodes)
        since: float | None = None  # when this question was first asked
        while image_ref not in index.by_tag:
            if since is None:
                since = self._asked_since(("tag", image_ref))
            if index.swept_at >= since:
                break
            index = await self._record_index(nodes, since)
        digests = index.by_tag.get(image_ref, set())
        if len(digests) > 1:
            log.warning("nodes disagree on %s: %s; taking none", image_ref, sorted(digests))
        return next(iter(digests)) if len(digests) == 1 else None

    async def remove_image(self, node: str, image_ref: str, digest: str | None
                           ) -> bool | None:
        async with self.agents.agent(node) as agent:
            removed = await agent.remove_image([image_ref], digest or "")
        self.invalidate(digest)  # None: which digest's holders changed is not known
        log.info("removed image records on %s: %s", node, removed)
        return bool(removed)
