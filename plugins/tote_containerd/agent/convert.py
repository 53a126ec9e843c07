"""protobuf ↔ msgspec conversion for the agent API (used only by the bridge modules)."""

from __future__ import annotations

from typing import Any

from tote_containerd._gen.tote.agent.v1 import agent_pb2 as pb
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


def inspect_to_pb(r: InspectResult) -> Any:
    return pb.InspectResponse(
        digest=r.digest, media_type=r.media_type,
        blobs=[pb.BlobInfo(digest=b.digest, media_type=b.media_type, size=b.size,
                           present=b.present, role=b.role) for b in r.blobs],
        total_bytes=r.total_bytes, present_bytes=r.present_bytes, complete=r.complete,
        layers_discarded=r.layers_discarded, reason=r.reason, names=r.names,
        platform=r.platform, config_digest=r.config_digest)


def inspect_from_pb(m: Any) -> InspectResult:
    return InspectResult(
        digest=m.digest, media_type=m.media_type,
        blobs=[BlobInfo(digest=b.digest, media_type=b.media_type, size=b.size,
                        present=b.present, role=b.role) for b in m.blobs],
        total_bytes=m.total_bytes, present_bytes=m.present_bytes, complete=m.complete,
        layers_discarded=m.layers_discarded, reason=m.reason, names=list(m.names),
        platform=m.platform, config_digest=m.config_digest)


def progress_to_pb(p: ImportProgress) -> Any:
    return pb.ImportProgress(
        bytes_total=p.bytes_total, bytes_transferred=p.bytes_transferred,
        blobs_total=p.blobs_total, blobs_skipped=p.blobs_skipped, done=p.done, names=p.names,
        config_digest=p.config_digest, phase=p.phase, bytes_resumed=p.bytes_resumed,
        path=p.path)


def progress_from_pb(m: Any) -> ImportProgress:
    return ImportProgress(
        bytes_total=m.bytes_total, bytes_transferred=m.bytes_transferred,
        blobs_total=m.blobs_total, blobs_skipped=m.blobs_skipped, done=m.done,
        names=list(m.names), config_digest=m.config_digest, phase=m.phase,
        bytes_resumed=m.bytes_resumed, path=m.path)


def import_to_pb(r: ImportRequest) -> Any:
    return pb.ImportFromRequest(
        source_node=r.source_node, source_endpoint=r.source_endpoint, token=r.token,
        digest=r.digest, names=r.names, max_bytes=r.max_bytes, parallelism=r.parallelism,
        platform=r.platform)


def import_from_pb(m: Any) -> ImportRequest:
    return ImportRequest(
        source_node=m.source_node, source_endpoint=m.source_endpoint, token=m.token,
        digest=m.digest, names=list(m.names), max_bytes=m.max_bytes,
        parallelism=m.parallelism, platform=m.platform)


def images_to_pb(images: list[ImageRecord]) -> Any:
    return pb.ListImagesResponse(images=[
        pb.ImageRecord(name=i.name, digest=i.digest, media_type=i.media_type, size=i.size,
                       labels=i.labels) for i in images])


def images_from_pb(m: Any) -> list[ImageRecord]:
    return [ImageRecord(name=i.name, digest=i.digest, media_type=i.media_type, size=i.size,
                        labels=dict(i.labels)) for i in m.images]


def resolved_to_pb(r: Resolved) -> Any:
    return pb.ResolveTagResponse(found=r.found, digest=r.digest, media_type=r.media_type)


def resolved_from_pb(m: Any) -> Resolved:
    return Resolved(found=m.found, digest=m.digest, media_type=m.media_type)


def health_to_pb(h: Health) -> Any:
    return pb.HealthResponse(
        containerd_ok=h.containerd_ok, containerd_version=h.containerd_version,
        node_name=h.node_name, platform=h.platform, content_root=h.content_root,
        fast_path=h.fast_path, error=h.error)


def health_from_pb(m: Any) -> Health:
    return Health(containerd_ok=m.containerd_ok, containerd_version=m.containerd_version,
                  node_name=m.node_name, platform=m.platform, content_root=m.content_root,
                  fast_path=m.fast_path, error=m.error)


def session_from_pb(m: Any) -> Session:
    return Session(session=m.session, expires_unix=m.expires_unix, source_node=m.source_node,
                   data_port=m.data_port)


def push_request_to_pb(r: PushRequest) -> Any:
    return pb.PushRequest(
        digest=r.digest, registry_url=r.registry_url, repository=r.repository, tag=r.tag,
        authorization=r.authorization, ca_pem=r.ca_pem, insecure=r.insecure,
        mount_from=r.mount_from, parallelism=r.parallelism)


def push_request_from_pb(m: Any) -> PushRequest:
    return PushRequest(
        digest=m.digest, registry_url=m.registry_url, repository=m.repository, tag=m.tag,
        authorization=m.authorization, ca_pem=m.ca_pem, insecure=m.insecure,
        mount_from=list(m.mount_from), parallelism=m.parallelism)


def push_result_to_pb(r: PushResult) -> Any:
    return pb.PushResponse(
        pushed_digest=r.pushed_digest, index_pushed=r.index_pushed, manifests=r.manifests,
        blobs_total=r.blobs_total, blobs_uploaded=r.blobs_uploaded,
        blobs_skipped=r.blobs_skipped, blobs_mounted=r.blobs_mounted,
        bytes_uploaded=r.bytes_uploaded, note=r.note, platform=r.platform)


def push_result_from_pb(m: Any) -> PushResult:
    return PushResult(
        pushed_digest=m.pushed_digest, index_pushed=m.index_pushed, manifests=list(m.manifests),
        blobs_total=m.blobs_total, blobs_uploaded=m.blobs_uploaded,
        blobs_skipped=m.blobs_skipped, blobs_mounted=m.blobs_mounted,
        bytes_uploaded=m.bytes_uploaded, note=m.note, platform=m.platform)
