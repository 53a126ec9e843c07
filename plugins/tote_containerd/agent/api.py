"""Agent API messages as msgspec Structs (protobuf stays inside the bridge modules)."""

from __future__ import annotations

import msgspec


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    digest: str
    media_type: str
    size: int
    present: bool
    role: str  # index | manifest | config | layer


class InspectResult(msgspec.Struct, frozen=True, kw_only=True):
    digest: str
    media_type: str
    blobs: list[BlobInfo]
    total_bytes: int
    present_bytes: int
    complete: bool
    layers_discarded: bool
    reason: str
    names: list[str]
    platform: str
    config_digest: str
    unpacked: bool = False  # layers_discarded, but every layer's snapshot is in CRI's


class ImportProgress(msgspec.Struct, kw_only=True):
    bytes_total: int = 0
    bytes_transferred: int = 0
    blobs_total: int = 0
    blobs_skipped: int = 0
    done: bool = False
    names: list[str] = msgspec.field(default_factory=list)
    config_digest: str = ""
    phase: str = "resolving"
    bytes_resumed: int = 0
    path: str = "api"
    mode: str = "blobs"  # blobs | snapshots | mixed
    layers_regenerated: int = 0
    layers_verified: int = 0  # regenerated layers whose bytes hash to their diff ID
    pinned: bool = False


class ImportRequest(msgspec.Struct, frozen=True, kw_only=True):
    source_node: str
    source_endpoint: str
    token: str
    digest: str
    names: list[str]
    max_bytes: int = 0
    parallelism: int = 0
    platform: str = ""
    allow_snapshots: bool = True
    require_verified: bool = False
    pin: bool = False


class ImageRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    digest: str
    media_type: str
    size: int
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    found: bool
    digest: str = ""
    media_type: str = ""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    containerd_ok: bool
    containerd_version: str = ""
    node_name: str = ""
    platform: str = ""
    content_root: str = ""
    fast_path: bool = False
    error: str = ""


class Session(msgspec.Struct, frozen=True, kw_only=True):
    session: str
    expires_unix: int
    source_node: str
    data_port: int = 0
    regenerable: list[str] = msgspec.field(default_factory=list)


class ExportedLayer(msgspec.Struct, frozen=True, kw_only=True):
    """A layer regenerated from the source's snapshots, readable through the session."""

    digest: str
    size: int
    diff_id: str
    verified: bool  # `digest` == `diff_id`


class PushRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Push `digest` from this node to `registry_url`/`repository`:`tag` (controller only)."""

    digest: str
    registry_url: str
    repository: str
    tag: str
    authorization: str = ""  # an `Authorization` header value; never printed
    ca_pem: str = ""
    insecure: bool = False
    mount_from: list[str] = msgspec.field(default_factory=list)
    parallelism: int = 0

    def __repr__(self) -> str:  # the header is a credential, even in a traceback
        return (f"PushRequest(digest={self.digest!r}, registry_url={self.registry_url!r}, "
                f"repository={self.repository!r}, tag={self.tag!r})")


class PushResult(msgspec.Struct, frozen=True, kw_only=True):
    pushed_digest: str
    index_pushed: bool
    manifests: list[str]
    blobs_total: int
    blobs_uploaded: int
    blobs_skipped: int
    blobs_mounted: int
    bytes_uploaded: int
    note: str = ""
    platform: str = ""
