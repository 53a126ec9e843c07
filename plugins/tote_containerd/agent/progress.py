"""Import progress: byte counts from parallel blob fetches, aggregated into the one
`ImportProgress` the ImportFrom stream carries, sent at most every `PROGRESS_INTERVAL`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from tote_containerd.agent.api import ImportProgress

PROGRESS_INTERVAL = 0.25

ProgressFn = Callable[[ImportProgress], Awaitable[None]]


class Reporter:
    """Aggregates byte counts from parallel fetches; reports at most every 250 ms."""

    def __init__(self, prog: ImportProgress, progress: ProgressFn) -> None:
        self.prog = prog
        self.progress = progress
        self._expected: int | None = None
        self._done = 0
        self._event = trio.Event()

    def expect(self, n: int) -> None:
        self._expected = n
        if self._done >= n:
            self._event.set()

    def one_done(self) -> None:
        self._done += 1
        if self._expected is not None and self._done >= self._expected:
            self._event.set()

    def add(self, n: int) -> None:
        self.prog.bytes_transferred += n

    def resumed(self, n: int) -> None:
        self.prog.bytes_resumed += n
        self.prog.bytes_transferred += n

    async def run(self) -> None:
        last = -1
        while not self._event.is_set():
            with trio.move_on_after(PROGRESS_INTERVAL):
                await self._event.wait()
            if self.prog.bytes_transferred != last:
                last = self.prog.bytes_transferred
                await self.progress(self.prog)
