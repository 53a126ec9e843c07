"""The agent's logic, in trio: inspect, sessions + blob reads (source side), import (target
side), image records, health. No asyncio here: containerd and peers are reached through the
bridge clients (`containerd.ContainerdClient`, `client.AgentClient`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import secrets
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec
import trio

from tote_containerd.agent import dataplane, metrics, oci, push
from tote_containerd.agent.api import (
    BlobInfo,
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
from tote_containerd.agent.client import split_endpoint
from tote_containerd.agent.containerd import ContainerdClient, Descriptor
from tote_containerd.agent.errors import (
    AgentError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    one_error,
)
from tote_containerd.agent.tls import Identity
from tote_containerd.agent.tokens import Verifier

log = logging.getLogger("tote.agent")

IMPORT_LEASE_TTL = 3600.0
SESSION_TTL = 3600.0
FAST_CHUNK = 4 * 1024 * 1024
PROGRESS_INTERVAL = 0.25
CRI_LABELS = {oci.CRI_LABEL: "managed"}

ProgressFn = Callable[[ImportProgress], Awaitable[None]]
SendChunk = Callable[[int, bytes, int], Awaitable[None]]
Chunk = tuple[int, bytes, int]  # offset, data, blob size


class Peer(Protocol):
    """What the import needs from the source agent (see `client.AgentClient`)."""

    async def open_session(self, token: str, target_node: str) -> Session: ...

    def read_blob(self, session: str, digest: str, offset: int = 0, length: int = 0
                  ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Chunk]]:
        ...


PeerOpener = Callable[[str], contextlib.AbstractAsyncContextManager[Peer]]


# trio ≥ 0.23 calls it abandon_on_cancel, older versions cancellable.
_ABANDON: dict[str, Any] = {
    "abandon_on_cancel" if "abandon_on_cancel" in inspect.signature(
        trio.to_thread.run_sync).parameters else "cancellable": True}


class _SessionState(msgspec.Struct):
    caller: str
    source: str
    target: str
    digest: str
    allowed: dict[str, int]  # digest → size
    expires: float


def _place(part: Path, final: Path) -> bool:
    """Hard-link the verified file into containerd's blob directory (if not there yet)."""
    if final.exists():
        return True
    if not part.exists():
        return False
    with contextlib.suppress(FileExistsError):
        os.link(part, final)
    return True


def _sweep_parts(tmpdir: Path, max_age: float) -> None:
    """Delete partial fast-path files nobody resumed within `max_age` seconds."""
    if not tmpdir.is_dir():
        return
    cutoff = time.time() - max_age
    for p in tmpdir.glob("*.part"):
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                p.unlink()


def _sha256_file_prefix(path: Path, length: int) -> Any:
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = length
        while left:
            chunk = f.read(min(left, 8 * 1024 * 1024))
            if not chunk:
                raise OSError(f"{path} shorter than {length}")
            h.update(chunk)
            left -= len(chunk)
    return h


