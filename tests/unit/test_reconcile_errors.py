"""How the reconcile engine reports a failing reconcile (issue 12): expected transient errors
in one WARNING line; anything unexpected at ERROR with its traceback, and retried."""

from __future__ import annotations

import logging

import pytest
import trio

from tote_core.errors import RetryLater
from tote_core.reconcile.engine import Engine, Result
from tote_core.reconcile.queue import WorkQueue


async def _run_once(caplog: pytest.LogCaptureFixture, exc: Exception) -> list[logging.LogRecord]:
    calls: list[str] = []
    queue = WorkQueue(base_delay=0.01, max_delay=0.01)

    async def reconcile(key: str) -> Result | None:
        calls.append(key)
        if len(calls) == 1:
            raise exc
        return None

    engine = Engine("pods", queue, reconcile, workers=1, deadline=5)
    caplog.set_level(logging.INFO, logger="tote.reconcile")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            queue.add("ns/pod")
            while len(calls) < 2:  # the failed key is retried
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    return [r for r in caplog.records if r.name == "tote.reconcile"]


async def test_unexpected_error_logged_at_error_with_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    records = await _run_once(caplog, KeyError("spec"))
    assert [r.levelno for r in records] == [logging.ERROR]
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError
    assert "failed unexpectedly" in records[0].getMessage()


async def test_transient_error_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    records = await _run_once(caplog, RetryLater("agent busy"))
    assert [r.levelno for r in records] == [logging.WARNING]
    assert not records[0].exc_info
