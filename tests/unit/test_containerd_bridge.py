"""The trio-asyncio bridge must not let one leaked or failed asyncio object end the agent."""

from __future__ import annotations

import gc

import grpclib.client
import trio
import trio_asyncio
from tote_containerd.agent import _aio
from tote_containerd.agent.client import AgentClient


async def test_asyncio_error_reports_are_logged_not_raised() -> None:
    """trio-asyncio's default handler would re-raise this into the loop nursery."""
    async with _aio.open_loop():
        loop = trio_asyncio.current_loop.get()
        loop.call_exception_handler({"message": "Unclosed connection: Channel(test)"})
        loop.call_exception_handler({"message": "boom", "exception": ValueError("x")})
        await trio.sleep(0.05)  # a propagated error would surface here


async def test_unclosed_channel_collected_inside_the_loop_is_harmless() -> None:
    """The salvage test 6 crash: a grpclib Channel garbage-collected while connected."""

    async def _mk() -> grpclib.client.Channel:
        ch = grpclib.client.Channel("127.0.0.1", 9)
        ch._protocol = object()  # looks connected to __del__
        ch.close = lambda: None  # type: ignore[method-assign]
        return ch

    async with _aio.open_loop():
        ch = await _aio.aio(_mk)
        del ch
        gc.collect()
        await trio.sleep(0.05)


async def test_client_close_runs_when_cancelled() -> None:
    closed: list[bool] = []

    class FakeChannel:
        def close(self) -> None:
            closed.append(True)

    async with _aio.open_loop():
        client = AgentClient("127.0.0.1:9")
        client._channel = FakeChannel()
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.close()
    assert closed == [True]
