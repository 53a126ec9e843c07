"""The asyncio bridge: one object, explicit, that never lets one leaked or failed asyncio
object end the agent; and the agent's gRPC server as a trio task that fails its nursery
when the server ends."""

from __future__ import annotations

import gc
import socket
from functools import partial
from pathlib import Path

import grpclib.client
import grpclib.server
import pytest
import trio
from tote_containerd.agent import grpc_shim, server
from tote_containerd.agent.asyncio_bridge import AsyncioBridge, open_bridge
from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.node_agent import NodeAgent
from tote_containerd.agent.tokens import Verifier


async def test_asyncio_error_reports_are_logged_not_raised() -> None:
    """trio-asyncio's default handler would re-raise this into the loop nursery."""
    async with open_bridge() as bridge:
        loop = bridge._loop
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

    async with open_bridge() as bridge:
        ch = await bridge.call(_mk)
        del ch
        gc.collect()
        await trio.sleep(0.05)


async def test_client_close_runs_when_cancelled() -> None:
    closed: list[bool] = []

    class FakeChannel:
        def close(self) -> None:
            closed.append(True)

    async with open_bridge() as bridge:
        client = AgentClient("127.0.0.1:9", bridge)
        client._channel = FakeChannel()
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.close()
    assert closed == [True]


async def test_what_the_block_raises_leaves_unwrapped() -> None:
    """The loop's nursery does not wrap the block's own error: callers catch it by type."""
    with pytest.raises(KeyError):
        async with open_bridge():
            raise KeyError("mine")


async def test_a_bridge_serves_tasks_of_another_nursery() -> None:
    """A task that did not open the bridge (a reconcile worker using the controller's pooled
    connections) calls through the bridge it is handed; nothing is looked up from context."""
    results: list[int] = []

    async def double(x: int) -> int:
        return 2 * x

    async def worker(bridge: AsyncioBridge) -> None:
        results.append(await bridge.call(double, 21))

    async with trio.open_nursery() as outer, open_bridge() as bridge:
        outer.start_soon(worker, bridge)
        await trio.sleep(0.05)
    assert results == [42]


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def test_serve_fails_its_nursery_when_the_server_ends(tmp_path: Path) -> None:
    """The server answers; then something closes it: `serve` raises at once (no polling),
    ending the nursery, so the agent process exits and the kubelet restarts it."""
    async with open_bridge() as bridge:
        cd = ContainerdClient(bridge, str(tmp_path / "no-containerd.sock"))
        await cd.connect()
        agent = NodeAgent(cd=cd, node="n1", platform="linux/amd64", verifier=Verifier(),
                          open_peer=None)  # type: ignore[arg-type]
        sock = _listening()
        endpoint = f"127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ExceptionGroup) as info, trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                serving = await nursery.start(partial(server.serve, bridge, agent, sock, None,
                                                      insecure=True))
                async with AgentClient.connect(endpoint, bridge=bridge) as client:
                    assert (await client.health()).containerd_ok is False  # none here

                async def close() -> None:
                    serving.server.close()

                await bridge.call(close)
                await trio.sleep_forever()
        assert info.group_contains(RuntimeError, match="gRPC server closed")
        await cd.close()


async def test_connections_advertise_the_large_frame_size() -> None:
    """grpc_shim's tweak reaches real connections of the installed grpclib."""
    from grpclib.health.check import ServiceStatus
    from grpclib.health.service import Health
    from grpclib.health.v1 import health_grpc, health_pb2

    async with open_bridge() as bridge:
        sock = _listening()

        async def _serve() -> grpclib.server.Server:
            srv = grpclib.server.Server([Health({Health(): [ServiceStatus()]})],
                                       config=grpc_shim.h2_config())
            await srv.start(sock=sock)
            return srv

        async def _check() -> tuple[grpclib.client.Channel, int]:
            ch = grpclib.client.Channel("127.0.0.1", sock.getsockname()[1],
                                        config=grpc_shim.h2_config())
            await health_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return ch, grpc_shim.advertised_max_frame(ch)

        async def _stop(srv: grpclib.server.Server) -> None:
            srv.close()
            await srv.wait_closed()

        srv = await bridge.call(_serve)
        ch, advertised = await bridge.call(_check)
        assert advertised == grpc_shim.MAX_FRAME
        await bridge.close_channel(ch)
        await bridge.call(_stop, srv)


def test_a_grpclib_without_what_the_shim_reads_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: grpclib's client Stream without `_cancel_done` (as a future release might be):
    a configuration error naming the attribute and the supported versions, before anything
    is patched or served."""
    from grpclib.client import Stream

    from tote_core.errors import ConfigError

    monkeypatch.delattr(Stream, "_cancel_done")
    with pytest.raises(ConfigError, match=r"lacks Stream\._cancel_done; tote supports grpclib "
                                          r"0\.4\.7, 0\.4\.8, 0\.4\.9"):
        grpc_shim.install()
