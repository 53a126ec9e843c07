"""The agent's gRPC server (bridge module): grpclib handlers in asyncio that authorise the
caller from its certificate and call the trio side (`node_agent.NodeAgent`) through the
asyncio bridge; `serve` runs it as a trio task that fails its nursery if the server ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpclib.const
import grpclib.exceptions
import grpclib.health.check
import grpclib.health.service
import grpclib.server
import h2.exceptions
import msgspec
import trio

from tote_containerd._gen.tote.agent.v1 import agent_grpc
from tote_containerd._gen.tote.agent.v1 import agent_pb2 as pb
from tote_containerd.agent import convert, errors, image_records, metrics
from tote_containerd.agent.api import ImportProgress, ImportRequest, PushRequest
from tote_containerd.agent.asyncio_bridge import AsyncioBridge
from tote_containerd.agent.errors import AgentError
from tote_containerd.agent.grpc_shim import h2_config
from tote_containerd.agent.node_agent import NodeAgent
from tote_containerd.agent.tls import INSECURE, Identity, Role, identity_of

log = logging.getLogger("tote.agent.server")
T = TypeVar("T")

# Which certificate identity may call what (Health: anyone, even without a certificate).
ACL: dict[str, tuple[Role, ...]] = {
    "Inspect": ("controller",),
    "ImportFrom": ("controller",),
    "ListImages": ("controller",),
    "ResolveTag": ("controller",),
    "RemoveImage": ("controller",),
    "SetPinned": ("controller",),
    "Push": ("controller",),
    "OpenSession": ("agent",),
    "ReadBlob": ("agent",),
    "ExportLayer": ("agent",),
}


# Messages echo the caller's input (a 64 KiB "digest"); as a grpc-message trailer that
# overflowed HTTP/2's header list and the caller saw a protocol error instead of the status.
MAX_STATUS_MESSAGE = 1024


def _bounded(msg: str) -> str:
    return msg if len(msg) <= MAX_STATUS_MESSAGE else msg[:MAX_STATUS_MESSAGE - 1] + "…"


async def _fail(stream: Any, exc: AgentError) -> NoReturn:
    """End the call with `exc`'s status (`errors.to_wire`), its reason in the trailing
    metadata. The trailers are sent here because a raised GRPCError carries no metadata;
    the GRPCError raised after them only ends the handler (grpclib sends nothing more)."""
    status, message, metadata = errors.to_wire(exc)
    code, text = grpclib.const.Status[status], _bounded(message)
    with contextlib.suppress(h2.exceptions.StreamClosedError):  # the caller left: no one to tell
        await stream.send_trailing_metadata(status=code, status_message=text,
                                            metadata=metadata)
    raise grpclib.exceptions.GRPCError(code, text) from exc


class AgentService(agent_grpc.AgentBase):  # type: ignore[misc]
    def __init__(self, agent: NodeAgent, bridge: AsyncioBridge, *, insecure: bool) -> None:
        self.agent = agent
        self.bridge = bridge
        self.insecure = insecure

    def _authorise(self, stream: Any, method: str) -> Identity:
        if self.insecure:
            return INSECURE
        cert = stream.peer.cert() if stream.peer is not None else None
        ident = identity_of(cert)
        roles = ACL[method]
        if ident.role is None:
            metrics.RPCS.labels(method=method, code="UNAUTHENTICATED").inc()
            raise grpclib.exceptions.GRPCError(
                grpclib.const.Status.UNAUTHENTICATED,
                f"{method} needs a client certificate with a tote identity")
        if ident.role not in roles:
            metrics.RPCS.labels(method=method, code="PERMISSION_DENIED").inc()
            raise grpclib.exceptions.GRPCError(
                grpclib.const.Status.PERMISSION_DENIED,
                f"identity {ident.name!r} ({ident.role}) may not call {method}")
        return ident

    async def _run(self, stream: Any, method: str, fn: Callable[..., Awaitable[T]],
                   *args: Any) -> T:
        try:
            result = await self.bridge.call_trio(fn, *args)
        except grpclib.exceptions.GRPCError:
            raise
        except Exception as exc:  # the call's edge: one failure becomes one status
            failure = errors.agent_error_of(exc)
            if failure is not None:
                metrics.RPCS.labels(method=method, code=failure.code).inc()
                log.info("%s failed: %s", method, failure)
                if failure.__cause__ is not None:
                    log.debug("%s failure detail", method, exc_info=failure)
                await _fail(stream, failure)
            metrics.RPCS.labels(method=method, code="INTERNAL").inc()
            log.exception("%s crashed", method)
            raise grpclib.exceptions.GRPCError(
                grpclib.const.Status.INTERNAL,
                _bounded(f"internal error: {type(exc).__name__}: {exc}")) from exc
        metrics.RPCS.labels(method=method, code="OK").inc()
        return result

    async def Inspect(self, stream: Any) -> None:
        self._authorise(stream, "Inspect")
        req = await stream.recv_message()
        res = await self._run(stream, "Inspect", self.agent.inspect, req.ref, req.platform)
        await stream.send_message(convert.to_pb(res, pb.InspectResponse))

    async def OpenSession(self, stream: Any) -> None:
        ident = self._authorise(stream, "OpenSession")
        req = await stream.recv_message()
        s = await self._run(stream, "OpenSession", self.agent.source.open_session, req.token,
                            req.target_node, ident)
        await stream.send_message(convert.to_pb(s, pb.OpenSessionResponse))

    async def ReadBlob(self, stream: Any) -> None:
        ident = self._authorise(stream, "ReadBlob")
        req = await stream.recv_message()

        async def send(offset: int, data: bytes, total: int) -> None:
            await self.bridge.call(stream.send_message,
                                   pb.ReadBlobResponse(offset=offset, data=data, total=total))

        await self._run(stream, "ReadBlob", self.agent.source.read_blob, req.session, req.digest,
                        req.offset, req.length, ident, send)

    async def ExportLayer(self, stream: Any) -> None:
        ident = self._authorise(stream, "ExportLayer")
        req = await stream.recv_message()
        res = await self._run(stream, "ExportLayer", self.agent.source.export_layer, req.session,
                              req.layer_digest, ident)
        await stream.send_message(convert.to_pb(res, pb.ExportLayerResponse))

    async def ImportFrom(self, stream: Any) -> None:
        self._authorise(stream, "ImportFrom")
        req = await stream.recv_message()

        async def progress(p: ImportProgress) -> None:
            await self.bridge.call(stream.send_message, convert.to_pb(p, pb.ImportProgress))

        await self._run(stream, "ImportFrom", self.agent.target.import_from,
                        convert.from_pb(req, ImportRequest), progress)

    async def ListImages(self, stream: Any) -> None:
        self._authorise(stream, "ListImages")
        req = await stream.recv_message()
        res = await self._run(stream, "ListImages", image_records.list_images, self.agent.cd,
                              req.digest)
        images = [msgspec.to_builtins(r) for r in res]
        await stream.send_message(pb.ListImagesResponse(images=images))

    async def ResolveTag(self, stream: Any) -> None:
        self._authorise(stream, "ResolveTag")
        req = await stream.recv_message()
        res = await self._run(stream, "ResolveTag", image_records.resolve_tag, self.agent.cd,
                              req.ref)
        await stream.send_message(convert.to_pb(res, pb.ResolveTagResponse))

    async def RemoveImage(self, stream: Any) -> None:
        self._authorise(stream, "RemoveImage")
        req = await stream.recv_message()
        removed = await self._run(stream, "RemoveImage", image_records.remove_image, self.agent.cd,
                                  list(req.names), req.digest)
        await stream.send_message(pb.RemoveImageResponse(removed=removed))

    async def SetPinned(self, stream: Any) -> None:
        self._authorise(stream, "SetPinned")
        req = await stream.recv_message()
        updated = await self._run(stream, "SetPinned", image_records.set_pinned, self.agent.cd,
                                  list(req.names), req.digest, req.pinned)
        await stream.send_message(pb.SetPinnedResponse(updated=updated))

    async def Push(self, stream: Any) -> None:
        self._authorise(stream, "Push")
        req = await stream.recv_message()
        res = await self._run(stream, "Push", self.agent.push, convert.from_pb(req, PushRequest))
        await stream.send_message(convert.to_pb(res, pb.PushResponse))

    async def Health(self, stream: Any) -> None:
        await stream.recv_message()
        res = await self._run(stream, "Health", self.agent.health)
        await stream.send_message(convert.to_pb(res, pb.HealthResponse))


class Serving:
    """A running agent server, as its owner sees it."""

    def __init__(self, bridge: AsyncioBridge, server: Any, status: Any) -> None:
        self._bridge = bridge
        self.server = server  # the grpclib server (closing it ends `serve` with an error)
        self._status = status

    async def set_serving(self, ok: bool) -> None:
        """What grpc.health.v1 answers (it reflects containerd reachability)."""

        async def _set() -> None:
            self._status.set(ok)

        await self._bridge.call(_set)


async def serve(bridge: AsyncioBridge, agent: NodeAgent, sock: socket.socket,
                ssl_context: ssl.SSLContext | None, *, insecure: bool,
                task_status: trio.TaskStatus[Serving] = trio.TASK_STATUS_IGNORED) -> NoReturn:
    """Serve the agent API and grpc.health.v1 on `sock` (listening already) until
    cancelled; `started()` hands over a `Serving`. Should the server end any other way,
    this raises, failing the owner's nursery: an agent never stays up without serving."""
    service = AgentService(agent, bridge, insecure=insecure)

    async def _start() -> tuple[Any, Any]:
        status = grpclib.health.check.ServiceStatus()
        health = grpclib.health.service.Health({service: [status]})
        server = grpclib.server.Server([service, health], config=h2_config())
        await server.start(sock=sock, ssl=ssl_context)
        return server, status

    server, status = await bridge.call(_start)

    async def _closed() -> None:
        # Shielded on the asyncio side: cancelling this wait (the owner stops the server)
        # must not cancel the future grpclib resolves when it closes, which `_stop` awaits.
        await asyncio.shield(server.wait_closed())

    async def _stop() -> None:
        server.close()
        await server.wait_closed()

    try:
        task_status.started(Serving(bridge, server, status))
        await bridge.call(_closed)
        raise RuntimeError("the agent gRPC server closed")
    finally:
        with trio.CancelScope(shield=True):
            await bridge.call(_stop)
