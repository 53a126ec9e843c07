"""Trio-facing client for the tote agent API (bridge module). Used by the controller plugin
(inspect, list, resolve, remove, import, health) and by a target agent (sessions, blob reads).

    async with AgentClient.connect("10.0.0.5:9090", ssl_context=ctx) as agent:
        result = await agent.inspect("docker.io/library/nginx:1.25")

`connect` opens an asyncio bridge of its own unless it is handed one (the controller's
pooled connections live on the bridge of their service).
"""

from __future__ import annotations

import contextlib
import copy
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpclib.client
import grpclib.exceptions
import trio

from tote_containerd._gen.tote.agent.v1 import agent_grpc
from tote_containerd._gen.tote.agent.v1 import agent_pb2 as pb
from tote_containerd.agent import convert, errors
from tote_containerd.agent.api import (
    ExportedLayer,
    Health,
    ImageRecord,
    ImportProgress,
    ImportRequest,
    InspectResult,
    PushRequest,
    PushResult,
    Resolved,
    Session,
)
from tote_containerd.agent.asyncio_bridge import AsyncioBridge, open_bridge
from tote_containerd.agent.grpc_shim import h2_config
from tote_containerd.agent.grpc_stream import TrioStream
from tote_containerd.agent.peer import split_endpoint
from tote_containerd.agent.tls import PeerRoleMismatch

# Longest a blob stream may stay silent before the read fails (see AgentClient.read_blob).
STREAM_STALL_TIMEOUT = 30.0


async def _call(method: Any, request: Any, deadline: float | None) -> Any:
    """One unary call (asyncio side). An error status leaves as the agent error it stands
    for, with the reason from its trailing metadata (`errors.from_wire`): grpclib's own
    unary call hides the stream, and with it the trailers."""
    stream = method.open(timeout=deadline)
    try:
        async with stream:
            await stream.send_message(request, end=True)
            return await stream.recv_message()
    except grpclib.exceptions.GRPCError as exc:
        raise errors.from_wire(exc.status.name, exc.message or exc.status.name,
                               stream.trailing_metadata) from exc


@contextlib.contextmanager
def _mapped(endpoint: str, stream: TrioStream[Any, Any] | None = None) -> Any:
    """Transport failures as agent errors; an error status of `stream` (the reason read
    from its trailing metadata) as the agent error it stands for."""
    try:
        yield
    except grpclib.exceptions.GRPCError as exc:
        raise errors.from_wire(exc.status.name, exc.message or exc.status.name,
                               stream.trailing_metadata if stream else None) from exc
    except PeerRoleMismatch as exc:
        raise errors.PermissionDenied(f"agent {endpoint}: {exc}", reason="unauthorized"
                                      ) from exc
    except (ConnectionError, OSError, ssl.SSLError,
            grpclib.exceptions.StreamTerminatedError) as exc:
        raise errors.Unavailable(f"agent {endpoint} unreachable: {exc}",
                                 reason="agent_unreachable") from exc


@contextlib.asynccontextmanager
async def _bridge_for(bridge: AsyncioBridge | None) -> AsyncIterator[AsyncioBridge]:
    if bridge is not None:
        yield bridge
        return
    async with open_bridge() as own:
        yield own


