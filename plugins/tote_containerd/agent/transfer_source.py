"""The source side of a transfer: a target agent redeems a transfer token for a session
(single use, bound to the caller's certificate), then reads the image's blobs through it —
over gRPC (`read_blob`) or, on the fast path, over the data channel
(`authorise_file_read`, served by `data_channel.DataServer`). Layers this node discarded after
unpacking are regenerated from its snapshots on request (`export_layer`, see
`layer_export`) and become readable through the same session."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import trio

from tote_containerd.agent import metrics, oci
from tote_containerd.agent.api import ExportedLayer, Session
from tote_containerd.agent.content import LocalContent
from tote_containerd.agent.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from tote_containerd.agent.layer_export import LayerExporter, Regenerable
from tote_containerd.agent.tls import Identity
from tote_containerd.agent.tokens import Verifier

log = logging.getLogger("tote.agent")

SESSION_TTL = 3600.0
FAST_CHUNK = 4 * 1024 * 1024

SendChunk = Callable[[int, bytes, int], Awaitable[None]]


class _SessionState(msgspec.Struct):
    caller: str
    source: str
    target: str
    digest: str
    allowed: dict[str, int]  # digest → size
    expires: float
    regenerable: dict[str, Regenerable]  # discarded layer digest → its snapshots


class TransferSource:
    def __init__(self, content: LocalContent, verifier: Verifier, data_port: int = 0,
                 exporter: LayerExporter | None = None) -> None:
        self.content = content
        self.verifier = verifier
        self.exporter = exporter
        self.data_port = data_port  # announced in sessions; 0 = no data channel
        self._sessions: dict[str, _SessionState] = {}

    async def open_session(self, token: str, target_node: str, caller: Identity) -> Session:
        if not target_node:
            raise InvalidArgument("target_node is required")
        node = self.content.node
        claims = self.verifier.verify(token, source=node, target=target_node)
        if caller.node and caller.node != claims.target:
            raise PermissionDenied(
                f"caller certificate is for node {caller.node!r}, token for {claims.target!r}")
        oci.check_digest(claims.digest)
        # Single use, durable across agent restarts: a containerd lease named after the nonce.
        remaining = max(1.0, claims.exp - time.time()) + 60
        if not await self.content.cd.create_lease(f"tote-token-{claims.nonce[:64]}",
                                                  expire_in=remaining):
            raise PermissionDenied("transfer token already used (replay refused)")
        allowed, regenerable = await self._image_blobs(claims.digest)
        sid = secrets.token_urlsafe(24)
        expires = time.time() + SESSION_TTL
        self._gc_sessions()
        self._sessions[sid] = _SessionState(caller=caller.name, source=claims.source,
                                            target=claims.target, digest=claims.digest,
                                            allowed=allowed, expires=expires,
                                            regenerable=regenerable)
        log.info("session opened for %s → %s (%d blobs%s)", claims.digest, claims.target,
                 len(allowed), f", {len(regenerable)} layers from snapshots"
                 if regenerable else "")
        return Session(session=sid, expires_unix=int(expires), source_node=node,
                       data_port=self.data_port, regenerable=sorted(regenerable))

    def _gc_sessions(self) -> None:
        now = time.time()
        for sid in [s for s, st in self._sessions.items() if st.expires < now]:
            del self._sessions[sid]

    async def _image_blobs(self, digest: str) -> tuple[dict[str, int], dict[str, Regenerable]]:
        """Every blob of `digest` this node holds — index, held manifests, configs, layers —
        and the layers it discarded but can regenerate from its snapshots."""
        content = self.content
        info = await content.cd.info(digest)
        if info is None:
            raise NotFound(f"{digest} is not on node {content.node}",
                           reason="source_unavailable")
        allowed = {digest: info.size}
        doc = await content.json(digest, digest)
        manifests: list[oci.Desc] = []
        if oci.media_type_of(doc, "") in oci.INDEX_TYPES:
            for e in doc.get("manifests") or []:
                with contextlib.suppress(FailedPrecondition):
                    d = oci.Desc(str(e.get("mediaType", "")), oci.check_digest(
                        str(e.get("digest"))), int(e.get("size", 0)))
                    if await content.present(d.digest):
                        manifests.append(d)
        else:
            manifests.append(oci.Desc(oci.MT_OCI_MANIFEST, digest, info.size))
        regenerable: dict[str, Regenerable] = {}
        for m in manifests:
            allowed[m.digest] = m.size
            manifest = await content.json(m.digest, "manifest")
            config, layers = oci.manifest_children(manifest)
            for d in [config, *layers]:
                allowed[d.digest] = d.size
            absent = {d.digest for d in layers if not await content.present(d.digest)}
            if absent and self.exporter is not None and await content.present(config.digest):
                regenerable.update(await self.exporter.regenerable(config, layers, absent))
        return allowed, regenerable

    async def export_layer(self, session: str, layer: str, caller: Identity) -> ExportedLayer:
        """Regenerate a discarded layer of the session's image; the session may then read
        the tar it became (by the returned digest)."""
        st = self._session(session, caller)
        oci.check_digest(layer)
        regen = st.regenerable.get(layer)
        if regen is None or self.exporter is None:
            raise PermissionDenied(f"{layer} is not a layer this session can regenerate")
        lease = f"tote-export-{session[:16]}"
        out = await self.exporter.export(layer, regen, lease)
        st.allowed[out.digest] = out.size
        return out

    async def authorise_file_read(self, session: str, digest: str, offset: int, length: int,
                                  caller: Identity) -> tuple[Path, int, int, int]:
        """For the data channel: (blob file, offset, end, size) if the session may read it."""
        size, end = self._authorise_read(session, digest, offset, length, caller)
        path = self.content.readable_file(digest)
        if path is None:
            raise FailedPrecondition("no direct access to this blob here; use ReadBlob")
        return path, offset, end, size

    def _session(self, session: str, caller: Identity) -> _SessionState:
        st = self._sessions.get(session)
        if st is None or st.expires < time.time():
            raise PermissionDenied("unknown or expired session")
        if st.caller != caller.name:
            raise PermissionDenied("session belongs to another peer")
        return st

    def _authorise_read(self, session: str, digest: str, offset: int, length: int,
                        caller: Identity) -> tuple[int, int]:
        st = self._session(session, caller)
        oci.check_digest(digest)
        size = st.allowed.get(digest)
        if size is None:
            raise PermissionDenied(f"{digest} is not part of the image this session is for")
        if offset < 0 or length < 0 or offset > size:
            raise InvalidArgument(
                f"invalid range offset={offset} length={length} for a blob of {size} bytes")
        end = size if length == 0 else min(size, offset + length)
        return size, end

    async def read_blob(self, session: str, digest: str, offset: int, length: int,
                        caller: Identity, send: SendChunk) -> None:
        size, end = self._authorise_read(session, digest, offset, length, caller)
        sent = 0
        path = self.content.readable_file(digest)
        if path is not None:
            pos = offset
            f = await trio.to_thread.run_sync(path.open, "rb")
            try:
                await trio.to_thread.run_sync(f.seek, offset)
                while pos < end:
                    data = await trio.to_thread.run_sync(f.read, min(FAST_CHUNK, end - pos))
                    if not data:
                        raise Unavailable(f"{digest}: blob file shorter than expected")
                    await send(pos, data, size)
                    pos += len(data)
                    sent += len(data)
            finally:
                f.close()
            metrics.BYTES_SENT.labels(path="fast").inc(sent)
            return
        if end == offset:
            await send(offset, b"", size)
            return
        async with self.content.cd.read(digest, offset, end - offset) as chunks:
            pos = offset
            async for data in chunks:
                await send(pos, data, size)
                pos += len(data)
                sent += len(data)
        metrics.BYTES_SENT.labels(path="api").inc(sent)
