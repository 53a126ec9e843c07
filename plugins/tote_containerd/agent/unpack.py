"""Unpack while the bytes arrive: each layer goes into the CRI snapshotter as soon as it is
committed, so a salvaged image starts as fast as one pulled normally.

Without this, an imported image has content but no snapshots, and kubelet's CreateContainer
unpacks every layer inside its runtime request timeout (5 s of a 11 s salvage for 1 GiB,
and a multi-GiB image on a slow disk could time out after a successful salvage).

What it leaves is what containerd's own unpacker leaves, so CRI (1.7 and 2.x) treats the
image as unpacked and containerd's GC keeps it: one committed snapshot per layer, named by
its chain ID, each the parent of the next (labels `containerd.io/snapshot.ref`, `…/diff-id`,
`…/parent-chain-id`); `containerd.io/uncompressed` on each layer blob once containerd's diff
service has verified the uncompressed digest; `containerd.io/gc.ref.snapshot.<snapshotter>`
on the config blob, naming the top chain ID. On containerd 2.x's overlayfs (it can rebase a
snapshot at commit) layers are extracted in parallel, each into a snapshot of its own, and
committed in chain order — as containerd's own unpack does there; elsewhere one after the
other. There, a gzip or uncompressed layer is also extracted while its bytes arrive
(`stream_extract`), and committed once both its compressed digest and its diff ID match;
anything that extractor will not do falls back to containerd's diff service. Everything is
written under the import's lease, so nothing is collected half-way; a snapshot that
already exists (an earlier, interrupted import, or a base layer shared with another image)
is kept and not unpacked again.

The snapshotter is the one CRI unpacks into on this node, read from CRI's ImageFsInfo (the
path of its image filesystem names it) — never a flag. With no CRI on the socket, or any
failure, the image is left as before (CRI unpacks at create) with the reason logged."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable

import trio

from tote_containerd._gen.containerd.services.diff.v1 import diff_grpc, diff_pb2
from tote_containerd._gen.containerd.services.snapshots.v1 import (
    snapshots_grpc,
    snapshots_pb2,
)
from tote_containerd._gen.containerd.types import descriptor_pb2, mount_pb2
from tote_containerd._gen.runtime.v1 import images_grpc, images_pb2
from tote_containerd.agent import metrics, oci, stream_extract
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import (
    AgentError,
    AlreadyExists,
    DataLoss,
    NotFound,
    as_one_error,
)
from tote_containerd.agent.stream_extract import LayerStream
from tote_core.oci import mediatypes

log = logging.getLogger("tote.agent")

SNAPSHOTTER_DIR = "io.containerd.snapshotter.v1."
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
MT_LAYER_TAR = mediatypes.OCI_LAYER_TAR  # what a regenerated layer is
LABEL_REF = "containerd.io/snapshot.ref"
LABEL_DIFF_ID = "containerd.io/snapshot/diff-id"
LABEL_PARENT = "containerd.io/snapshot/parent-chain-id"
LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot."
# No deadline of its own for one layer's apply: the import's caller owns the deadline.
APPLY_DEADLINE = None
REBASE = "rebase"  # snapshotter capability: commit onto a parent given only at commit
EXTRACTIONS_IN_FLIGHT = 3


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: the first is the first diff ID, then sha256("<parent> <diff id>")."""
    out: list[str] = []
    for d in diff_ids:
        if out:
            d = "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest()
        out.append(d)
    return out


def snapshotter_from_path(mountpoint: str) -> str | None:
    """`…/io.containerd.snapshotter.v1.overlayfs` → `overlayfs`."""
    base = os.path.basename(mountpoint.rstrip("/"))
    if base.startswith(SNAPSHOTTER_DIR) and len(base) > len(SNAPSHOTTER_DIR):
        return base[len(SNAPSHOTTER_DIR):]
    return None


def diff_ids_of(config: bytes, layers: int) -> list[str]:
    doc = oci.load_json(config, "config")
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataLoss("image config has no rootfs.diff_ids list")
    if len(ids) != layers:
        raise DataLoss(f"image config lists {len(ids)} diff IDs for {layers} layers")
    for i in ids:
        oci.check_digest(i)
    return list(ids)


