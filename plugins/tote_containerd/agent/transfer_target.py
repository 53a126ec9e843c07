"""The target side of a transfer (RPC ImportFrom): copy an image by digest from a source agent
into this node's containerd — token → session, the top blob and the platform's manifest, the
missing config and layer blobs in parallel, each layer unpacked into CRI's
snapshotter as soon as it is committed (`unpack.py`), parents committed after their
children with GC labels, and the image records last, so nothing is visible before every
blob is committed and unpacked.

One name for the node-to-node copy: a *transfer* (the controller's `transfer` hook, this
module on the target, `transfer_source` on the source). A blob travels one of two paths: the
*API path* (gRPC `ReadBlob` from the source into containerd's content Write) or the *fast
path* (`fast_path`: a verified file written from the source's data channel, then committed).

One import per digest at a time; a failed one resumes from
containerd's committed offsets (the lease keeps in-flight ingests and finished snapshots).

Snapshot mode: layers the source discarded after unpacking (its session lists them as
`regenerable`) are regenerated there from its snapshots (`layer_export`), fetched as
uncompressed tars verified against the digest the source computed, and applied into the
snapshot named by the config's chain ID; the compressed blob never exists here, as on a node
that discards its layers itself. Such a layer cannot fall back to an unpack at container
create, so its unpack failing fails the import."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, NoReturn

import trio

from tote_containerd.agent import metrics, oci
from tote_containerd.agent.api import ExportedLayer, ImportProgress, ImportRequest, Session
from tote_containerd.agent.containerd import Descriptor
from tote_containerd.agent.content import LocalContent
from tote_containerd.agent.errors import (
    AgentError,
    DataLoss,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    as_one_error,
)
from tote_containerd.agent.fast_path import FastPath
from tote_containerd.agent.image_records import PIN_LABEL, PINNED
from tote_containerd.agent.inspection import inspect
from tote_containerd.agent.peer import Peer, PeerOpener, split_endpoint
from tote_containerd.agent.progress import ProgressFn, Reporter
from tote_containerd.agent.stream_extract import STREAMABLE, LayerStream
from tote_containerd.agent.tls import ClientTLS, no_tls
from tote_containerd.agent.unpack import MT_LAYER_TAR, Unpacker, chain_ids, diff_ids_of

log = logging.getLogger("tote.agent")

IMPORT_LEASE_TTL = 3600.0
# How often kept import leases are checked against what the node now holds.
LEASE_CHECK_INTERVAL = 60.0
IMPORT_LABEL = "tote.dev/import"
FINAL_REFUSALS = frozenset({"too_large", "layer_unverified"})
CRI_LABELS = {oci.CRI_LABEL: "managed"}


class TransferTarget:
    def __init__(self, content: LocalContent, *, platform: str, open_peer: PeerOpener,
                 parallelism: int = 4, data_ssl: ClientTLS = no_tls) -> None:
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

    async def release_finished_imports(self) -> list[str]:
        """Release import leases kept for a resume that will not come: the image is whole on
        this node now. That happens when kubelet pulled it (the registry came back) while
        tote's transfer was failing, or when releasing the lease failed after an import
        completed (containerd restarting). Until released, such a lease keeps whatever
        ingests it holds from containerd's GC for up to `IMPORT_LEASE_TTL`. Leases of
        imports running now are left alone. Returns the released lease ids."""
        released = []
        for lease, labels in await self.cd.list_leases([f'labels."{IMPORT_LABEL}"']):
            digest = labels.get(IMPORT_LABEL, "")
            if not lease.startswith("tote-import-") or digest in self._import_locks:
                continue
            try:
                held = await inspect(self.content, digest, self.platform)
            except AgentError:  # not recorded here (yet): a resume may still come
                continue
            if held.complete or held.unpacked:
                await self.cd.delete_lease(lease)
                released.append(lease)
                log.info("released import lease %s: %s is whole on this node", lease, digest)
        return released

    async def release_finished_imports_forever(self) -> NoReturn:
        """`release_finished_imports` every LEASE_CHECK_INTERVAL (containerd's failures
        logged, never fatal: the leases expire on their own anyway)."""
        while True:
            await trio.sleep(LEASE_CHECK_INTERVAL)
            try:
                await self.release_finished_imports()
            except AgentError as exc:
                log.warning("checking kept import leases: %s", exc)

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
            snapshotter = await self.unpacker.snapshotter()
            regen = await self._layers_to_regenerate(req, peer, sess, config, layers,
                                                     snapshotter)
            children: dict[str, oci.Desc] = {}
            for d in [config, *layers]:
                children.setdefault(d.digest, d)
            missing: list[oci.Desc] = []
            for d in children.values():
                if d.digest in regen:
                    if regen[d.digest]:
                        missing.append(d)
                    else:
                        prog.blobs_skipped += 1  # its snapshot is here already
                elif await present(d.digest):
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
                                       labels={IMPORT_LABEL: req.digest})
            arrived = {d.digest: trio.Event() for d in missing}
            # Regenerated layers, as their tars arrive: what the unpacker applies instead.
            tars: dict[str, oci.Desc] = {}
            regenerated = [d for d in missing if regen.get(d.digest)]
            if regenerated:
                prog.mode = "snapshots" if all(
                    regen.get(d.digest) for d in missing if d.digest != config.digest
                ) else "mixed"

            # Layers extracted while they arrive (rebase-capable overlayfs; gzip or tar; not
            # regenerated): each receive feeds its stream. Those receives wait for the
            # config, whose diff IDs name the snapshots they are extracted into.
            streams: dict[str, LayerStream] = {}
            if snapshotter and await self.unpacker.can_stream(snapshotter):
                for d in layers:
                    if d.digest in arrived and not regen.get(d.digest) \
                            and d.media_type in STREAMABLE:
                        streams.setdefault(d.digest, LayerStream(d.digest, d.media_type))
            config_first = arrived.get(config.digest) if streams else None

            async def committed(digest: str) -> None:
                if digest in arrived:
                    await arrived[digest].wait()

            async def report() -> None:
                await reporter.run()  # ends once every fetch is done
                if snapshotter:
                    prog.phase = "unpacking"  # the layers that arrived last
                    await progress(prog)

            async def unpack() -> None:
                assert snapshotter is not None
                ok = await self.unpacker.unpack(snapshotter, config, layers,
                                                committed=committed, lease=lease,
                                                substitutes=tars, streams=streams)
                if not ok and regenerated:
                    raise Unavailable(f"{req.digest}: unpacking the layers regenerated from "
                                      "the source's snapshots failed (see the agent's log)",
                                      reason="unpack_failed")

            prog.phase = "transferring"
            await progress(prog)
            reporter = Reporter(prog, progress)
            sem = trio.Semaphore(max(1, req.parallelism or self.parallelism))
            try:
                with as_one_error("parallel blob streams"):
                    async with trio.open_nursery() as nursery:
                        for d in sorted(missing, key=lambda x: -x.size):
                            if regen.get(d.digest):
                                nursery.start_soon(self._fetch_regenerated, peer, sess, d,
                                                   lease, sem, reporter, host,
                                                   arrived[d.digest], req, tars)
                            else:
                                tee = streams.get(d.digest)
                                nursery.start_soon(self._fetch_one, peer, sess, d, lease, sem,
                                                   reporter, host, arrived[d.digest], tee,
                                                   config_first if tee else None)
                        nursery.start_soon(report)
                        reporter.expect(len(missing))
                        if snapshotter:
                            # Layer by layer, each as soon as it is committed, while later
                            # ones are still in flight; failure only logs (CRI unpacks later)
                            # unless a layer was regenerated (no blob to unpack from later).
                            nursery.start_soon(unpack)
            except FailedPrecondition as exc:
                await self._release_if_final(exc, lease)
                raise
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
        labels = dict(CRI_LABELS)
        if req.pin:
            labels[PIN_LABEL] = PINNED  # kubelet's image GC skips it while the registry is down
        for name in names:
            how = await self.cd.put_image(name, target, labels)
            log.info("image record %s %s → %s", name, how, req.digest)
        prog.pinned = req.pin
        # The regenerated tars are unpacked now; nothing refers to them (the manifest names
        # the compressed layers): free their space rather than wait for containerd's GC.
        for tar in tars.values():
            await self._discard(tar.digest)
        # The image is complete and recorded: from here on nothing may turn it into a failure
        # (the controller would retry a finished transfer). The lease expires on its own.
        try:
            await self.cd.delete_lease(lease)
        except AgentError as exc:
            log.warning("import of %s complete, but releasing lease %s failed (it expires "
                        "in %d s): %s", req.digest, lease, IMPORT_LEASE_TTL, exc)
        if self.fast:
            await self.fast.discard_parts([*children, mdesc.digest, req.digest,
                                           *(t.digest for t in tars.values())])
        prog.names = names
        prog.phase = "done"
        prog.done = True
        await progress(prog)
        return prog

    async def _layers_to_regenerate(
            self, req: ImportRequest, peer: Peer, sess: Session, config: oci.Desc,
            layers: list[oci.Desc], snapshotter: str | None) -> dict[str, bool]:
        """Layers this import takes from the source's snapshots: layer digest → whether it
        has to move (False: its snapshot is here already). Only layers the source
        discarded and this node lacks; refused before anything is written when snapshot
        salvage is off here or impossible."""
        regenerable = set(sess.regenerable)
        candidates = [d for d in layers if d.digest in regenerable
                      and not await self.content.present(d.digest)]
        if not candidates:
            return {}
        if not req.allow_snapshots:
            raise FailedPrecondition(
                f"source {req.source_node} discarded {len(candidates)} layer blobs of "
                f"{req.digest} and snapshot salvage is turned off (--snapshot-salvage=false)",
                reason="snapshot_salvage_disabled")
        if snapshotter is None:
            raise FailedPrecondition(
                "the source discarded layer blobs and this node has no CRI snapshotter to "
                "apply regenerated layers into", reason="snapshot_unsupported")
        ids = diff_ids_of(await self._small_blob(peer, sess.session, config.digest,
                                                 config.size), len(layers))
        chains = dict(zip((d.digest for d in layers), chain_ids(ids), strict=True))
        return {d.digest: not await self.unpacker.exists(snapshotter, chains[d.digest])
                for d in candidates}

    async def _fetch_regenerated(self, peer: Peer, sess: Session, d: oci.Desc, lease: str,
                                 sem: trio.Semaphore, reporter: Reporter, host: str,
                                 committed: trio.Event, req: ImportRequest,
                                 tars: dict[str, oci.Desc]) -> None:
        """Have the source regenerate layer `d` from its snapshots, then fetch the tar like a
        blob (verified against the digest the source computed over it)."""
        prog = reporter.prog
        try:
            async with sem:
                exported: ExportedLayer = await peer.export_layer(sess.session, d.digest)
                if not exported.verified and req.require_verified:
                    raise FailedPrecondition(
                        f"layer {d.digest} regenerated by {req.source_node} hashes to "
                        f"{exported.digest}, not its diff ID {exported.diff_id}, and only "
                        "verified layers are accepted (--snapshot-salvage-strict)",
                        reason="layer_unverified")
                oci.check_digest(exported.digest)
                prog.bytes_total += exported.size - d.size
                if req.max_bytes and prog.bytes_total > req.max_bytes:
                    raise FailedPrecondition(
                        f"{prog.bytes_total} bytes would have to move (layers regenerated "
                        f"uncompressed), more than the limit of {req.max_bytes}",
                        reason="too_large")
                tar = oci.Desc(MT_LAYER_TAR, exported.digest, exported.size)
                if self.fast:
                    data = (host, sess.data_port) if sess.data_port else None
                    await self.fast.fetch(peer, sess.session, tar, lease, reporter, data)
                else:
                    await self._fetch_api(peer, sess.session, tar, lease, reporter)
            prog.layers_regenerated += 1
            prog.layers_verified += exported.verified
            if tar.digest != d.digest:
                tars[d.digest] = tar
            # else: an uncompressed layer regenerated byte for byte is its own blob again
            committed.set()
        finally:
            reporter.one_done()

    async def _release_if_final(self, exc: FailedPrecondition, lease: str) -> None:
        """A refusal found only once bytes moved (a regenerated layer over the size limit
        or not verifiable in strict mode) is final: nothing is kept for a resume."""
        if exc.reason in FINAL_REFUSALS:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                await self.cd.delete_lease(lease, sync=True)

    async def _discard(self, digest: str) -> None:
        try:
            await self.cd.delete_content(digest)
        except AgentError as exc:
            log.info("regenerated layer %s stays until containerd's GC: %s", digest, exc)

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
            raise DigestMismatch(f"{digest}: bytes from the source do not match the digest")
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
                         committed: trio.Event, tee: LayerStream | None = None,
                         after: trio.Event | None = None) -> None:
        try:
            if after is not None:
                await after.wait()
            async with sem:
                if self.fast:
                    data = (host, sess.data_port) if sess.data_port else None
                    await self.fast.fetch(peer, sess.session, d, lease, reporter, data, tee)
                else:
                    await self._fetch_api(peer, sess.session, d, lease, reporter, tee)
            committed.set()
        finally:
            reporter.one_done()

    async def _fetch_api(self, peer: Peer, session: str, d: oci.Desc, lease: str,
                         reporter: Reporter, tee: LayerStream | None = None) -> None:
        """`tee`: as in `FastPath.fetch` (every byte, from the first, or stopped)."""
        try:
            await self._fetch_api_into(peer, session, d, lease, reporter, tee)
        except BaseException:
            if tee is not None:
                tee.stop("the receive failed")
            raise

    async def _fetch_api_into(self, peer: Peer, session: str, d: oci.Desc, lease: str,
                              reporter: Reporter, tee: LayerStream | None) -> None:
        ref = f"tote-{d.digest.split(':', 1)[1]}"
        try:
            async with self.cd.writer(ref, d.size, d.digest, lease=lease) as w:
                if (w.exists or w.offset) and tee is not None:
                    tee.stop("the blob is here already" if w.exists else "resumed")
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
                            if tee is not None:
                                await trio.to_thread.run_sync(tee.feed, data)
                            reporter.add(len(data))
                            metrics.BYTES_RECEIVED.labels(path="api").inc(len(data))
                if tee is not None:
                    tee.finish()
                await w.commit()
        except DigestMismatch as exc:  # containerd hashed the bytes at COMMIT
            await self.cd.abort(ref)
            metrics.DIGEST_MISMATCH.inc()
            raise DigestMismatch(f"{d.digest}: bytes from the source do not match the "
                                 f"digest; rejected ({exc})") from exc
