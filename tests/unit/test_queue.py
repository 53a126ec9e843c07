"""WorkQueue: dedupe, one in-flight per key, dirty re-adds, back-off; Engine isolation."""

from __future__ import annotations

import trio
import trio.testing

from tote_core.reconcile.engine import Engine, Result
from tote_core.reconcile.queue import WorkQueue


async def test_dedupes_and_orders() -> None:
    q = WorkQueue()
    for k in ["a", "b", "a", "c", "b"]:
        q.add(k)
    assert len(q) == 3
    assert [await q.get() for _ in range(3)] == ["a", "b", "c"]


async def test_key_in_flight_is_not_handed_out_twice() -> None:
    q = WorkQueue()
    q.add("a")
    key = await q.get()
    q.add("a")  # while processing: marked dirty, not queued
    assert len(q) == 0
    q.done(key)
    assert len(q) == 1 and await q.get() == "a"


async def test_backoff_grows_and_forget_resets(autojump_clock: trio.testing.MockClock) -> None:
    q = WorkQueue(base_delay=1.0, max_delay=8.0)
    delays = [q.add_rate_limited("k") for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    q.forget("k")
    assert q.backoff_for("k") == 1.0


async def test_add_after_fires(autojump_clock: trio.testing.MockClock) -> None:
    q = WorkQueue()
    async with trio.open_nursery() as n:
        n.start_soon(q.run_timers)
        t0 = trio.current_time()
        q.add_after("late", 5)
        q.add_after("early", 1)
        assert await q.get() == "early"
        assert await q.get() == "late"
        assert trio.current_time() - t0 >= 5
        n.cancel_scope.cancel()


async def test_engine_survives_exceptions_and_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    q = WorkQueue(base_delay=1.0)
    calls: list[str] = []
    concurrent = 0
    peak = 0

    async def reconcile(key: str) -> Result | None:
        nonlocal concurrent, peak
        calls.append(key)
        concurrent += 1
        peak = max(peak, concurrent)
        try:
            if key == "boom" and calls.count("boom") < 3:
                raise RuntimeError("kaput")
            if key == "slow" and calls.count("slow") == 1:
                await trio.sleep(100)
            await trio.sleep(0.1)
        finally:
            concurrent -= 1
        return None

    engine = Engine("t", q, reconcile, workers=3, deadline=10)
    async with trio.open_nursery() as n:
        await n.start(engine.run)
        for k in ["boom", "slow", "ok"]:
            q.add(k)
        await trio.sleep(60)
        n.cancel_scope.cancel()
    assert calls.count("boom") == 3  # failed twice, retried with back-off, then succeeded
    assert calls.count("slow") == 2  # cut at the deadline, retried
    assert calls.count("ok") == 1
    assert peak <= 3
