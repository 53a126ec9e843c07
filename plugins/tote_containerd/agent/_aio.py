"""The asyncio bridge: the only place that touches trio-asyncio (plus the grpclib modules).

grpclib is asyncio-only; tote is trio. We run an asyncio loop *inside* trio with trio-asyncio
(`open_loop`), so both live on one thread and a call crosses loops without thread hand-offs.
Measured against a dedicated asyncio-loop thread in docs/agent.md ("Bridge").

`aio(fn, *args)` runs an asyncio coroutine function from trio; `trio_from_aio(fn, *args)` runs
a trio function from asyncio code (grpclib server handlers). `TrioStream` wraps a grpclib
client stream so trio code can send/receive messages on it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import grpclib.exceptions
import trio
import trio_asyncio

from tote_containerd.agent.errors import single_leaf

log = logging.getLogger("tote.agent.aio")
T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")


def h2_config() -> Any:
    """The one grpclib HTTP/2 configuration (agent server, agent client, containerd client):
    flow-control windows large enough (64 MiB per connection, 16 MiB per stream) that blob
    streams are not held back by HTTP/2's 64 KiB default window waiting for updates."""
    import grpclib.config

    return grpclib.config.Configuration(
        http2_connection_window_size=64 * 1024 * 1024,
        http2_stream_window_size=16 * 1024 * 1024,
    )


def tune_h2() -> None:
    """h2 formats every received frame with repr(); a DATA frame's repr hex-encodes its whole
    payload. Make that repr cheap (it is only used for trace logging)."""
    try:
        from hyperframe import frame as hf
    except ImportError:  # pragma: no cover
        return

    def _body_repr(self: Any) -> str:
        return f"<{len(self.data)} bytes>"

    hf.DataFrame._body_repr = _body_repr  # type: ignore[method-assign]
    _larger_frames()


MAX_FRAME = 1 << 20


def _larger_frames() -> None:
    """Advertise a 1 MiB HTTP/2 max frame size (default 16 KiB) on every grpclib connection:
    a 4 MiB message then costs 4 DATA frames to parse instead of 256."""
    from grpclib import protocol
    from h2.settings import SettingCodes

    if getattr(protocol.H2Protocol, "_tote_tuned", False):
        return
    original = protocol.H2Protocol.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        original(self, transport)
        self.connection._connection.update_settings({SettingCodes.MAX_FRAME_SIZE: MAX_FRAME})
        self.connection.flush()

    protocol.H2Protocol.connection_made = connection_made  # type: ignore[method-assign]
    protocol.H2Protocol._tote_tuned = True  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def open_loop() -> AsyncIterator[None]:
    """Run an asyncio loop for the lifetime of the block (needed by every grpclib object).

    trio-asyncio's loop nursery wraps whatever escapes the block in an exception group;
    a single error is unwrapped again so callers can catch it by type.

    The loop's exception handler only logs. trio-asyncio's default handler re-raises every
    report it gets into the loop's nursery, which ends the whole process: grpclib reports an
    unclosed `Channel` from `__del__` that way, so one leaked channel (e.g. of an import
    whose caller went away) used to kill the agent at the next garbage collection."""
    tune_h2()
    try:
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_asyncio_error)
            yield
    except BaseExceptionGroup as eg:
        leaf = single_leaf(eg)
        if leaf is eg:
            raise
        raise leaf from None


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    """asyncio "unhandled error" reports (unclosed resources, exceptions nobody retrieved):
    logged, never raised — they concern one object or call, not the process."""
    exc = context.get("exception")
    msg = context.get("message") or "unhandled error in the asyncio loop"
    log.error("asyncio: %s", msg, exc_info=exc if isinstance(exc, BaseException) else None)


async def close_channel(channel: Any) -> None:
    """Close a grpclib channel, even while the calling task is being cancelled (an unclosed
    channel leaks its connection; see `open_loop`)."""
    if channel is None:
        return

    async def _close() -> None:
        channel.close()

    with trio.CancelScope(shield=True):
        try:
            await aio(_close)
        except Exception as exc:  # closing is best effort
            log.debug("closing a channel failed: %s", exc)