class AgentClient:
    def __init__(self, endpoint: str, bridge: AsyncioBridge, *,
                 ssl_context: ssl.SSLContext | None = None, rpc_timeout: float = 30.0) -> None:
        self._host, self._port = split_endpoint(endpoint)
        self.bridge = bridge
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self.rpc_timeout = rpc_timeout
        self._channel: Any = None
        self._stub: Any = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, endpoint: str, *, bridge: AsyncioBridge | None = None,
                      ssl_context: ssl.SSLContext | None = None,
                      rpc_timeout: float = 30.0) -> AsyncIterator[AgentClient]:
        async with _bridge_for(bridge) as on:
            client = cls(endpoint, on, ssl_context=ssl_context, rpc_timeout=rpc_timeout)
            try:
                await client.open()  # a failed peer check must not leak the channel either
                yield client
            finally:
                await client.close()

    async def open(self) -> None:
        """Create the channel; it connects on the first call, and the peer's role is checked
        in that TLS handshake (and in any later reconnect) by the client context."""

        async def _mk() -> Any:
            cfg = h2_config()
            return grpclib.client.Channel(self._host, self._port, ssl=self.ssl_context, config=cfg)

        self._channel = await self.bridge.call(_mk)
        self._stub = agent_grpc.AgentStub(self._channel)

    def with_timeout(self, rpc_timeout: float) -> AgentClient:
        """This client's connection with another default deadline per call (a pooled
        connection is shared by callers with different deadlines)."""
        view = copy.copy(self)
        view.rpc_timeout = rpc_timeout
        return view

    async def close(self) -> None:
        """Idempotent; runs even when the caller is being cancelled."""
        ch, self._channel = self._channel, None
        await self.bridge.close_channel(ch)

    async def _unary(self, method: Any, request: Any, deadline: float | None = None) -> Any:
        with _mapped(self.endpoint):
            return await self.bridge.call(_call, method, request, deadline or self.rpc_timeout)

    # ---------------------------------------------------------------- controller calls
    async def inspect(self, ref: str, platform: str = "") -> InspectResult:
        return convert.from_pb(await self._unary(
            self._stub.Inspect, pb.InspectRequest(ref=ref, platform=platform)), InspectResult)

    async def list_images(self, digest: str = "") -> list[ImageRecord]:
        resp = await self._unary(self._stub.ListImages, pb.ListImagesRequest(digest=digest))
        return [convert.from_pb(i, ImageRecord) for i in resp.images]

    async def resolve_tag(self, ref: str) -> Resolved:
        return convert.from_pb(
            await self._unary(self._stub.ResolveTag, pb.ResolveTagRequest(ref=ref)), Resolved)

    async def remove_image(self, names: list[str] | None = None, digest: str = "") -> list[str]:
        resp = await self._unary(self._stub.RemoveImage,
                                 pb.RemoveImageRequest(names=names or [], digest=digest))
        return list(resp.removed)

    async def set_pinned(self, pinned: bool, names: list[str] | None = None, digest: str = ""
                         ) -> list[str]:
        """Set or clear the CRI pin label on image records; the names that changed."""
        resp = await self._unary(self._stub.SetPinned, pb.SetPinnedRequest(
            names=names or [], digest=digest, pinned=pinned))
        return list(resp.updated)

    async def push(self, request: PushRequest, deadline: float) -> PushResult:
        """Have this agent push an image to a registry; the caller owns the deadline."""
        return convert.from_pb(await self._unary(
            self._stub.Push, convert.to_pb(request, pb.PushRequest), deadline=deadline),
            PushResult)

    async def health(self) -> Health:
        return convert.from_pb(
            await self._unary(self._stub.Health, pb.HealthRequest(), deadline=10), Health)

    async def import_from(
        self, request: ImportRequest,
        progress: Callable[[ImportProgress], Awaitable[None]] | None = None,
    ) -> ImportProgress:
        """Run an import on this (target) agent; the caller owns the deadline."""
        last: ImportProgress | None = None
        stream: TrioStream[Any, Any] = TrioStream(self.bridge, self._stub.ImportFrom)
        with _mapped(self.endpoint, stream):
            async with stream:
                await stream.send(convert.to_pb(request, pb.ImportFromRequest), end=True)
                async for msg in stream:
                    last = convert.from_pb(msg, ImportProgress)
                    if progress is not None:
                        await progress(last)
        if last is None or not last.done:
            raise errors.Unavailable(f"agent {self.endpoint} ended the import without result")
        return last

    # ---------------------------------------------------------------- agent ↔ agent
    async def open_session(self, token: str, target_node: str) -> Session:
        return convert.from_pb(await self._unary(
            self._stub.OpenSession, pb.OpenSessionRequest(token=token, target_node=target_node)),
            Session)

    async def export_layer(self, session: str, layer_digest: str, deadline: float | None = None
                           ) -> ExportedLayer:
        """Have the source regenerate a discarded layer from its snapshots (minutes for a
        large layer: the caller owns the deadline, None = the import's)."""
        with _mapped(self.endpoint):
            resp = await self.bridge.call(_call, self._stub.ExportLayer, pb.ExportLayerRequest(
                session=session, layer_digest=layer_digest), deadline)
        return convert.from_pb(resp, ExportedLayer)

    @contextlib.asynccontextmanager
    async def read_blob(self, session: str, digest: str, offset: int = 0, length: int = 0
                        ) -> AsyncIterator[AsyncIterator[tuple[int, bytes, int]]]:
        """Chunks `(offset, data, blob size)` of a blob range."""
        stream: TrioStream[Any, Any] = TrioStream(self.bridge, self._stub.ReadBlob)
        with _mapped(self.endpoint, stream):
            async with stream:
                await stream.send(pb.ReadBlobRequest(session=session, digest=digest,
                                                     offset=offset, length=length), end=True)

                async def chunks() -> AsyncGenerator[tuple[int, bytes, int], None]:
                    with _mapped(self.endpoint, stream):
                        while True:
                            # A cut link leaves the TCP connection open and silent: without
                            # a deadline per message the read waits forever instead of
                            # letting the controller try another source. A slow link still
                            # delivers a message (at most a chunk) well within it.
                            with trio.move_on_after(STREAM_STALL_TIMEOUT) as idle:
                                msg = await stream.recv()
                            if idle.cancelled_caught:
                                raise errors.Unavailable(
                                    f"agent {self.endpoint} sent nothing for "
                                    f"{STREAM_STALL_TIMEOUT:.0f}s", reason="agent_unreachable")
                            if msg is None:
                                return
                            yield msg.offset, msg.data, msg.total

                gen = chunks()
                async with contextlib.aclosing(gen):
                    yield gen
