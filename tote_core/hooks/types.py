"""msgspec types passed through hooks.

Hooks cross a package boundary (third-party plugins), so their arguments are plain, frozen
structs that can be logged, compared and serialised, never live client objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Literal, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


class Incident(msgspec.Struct, frozen=True, kw_only=True):
    """One failing (pod UID, container, image) as detected; what `on_detected` receives."""

    namespace: str
    pod_name: str
    pod_uid: str
    container: str
    init_container: bool
    image_ref: str  # normalised reference, e.g. docker.io/library/nginx:1.25
    digest: str | None  # sha256:… once known
    node_name: str | None  # the failing (target) node
    kind: Literal["pull", "corrupt"]
    message: str  # kubelet's waiting message
    candidate_nodes: tuple[str, ...] = ()  # nodes known to hold the digest


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `select_source` may weigh about a candidate node."""

    name: str
    ready: bool
    zone: str | None = None
    active_transfers: int = 0


class TransferRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Copy one image (by digest) from `source_node` into `target_node`'s containerd."""

    image_ref: str  # normalised ref the pod asked for; becomes an image record name
    digest: str  # sha256:… of the index or manifest
    source_node: str
    target_node: str
    max_bytes: int = 0  # 0 = no limit; the plugin must refuse before moving more than this
    # Core's salvage policy, which every transfer plugin honours (`--snapshot-salvage`,
    # `--snapshot-salvage-strict`, `--pin-salvaged-images`): may layers be regenerated
    # from a source's unpacked snapshots; only those that hash to the image's diff IDs;
    # label the imported image so kubelet's image GC keeps it.
    allow_snapshots: bool = True
    require_verified: bool = False
    pin: bool = True


class TransferProgress(msgspec.Struct, kw_only=True):
    """A progress report streamed while a transfer runs."""

    bytes_total: int = 0  # bytes that have to move (after dedupe)
    bytes_transferred: int = 0
    blobs_total: int = 0
    blobs_skipped: int = 0  # blobs the target already had


class TransferResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished transfer reports; the SalvageRecord status is filled from it."""

    bytes_total: int
    bytes_transferred: int
    blobs_skipped: int
    duration_seconds: float
    # "blobs": every layer moved as its original blob; "snapshots": regenerated from the
    # source's unpacked snapshots (it discarded the blobs); "mixed": some of each.
    mode: Literal["blobs", "snapshots", "mixed"] = "blobs"
    layers_regenerated: int = 0
    layers_verified: int = 0  # regenerated layers whose bytes hash to the image's diff IDs
    pinned: bool = False  # the image records carry CRI's pin label (kubelet GC skips them)


ProgressCallback = Callable[[TransferProgress], Awaitable[None]]


NotificationType = Literal["detected", "salvaged", "failed", "pushed"]
NOTIFICATION_TYPES: tuple[NotificationType, ...] = ("detected", "salvaged", "failed", "pushed")


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook-worthy event: the host passes it on once per incident and type.

    The fields are the webhook's JSON payload, except `pod_uid`, which only keys the
    once-per-incident rule (a StatefulSet pod recreated under the same name is a new
    incident).
    """

    type: NotificationType
    pod_name: str
    namespace: str
    image_ref: str
    digest: str
    source_node: str = ""
    target_node: str = ""
    error: str = ""
    timestamp: str = ""  # RFC3339 UTC; the host fills it in when empty
    pod_uid: str = ""


def detected(incident: Incident) -> Notification:
    """The `detected` notification of a new incident (core emits it after `on_detected`)."""
    return Notification(
        type="detected", pod_name=incident.pod_name, namespace=incident.namespace,
        pod_uid=incident.pod_uid, image_ref=incident.image_ref, digest=incident.digest or "",
        target_node=incident.node_name or "")


class OptInQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Asked of `opt_in` plugins when a pod itself does not carry the opt-in annotation."""

    namespace: str
    pod_name: str
    owner_references: tuple[tuple[str, str, str], ...]  # (apiVersion, kind, name)


class PushRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Push `digest`, held by `node`, to `registry_url`/`repository`:`tag`.

    Built by the registry plugin, which reads the Secret and turns it into `authorization`
    (a ready `Authorization` header value, scoped for this repository) — never printed.
    """

    node: str
    digest: str
    registry_url: str  # https://host[:port] or http://host[:port]
    repository: str  # path under the registry host, prefix included
    tag: str
    authorization: str = ""
    ca_pem: str = ""  # PEM certificates trusted besides the system roots
    insecure: bool = False  # skip TLS verification
    mount_from: tuple[str, ...] = ()  # repositories of the same registry to mount blobs from

    def __repr__(self) -> str:
        return (f"PushRequest(node={self.node!r}, digest={self.digest!r}, "
                f"registry_url={self.registry_url!r}, repository={self.repository!r}, "
                f"tag={self.tag!r})")


class PushResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a push did; `note` says in words what was (not) pushed, e.g. a partial index."""

    pushed_digest: str  # what the tag points at now
    index_pushed: bool
    manifests: tuple[str, ...]  # platform manifests pushed
    blobs_total: int
    blobs_uploaded: int
    blobs_skipped: int  # already in the repository
    blobs_mounted: int  # cross-repository mounts
    bytes_uploaded: int
    note: str = ""
    platform: str = ""  # platform of the pushed manifest when the index was not pushed


class NodeHealth(msgspec.Struct, frozen=True, kw_only=True):
    """What `node_health` reports about one node's agent (for `tote doctor`)."""

    node: str
    reachable: bool
    endpoint: str = ""
    containerd_ok: bool = False
    containerd_version: str = ""
    # True: sampled images lack their compressed layers (containerd's
    # discard_unpacked_layers); False: sampled images are complete; None: nothing to sample.
    layers_discarded: bool | None = None
    images_sampled: int = 0
    error: str = ""


class PluginSettings(Mapping[str, msgspec.Struct]):
    """Every loaded plugin's validated settings, by plugin name; a plugin finds its own by
    its Struct class (`of`), so it never needs to know the name it was installed under."""

    def __init__(self, values: Mapping[str, msgspec.Struct] | None = None) -> None:
        self._values = dict(values or {})

    def of(self, cls: type[S]) -> S:
        """The instance of `cls` that was loaded; `cls()` (its defaults) when none was —
        a plugin registered by hand, as in a test."""
        for value in self._values.values():
            if type(value) is cls:
                return value
        return cls()

    def __getitem__(self, name: str) -> msgspec.Struct:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