async def aio(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Await an asyncio coroutine function from trio."""
    result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    return result


async def trio_from_aio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await a trio async function from asyncio code running in the bridged loop."""
    result: T = await trio_asyncio.trio_as_aio(fn)(*args)
    return result


class TrioStream(Generic[S, R]):
    """A grpclib client stream driven from trio. Use as `async with`.

    On exit without error the stream is finished normally (trailers checked, so a server error
    raises); on error or cancellation it is reset, so an abandoned stream never keeps the
    HTTP/2 window full.

    A server that ends a call before the client half-closed it (a gRPC-Go server answering a
    client-streaming call with an error, e.g. containerd's content Write STAT → ALREADY_EXISTS)
    sends its status and then RST_STREAM(NO_ERROR) right behind it. When both frames arrive in
    one socket read, grpclib marks the stream terminated before the waiting task has looked at
    the status and raises `StreamTerminatedError("Stream reset by remote party, error_code:
    0")`. `recv`/`finish` then raise the status the server did send (`GRPCError`), and once a
    status was delivered the stream is closed without reading it again.
    """

    def __init__(self, method: Any, *, metadata: dict[str, str] | None = None,
                 timeout: float | None = None) -> None:
        self._method = method
        self._metadata = metadata
        self._timeout = timeout
        self._stream: Any = None
        self._ended = False
        self._done = False
        self._status_delivered = False

    async def __aenter__(self) -> TrioStream[S, R]:
        async def _open() -> Any:
            cm = self._method.open(metadata=self._metadata, timeout=self._timeout)
            return await cm.__aenter__()

        self._stream = await aio(_open)
        return self

    async def send(self, message: S, *, end: bool = False) -> None:
        await aio(self._stream.send_message, message, end=end)
        if end:
            self._ended = True

    async def end(self) -> None:
        if not self._ended:
            await aio(self._stream.end)
            self._ended = True

    async def recv(self) -> R | None:
        """The next message; None at the end. A server error status raises `GRPCError`."""
        msg: R | None = await self._status_call(self._stream.recv_message)
        if msg is None:
            self._done = True
        return msg

    async def finish(self) -> None:
        """After the last message: read trailers, raising the server's error status if any."""
        stream = self._stream

        async def _finish() -> None:
            if not stream._recv_trailing_metadata_done:
                await stream.recv_trailing_metadata()

        await self._status_call(_finish)

    @property
    def trailing_metadata(self) -> Mapping[str, str] | None:
        """What the server sent along with its status (tote's agent: the error's reason),
        once `recv`/`finish` raised that status. None when the stream ended before the
        trailers were read (a status recovered after a reset, see the class docstring)."""
        return None if self._stream is None else self._stream.trailing_metadata

    async def _status_call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await aio(fn)
        except grpclib.exceptions.GRPCError:
            self._done = self._status_delivered = True
            raise
        except grpclib.exceptions.StreamTerminatedError:
            status = self._received_status()
            if status is None:
                raise
            self._done = self._status_delivered = True
            raise status from None

    def _received_status(self) -> grpclib.exceptions.GRPCError | None:
        """The error status the server sent before it reset the stream, if it sent one."""
        try:
            self._stream._maybe_raise()
        except grpclib.exceptions.GRPCError as exc:
            return exc
        return None

    async def __aiter__(self) -> AsyncIterator[R]:
        while True:
            msg = await self.recv()
            if msg is None:
                return
            yield msg

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        stream = self._stream
        if stream is None:
            return

        async def _close(reset: bool) -> None:
            if reset and stream._send_request_done and not stream._cancel_done:
                with contextlib.suppress(Exception):
                    await stream.cancel()
            await stream.__aexit__(None, None, None)

        if exc is not None or not self._done:
            # Shielded: the reset must reach the server even when we are being cancelled.
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await aio(_close, True)
            return
        if self._status_delivered:
            # The caller already has the server's final status (and handled it); grpclib
            # would only raise it, or the reset that followed it, a second time.
            with contextlib.suppress(grpclib.exceptions.GRPCError,
                                     grpclib.exceptions.StreamTerminatedError):
                await aio(_close, False)
            return
        await aio(_close, False)
