"""Snapshot salvage, source side: a layer whose compressed blob this node discarded after
unpacking (containerd's `discard_unpacked_layers`, the default on EKS and other managed node
images) is regenerated from the node's unpacked snapshots — the difference between the
layer's snapshot and its parent's, computed by containerd's own diff service — and written
into the content store as an uncompressed tar that the session may then read like a blob.

Why the diff service and not our own tar writer: it is the same code that wrote the layer
when the image was built with containerd's tooling (BuildKit), so it often reproduces the
original bytes exactly, and then the tar hashes to the config's `diff_id` and the layer is
verified as strongly as a blob. Where it does not, the target can only check what the source
computed over what it sent (end to end); the response says which.

Views and the regenerated tar live under a lease of their own (`tote-export-…`, 10
minutes), so nothing can be collected midway and nothing stays long: the views are removed
at once, the tar goes with containerd's first GC after the lease expired."""

from __future__ import annotations

import logging
import os
import time

import msgspec
import trio

from tote_containerd._gen.containerd.services.diff.v1 import diff_grpc, diff_pb2
from tote_containerd._gen.containerd.services.snapshots.v1 import (
    snapshots_grpc,
    snapshots_pb2,
)
from tote_containerd._gen.containerd.types import mount_pb2
from tote_containerd.agent import metrics, oci
from tote_containerd.agent.api import ExportedLayer
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import AgentError, DataLoss
from tote_containerd.agent.unpack import MT_LAYER_TAR, Unpacker, chain_ids, diff_ids_of

log = logging.getLogger("tote.agent")

# Long enough for the target to start reading (a read in progress keeps its open file even
# if GC deletes the blob); short, because a regenerated tar is a second copy of the layer on
# a node whose operators chose to discard layers to save disk. A retry after it re-exports.
EXPORT_LEASE_TTL = 600.0


class Regenerable(msgspec.Struct, frozen=True):
    """A discarded layer and the snapshots it can be regenerated from."""

    diff_id: str
    chain: str  # the layer's snapshot (chain ID)
    parent: str  # the parent's snapshot; "" for the base layer
    snapshotter: str


class LayerExporter:
    def __init__(self, cd: ContainerdClient, unpacker: Unpacker) -> None:
        self.cd = cd
        self.unpacker = unpacker  # knows CRI's snapshotter and its snapshots
        self.snapshotter = unpacker.snapshotter
        self._snapshots = cd.stub(snapshots_grpc.SnapshotsStub)
        self._diff = cd.stub(diff_grpc.DiffStub)
        self._locks: dict[str, trio.Lock] = {}

    async def unpacked(self, config: oci.Desc, layers: list[oci.Desc]) -> bool:
        """Every layer of the image is a committed snapshot in CRI's snapshotter: it runs
        here, and it can be regenerated."""
        return await self._snapshot_chain(config, layers) is not None

    async def regenerable(self, config: oci.Desc, layers: list[oci.Desc],
                          absent: set[str]) -> dict[str, Regenerable]:
        """Which of the `absent` layers can be regenerated here (all of them or none: the
        chain must be unpacked whole)."""
        found = await self._snapshot_chain(config, layers) if absent else None
        if found is None:
            return {}
        sn, ids, chains = found
        return {layer.digest: Regenerable(ids[i], chains[i], chains[i - 1] if i else "", sn)
                for i, layer in enumerate(layers) if layer.digest in absent}

    async def _snapshot_chain(self, config: oci.Desc, layers: list[oci.Desc]
                              ) -> tuple[str, list[str], list[str]] | None:
        """(snapshotter, diff IDs, chain IDs) when every layer's snapshot is committed in
        CRI's snapshotter; None otherwise (no CRI, no layers, a snapshot missing)."""
        sn = await self.snapshotter()
        if sn is None or not layers:
            return None
        try:
            ids = diff_ids_of(await self.cd.read_all(config.digest), len(layers))
            chains = chain_ids(ids)
            for chain in chains:
                if not await self.unpacker.exists(sn, chain):
                    return None
        except AgentError as exc:
            log.debug("snapshots of %s: %s", config.digest, exc)
            return None
        return sn, ids, chains

    async def export(self, layer: str, regen: Regenerable, lease: str) -> ExportedLayer:
        """Regenerate `layer` into the content store under `lease`; what the target reads.

        One export per layer at a time: a second target asking for the same layer waits and
        finds the first one's tar (when it hashed to the diff ID; otherwise the diff runs
        again, which gives the same bytes)."""
        lock = self._locks.setdefault(regen.chain, trio.Lock())
        try:
            async with lock:
                return await self._export_locked(layer, regen, lease)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(regen.chain, None)

    async def _export_locked(self, layer: str, regen: Regenerable, lease: str
                             ) -> ExportedLayer:
        await self.cd.create_lease(lease, expire_in=EXPORT_LEASE_TTL,
                                   labels={"tote.dev/export": layer})
        info = await self.cd.info(regen.diff_id)
        if info is not None:
            metrics.LAYERS_EXPORTED.labels(verified="true").inc()
            return ExportedLayer(digest=regen.diff_id, size=info.size, diff_id=regen.diff_id,
                                 verified=True)
        started = time.monotonic()
        views: list[str] = []
        try:
            left: list[mount_pb2.Mount] = []
            if regen.parent:
                left = await self._view(regen.snapshotter, regen.parent, lease, views)
            right = await self._view(regen.snapshotter, regen.chain, lease, views)
            resp = await self.cd.call(self._diff.Diff, diff_pb2.DiffRequest(
                left=left, right=right, media_type=MT_LAYER_TAR,
                ref=f"tote-export-{regen.chain.split(':', 1)[1][:32]}-{os.urandom(4).hex()}",
                labels={"tote.dev/regenerated-from": regen.chain}), lease=lease,
                deadline=None)
        finally:
            for key in views:
                await self.unpacker.remove(regen.snapshotter, key)
        d = resp.diff
        if not d.digest:
            raise DataLoss(f"containerd's diff service returned no content for {layer}")
        verified = d.digest == regen.diff_id
        metrics.LAYERS_EXPORTED.labels(verified=str(verified).lower()).inc()
        log.info("regenerated layer %s from snapshot %s: %d bytes in %.1fs, %s", layer,
                 regen.chain, d.size, time.monotonic() - started,
                 "matches its diff ID" if verified else
                 f"hashes to {d.digest}, not its diff ID {regen.diff_id} (end to end only)")
        return ExportedLayer(digest=d.digest, size=d.size, diff_id=regen.diff_id,
                             verified=verified)

    async def _view(self, sn: str, chain: str, lease: str, views: list[str]
                    ) -> list[mount_pb2.Mount]:
        key = f"tote-export-view-{time.time_ns()}-{os.urandom(4).hex()}"
        resp = await self.cd.call(self._snapshots.View, snapshots_pb2.ViewSnapshotRequest(
            snapshotter=sn, key=key, parent=chain), lease=lease)
        views.append(key)
        return list(resp.mounts)
