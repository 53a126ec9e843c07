"""A grpclib client stream driven from trio, through the asyncio bridge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import grpclib.exceptions
import trio

from tote_containerd.agent import grpc_shim
from tote_containerd.agent.asyncio_bridge import AsyncioBridge

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")


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

    def __init__(self, bridge: AsyncioBridge, method: Any, *,
                 metadata: dict[str, str] | None = None, timeout: float | None = None) -> None:
        self._bridge = bridge
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

        self._stream = await self._bridge.call(_open)
        return self

    async def send(self, message: S, *, end: bool = False) -> None:
        await self._bridge.call(self._stream.send_message, message, end=end)
        if end:
            self._ended = True

    async def end(self) -> None:
        if not self._ended:
            await self._bridge.call(self._stream.end)
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
            if not grpc_shim.trailers_read(stream):
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
            return await self._bridge.call(fn)
        except grpclib.exceptions.GRPCError:
            self._done = self._status_delivered = True
            raise
        except grpclib.exceptions.StreamTerminatedError:
            status = grpc_shim.received_status(self._stream)
            if status is None:
                raise
            self._done = self._status_delivered = True
            raise status from None

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
            if reset and grpc_shim.needs_reset(stream):
                with contextlib.suppress(Exception):
                    await stream.cancel()
            await stream.__aexit__(None, None, None)

        if exc is not None or not self._done:
            # Shielded: the reset must reach the server even when we are being cancelled.
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._bridge.call(_close, True)
            return
        if self._status_delivered:
            # The caller already has the server's final status (and handled it); grpclib
            # would only raise it, or the reset that followed it, a second time.
            with contextlib.suppress(grpclib.exceptions.GRPCError,
                                     grpclib.exceptions.StreamTerminatedError):
                await self._bridge.call(_close, False)
            return
        await self._bridge.call(_close, False)
