"""Inspect: what this node holds of an image — its blobs (index, the platform's manifest,
config, layers), which are present, whether its layers are unpacked in CRI's snapshotter,
and so whether the node can be a salvage source: with the blobs (`complete`), or with the
snapshots it unpacked them into (`unpacked`, the snapshot mode for nodes that discard their
compressed layers)."""

from __future__ import annotations

from tote_containerd.agent import oci
from tote_containerd.agent.api import BlobInfo, InspectResult
from tote_containerd.agent.content import LocalContent
from tote_containerd.agent.layer_export import LayerExporter


async def inspect(content: LocalContent, ref: str, want: str,
                  exporter: LayerExporter | None = None) -> InspectResult:
    """`ref` (record name or digest) for platform `want` (checked by the caller)."""
    top, names = await content.target_of(ref)
    blobs: list[BlobInfo] = []
    reason = ""
    discarded = False
    config_digest = ""
    unpacked = False
    top_doc = await content.json(top.digest, top.digest)
    mt = oci.media_type_of(top_doc, top.media_type)
    manifest_desc: oci.Desc | None = oci.Desc(mt, top.digest, top.size)
    if mt in oci.INDEX_TYPES:
        blobs.append(BlobInfo(digest=top.digest, media_type=mt, size=top.size,
                              present=True, role="index"))
        manifest_desc = oci.select_manifest(top_doc, want)
        if manifest_desc is None:
            reason = f"the index has no manifest for platform {want}"
    if manifest_desc is not None:
        m_present = await content.present(manifest_desc.digest)
        blobs.append(BlobInfo(digest=manifest_desc.digest,
                              media_type=manifest_desc.media_type or oci.MT_OCI_MANIFEST,
                              size=manifest_desc.size, present=m_present, role="manifest"))
        if not m_present:
            reason = f"the manifest for platform {want} is not on this node"
        else:
            manifest = await content.json(manifest_desc.digest, "manifest")
            config, layers = oci.manifest_children(manifest)
            config_digest = config.digest
            c_present = await content.present(config.digest)
            blobs.append(BlobInfo(digest=config.digest, media_type=config.media_type,
                                  size=config.size, present=c_present, role="config"))
            missing_layers = 0
            for layer in layers:
                p = await content.present(layer.digest)
                missing_layers += not p
                blobs.append(BlobInfo(digest=layer.digest, media_type=layer.media_type,
                                      size=layer.size, present=p, role="layer"))
            # Only where it decides something: a node with every blob is a source anyway, and
            # the snapshot check costs a Stat per layer on every inventory probe.
            if c_present and missing_layers and exporter is not None:
                unpacked = await exporter.unpacked(config, layers)
            if not c_present:
                reason = "the image config blob is missing"
            elif missing_layers:
                discarded = True
                reason = (f"layers_discarded: {missing_layers} of {len(layers)} compressed "
                          "layer blobs are gone from this node's content store (containerd "
                          "discard_unpacked_layers=true deletes them after unpack); "
                          + ("the layers are unpacked here, so this node can be a source in "
                             "snapshot mode" if unpacked else "the layers are not unpacked "
                             "here either, so this node cannot be a source"))
    total = sum(b.size for b in blobs)
    present = sum(b.size for b in blobs if b.present)
    return InspectResult(
        digest=top.digest, media_type=mt, blobs=blobs, total_bytes=total,
        present_bytes=present, complete=not reason, layers_discarded=discarded,
        reason=reason, names=names, platform=want, config_digest=config_digest,
        unpacked=unpacked)
