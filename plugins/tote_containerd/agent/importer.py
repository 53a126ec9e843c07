"""ImportFrom (target side): copy an image by digest from a source agent into this node's
containerd — token → session, the top blob and the platform's manifest, the missing config
and layer blobs in parallel (gRPC stream, or the fast path), each layer unpacked into CRI's
snapshotter as soon as it is committed (`unpack.py`), parents committed after their
children with GC labels, and the image records last, so nothing is visible before every
blob is committed and unpacked. One import per digest at a time; a failed one resumes from
containerd's committed offsets (the lease keeps in-flight ingests and finished snapshots)."""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from functools import partial
from typing import Any

import trio

from tote_containerd.agent import metrics, oci
from tote_containerd.agent.api import ImportProgress, ImportRequest, Session
from tote_containerd.agent.containerd import Descriptor
from tote_containerd.agent.content import LocalContent
from tote_containerd.agent.errors import (
    AgentError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    as_one_error,
)
from tote_containerd.agent.fast_path import FastPath
from tote_containerd.agent.peer import Peer, PeerOpener, split_endpoint
from tote_containerd.agent.progress import ProgressFn, Reporter
from tote_containerd.agent.unpack import Unpacker

log = logging.getLogger("tote.agent")

IMPORT_LEASE_TTL = 3600.0
CRI_LABELS = {oci.CRI_LABEL: "managed"}


class Importer:
    def __init__(self, content: LocalContent, *, platform: str, open_peer: PeerOpener,
                 parallelism: int = 4, data_ssl: ssl.SSLContext | None = None) -> None:
        self.content = content
        self.cd = content.cd
        self.platform = platform
        self.open_peer = open_peer
        self.parallelism = max(1, parallelism)
        self.fast = FastPath(content.cd, content.content_root, data_ssl) \
            if content.fast_path else None
        self._import_locks: dict[str, trio.Lock] = {}
        self.unpacker = Unpacker(content.cd)

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
        prog = ImportProgress(phase="resolving", path="fast" if self.fast else "api")
        if self.fast:
            await self.fast.sweep(IMPORT_LEASE_TTL)
        present = self.content.present
        async with self.open_peer(req.source_endpoint) as peer:
            sess = await peer.open_session(req.token, self.content.node)
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
                if await present(d.digest):
                    prog.blobs_skipped += 1
                else:
                    missing.append(d)
            top_new = not await present(req.digest)
            m_new = index_doc is not None and not await present(mdesc.digest)
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
            snapshotter = await self.unpacker.snapshotter()
            arrived = {d.digest: trio.Event() for d in missing}

            async def committed(digest: str) -> None:
                if digest in arrived:
                    await arrived[digest].wait()

            async def report() -> None:
                await reporter.run()  # ends once every fetch is done
                if snapshotter:
                    prog.phase = "unpacking"  # the layers that arrived last
                    await progress(prog)

            prog.phase = "transferring"
            await progress(prog)
            reporter = Reporter(prog, progress)
            sem = trio.Semaphore(max(1, req.parallelism or self.parallelism))
            with as_one_error("parallel blob streams"):
                async with trio.open_nursery() as nursery:
                    for d in sorted(missing, key=lambda x: -x.size):
                        nursery.start_soon(self._fetch_one, peer, sess, d, lease, sem,
                                           reporter, host, arrived[d.digest])
                    nursery.start_soon(report)
                    reporter.expect(len(missing))
                    if snapshotter:
                        # Layer by layer, each as soon as it is committed, while later
                        # ones are still in flight; failure only logs (CRI unpacks later).
                        nursery.start_soon(partial(
                            self.unpacker.unpack, snapshotter, config, layers,
                            committed=committed, lease=lease))
            prog.phase = "committing"
            await progress(prog)
            # Parents after children, each with GC labels pointing at its children.
            await self._commit_small(mdesc.digest, m_bytes, lease,
                                     oci.gc_labels_manifest(config, layers))
            if index_doc is not None:
                held = {mdesc.digest}
                await self._commit_small(req.digest, top_bytes, lease,
                                         oci.gc_labels_index(index_doc, held))
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
        if await self.content.present(digest):
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
                         sem: trio.Semaphore, reporter: Reporter, host: str,
                         committed: trio.Event) -> None:
        try:
            async with sem:
                if self.fast:
                    data = (host, sess.data_port) if sess.data_port else None
                    await self.fast.fetch(peer, sess.session, d, lease, reporter, data)
                else:
                    await self._fetch_api(peer, sess.session, d, lease, reporter)
            committed.set()
        finally:
            reporter.one_done()

    async def _fetch_api(self, peer: Peer, session: str, d: oci.Desc, lease: str,
                         reporter: Reporter) -> None:
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
