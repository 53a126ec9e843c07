"""N reconcile workers draining a WorkQueue, each item under its own deadline.

An exception in one reconcile is logged, counted and requeued with back-off: it never tears
down the worker pool. The engine's `run` belongs to the leader-only scope, so losing the
lease cancels it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Generic

import msgspec
import trio

from tote_core import metrics
from tote_core.errors import KubeError, PermanentError, RetryLater
from tote_core.reconcile.queue import K, WorkQueue

log = logging.getLogger("tote.reconcile")


class Result(msgspec.Struct, frozen=True):
    """What a reconcile asks for: nothing, or to be looked at again after `requeue_after`."""

    requeue_after: float | None = None


Reconciler = Callable[[str], Awaitable[Result | None]]  # detection's: by pod key


@dataclass(eq=False)
class Engine(Generic[K]):
    """Workers for one kind of key: `Engine[str]` for pod keys, `Engine[Work]` for salvage's
    typed work; the key reaches `reconcile` as queued (logs show its `str`)."""

    name: str
    queue: WorkQueue[K]
    reconcile: Callable[[K], Awaitable[Result | None]]
    _: KW_ONLY
    workers: int
    deadline: float

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._one(key)
            finally:
                self.queue.done(key)

    async def _one(self, key: K) -> None:
        try:
            with trio.fail_after(self.deadline):
                result = await self.reconcile(key)
        except trio.TooSlowError:
            metrics.RECONCILE_ERRORS.labels(self.name, "deadline").inc()
            delay = self.queue.add_rate_limited(key)
            log.warning("%s: reconcile of %s exceeded %.0fs; retry in %.1fs",
                        self.name, key, self.deadline, delay)
            return
        except PermanentError as exc:
            metrics.RECONCILE_ERRORS.labels(self.name, "permanent").inc()
            log.warning("%s: %s: %s (not retried)", self.name, key, exc)
            self.queue.forget(key)
            return
        except (RetryLater, KubeError) as exc:  # expected: transient, said in one line
            metrics.RECONCILE_ERRORS.labels(self.name, "error").inc()
            delay = self.queue.add_rate_limited(key)
            log.warning("%s: reconcile of %s failed: %s: %s; retry in %.1fs",
                        self.name, key, type(exc).__name__, exc, delay,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            return
        except Exception as exc:  # unexpected (a bug): loud, with its traceback
            metrics.RECONCILE_ERRORS.labels(self.name, "error").inc()
            delay = self.queue.add_rate_limited(key)
            log.error("%s: reconcile of %s failed unexpectedly: %s: %s; retry in %.1fs",
                      self.name, key, type(exc).__name__, exc, delay, exc_info=exc)
            return
        self.queue.forget(key)
        if result is not None and result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.queue.run_timers)
            for _ in range(self.workers):
                nursery.start_soon(self._worker)
            task_status.started()
