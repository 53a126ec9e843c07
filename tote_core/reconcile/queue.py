"""A deduplicating work queue with per-key back-off (client-go's workqueue semantics).

- A key is in the queue at most once, however often it is added.
- A key being processed is never handed to a second worker; adding it meanwhile marks it
  dirty, and it is queued again when the first worker calls `done`.
- `add_after` schedules a key; `add_rate_limited` schedules it after the key's own
  exponential back-off, reset by `forget`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys of type `K`: pod keys (`namespace/name`) for detection, typed work items
    (`tote_core.salvage.jobs.Work`) for salvage."""

    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 300.0) -> None:
        self._queue: deque[K] = deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._delayed: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._lot = trio.lowlevel.ParkingLot()
        self._timer_lot = trio.lowlevel.ParkingLot()
        self.base_delay = base_delay
        self.max_delay = max_delay

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._lot.unpark()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        heapq.heappush(self._delayed, (trio.current_time() + delay, next(self._seq), key))
        self._timer_lot.unpark_all()

    def backoff_for(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        return float(min(self.base_delay * (2**failures), self.max_delay))

    def add_rate_limited(self, key: K) -> float:
        delay = self.backoff_for(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        while not self._queue:
            await self._lot.park()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def run_timers(self) -> None:
        """Move delayed keys into the queue when due; run this in the owner's nursery."""
        while True:
            now = trio.current_time()
            while self._delayed and self._delayed[0][0] <= now:
                _, _, key = heapq.heappop(self._delayed)
                self.add(key)
            if self._delayed:
                with trio.move_on_at(self._delayed[0][0]):
                    await self._timer_lot.park()
            else:
                await self._timer_lot.park()
