"""Run a program's main task until SIGTERM or SIGINT, then cancel it cleanly.

One signal handler for every long-running program (`tote controller`, `tote agent`): the
kubelet stops a pod with SIGTERM, a developer with Ctrl-C, and both should end the same way.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("tote")


async def until_signalled(main: Callable[[], Awaitable[Any]]) -> None:
    """Run `main` until it returns or SIGTERM/SIGINT arrives; then cancel it cleanly."""
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch_signals)
        await main()
        nursery.cancel_scope.cancel()
