"""The asyncio boundary: one object, owned by a nursery, passed to whatever speaks gRPC.

grpclib is asyncio-only; tote is trio. trio-asyncio runs an asyncio loop *inside* trio, so
both live on one thread and a call crosses loops without thread hand-offs (measured against a
dedicated asyncio thread in docs/agent.md, "Bridge"). Every grpclib object belongs to the loop
it was made on, so the loop is not looked up from context: `open_bridge()` opens it for the
lifetime of a block and yields an `AsyncioBridge`, and clients, streams and servers take that
object explicitly. A task of another nursery (a reconcile worker using the controller's pooled
connections) calls through the bridge it was handed, whichever loop its own context has.

The bridge's loop only logs asyncio's "unhandled error" reports. trio-asyncio's default
handler re-raises every report into the loop's nursery, which ends the whole process: grpclib
reports an unclosed `Channel` from `__del__` that way, so one leaked channel (an import whose
caller went away) used to kill the agent at the next garbage collection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import trio
import trio_asyncio

from tote_containerd.agent import grpc_shim

log = logging.getLogger("tote.agent.aio")
T = TypeVar("T")


class AsyncioBridge:
    """Calls across the boundary, on one asyncio loop."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await the asyncio coroutine function `fn` from trio."""
        result: T = await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args, **kwargs)
        return result

    async def call_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await the trio async function `fn` from asyncio code on this loop (grpclib
        server handlers)."""
        result: T = await trio_asyncio.trio_as_aio(fn, loop=self._loop)(*args)
        return result

    async def close_channel(self, channel: Any) -> None:
        """Close a grpclib channel, even while the calling task is being cancelled (an
        unclosed channel leaks its connection)."""
        if channel is None:
            return

        async def _close() -> None:
            channel.close()

        with trio.CancelScope(shield=True):
            try:
                await self.call(_close)
            except Exception as exc:  # closing is best effort
                log.debug("closing a channel failed: %s", exc)


@contextlib.asynccontextmanager
async def open_bridge() -> AsyncIterator[AsyncioBridge]:
    """An asyncio loop for the lifetime of the block.

    What the block raises leaves as it was raised, not wrapped in the loop nursery's
    exception group: the block's own failure is held while the loop closes and re-raised
    after, so callers catch it by type. A failure of the loop itself stays a group."""
    grpc_shim.install()
    failure: BaseException | None = None
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_asyncio_error)
        try:
            yield AsyncioBridge(loop)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            failure = exc
    if failure is not None:
        raise failure


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    """asyncio "unhandled error" reports (unclosed resources, exceptions nobody retrieved):
    logged, never raised — they concern one object or call, not the process."""
    exc = context.get("exception")
    msg = context.get("message") or "unhandled error in the asyncio loop"
    log.error("asyncio: %s", msg, exc_info=exc if isinstance(exc, BaseException) else None)
