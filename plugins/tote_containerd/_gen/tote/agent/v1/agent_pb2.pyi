from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlobInfo(_message.Message):
    __slots__ = ("digest", "media_type", "size", "present", "role")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    size: int
    present: bool
    role: str
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ..., present: _Optional[bool] = ..., role: _Optional[str] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("ref", "platform")
    REF_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ref: str
    platform: str
    def __init__(self, ref: _Optional[str] = ..., platform: _Optional[str] = ...) -> None: ...

class InspectResponse(_message.Message):
    __slots__ = ("digest", "media_type", "blobs", "total_bytes", "present_bytes", "complete", "layers_discarded", "reason", "names", "platform", "config_digest", "unpacked")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRESENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_DISCARDED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    UNPACKED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    blobs: _containers.RepeatedCompositeFieldContainer[BlobInfo]
    total_bytes: int
    present_bytes: int
    complete: bool
    layers_discarded: bool
    reason: str
    names: _containers.RepeatedScalarFieldContainer[str]
    platform: str
    config_digest: str
    unpacked: bool
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., blobs: _Optional[_Iterable[_Union[BlobInfo, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., present_bytes: _Optional[int] = ..., complete: _Optional[bool] = ..., layers_discarded: _Optional[bool] = ..., reason: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., platform: _Optional[str] = ..., config_digest: _Optional[str] = ..., unpacked: _Optional[bool] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("token", "target_node")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    token: str
    target_node: str
    def __init__(self, token: _Optional[str] = ..., target_node: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session", "expires_unix", "source_node", "data_port", "regenerable")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NODE_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    REGENERABLE_FIELD_NUMBER: _ClassVar[int]
    session: str
    expires_unix: int
    source_node: str
    data_port: int
    regenerable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session: _Optional[str] = ..., expires_unix: _Optional[int] = ..., source_node: _Optional[str] = ..., data_port: _Optional[int] = ..., regenerable: _Optional[_Iterable[str]] = ...) -> None: ...

class ReadBlobRequest(_message.Message):
    __slots__ = ("session", "digest", "offset", "length")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    session: str
    digest: str
    offset: int
    length: int
    def __init__(self, session: _Optional[str] = ..., digest: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ExportLayerRequest(_message.Message):
    __slots__ = ("session", "layer_digest")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    LAYER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    session: str
    layer_digest: str
    def __init__(self, session: _Optional[str] = ..., layer_digest: _Optional[str] = ...) -> None: ...

class ExportLayerResponse(_message.Message):
    __slots__ = ("digest", "size", "diff_id", "verified")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIFF_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    diff_id: str
    verified: bool
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., diff_id: _Optional[str] = ..., verified: _Optional[bool] = ...) -> None: ...

class ReadBlobResponse(_message.Message):
    __slots__ = ("offset", "data", "total")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total: _Optional[int] = ...) -> None: ...

class ImportFromRequest(_message.Message):
    __slots__ = ("source_node", "source_endpoint", "token", "digest", "names", "max_bytes", "parallelism", "platform", "allow_snapshots", "require_verified", "pin")
    SOURCE_NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    source_node: str
    source_endpoint: str
    token: str
    digest: str
    names: _containers.RepeatedScalarFieldContainer[str]
    max_bytes: int
    parallelism: int
    platform: str
    allow_snapshots: bool
    require_verified: bool
    pin: bool
    def __init__(self, source_node: _Optional[str] = ..., source_endpoint: _Optional[str] = ..., token: _Optional[str] = ..., digest: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., max_bytes: _Optional[int] = ..., parallelism: _Optional[int] = ..., platform: _Optional[str] = ..., allow_snapshots: _Optional[bool] = ..., require_verified: _Optional[bool] = ..., pin: _Optional[bool] = ...) -> None: ...

class ImportProgress(_message.Message):
    __slots__ = ("bytes_total", "bytes_transferred", "blobs_total", "blobs_skipped", "done", "names", "config_digest", "phase", "bytes_resumed", "path", "mode", "layers_regenerated", "layers_verified", "pinned")
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_TRANSFERRED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOBS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_RESUMED_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_REGENERATED_FIELD_NUMBER: _ClassVar[int]
    LAYERS_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    bytes_total: int
    bytes_transferred: int
    blobs_total: int
    blobs_skipped: int
    done: bool
    names: _containers.RepeatedScalarFieldContainer[str]
    config_digest: str
    phase: str
    bytes_resumed: int
    path: str
    mode: str
    layers_regenerated: int
    layers_verified: int
    pinned: bool
    def __init__(self, bytes_total: _Optional[int] = ..., bytes_transferred: _Optional[int] = ..., blobs_total: _Optional[int] = ..., blobs_skipped: _Optional[int] = ..., done: _Optional[bool] = ..., names: _Optional[_Iterable[str]] = ..., config_digest: _Optional[str] = ..., phase: _Optional[str] = ..., bytes_resumed: _Optional[int] = ..., path: _Optional[str] = ..., mode: _Optional[str] = ..., layers_regenerated: _Optional[int] = ..., layers_verified: _Optional[int] = ..., pinned: _Optional[bool] = ...) -> None: ...

class ImageRecord(_message.Message):
    __slots__ = ("name", "digest", "media_type", "size", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    media_type: str
    size: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageRecord]
    def __init__(self, images: _Optional[_Iterable[_Union[ImageRecord, _Mapping]]] = ...) -> None: ...

class ResolveTagRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class ResolveTagResponse(_message.Message):
    __slots__ = ("found", "digest", "media_type")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    digest: str
    media_type: str
    def __init__(self, found: _Optional[bool] = ..., digest: _Optional[str] = ..., media_type: _Optional[str] = ...) -> None: ...

class RemoveImageRequest(_message.Message):
    __slots__ = ("names", "digest")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    def __init__(self, names: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ...) -> None: ...

class RemoveImageResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class SetPinnedRequest(_message.Message):
    __slots__ = ("names", "digest", "pinned")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    pinned: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...

class SetPinnedResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, updated: _Optional[_Iterable[str]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("digest", "registry_url", "repository", "tag", "authorization", "ca_pem", "insecure", "mount_from", "parallelism")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_URL_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    MOUNT_FROM_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    digest: str
    registry_url: str
    repository: str
    tag: str
    authorization: str
    ca_pem: str
    insecure: bool
    mount_from: _containers.RepeatedScalarFieldContainer[str]
    parallelism: int
    def __init__(self, digest: _Optional[str] = ..., registry_url: _Optional[str] = ..., repository: _Optional[str] = ..., tag: _Optional[str] = ..., authorization: _Optional[str] = ..., ca_pem: _Optional[str] = ..., insecure: _Optional[bool] = ..., mount_from: _Optional[_Iterable[str]] = ..., parallelism: _Optional[int] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("pushed_digest", "index_pushed", "manifests", "blobs_total", "blobs_uploaded", "blobs_skipped", "blobs_mounted", "bytes_uploaded", "note", "platform")
    PUSHED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INDEX_PUSHED_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOBS_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_MOUNTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    pushed_digest: str
    index_pushed: bool
    manifests: _containers.RepeatedScalarFieldContainer[str]
    blobs_total: int
    blobs_uploaded: int
    blobs_skipped: int
    blobs_mounted: int
    bytes_uploaded: int
    note: str
    platform: str
    def __init__(self, pushed_digest: _Optional[str] = ..., index_pushed: _Optional[bool] = ..., manifests: _Optional[_Iterable[str]] = ..., blobs_total: _Optional[int] = ..., blobs_uploaded: _Optional[int] = ..., blobs_skipped: _Optional[int] = ..., blobs_mounted: _Optional[int] = ..., bytes_uploaded: _Optional[int] = ..., note: _Optional[str] = ..., platform: _Optional[str] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("containerd_ok", "containerd_version", "node_name", "platform", "content_root", "fast_path", "error")
    CONTAINERD_OK_FIELD_NUMBER: _ClassVar[int]
    CONTAINERD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ROOT_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    containerd_ok: bool
    containerd_version: str
    node_name: str
    platform: str
    content_root: str
    fast_path: bool
    error: str
    def __init__(self, containerd_ok: _Optional[bool] = ..., containerd_version: _Optional[str] = ..., node_name: _Optional[str] = ..., platform: _Optional[str] = ..., content_root: _Optional[str] = ..., fast_path: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...