class Unpacker:
    def __init__(self, cd: ContainerdClient) -> None:
        self.cd = cd
        self._snapshots = cd.stub(snapshots_grpc.SnapshotsStub)
        self._diff = cd.stub(diff_grpc.DiffStub)
        self._cri = cd.stub(images_grpc.ImageServiceStub)
        self._snapshotter: str | None = None
        self._parallel: bool | None = None  # rebase-capable overlayfs (fixed per daemon)
        # False once an extraction snapshot's directory proved not reachable from here (an
        # agent that mounts only containerd's content store): no more streaming then.
        self._stream_dirs = True

    async def snapshotter(self) -> str | None:
        """CRI's snapshotter on this node, or None (with the reason logged once per import)."""
        if self._snapshotter is None:
            try:
                resp = await self.cd.call(self._cri.ImageFsInfo,
                                          images_pb2.ImageFsInfoRequest(), deadline=10)
            except AgentError as exc:
                log.info("not unpacking imports: no CRI image service on containerd's socket "
                         "(%s); CRI will unpack at container create", exc)
                return None
            for fs in resp.image_filesystems:
                name = snapshotter_from_path(fs.fs_id.mountpoint)
                if name:
                    self._snapshotter = name
                    log.info("imports are unpacked into CRI's snapshotter %r", name)
                    break
            else:
                log.info("not unpacking imports: CRI's image filesystem %s names no "
                         "snapshotter", [f.fs_id.mountpoint for f in resp.image_filesystems])
        return self._snapshotter

    async def unpack(self, snapshotter: str, config: oci.Desc, layers: list[oci.Desc], *,
                     committed: Callable[[str], Awaitable[None]], lease: str,
                     substitutes: dict[str, oci.Desc] | None = None,
                     streams: dict[str, LayerStream] | None = None) -> bool:
        """Unpack `layers`, each once `committed(digest)` returns. True when the whole chain
        is in place; False (reason logged) when CRI must unpack at create. Cancellation
        propagates; nothing else does.

        `substitutes` (filled by the time a layer's `committed` returns): layers applied from
        another blob — a tar regenerated from a source's snapshots — instead of their own,
        which is not in the content store.

        `streams` (rebase-capable overlayfs only, see `can_stream`): layer digest → the bytes
        of that layer as they arrive, extracted while they do. Every one is stopped by the
        time this returns, so no receive waits for an extractor that is gone."""
        started = time.monotonic()
        subs = substitutes if substitutes is not None else {}
        streams = streams if streams is not None else {}
        streamed = [0]
        try:
            await committed(config.digest)
            ids = diff_ids_of(await self.cd.read_all(config.digest), len(layers))
            chains = chain_ids(ids)
            parallel = (len(layers) > 1 or bool(streams)) and \
                await self._can_extract_in_parallel(snapshotter)
            if parallel:
                made = await self._parallel_unpack(snapshotter, layers, ids, chains,
                                                   committed, lease, subs, streams, streamed)
            else:
                made = await self._sequential_unpack(snapshotter, layers, ids, chains,
                                                     committed, lease, subs)
            if chains:
                await self.cd.update_labels(
                    config.digest, {LABEL_GC_SNAPSHOT + snapshotter: chains[-1]})
        except (AgentError, OSError) as exc:
            metrics.UNPACKS.labels(result="failed").inc()
            log.warning("unpacking %s into %s failed (CRI will unpack at container create): "
                        "%s", config.digest, snapshotter, exc)
            return False
        finally:
            for stream in streams.values():
                stream.stop("the unpack is over")
        metrics.UNPACKS.labels(result="ok").inc()
        how = " (in parallel, committed in order)" if parallel else ""
        if streamed[0]:
            how += f" ({streamed[0]} extracted while receiving)"
        log.info("unpacked %d of %d layers (config %s) into %s in %.1fs%s", made, len(layers),
                 config.digest, snapshotter, time.monotonic() - started, how)
        return True

    async def can_stream(self, snapshotter: str) -> bool:
        """Whether layers can be extracted while they arrive: each into a parentless
        snapshot of its own, committed onto its parent later (rebase-capable overlayfs)."""
        return self._stream_dirs and await self._can_extract_in_parallel(snapshotter)

    async def _sequential_unpack(self, sn: str, layers: list[oci.Desc], ids: list[str],
                          chains: list[str], committed: Callable[[str], Awaitable[None]],
                          lease: str, subs: dict[str, oci.Desc]) -> int:
        """One layer after the other, each on top of its parent."""
        made = 0
        for i, layer in enumerate(layers):
            if await self.exists(sn, chains[i]):
                continue
            await committed(layer.digest)
            parent = chains[i - 1] if i else ""
            labels = _labels(chains[i], ids[i], parent)
            key = await self._extract(sn, subs.get(layer.digest, layer), ids[i], chains[i],
                                      parent, labels, lease)
            await self._commit(sn, layer, ids[i], chains[i], key, labels, "", lease,
                               layer.digest not in subs)
            made += 1
        return made

    async def _parallel_unpack(self, sn: str, layers: list[oci.Desc], ids: list[str],
                        chains: list[str], committed: Callable[[str], Awaitable[None]],
                        lease: str, subs: dict[str, oci.Desc],
                        streams: dict[str, LayerStream], streamed: list[int]) -> int:
        """Snapshotters that can rebase at commit (containerd 2.x overlayfs): each layer is
        extracted into a snapshot of its own as soon as it arrives, several at once, and the
        snapshots are committed in chain order, each onto its parent — what containerd's own
        unpacker does there, and why a healthy pull of many layers is not one apply after
        the other. A layer with a stream is extracted from it as it arrives (outside the
        limiter: the receive waits for it, and the transfer's own limit bounds how many),
        and from the committed blob if that extraction gives up."""
        n = len(layers)
        keys: list[str | None] = [None] * n  # extracted, not yet committed
        ready = [trio.Event() for _ in range(n)]
        limiter = trio.CapacityLimiter(EXTRACTIONS_IN_FLIGHT)
        made = 0

        async def extract(i: int) -> None:
            stream = streams.get(layers[i].digest)
            labels = _labels(chains[i], ids[i], chains[i - 1] if i else "")
            if not await self.exists(sn, chains[i]):
                key = None
                if stream is not None and layers[i].digest not in subs and stream.attach():
                    key = await self._extract_streaming(sn, layers[i], ids[i], chains[i],
                                                        labels, lease, stream, committed)
                    streamed[0] += key is not None
                if key is None:
                    await committed(layers[i].digest)
                    async with limiter:
                        key = await self._extract(
                            sn, subs.get(layers[i].digest, layers[i]), ids[i], chains[i], "",
                            labels, lease, upper_only=i > 0)
                keys[i] = key
            elif stream is not None:
                stream.stop("its snapshot is here already")
            ready[i].set()  # not on failure: the nursery is cancelled then

        try:
            with as_one_error("layer extractions"):
                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(extract, i)
                    for i in range(n):
                        await ready[i].wait()
                        key = keys[i]
                        if key is None:
                            continue  # already there
                        keys[i] = None
                        parent = chains[i - 1] if i else ""
                        await self._commit(sn, layers[i], ids[i], chains[i], key,
                                           _labels(chains[i], ids[i], parent), parent, lease,
                                           layers[i].digest not in subs)
                        made += 1
        finally:
            for key in keys:
                if key is not None:
                    await self.remove(sn, key)
        return made

    async def _can_extract_in_parallel(self, snapshotter: str) -> bool:
        """Only where containerd itself does it: overlayfs that can rebase at commit (the
        upper-directory trick in `_upper_only` is overlayfs's). Asked once per agent."""
        if self._parallel is None:
            self._parallel = snapshotter == "overlayfs" and REBASE in \
                await self.cd.snapshotter_capabilities(snapshotter)
        return self._parallel

    async def exists(self, snapshotter: str, key: str) -> bool:
        try:
            await self.cd.call(self._snapshots.Stat, snapshots_pb2.StatSnapshotRequest(
                snapshotter=snapshotter, key=key), deadline=30)
        except NotFound:
            return False
        return True

    async def _extract(self, sn: str, layer: oci.Desc, diff_id: str, chain: str,
                       parent: str, labels: dict[str, str], lease: str, *,
                       upper_only: bool = False) -> str:
        """Prepare an extraction snapshot and apply the layer into it; its key. The
        uncompressed digest must be the config's diff ID — or, for an uncompressed tar
        regenerated from a source's snapshots, the tar's own digest, which its source
        computed and the transfer verified (the diff ID when the source reproduced the
        original bytes). Removed again on any failure."""
        key, mounts = await self._prepare(sn, chain, parent, labels, lease)
        if upper_only:
            mounts = _upper_only(mounts)
        regenerated = layer.media_type == MT_LAYER_TAR and layer.digest != diff_id
        expected = layer.digest if regenerated else diff_id
        try:
            applied = await self.cd.call(self._diff.Apply, diff_pb2.ApplyRequest(
                diff=descriptor_pb2.Descriptor(media_type=layer.media_type,
                                               digest=layer.digest, size=layer.size),
                mounts=mounts), lease=lease, deadline=APPLY_DEADLINE)
            if applied.applied.digest != expected:
                raise DataLoss(f"layer {layer.digest} unpacks to {applied.applied.digest}, "
                               f"expected {expected}")
        except BaseException:
            await self.remove(sn, key)
            raise
        return key

    async def _prepare(self, sn: str, chain: str, parent: str, labels: dict[str, str],
                       lease: str) -> tuple[str, list[mount_pb2.Mount]]:
        """An extraction snapshot: its key and mounts."""
        # containerd's own key format for extractions ("extract-<unique> <chain id>").
        key = f"extract-{time.time_ns()}-{os.urandom(4).hex()} {chain}"
        try:
            resp = await self.cd.call(self._snapshots.Prepare,
                                      snapshots_pb2.PrepareSnapshotRequest(
                                          snapshotter=sn, key=key, parent=parent,
                                          labels=labels), lease=lease)
        except BaseException:
            # Cancelled while the Prepare was in flight (a sibling extraction failed):
            # containerd may have made the snapshot all the same.
            await self.remove(sn, key, missing_ok=True)
            raise
        return key, list(resp.mounts)

    async def _extract_streaming(self, sn: str, layer: oci.Desc, diff_id: str, chain: str,
                                 labels: dict[str, str], lease: str, stream: LayerStream,
                                 committed: Callable[[str], Awaitable[None]]) -> str | None:
        """Extract `layer` from `stream` into a parentless snapshot while it arrives; its
        key once the blob is committed (its compressed digest verified) and the tar hashed
        to `diff_id`. None when the extractor gave up (the snapshot is removed; the caller
        applies the committed blob as before). A diff ID mismatch raises DataLoss, as an
        Apply's would; on any failure or cancellation the snapshot is removed."""
        try:
            key, mounts = await self._prepare(sn, chain, "", labels, lease)
        except BaseException:
            stream.stop("no extraction snapshot")
            raise
        root = mounts[0].source if len(mounts) == 1 and mounts[0].type == "bind" else ""
        if not root or not await trio.to_thread.run_sync(os.path.isdir, root):
            stream.stop("not a bind mount")
            await self.remove(sn, key)
            if self._stream_dirs:
                log.info("not extracting layers while they arrive: an extraction snapshot is "
                         "not one bind mount of a directory this agent sees (%s); layers are "
                         "applied once whole", [(m.type, m.source) for m in mounts])
            self._stream_dirs = False
            return None
        finished = threading.Event()

        def work() -> str:
            try:
                return stream_extract.extract(stream, root)
            finally:
                finished.set()

        try:
            try:
                got = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
            except BaseException:
                stream.stop("cancelled")  # the worker ends at its next read
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(finished.wait, 60.0)
                raise
        except (stream_extract.Refused, stream_extract.StreamStopped, OSError) as exc:
            stream.stop("extraction gave up")
            await self.remove(sn, key)
            log.info("layer %s: not extracted while receiving (%s); applying it once whole",
                     layer.digest, exc)
            if isinstance(exc, PermissionError) and self._stream_dirs:
                # No capability to create devices / set owners here: every layer would
                # fail the same way, so stop trying for this agent's lifetime.
                log.info("not extracting layers while they arrive from now on: %s", exc)
                self._stream_dirs = False
            return None
        except BaseException:
            await self.remove(sn, key)
            raise
        try:
            await committed(layer.digest)  # the compressed digest: verified by the receive
            if got != diff_id:
                raise DataLoss(f"layer {layer.digest} unpacks to {got}, expected {diff_id}")
        except BaseException:
            await self.remove(sn, key)
            raise
        return key

    async def _commit(self, sn: str, layer: oci.Desc, diff_id: str, chain: str, key: str,
                      labels: dict[str, str], parent: str, lease: str, blob_here: bool
                      ) -> None:
        """Commit `key` as `chain` (onto `parent` when given: a rebase), then mark the layer
        blob, when it is here, with its verified uncompressed digest."""
        try:
            await self.cd.call(self._snapshots.Commit, snapshots_pb2.CommitSnapshotRequest(
                snapshotter=sn, name=chain, key=key, labels=labels, parent=parent),
                lease=lease)
        except AlreadyExists:
            await self.remove(sn, key)  # unpacked meanwhile (CRI, another import): same
        except BaseException:
            await self.remove(sn, key)
            raise
        if blob_here:
            await self.cd.update_labels(layer.digest, {LABEL_UNCOMPRESSED: diff_id})

    async def remove(self, sn: str, key: str, *, missing_ok: bool = False) -> None:
        """Remove an active snapshot (an extraction, a view) even while being cancelled; a
        failure is logged only (its lease's expiry removes it then). `missing_ok`: the
        snapshot may never have been made."""
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            try:
                await self.cd.call(self._snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(
                    snapshotter=sn, key=key))
            except NotFound:
                if not missing_ok:
                    log.warning("snapshot %r was already gone", key)
            except AgentError as exc:
                log.warning("could not remove snapshot %r (its lease removes it): %s", key,
                            exc)


def _labels(chain: str, diff_id: str, parent: str) -> dict[str, str]:
    labels = {LABEL_REF: chain, LABEL_DIFF_ID: diff_id}
    if parent:
        labels[LABEL_PARENT] = parent
    return labels


def _upper_only(mounts: list[mount_pb2.Mount]) -> list[mount_pb2.Mount]:
    """A parentless overlayfs snapshot comes as a bind mount; its layer must be applied as an
    overlay upper directory so whiteouts become overlay whiteouts (containerd does the same
    in its parallel unpack)."""
    if len(mounts) != 1 or mounts[0].type != "bind":
        return mounts
    m = mounts[0]
    options = [o for o in m.options if o != "rbind"] + [f"upperdir={m.source}"]
    return [mount_pb2.Mount(type="overlay", source="overlay", options=options)]