class AgentCore:
    def __init__(self, *, cd: ContainerdClient, node: str, platform: str,
                 verifier: Verifier, open_peer: PeerOpener, content_root: str = "",
                 fast_path: bool = False, parallelism: int = 4, data_port: int = 0,
                 data_ssl: ssl.SSLContext | None = None) -> None:
        self.cd = cd
        self.node = node
        self.platform = platform
        self.verifier = verifier
        self.open_peer = open_peer
        self.content_root = content_root
        self.fast_path = fast_path and bool(content_root)
        self.parallelism = max(1, parallelism)
        self.data_port = data_port if self.fast_path else 0  # served only with file access
        self.data_ssl = data_ssl
        self._sessions: dict[str, _SessionState] = {}
        self._import_locks: dict[str, trio.Lock] = {}
        self.containerd_version = ""
        self.containerd_error = ""

    # ------------------------------------------------------------------ setup / health
    async def probe(self) -> bool:
        try:
            self.containerd_version = await self.cd.version()
            self.containerd_error = ""
            metrics.CONTAINERD_UP.set(1)
            return True
        except AgentError as exc:
            self.containerd_error = str(exc)
            metrics.CONTAINERD_UP.set(0)
            return False

    async def health(self) -> Health:
        ok = await self.probe()
        return Health(containerd_ok=ok, containerd_version=self.containerd_version,
                      node_name=self.node, platform=self.platform,
                      content_root=self.content_root, fast_path=self.fast_path,
                      error=self.containerd_error)

    # ------------------------------------------------------------------ local blobs
    async def _present(self, digest: str) -> bool:
        return await self.cd.info(digest) is not None

    async def _local_json(self, digest: str, what: str) -> dict[str, Any]:
        data = await self.cd.read_all(digest, limit=oci.MAX_MANIFEST_BYTES)
        return oci.load_json(data, what)

    async def _target_of(self, ref: str) -> tuple[Descriptor, list[str]]:
        """Resolve a ref (record name) or digest to the top descriptor and record names."""
        if oci.is_digest(ref):
            info = await self.cd.info(ref)
            if info is None:
                raise NotFound(f"{ref} is not in this node's content store", reason="absent")
            doc = await self._local_json(ref, ref)
            mt = oci.media_type_of(doc, oci.MT_OCI_MANIFEST)
            recs = await self.cd.list_images([f"target.digest=={ref}"])
            return Descriptor(media_type=mt, digest=ref, size=info.size), [r.name for r in recs]
        if ref.startswith("sha256:"):
            oci.check_digest(ref)
        oci.parse_ref(ref)
        rec = await self.cd.get_image(ref)
        if rec is None:
            raise NotFound(f"no image record {ref!r} on node {self.node}", reason="absent")
        recs = await self.cd.list_images([f"target.digest=={rec.target.digest}"])
        return rec.target, sorted({r.name for r in recs} | {ref})

    # ------------------------------------------------------------------ inspect
    async def inspect(self, ref: str, platform: str = "") -> InspectResult:
        want = oci.check_platform(platform) if platform else self.platform
        top, names = await self._target_of(ref)
        blobs: list[BlobInfo] = []
        reason = ""
        discarded = False
        config_digest = ""
        top_doc = await self._local_json(top.digest, top.digest)
        mt = oci.media_type_of(top_doc, top.media_type)
        manifest_desc: oci.Desc | None = oci.Desc(mt, top.digest, top.size)
        if mt in oci.INDEX_TYPES:
            blobs.append(BlobInfo(digest=top.digest, media_type=mt, size=top.size,
                                  present=True, role="index"))
            manifest_desc = oci.select_manifest(top_doc, want)
            if manifest_desc is None:
                reason = f"the index has no manifest for platform {want}"
        if manifest_desc is not None:
            m_present = await self._present(manifest_desc.digest)
            blobs.append(BlobInfo(digest=manifest_desc.digest,
                                  media_type=manifest_desc.media_type or oci.MT_OCI_MANIFEST,
                                  size=manifest_desc.size, present=m_present, role="manifest"))
            if not m_present:
                reason = f"the manifest for platform {want} is not on this node"
            else:
                manifest = await self._local_json(manifest_desc.digest, "manifest")
                config, layers = oci.manifest_children(manifest)
                config_digest = config.digest
                c_present = await self._present(config.digest)
                blobs.append(BlobInfo(digest=config.digest, media_type=config.media_type,
                                      size=config.size, present=c_present, role="config"))
                missing_layers = 0
                for layer in layers:
                    p = await self._present(layer.digest)
                    missing_layers += not p
                    blobs.append(BlobInfo(digest=layer.digest, media_type=layer.media_type,
                                          size=layer.size, present=p, role="layer"))
                if not c_present:
                    reason = "the image config blob is missing"
                elif missing_layers:
                    discarded = True
                    reason = (f"layers_discarded: {missing_layers} of {len(layers)} compressed "
                              "layer blobs are gone from this node's content store (containerd "
                              "discard_unpacked_layers=true deletes them after unpack); this "
                              "node cannot be a salvage source for the original digests")
        total = sum(b.size for b in blobs)
        present = sum(b.size for b in blobs if b.present)
        return InspectResult(
            digest=top.digest, media_type=mt, blobs=blobs, total_bytes=total,
            present_bytes=present, complete=not reason, layers_discarded=discarded,
            reason=reason, names=names, platform=want, config_digest=config_digest)

    # ------------------------------------------------------------------ source side
    async def open_session(self, token: str, target_node: str, caller: Identity) -> Session:
        if not target_node:
            raise InvalidArgument("target_node is required")
        claims = self.verifier.verify(token, source=self.node, target=target_node)
        if caller.node and caller.node != claims.target:
            raise PermissionDenied(
                f"caller certificate is for node {caller.node!r}, token for {claims.target!r}")
        oci.check_digest(claims.digest)
        # Single use, durable across agent restarts: a containerd lease named after the nonce.
        remaining = max(1.0, claims.exp - time.time()) + 60
        if not await self.cd.create_lease(f"tote-token-{claims.nonce[:64]}",
                                          expire_in=remaining):
            raise PermissionDenied("transfer token already used (replay refused)")
        allowed = await self._image_blobs(claims.digest)
        sid = secrets.token_urlsafe(24)
        expires = time.time() + SESSION_TTL
        self._gc_sessions()
        self._sessions[sid] = _SessionState(caller=caller.name, source=claims.source,
                                            target=claims.target, digest=claims.digest,
                                            allowed=allowed, expires=expires)
        log.info("session opened for %s → %s (%d blobs)", claims.digest, claims.target,
                 len(allowed))
        return Session(session=sid, expires_unix=int(expires), source_node=self.node,
                       data_port=self.data_port)

    def _gc_sessions(self) -> None:
        now = time.time()
        for sid in [s for s, st in self._sessions.items() if st.expires < now]:
            del self._sessions[sid]

    async def _image_blobs(self, digest: str) -> dict[str, int]:
        """Every blob of `digest` this node holds: index, held manifests, configs, layers."""
        info = await self.cd.info(digest)
        if info is None:
            raise NotFound(f"{digest} is not on node {self.node}", reason="source_unavailable")
        allowed = {digest: info.size}
        doc = await self._local_json(digest, digest)
        manifests: list[oci.Desc] = []
        if oci.media_type_of(doc, "") in oci.INDEX_TYPES:
            for e in doc.get("manifests") or []:
                with contextlib.suppress(FailedPrecondition):
                    d = oci.Desc(str(e.get("mediaType", "")), oci.check_digest(
                        str(e.get("digest"))), int(e.get("size", 0)))
                    if await self._present(d.digest):
                        manifests.append(d)
        else:
            manifests.append(oci.Desc(oci.MT_OCI_MANIFEST, digest, info.size))
        for m in manifests:
            allowed[m.digest] = m.size
            manifest = await self._local_json(m.digest, "manifest")
            config, layers = oci.manifest_children(manifest)
            for d in [config, *layers]:
                allowed[d.digest] = d.size
        return allowed

    async def authorise_file_read(self, session: str, digest: str, offset: int, length: int,
                                  caller: Identity) -> tuple[Path, int, int, int]:
        """For the data channel: (blob file, offset, end, size) if the session may read it."""
        size, end = self._authorise_read(session, digest, offset, length, caller)
        path = self._blob_path(digest)
        if not self.fast_path or path is None or not path.exists():
            raise FailedPrecondition("no direct access to this blob here; use ReadBlob")
        return path, offset, end, size

    def _authorise_read(self, session: str, digest: str, offset: int, length: int,
                        caller: Identity) -> tuple[int, int]:
        st = self._sessions.get(session)
        if st is None or st.expires < time.time():
            raise PermissionDenied("unknown or expired session")
        if st.caller != caller.name:
            raise PermissionDenied("session belongs to another peer")
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
        path = self._blob_path(digest)
        if self.fast_path and path is not None and path.exists():
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
        async with self.cd.read(digest, offset, end - offset) as chunks:
            pos = offset
            async for data in chunks:
                await send(pos, data, size)
                pos += len(data)
                sent += len(data)
        metrics.BYTES_SENT.labels(path="api").inc(sent)

    async def push(self, req: PushRequest) -> PushResult:
        """Backup push (see `push`): blobs from the files when this agent reads them directly."""
        def readable(digest: str) -> Path | None:
            return self._blob_path(digest) if self.fast_path else None

        return await push.Pusher(self.cd, req, platform=self.platform, blob_path=readable).run()

    def _blob_path(self, digest: str) -> Path | None:
        if not self.content_root:
            return None
        return Path(self.content_root) / "blobs" / "sha256" / digest.split(":", 1)[1]

    # ------------------------------------------------------------------ target side
    async def import_from(self, req: ImportRequest, progress: ProgressFn) -> ImportProgress:
        oci.check_digest(req.digest)
        want = oci.check_platform(req.platform) if req.platform else self.platform
        for name in req.names:
            oci.parse_ref(name)
        try:
            host, _port = split_endpoint(req.source_endpoint)
        except InvalidArgument:
            raise InvalidArgument(f"invalid source endpoint {req.source_endpoint!r}") from None
        if req.max_bytes < 0:
            raise InvalidArgument("max_bytes must not be negative")
        lock = self._import_locks.setdefault(req.digest, trio.Lock())
        started = time.monotonic()
        result = "error"
        try:
            async with lock:
                out = await self._import_locked(req, want, progress, host)
            result = "ok"
            return out
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._import_locks.pop(req.digest, None)
            metrics.TRANSFERS.labels(result=result).inc()
            metrics.TRANSFER_SECONDS.observe(time.monotonic() - started)

    async def _import_locked(self, req: ImportRequest, want: str, progress: ProgressFn,
                             host: str) -> ImportProgress:
        hexd = req.digest.split(":", 1)[1]
        lease = f"tote-import-{hexd[:32]}"
        prog = ImportProgress(phase="resolving", path="fast" if self.fast_path else "api")
        if self.fast_path:
            await trio.to_thread.run_sync(_sweep_parts, Path(self.content_root) / "tote-tmp",
                                          IMPORT_LEASE_TTL)
        async with self.open_peer(req.source_endpoint) as peer:
            sess = await peer.open_session(req.token, self.node)
            if sess.source_node and sess.source_node != req.source_node:
                raise PermissionDenied(
                    f"source agent is node {sess.source_node!r}, expected {req.source_node!r}")
            top_bytes = await self._small_blob(peer, sess.session, req.digest, None)
            top_doc = oci.load_json(top_bytes, "image")
            top_mt = oci.media_type_of(top_doc, oci.MT_OCI_MANIFEST)
            index_doc: dict[str, Any] | None = None
            if top_mt in oci.INDEX_TYPES:
                index_doc = top_doc
                mdesc = oci.select_manifest(top_doc, want)
                if mdesc is None:
                    raise FailedPrecondition(f"image {req.digest} has no manifest for {want}",
                                             reason="platform_missing")
                m_bytes = await self._small_blob(peer, sess.session, mdesc.digest, mdesc.size)
                manifest = oci.load_json(m_bytes, "manifest")
            elif top_mt in oci.MANIFEST_TYPES:
                manifest, m_bytes = top_doc, top_bytes
                mdesc = oci.Desc(top_mt, req.digest, len(top_bytes))
            else:
                raise FailedPrecondition(f"unsupported media type {top_mt!r}")
            config, layers = oci.manifest_children(manifest)
            children: dict[str, oci.Desc] = {}
            for d in [config, *layers]:
                children.setdefault(d.digest, d)
            missing: list[oci.Desc] = []
            for d in children.values():
                if await self._present(d.digest):
                    prog.blobs_skipped += 1
                else:
                    missing.append(d)
            top_new = not await self._present(req.digest)
            m_new = index_doc is not None and not await self._present(mdesc.digest)
            prog.blobs_total = len(children) + 1 + (index_doc is not None)
            prog.bytes_total = (sum(d.size for d in missing) + len(top_bytes) * top_new
                                + len(m_bytes) * m_new)
            prog.config_digest = config.digest
            metrics.BLOBS_SKIPPED.inc(prog.blobs_skipped)
            if req.max_bytes and prog.bytes_total > req.max_bytes:
                raise FailedPrecondition(
                    f"{prog.bytes_total} bytes would have to move, more than the limit of "
                    f"{req.max_bytes}", reason="too_large")
            # The lease only now, when bytes are about to be written: a refused import (bad
            # token, wrong peer, no such platform, too large) leaves nothing behind. It stays
            # after a failed transfer so a retry resumes the in-flight ingests.
            await self.cd.create_lease(lease, expire_in=IMPORT_LEASE_TTL,
                                       labels={"tote.dev/import": req.digest})
            prog.phase = "transferring"
            await progress(prog)
            reporter = _Reporter(prog, progress)
            sem = trio.Semaphore(max(1, req.parallelism or self.parallelism))
            try:
                async with trio.open_nursery() as nursery:
                    for d in sorted(missing, key=lambda x: -x.size):
                        nursery.start_soon(self._fetch_one, peer, sess, d, lease, sem,
                                           reporter, host)
                    nursery.start_soon(reporter.run)
                    # reporter.run ends once every fetch is done
                    reporter.expect(len(missing))
            except BaseExceptionGroup as eg:
                leaf = one_error(eg, "parallel blob streams")
                if leaf is eg:
                    raise
                raise leaf from None
            prog.phase = "committing"
            await progress(prog)
            # Parents after children, each with GC labels pointing at its children.
            await self._commit_small(mdesc.digest, m_bytes, lease,
                                     oci.gc_labels_manifest(config, layers))
            if index_doc is not None:
                present = {mdesc.digest}
                await self._commit_small(req.digest, top_bytes, lease,
                                         oci.gc_labels_index(index_doc, present))
            prog.bytes_transferred = prog.bytes_total
        # Image records last: nothing is visible before every blob is committed.
        target = Descriptor(media_type=top_mt, digest=req.digest, size=len(top_bytes))
        names = oci.image_names(req.names[0] if req.names else None, None, req.digest,
                                config.digest)
        for extra in req.names[1:]:
            if extra not in names:
                names.insert(1, extra)
                ref = oci.parse_ref(extra)
                if ref.with_digest(req.digest) not in names:
                    names.insert(2, ref.with_digest(req.digest))
        for name in names:
            how = await self.cd.put_image(name, target, dict(CRI_LABELS))
            log.info("image record %s %s → %s", name, how, req.digest)
        # The image is complete and recorded: from here on nothing may turn it into a failure
        # (the controller would retry a finished transfer). The lease expires on its own.
        try:
            await self.cd.delete_lease(lease)
        except AgentError as exc:
            log.warning("import of %s complete, but releasing lease %s failed (it expires "
                        "in %d s): %s", req.digest, lease, IMPORT_LEASE_TTL, exc)
        prog.names = names
        prog.phase = "done"
        prog.done = True
        await progress(prog)
        return prog

    async def _small_blob(self, peer: Peer, session: str, digest: str, size: int | None
                          ) -> bytes:
        """Manifest/index bytes: local copy if present, else fetched and verified."""
        if await self._present(digest):
            return await self.cd.read_all(digest, limit=oci.MAX_MANIFEST_BYTES)
        parts: list[bytes] = []
        n = 0
        async with peer.read_blob(session, digest) as chunks:
            async for _off, data, total in chunks:
                if total > oci.MAX_MANIFEST_BYTES or (size is not None and total != size):
                    raise FailedPrecondition(
                        f"{digest}: source reports {total} bytes, expected "
                        f"{size if size is not None else '<= 4 MiB'}")
                n += len(data)
                if n > total:
                    raise DataLoss(f"{digest}: source sent more bytes than announced")
                parts.append(data)
        data = b"".join(parts)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            metrics.DIGEST_MISMATCH.inc()
            raise DataLoss(f"{digest}: bytes from the source do not match the digest",
                           reason="digest_mismatch")
        metrics.BYTES_RECEIVED.labels(path="api").inc(len(data))
        return data

    async def _commit_small(self, digest: str, data: bytes, lease: str,
                            labels: dict[str, str]) -> None:
        async with self.cd.writer(f"tote-{digest.split(':', 1)[1]}", len(data), digest,
                                  lease=lease) as w:
            if w.exists:
                pass
            else:
                if w.offset < len(data):
                    await w.write(data[w.offset:])
                await w.commit(labels)
                return
        await self.cd.update_labels(digest, labels)

    async def _fetch_one(self, peer: Peer, sess: Session, d: oci.Desc, lease: str,
                         sem: trio.Semaphore, reporter: _Reporter, host: str) -> None:
        try:
            async with sem:
                if self.fast_path:
                    data = (host, sess.data_port) if sess.data_port else None
                    await self._fetch_fast(peer, sess.session, d, lease, reporter, data)
                else:
                    await self._fetch_api(peer, sess.session, d, lease, reporter)
        finally:
            reporter.one_done()

    async def _fetch_api(self, peer: Peer, session: str, d: oci.Desc, lease: str,
                         reporter: _Reporter) -> None:
        ref = f"tote-{d.digest.split(':', 1)[1]}"
        try:
            async with self.cd.writer(ref, d.size, d.digest, lease=lease) as w:
                if w.exists:
                    reporter.add(d.size)
                    return
                if w.offset:
                    reporter.resumed(w.offset)
                    log.info("resuming %s at %d of %d", d.digest, w.offset, d.size)
                if w.offset < d.size:
                    async with peer.read_blob(session, d.digest, w.offset) as chunks:
                        async for off, data, total in chunks:
                            if total != d.size:
                                raise FailedPrecondition(
                                    f"{d.digest}: source has {total} bytes, manifest says "
                                    f"{d.size}", reason="size_mismatch")
                            if off != w.offset or w.offset + len(data) > d.size:
                                raise DataLoss(f"{d.digest}: source sent an unexpected range")
                            await w.write(data)
                            reporter.add(len(data))
                            metrics.BYTES_RECEIVED.labels(path="api").inc(len(data))
                await w.commit()
        except FailedPrecondition as exc:
            if not exc.reason and "digest" in str(exc).lower():
                await self.cd.abort(ref)
                metrics.DIGEST_MISMATCH.inc()
                raise DataLoss(f"{d.digest}: bytes from the source do not match the digest; "
                               f"rejected ({exc})", reason="digest_mismatch") from exc
            raise

    async def _fetch_fast(self, peer: Peer, session: str, d: oci.Desc, lease: str,
                          reporter: _Reporter, data_ep: tuple[str, int] | None) -> None:
        """Write a verified blob file next to containerd's blobs, then link it via the API."""
        assert self.content_root
        root = Path(self.content_root)
        hexd = d.digest.split(":", 1)[1]
        final = root / "blobs" / "sha256" / hexd
        tmpdir = root / "tote-tmp"
        part = tmpdir / f"{hexd}.part"
        if not final.exists():
            await trio.to_thread.run_sync(lambda: tmpdir.mkdir(parents=True, exist_ok=True))
            offset = dataplane.resume_offset(part.stat().st_size if part.exists() else 0,
                                             d.size)
            h = (await trio.to_thread.run_sync(_sha256_file_prefix, part, offset)
                 if offset else hashlib.sha256())
            if offset:
                reporter.resumed(offset)
                log.info("resuming %s (fast path) at %d of %d", d.digest, offset, d.size)
            f = await trio.to_thread.run_sync(dataplane.PartWriter, part, offset)
            complete = False
            try:
                pos = offset

                def _put(data: bytes | memoryview) -> None:
                    h.update(data)
                    f.write(data)

                def _received(view: memoryview) -> None:  # already in f's buffer
                    h.update(view)
                    f.advance(len(view))

                if pos < d.size and data_ep is not None:
                    pos += await self._fetch_data_channel(data_ep, session, d, pos, _received,
                                                          reporter, into=f.reserve)
                if pos < d.size:
                    async with peer.read_blob(session, d.digest, pos) as chunks:
                        async for off, data, total in chunks:
                            if total != d.size or off != pos or pos + len(data) > d.size:
                                raise DataLoss(f"{d.digest}: source sent an unexpected range")
                            await trio.to_thread.run_sync(_put, data)
                            pos += len(data)
                            reporter.add(len(data))
                            metrics.BYTES_RECEIVED.labels(path="fast").inc(len(data))
                if pos != d.size:
                    raise Unavailable(f"{d.digest}: stream ended at {pos} of {d.size}")
                complete = True
            finally:
                # Complete: durable before containerd registers it. Interrupted: kept for a
                # resume, which re-hashes the prefix anyway. Closed even when cancelled.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(functools.partial(f.close, sync=complete))
            if "sha256:" + h.hexdigest() != d.digest:
                part.unlink(missing_ok=True)
                metrics.DIGEST_MISMATCH.inc()
                raise DataLoss(f"{d.digest}: bytes from the source do not match the digest; "
                               "rejected", reason="digest_mismatch")
            os.chmod(part, 0o444)
        else:
            reporter.add(d.size)
        await self._link_fast(d, final, part, lease)

    async def _fetch_data_channel(self, data_ep: tuple[str, int], session: str, d: oci.Desc,
                                  offset: int, sink: Callable[[memoryview], None],
                                  reporter: _Reporter,
                                  into: Callable[[], memoryview] | None = None) -> int:
        """Bulk bytes over the data channel (worker thread). Returns bytes written to `sink`;
        on a transport failure the caller continues from there over gRPC."""
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        written = [0]

        def counted(mv: memoryview) -> None:
            sink(mv)
            written[0] += len(mv)

        def on_bytes(n: int) -> None:
            metrics.BYTES_RECEIVED.labels(path="fast").inc(n)
            trio.from_thread.run_sync(reporter.add, n, trio_token=token)

        fetch = functools.partial(
            dataplane.download, data_ep[0], data_ep[1], self.data_ssl, session=session,
            digest=d.digest, offset=offset, size=d.size, sink=counted, on_bytes=on_bytes,
            stop=stop, into=into)
        try:
            await trio.to_thread.run_sync(fetch, **_ABANDON)
        except (OSError, ValueError) as exc:
            log.info("data channel for %s failed after %d bytes (%s); continuing over gRPC",
                     d.digest, written[0], exc)
        except FailedPrecondition as exc:
            log.debug("data channel refused %s: %s", d.digest, exc)
        finally:
            stop.set()
        return written[0]

    async def _link_fast(self, d: oci.Desc, final: Path, part: Path, lease: str) -> None:
        """Place the verified file and register it: STAT (offset == total) + COMMIT.

        A containerd GC between placing and COMMIT deletes blob files it has no metadata for,
        so the verified copy stays hard-linked under tote-tmp until COMMIT succeeded and is
        re-linked if the GC got there first."""
        ref = f"tote-fast-{d.digest.split(':', 1)[1]}"
        last: Exception | None = None
        for attempt in range(6):
            if not await trio.to_thread.run_sync(_place, part, final):
                raise Unavailable(f"{d.digest}: placed blob vanished before registration")
            try:
                async with self.cd.writer(ref, d.size, d.digest, lease=lease) as w:
                    if w.exists:
                        break
                    if w.offset == d.size:
                        await w.commit()
                        break
                await self.cd.abort(ref)  # the file went between link and STAT: again
            except AgentError as exc:
                # GC raced us, or containerd is still tearing down the previous attempt's
                # ingest of this ref ("unlinkat …/ingest/…: directory not empty"): again.
                last = exc
                with contextlib.suppress(AgentError):
                    await self.cd.abort(ref)
            await trio.sleep(0.05 * (attempt + 1))
        else:
            raise Unavailable(f"{d.digest}: containerd did not accept the placed blob "
                              f"({last})")
        await trio.to_thread.run_sync(functools.partial(part.unlink, missing_ok=True))


