"""The inventory's fan-out logic (tote_containerd/inventory.py) with agents that answer from
memory: hinted nodes first, the record index for everything else, one fan-out per digest
however many callers, fan-outs that outlive an impatient caller, expired answers served
while one refresh runs, bounded concurrency, failed agents left out of sweeps, and the
answers a transfer invalidates.

The real server and connections are covered by
tests/integration/containerd/test_inventory_fanout.py; here the agents are stand-ins so the
logic is checked exactly (call counts, timing on trio's mock clock)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import trio
import trio.testing
from tote_containerd.agent import errors
from tote_containerd.agent.api import ImageRecord, InspectResult
from tote_containerd.agents import Agents
from tote_containerd.inventory import DOWN_FOR, MAX_IN_FLIGHT, MISS_REFRESH, Inventory

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@dataclass
class Node:
    images: dict[str, str] = field(default_factory=dict)  # record name → digest
    complete: set[str] = field(default_factory=set)
    down: bool = False


class FakeClient:
    def __init__(self, agents: FakeAgents, node: str) -> None:
        self.agents, self.name = agents, node
        self.node = agents.nodes[node]

    async def _call(self, what: str) -> None:
        self.agents.calls.append((self.name, what))
        self.agents.in_flight += 1
        self.agents.peak = max(self.agents.peak, self.agents.in_flight)
        try:
            await trio.sleep(self.agents.latency)
            if self.node.down:
                raise errors.Unavailable(f"agent {self.name} unreachable")
        finally:
            self.agents.in_flight -= 1

    async def list_images(self, digest: str = "") -> list[ImageRecord]:
        await self._call(f"list {digest[:8]}" if digest else "list")
        return [ImageRecord(name=n, digest=d, media_type="x", size=1)
                for n, d in self.node.images.items() if not digest or d == digest]

    async def inspect(self, ref: str, platform: str = "") -> InspectResult:
        await self._call("inspect")
        done = ref in self.node.complete
        return InspectResult(digest=ref, media_type="x", blobs=[], total_bytes=1,
                             present_bytes=1, complete=done, layers_discarded=False,
                             reason="", names=[], platform="linux/amd64", config_digest="")


class FakeAgents:
    """What `Inventory` uses of `Agents`: `known()` and `at()`."""

    def __init__(self, nodes: dict[str, Node], latency: float = 0.01) -> None:
        self.nodes = nodes
        self.latency = latency
        self.calls: list[tuple[str, str]] = []
        self.in_flight = 0
        self.peak = 0
        self.pooled_flags: list[bool] = []

    def known(self) -> dict[str, str]:
        return {n: n for n in self.nodes}

    @contextlib.asynccontextmanager
    async def at(self, endpoint: str, rpc_timeout: float | None = None, *,
                 pooled: bool = True) -> AsyncIterator[Any]:
        self.pooled_flags.append(pooled)
        yield FakeClient(self, endpoint)

    def asked(self, what: str) -> set[str]:
        return {n for n, w in self.calls if w.startswith(what)}


def cluster(count: int = 20) -> dict[str, Node]:
    """`count` nodes, each with a common image; D1 complete on n01, n02 and n03; D2 a
    record on n05 (complete) and n06 (blobs gone), tagged `app:v2` on both."""
    nodes = {f"n{i:02d}": Node(images={"docker.io/x/common:v1": D3}, complete={D3})
             for i in range(count)}
    for n in ("n01", "n02", "n03"):
        nodes[n].images["docker.io/x/app:v1"] = D1
        nodes[n].complete.add(D1)
    for n in ("n05", "n06"):
        nodes[n].images["docker.io/x/app:v2"] = D2
    nodes["n05"].complete.add(D2)
    return nodes


def inventory(agents: FakeAgents, hints: dict[str, list[str]] | None = None,
              **kw: Any) -> Inventory:
    return Inventory(cast(Agents, agents), lambda d: (hints or {}).get(d, []),
                     rng=lambda: 0.0, **kw)


async def test_confirmed_hints_answer_without_asking_anyone_else() -> None:
    agents = FakeAgents(cluster())
    inv = inventory(agents, {D1: ["n01", "n02", "n09"]})
    assert await inv.find_image(D1, sorted(agents.nodes)) == ["n01", "n02"]
    assert agents.asked("") == {"n01", "n02", "n09"}  # two confirmed: no sweep
    assert inv.stats.sweeps == 0
    assert all(agents.pooled_flags)  # the nodes in use keep pooled connections


async def test_without_enough_hints_one_sweep_then_only_the_indexed_nodes() -> None:
    agents = FakeAgents(cluster())
    names = sorted(agents.nodes)
    inv = inventory(agents, {D1: ["n01"]})
    assert await inv.find_image(D1, names) == ["n01", "n02", "n03"]
    assert inv.stats.sweeps == 1 and agents.asked("list") == set(names)
    assert [p for p in agents.pooled_flags].count(False) == len(names)  # the sweep's own
    agents.calls.clear()
    # Another digest: the index names its record holders; only they are asked, and a
    # record without its blobs (n06) is not a holder.
    assert await inv.find_image(D2, names) == ["n05"]
    assert agents.asked("") == {"n05", "n06"} and inv.stats.sweeps == 1
    agents.calls.clear()
    # A digest no node has: "none" only from a sweep begun after it was asked about.
    missing = "sha256:" + "9" * 64
    assert await inv.find_image(missing, names) == []
    assert agents.asked("list") == set(names) and inv.stats.sweeps == 2
    agents.calls.clear()
    inv.invalidate(missing)
    assert await inv.find_image(missing, names) == []  # that sweep still counts
    assert agents.calls == []
    # Only the nodes the caller names count.
    assert await inv.find_image(D1, ["n02", "n07"]) == ["n01", "n02", "n03"]  # cached
    inv.invalidate(D1)
    assert await inv.find_image(D1, ["n02", "n07"]) == ["n02"]


async def test_none_is_only_answered_from_a_sweep_begun_after_the_question(
        autojump_clock: trio.testing.MockClock) -> None:
    """A node that pulled an image after the sweep, with a status that does not list it,
    is found at once: a key first asked about with no holder in the index waits for a
    new sweep, one sweep for every such key asked about meanwhile; holders in the index
    need none."""
    agents = FakeAgents(cluster(), latency=0.5)
    names = sorted(agents.nodes)
    inv = inventory(agents)
    assert await inv.find_image(D1, names) == ["n01", "n02", "n03"]
    d4 = "sha256:" + "4" * 64
    agents.nodes["n07"].images["docker.io/x/new:v1"] = d4
    agents.nodes["n07"].complete.add(d4)
    got: dict[str, object] = {}

    async def ask(key: str) -> None:
        if key.startswith("sha256:"):
            got[key] = await inv.find_image(key, names)
        else:
            got[key] = await inv.resolve_tag(key, names)

    missing = ["sha256:" + "8" * 64, "docker.io/x/none:v1"]
    async with trio.open_nursery() as nursery:
        for key in [d4, "docker.io/x/new:v1", *missing]:
            nursery.start_soon(ask, key)
    assert got == {d4: ["n07"], "docker.io/x/new:v1": d4, missing[0]: [],
                   missing[1]: None}
    assert inv.stats.sweeps == 2  # one for all four
    assert await inv.resolve_tag(missing[1], names) is None  # within MISS_REFRESH
    assert await inv.find_image(D2, names) == ["n05"]  # in the index: no sweep
    assert inv.stats.sweeps == 2
    await trio.sleep(MISS_REFRESH + 1)
    assert await inv.resolve_tag(missing[1], names) is None
    assert inv.stats.sweeps == 3


async def test_a_sweep_slower_than_miss_refresh_still_answers_none(
        autojump_clock: trio.testing.MockClock) -> None:
    """At thousands of nodes a sweep takes longer than MISS_REFRESH; a lookup waiting for
    it must end with it, not ask for another (found at 5 000 simulated nodes)."""
    agents = FakeAgents(cluster(200), latency=1.0)
    names = sorted(agents.nodes)
    inv = inventory(agents, max_in_flight=4)  # a sweep: 50 s
    t = trio.current_time()
    with trio.fail_after(MISS_REFRESH * 30):
        assert await inv.find_image("sha256:" + "8" * 64, names) == []
    # The index (begun before the question was found unanswered), then one sweep.
    assert inv.stats.sweeps == 2 and trio.current_time() - t > 2 * MISS_REFRESH
    with trio.fail_after(MISS_REFRESH * 30):
        assert await inv.resolve_tag("docker.io/x/none:v1", names) is None
    assert inv.stats.sweeps == 3 and inv.stats.skipped_down == 0


async def test_tags_resolve_from_the_index() -> None:
    agents = FakeAgents(cluster())
    names = sorted(agents.nodes)
    inv = inventory(agents)
    assert await inv.resolve_tag("docker.io/x/app:v2", names) == D2
    assert await inv.resolve_tag("docker.io/x/app:v9", names) is None
    agents.nodes["n07"].images["docker.io/x/app:v1"] = D2  # disagrees with n01..n03
    inv.invalidate()
    assert await inv.resolve_tag("docker.io/x/app:v1", names) is None
    assert inv.stats.sweeps == 3  # app:v2, app:v9 (none: asked after the first), app:v1


async def test_concurrent_lookups_share_one_fan_out() -> None:
    agents = FakeAgents(cluster(), latency=0.05)
    names = sorted(agents.nodes)
    inv = inventory(agents)
    results: list[list[str] | None] = []

    async def reconcile() -> None:
        results.append(await inv.find_image(D1, names))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(reconcile)
    assert results == [["n01", "n02", "n03"]] * 50
    assert inv.stats.fanouts == 2 and inv.stats.sweeps == 1  # the digest's and the index's
    assert len(agents.calls) == len(names) + 6  # a sweep, then list + inspect on 3 holders


async def test_all_fan_outs_share_the_in_flight_bound() -> None:
    agents = FakeAgents(cluster(300), latency=0.01)
    names = sorted(agents.nodes)
    inv = inventory(agents, max_in_flight=16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inv.find_image, D1, names)
        nursery.start_soon(inv.resolve_tag, "docker.io/x/app:v2", names)
    assert agents.peak == 16
    assert MAX_IN_FLIGHT >= 16


async def test_with_the_service_a_fan_out_outlives_its_caller(
        autojump_clock: trio.testing.MockClock) -> None:
    agents = FakeAgents(cluster(), latency=1.0)
    names = sorted(agents.nodes)
    inv = inventory(agents)
    async with trio.open_nursery() as service:
        await service.start(inv.run)
        with trio.move_on_after(0.5) as gave_up:
            await inv.find_image(D1, names)
        assert gave_up.cancelled_caught
        await trio.sleep(5)  # the sweep and the holders' check finish meanwhile
        calls = len(agents.calls)
        assert await inv.find_image(D1, names) == ["n01", "n02", "n03"]
        assert len(agents.calls) == calls and inv.stats.sweeps == 1  # cached, not redone
        service.cancel_scope.cancel()


async def test_without_the_service_a_waiting_caller_takes_over(
        autojump_clock: trio.testing.MockClock) -> None:
    agents = FakeAgents(cluster(), latency=1.0)
    names = sorted(agents.nodes)
    inv = inventory(agents)
    got: list[list[str] | None] = []

    async def impatient() -> None:
        with trio.move_on_after(0.5):
            await inv.find_image(D1, names)

    async def patient() -> None:
        await trio.sleep(0.1)
        got.append(await inv.find_image(D1, names))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(impatient)
        nursery.start_soon(patient)
    assert got == [["n01", "n02", "n03"]]


async def test_at_expiry_callers_get_the_old_answer_while_one_refresh_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    agents = FakeAgents(cluster(), latency=1.0)
    names = sorted(agents.nodes)
    inv = inventory(agents, {D1: ["n01", "n02"]}, ttl=10.0, stale_grace=30.0)
    async with trio.open_nursery() as service:
        await service.start(inv.run)
        assert await inv.find_image(D1, names) == ["n01", "n02"]
        fanouts = inv.stats.fanouts
        await trio.sleep(11)  # expired, within the grace
        agents.nodes["n02"].complete.discard(D1)
        waited: list[float] = []

        async def caller() -> None:
            t = trio.current_time()
            assert await inv.find_image(D1, names) == ["n01", "n02"]
            waited.append(trio.current_time() - t)

        async with trio.open_nursery() as callers:
            for _ in range(100):
                callers.start_soon(caller)
        assert max(waited) == 0 and inv.stats.stale == 100
        assert inv.stats.fanouts == fanouts + 1  # one refresh for the hundred
        await trio.sleep(10)  # hinted (2 calls), a sweep, the indexed holders (2 calls)
        # The refresh found n02 incomplete: fewer than two hinted holders, so the index.
        assert await inv.find_image(D1, names) == ["n01", "n03"]
        service.cancel_scope.cancel()


async def test_an_expired_none_is_not_served_stale(
        autojump_clock: trio.testing.MockClock) -> None:
    agents = FakeAgents(cluster())
    names = sorted(agents.nodes)
    inv = inventory(agents, ttl=10.0, stale_grace=30.0)
    d4 = "sha256:" + "4" * 64
    async with trio.open_nursery() as service:
        await service.start(inv.run)
        assert await inv.find_image(d4, names) == []
        agents.nodes["n07"].images["docker.io/x/new:v1"] = d4
        agents.nodes["n07"].complete.add(d4)
        await trio.sleep(11)  # expired, within the grace
        assert await inv.find_image(d4, names) == ["n07"] and inv.stats.stale == 0
        service.cancel_scope.cancel()


async def test_answers_cached_together_expire_apart() -> None:
    agents = FakeAgents(cluster())
    draws = iter([0.0, 1.0])
    inv = Inventory(cast(Agents, agents), rng=lambda: next(draws), ttl=10.0)
    now = 1000.0
    inv.clock = inv._holders.clock = lambda: now  # type: ignore[method-assign]
    inv._holders.put(D1, ["n01"], inv._fresh_for(10.0), 30.0)
    inv._holders.put(D2, ["n05"], inv._fresh_for(10.0), 30.0)
    now += 9.0
    assert inv._holders.get(D1)[0] == "fresh" and inv._holders.get(D2)[0] == "stale"


async def test_a_failed_agent_is_left_out_of_sweeps_for_a_while(
        autojump_clock: trio.testing.MockClock) -> None:
    agents = FakeAgents(cluster())
    names = sorted(agents.nodes)
    agents.nodes["n04"].down = True
    inv = inventory(agents, index_ttl=10.0)
    assert await inv.find_image(D1, names) == ["n01", "n02", "n03"]
    await trio.sleep(70)  # the index has expired (fresh 10 s, then stale)
    inv.invalidate()
    agents.calls.clear()
    assert await inv.find_image(D1, names) == ["n01", "n02", "n03"]
    assert "n04" in agents.asked("list")  # DOWN_FOR had passed
    agents.calls.clear()
    inv.invalidate()
    assert await inv.find_image(D1, names) == ["n01", "n02", "n03"]
    assert "n04" not in agents.asked("") and inv.stats.skipped_down == 1
    assert DOWN_FOR < 70
    # A lapsed failure is forgotten, also when its endpoint is gone (an agent restarted
    # under a new address is never asked at the old one again).
    del agents.nodes["n04"]
    await trio.sleep(DOWN_FOR + 1)
    inv.invalidate()
    await inv.find_image(D1, names)
    assert inv._down == {}


async def test_a_transfer_forgets_only_its_digest() -> None:
    agents = FakeAgents(cluster())
    names = sorted(agents.nodes)
    inv = inventory(agents, {D1: ["n01", "n02"], D2: ["n05", "n06"]})
    await inv.find_image(D1, names)
    await inv.find_image(D2, names)
    agents.nodes["n07"].images["docker.io/x/app:v1"] = D1
    agents.nodes["n07"].complete.add(D1)
    inv.invalidate(D2)
    calls = len(agents.calls)
    assert await inv.find_image(D1, names) == ["n01", "n02"]  # still cached
    assert len(agents.calls) == calls
    assert await inv.find_image(D2, names) == ["n05"]
    assert len(agents.calls) > calls


@pytest.mark.parametrize("during", [True, False])
async def test_an_answer_invalidated_while_its_fan_out_runs_is_not_cached(
        during: bool) -> None:
    agents = FakeAgents(cluster(), latency=0.05)
    names = sorted(agents.nodes)
    inv = inventory(agents, {D1: ["n01", "n02"]})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inv.find_image, D1, names)
        await trio.sleep(0.01)
        if during:
            inv.invalidate(D1)
    fanouts = inv.stats.fanouts
    await inv.find_image(D1, names)
    assert inv.stats.fanouts == fanouts + (1 if during else 0)
