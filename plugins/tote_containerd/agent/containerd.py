"""Trio-facing client for the local containerd (bridge module: grpclib over the unix socket).

Every call carries the namespace in `containerd-namespace` metadata and, when given, a lease id
in `containerd-lease`. grpclib errors are mapped to `tote_containerd.agent.errors`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import grpclib.client
import grpclib.exceptions
import msgspec
import trio
from google.protobuf import empty_pb2, field_mask_pb2

from tote_containerd._gen.containerd.services.content.v1 import content_grpc, content_pb2
from tote_containerd._gen.containerd.services.images.v1 import images_grpc, images_pb2
from tote_containerd._gen.containerd.services.introspection.v1 import (
    introspection_grpc,
    introspection_pb2,
)
from tote_containerd._gen.containerd.services.leases.v1 import leases_grpc, leases_pb2
from tote_containerd._gen.containerd.services.version.v1 import version_grpc
from tote_containerd._gen.containerd.types import descriptor_pb2
from tote_containerd.agent import errors
from tote_containerd.agent.asyncio_bridge import AsyncioBridge
from tote_containerd.agent.grpc_shim import h2_config
from tote_containerd.agent.grpc_stream import TrioStream

WRITER_LOCK_RETRIES = 8
WRITE_CHUNK = 4 * 1024 * 1024  # containerd refuses messages > 16 MiB
WRITES_IN_FLIGHT = 4


class ContentInfo(msgspec.Struct, frozen=True):
    digest: str
    size: int
    labels: dict[str, str] = {}


class Descriptor(msgspec.Struct, frozen=True):
    media_type: str
    digest: str
    size: int


class ImageRec(msgspec.Struct, frozen=True):
    name: str
    target: Descriptor
    labels: dict[str, str] = {}


@contextlib.contextmanager
def _mapped(call: str = "") -> Any:
    """containerd's errors as agent errors (`errors.from_containerd`; `call` names the
    request where a status means something particular, e.g. "commit")."""
    try:
        yield
    except grpclib.exceptions.GRPCError as exc:
        raise errors.from_containerd(exc.status.name, exc.message or "", call) from exc
    except (ConnectionError, OSError, grpclib.exceptions.StreamTerminatedError) as exc:
        raise errors.Unavailable(f"containerd unreachable: {exc}") from exc


class ContainerdClient:
    """One grpclib channel to containerd, on the asyncio loop of `bridge`."""

    def __init__(self, bridge: AsyncioBridge, socket_path: str, namespace: str = "k8s.io"
                 ) -> None:
        self.bridge = bridge
        self.socket_path = socket_path
        self.namespace = namespace
        self._channel: Any = None

    async def connect(self) -> None:
        async def _mk() -> Any:
            cfg = h2_config()
            return grpclib.client.Channel(path=self.socket_path, config=cfg)

        self._channel = await self.bridge.call(_mk)
        self._content = content_grpc.ContentStub(self._channel)
        self._images = images_grpc.ImagesStub(self._channel)
        self._leases = leases_grpc.LeasesStub(self._channel)
        self._intro = introspection_grpc.IntrospectionStub(self._channel)
        self._version = version_grpc.VersionStub(self._channel)

    async def close(self) -> None:
        """Idempotent; runs even when the caller is being cancelled."""
        ch, self._channel = self._channel, None
        await self.bridge.close_channel(ch)

    def _md(self, lease: str | None = None) -> dict[str, str]:
        md = {"containerd-namespace": self.namespace}
        if lease:
            md["containerd-lease"] = lease
        return md

    async def _unary(self, method: Any, request: Any, *, lease: str | None = None,
                     deadline: float | None = 60) -> Any:
        with _mapped():
            return await self.bridge.call(method, request, metadata=self._md(lease),
                                          timeout=deadline)

    async def _unary_unless(self, expected: type[errors.AgentError], method: Any,
                            request: Any) -> Any | None:
        """A unary call whose `expected` refusal (NOT_FOUND for a lookup, ALREADY_EXISTS for
        a create) is an answer, None, rather than an error."""
        try:
            return await self._unary(method, request)
        except expected:
            return None

    def stub(self, factory: Any) -> Any:
        """A stub for another service on this channel (snapshots, diff, CRI: `unpack.py`)."""
        return factory(self._channel)

    async def call(self, method: Any, request: Any, *, lease: str | None = None,
                   deadline: float | None = 60) -> Any:
        """One unary call with the namespace (and lease) metadata, errors mapped."""
        return await self._unary(method, request, lease=lease, deadline=deadline)

    # --- server ------------------------------------------------------------------------
    async def version(self) -> str:
        resp = await self._unary(self._version.Version, empty_pb2.Empty(), deadline=5)
        return str(resp.version)

    async def content_root(self) -> str:
        resp = await self._unary(
            self._intro.Plugins,
            introspection_pb2.PluginsRequest(filters=["type==io.containerd.content.v1"]),
            deadline=10,
        )
        for p in resp.plugins:
            if "root" in p.exports:
                return str(p.exports["root"])
        return ""

    async def snapshotter_capabilities(self, name: str) -> list[str]:
        """What the snapshotter plugin `name` advertises (e.g. "rebase"); [] if unknown."""
        resp = await self._unary(
            self._intro.Plugins,
            introspection_pb2.PluginsRequest(
                filters=[f"type==io.containerd.snapshotter.v1,id=={name}"]),
            deadline=10,
        )
        for p in resp.plugins:
            if p.id == name:
                return list(p.capabilities)
        return []

    # --- content -----------------------------------------------------------------------
    async def info(self, digest: str) -> ContentInfo | None:
        resp = await self._unary_unless(errors.NotFound, self._content.Info,
                                        content_pb2.InfoRequest(digest=digest))
        if resp is None:
            return None
        i = resp.info
        return ContentInfo(digest=i.digest, size=i.size, labels=dict(i.labels))

    async def update_labels(self, digest: str, labels: dict[str, str]) -> None:
        req = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels=labels),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        await self._unary(self._content.Update, req)

    async def delete_content(self, digest: str) -> None:
        """Delete a blob; one that is already gone is no error."""
        await self._unary_unless(errors.NotFound, self._content.Delete,
                                 content_pb2.DeleteContentRequest(digest=digest))

    async def abort(self, ref: str) -> None:
        with contextlib.suppress(errors.NotFound):
            await self._unary(self._content.Abort, content_pb2.AbortRequest(ref=ref))

    async def read_all(self, digest: str, *, limit: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (manifest, index, config) in memory; refuses more than `limit`."""
        parts: list[bytes] = []
        n = 0
        async with self.read(digest) as chunks:
            async for data in chunks:
                n += len(data)
                if n > limit:
                    raise errors.ResourceExhausted(f"{digest} is larger than {limit} bytes")
                parts.append(data)
        return b"".join(parts)

    @contextlib.asynccontextmanager
    async def read(self, digest: str, offset: int = 0, size: int = 0
                   ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Chunks of a blob from `offset` (`size` 0 = to the end). containerd sends 1 MiB."""
        stream: TrioStream[Any, Any] = TrioStream(self.bridge, self._content.Read,
                                                  metadata=self._md())
        with _mapped():
            async with stream:
                await stream.send(content_pb2.ReadContentRequest(
                    digest=digest, offset=offset, size=size), end=True)

                async def chunks() -> AsyncGenerator[bytes, None]:
                    with _mapped():
                        while True:
                            msg = await stream.recv()
                            if msg is None:
                                return
                            yield msg.data

                gen = chunks()
                async with contextlib.aclosing(gen):
                    yield gen

    @contextlib.asynccontextmanager
    async def writer(self, ref: str, total: int, expected: str, *, lease: str | None
                     ) -> AsyncIterator[ContentWriter]:
        """A content Write stream for ingest `ref`, after STAT.

        containerd holds an ingest ref locked while a Write stream on it is open, and
        releases it only once it has processed the end of that stream. An import cancelled
        because its caller went away resets its streams, and the next import of the same
        digest may STAT the ref before containerd let go ("ref … locked: unavailable"): that
        is retried for a few seconds."""
        for attempt in range(WRITER_LOCK_RETRIES + 1):
            stream: TrioStream[Any, Any] = TrioStream(self.bridge, self._content.Write,
                                                      metadata=self._md(lease), timeout=None)
            with _mapped():
                async with stream:
                    w = ContentWriter(stream, ref, total, expected)
                    try:
                        await w.stat()
                    except grpclib.exceptions.GRPCError as exc:
                        # UNAVAILABLE answering STAT is the ingest lock: containerd's
                        # content store returns no other "unavailable" when a writer opens.
                        if exc.status.name != "UNAVAILABLE" or attempt == WRITER_LOCK_RETRIES:
                            raise
                    else:
                        yield w
                        return
            await trio.sleep(min(1.0, 0.05 * 2 ** attempt))

    # --- leases ------------------------------------------------------------------------
    async def create_lease(self, lease_id: str, *, expire_in: float,
                           labels: dict[str, str] | None = None) -> bool:
        """Create a lease that expires on its own; False if it already exists."""
        exp = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expire_in)
        lab = {"containerd.io/gc.expire": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}
        lab.update(labels or {})
        created = await self._unary_unless(errors.AlreadyExists, self._leases.Create,
                                           leases_pb2.CreateRequest(id=lease_id, labels=lab))
        return created is not None

    async def list_leases(self, filters: Iterable[str] = ()) -> list[tuple[str, dict[str, str]]]:
        """(id, labels) of the namespace's leases matching containerd filters, e.g.
        `labels."tote.dev/import"`."""
        resp = await self._unary(self._leases.List,
                                 leases_pb2.ListRequest(filters=list(filters)))
        return [(lease.id, dict(lease.labels)) for lease in resp.leases]

    async def delete_lease(self, lease_id: str, *, sync: bool = False) -> None:
        with contextlib.suppress(errors.NotFound):
            await self._unary(self._leases.Delete,
                              leases_pb2.DeleteRequest(id=lease_id, sync=sync))

    # --- images ------------------------------------------------------------------------
    async def list_images(self, filters: Iterable[str] = ()) -> list[ImageRec]:
        resp = await self._unary(self._images.List,
                                 images_pb2.ListImagesRequest(filters=list(filters)))
        return [_image(i) for i in resp.images]

    async def get_image(self, name: str) -> ImageRec | None:
        resp = await self._unary_unless(errors.NotFound, self._images.Get,
                                        images_pb2.GetImageRequest(name=name))
        return None if resp is None else _image(resp.image)

    async def put_image(self, name: str, target: Descriptor, labels: dict[str, str]) -> str:
        """Create the record, or update target and labels of an existing one.

        Returns "created", "updated" or "unchanged"."""
        img = images_pb2.Image(
            name=name, labels=labels,
            target=descriptor_pb2.Descriptor(
                media_type=target.media_type, digest=target.digest, size=target.size),
        )
        if await self._unary_unless(errors.AlreadyExists, self._images.Create,
                                    images_pb2.CreateImageRequest(image=img)) is not None:
            return "created"
        existing = await self.get_image(name)
        if existing is not None and existing.target == target and all(
                existing.labels.get(k) == v for k, v in labels.items()):
            return "unchanged"
        paths = ["target", *[f"labels.{k}" for k in labels]]
        await self._unary(self._images.Update, images_pb2.UpdateImageRequest(
            image=img, update_mask=field_mask_pb2.FieldMask(paths=paths)))
        return "updated"

    async def set_image_label(self, rec: ImageRec, key: str, value: str | None) -> None:
        """Set one label of an existing record (None removes it); nothing else changes. The
        target goes along although the mask excludes it: containerd 2.4 converts it before
        reading the mask and crashes on an absent one."""
        img = images_pb2.Image(
            name=rec.name, labels={key: value} if value is not None else {},
            target=descriptor_pb2.Descriptor(media_type=rec.target.media_type,
                                             digest=rec.target.digest, size=rec.target.size))
        await self._unary(self._images.Update, images_pb2.UpdateImageRequest(
            image=img, update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}"])))

    async def delete_image(self, name: str, *, sync: bool = False) -> bool:
        deleted = await self._unary_unless(errors.NotFound, self._images.Delete,
                                           images_pb2.DeleteImageRequest(name=name, sync=sync))
        return deleted is not None


def _image(i: Any) -> ImageRec:
    t = i.target
    return ImageRec(name=i.name, labels=dict(i.labels),
                    target=Descriptor(media_type=t.media_type, digest=t.digest, size=t.size))


class ContentWriter:
    """One containerd content Write stream: STAT, pipelined WRITEs, COMMIT.

    After `stat()`: `exists` (already committed in this namespace), else `offset` is the resume
    point (== total: the blob exists elsewhere in the store; COMMIT alone links it).
    """

    def __init__(self, stream: TrioStream[Any, Any], ref: str, total: int, expected: str
                 ) -> None:
        self._stream = stream
        self.ref = ref
        self.total = total
        self.expected = expected
        self.offset = 0
        self.exists = False
        self._pending = 0

    async def stat(self) -> None:
        await self._stream.send(content_pb2.WriteContentRequest(
            action=content_pb2.STAT, ref=self.ref, total=self.total, expected=self.expected))
        try:
            resp = await self._stream.recv()
        except grpclib.exceptions.GRPCError as exc:
            if exc.status.name == "ALREADY_EXISTS":
                self.exists = True
                self.offset = self.total
                return
            raise
        if resp is None:
            raise errors.Unavailable("containerd closed the write stream on STAT")
        self.offset = int(resp.offset)
        if self.offset > self.total:
            raise errors.FailedPrecondition(
                f"ingest {self.ref} is at {self.offset} > total {self.total}")

    async def write(self, data: bytes) -> None:
        """Send bytes at the current offset; keeps a few writes in flight."""
        for start in range(0, len(data), WRITE_CHUNK):
            piece = data[start:start + WRITE_CHUNK]
            await self._stream.send(content_pb2.WriteContentRequest(
                action=content_pb2.WRITE, ref=self.ref, offset=self.offset, data=piece))
            self.offset += len(piece)
            self._pending += 1
            if self._pending >= WRITES_IN_FLIGHT:
                await self._ack()

    async def _ack(self) -> None:
        resp = await self._stream.recv()
        if resp is None:
            await self._stream.finish()
            raise errors.Unavailable("containerd closed the write stream")
        self._pending -= 1

    async def commit(self, labels: dict[str, str] | None = None) -> str:
        """COMMIT with offset/total/expected: containerd verifies size and digest, and
        bytes that do not hash to `expected` raise `errors.DigestMismatch`.

        Why FAILED_PRECONDITION answering this COMMIT can only be a digest mismatch (the
        table's ("FAILED_PRECONDITION", "commit") row): the request carries offset = total,
        and containerd's content service first refuses an offset other than the ingest's
        own with OUT_OF_RANGE, so the size checks of its Commit (the only other
        FAILED_PRECONDITION there besides committing a writer twice, which one COMMIT per
        stream never does) already hold; bad labels are INVALID_ARGUMENT, a blob that
        exists ALREADY_EXISTS. What is left is its check of the written bytes' digest
        against `expected`. Deciding by status and call, not by containerd's wording,
        keeps working when that wording changes between versions."""
        while self._pending:
            await self._ack()
        await self._stream.send(content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT, ref=self.ref, offset=self.total, total=self.total,
            expected=self.expected, labels=labels or {}), end=True)
        with _mapped("commit"):
            resp = await self._stream.recv()
            if resp is None:
                await self._stream.finish()  # raises containerd's error status
        if resp is None:
            raise errors.Unavailable("containerd closed the write stream on COMMIT")
        while await self._stream.recv() is not None:
            pass
        return str(resp.digest)