class _Reporter:
    """Aggregates byte counts from parallel fetches; reports at most every 250 ms."""

    def __init__(self, prog: ImportProgress, progress: ProgressFn) -> None:
        self.prog = prog
        self.progress = progress
        self._expected: int | None = None
        self._done = 0
        self._event = trio.Event()

    def expect(self, n: int) -> None:
        self._expected = n
        if self._done >= n:
            self._event.set()

    def one_done(self) -> None:
        self._done += 1
        if self._expected is not None and self._done >= self._expected:
            self._event.set()

    def add(self, n: int) -> None:
        self.prog.bytes_transferred += n

    def resumed(self, n: int) -> None:
        self.prog.bytes_resumed += n
        self.prog.bytes_transferred += n

    async def run(self) -> None:
        last = -1
        while not self._event.is_set():
            with trio.move_on_after(PROGRESS_INTERVAL):
                await self._event.wait()
            if self.prog.bytes_transferred != last:
                last = self.prog.bytes_transferred
                await self.progress(self.prog)

    # ------------------------------------------------------------------ records


async def list_images(cd: ContainerdClient, digest: str = "") -> list[ImageRecord]:
    filters = [f"target.digest=={oci.check_digest(digest)}"] if digest else []
    return [ImageRecord(name=r.name, digest=r.target.digest, media_type=r.target.media_type,
                        size=r.target.size, labels=r.labels)
            for r in await cd.list_images(filters)]


async def resolve_tag(cd: ContainerdClient, ref: str) -> Resolved:
    oci.parse_ref(ref)
    rec = await cd.get_image(ref)
    if rec is None:
        return Resolved(found=False)
    return Resolved(found=True, digest=rec.target.digest, media_type=rec.target.media_type)


async def remove_image(cd: ContainerdClient, names: list[str], digest: str) -> list[str]:
    for n in names:
        if not oci.is_digest(n):
            oci.parse_ref(n)
    todo = list(names)
    if digest:
        flt = [f"target.digest=={oci.check_digest(digest)}"]
        todo += [r.name for r in await cd.list_images(flt)]
    if not todo:
        raise InvalidArgument("nothing to remove: give names or a digest")
    removed = []
    for n in dict.fromkeys(todo):
        if await cd.delete_image(n):
            removed.append(n)
    return removed
