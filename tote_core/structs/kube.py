"""The subset of Kubernetes objects tote reads, decoded straight from JSON by msgspec.

Only fields tote uses are declared; msgspec skips the rest while decoding, so caches stay
small. `pod_ip` is kept on purpose: the Go original dropped it and never found its agents.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec


class _K(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """Base: camelCase on the wire, snake_case in Python."""


class OwnerReference(_K):
    api_version: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""
    controller: bool = False


class ObjectMeta(_K):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    owner_references: list[OwnerReference] = msgspec.field(default_factory=list)


class Container(_K):
    name: str = ""
    image: str = ""
    image_pull_policy: str = ""


class LocalObjectReference(_K):
    name: str = ""


class PodSpec(_K):
    node_name: str = ""
    containers: list[Container] = msgspec.field(default_factory=list)
    init_containers: list[Container] = msgspec.field(default_factory=list)
    image_pull_secrets: list[LocalObjectReference] = msgspec.field(default_factory=list)


class ContainerStateWaiting(_K):
    reason: str = ""
    message: str = ""


class ContainerState(_K):
    waiting: ContainerStateWaiting | None = None


class ContainerStatus(_K):
    name: str = ""
    image: str = ""
    image_id: str = msgspec.field(default="", name="imageID")
    state: ContainerState = msgspec.field(default_factory=ContainerState)


class PodStatus(_K):
    phase: str = ""
    pod_ip: str = msgspec.field(default="", name="podIP")
    container_statuses: list[ContainerStatus] = msgspec.field(default_factory=list)
    init_container_statuses: list[ContainerStatus] = msgspec.field(default_factory=list)


class Pod(_K):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)


class ContainerImage(_K):
    names: list[str] = msgspec.field(default_factory=list)


class NodeCondition(_K):
    type: str = ""
    status: str = ""


class NodeStatus(_K):
    images: list[ContainerImage] = msgspec.field(default_factory=list)
    conditions: list[NodeCondition] = msgspec.field(default_factory=list)


class Node(_K):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    status: NodeStatus = msgspec.field(default_factory=NodeStatus)

    @property
    def ready(self) -> bool:
        return any(c.type == "Ready" and c.status == "True" for c in self.status.conditions)

    @property
    def zone(self) -> str | None:
        return self.metadata.labels.get("topology.kubernetes.io/zone")


class Namespace(_K):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)


class ConfigMap(_K):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    data: dict[str, str] = msgspec.field(default_factory=dict)


class ObjectReference(_K):
    kind: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""
    field_path: str = ""  # "spec.containers{app}" for a container's events


class EventSource(_K):
    component: str = ""


class CoreEvent(_K):
    """A core/v1 Event, the kind kubelet posts (tote's own are events.k8s.io/v1)."""

    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    involved_object: ObjectReference = msgspec.field(default_factory=ObjectReference)
    reason: str = ""
    message: str = ""
    source: EventSource = msgspec.field(default_factory=EventSource)
    reporting_component: str = ""
    last_timestamp: str | None = None
    event_time: str | None = None


class PartialObject(_K):
    """Metadata-only view (owner lookups need nothing else)."""

    api_version: str = ""
    kind: str = ""
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)


class LeaseSpec(_K):
    holder_identity: str | None = None
    lease_duration_seconds: int | None = None
    acquire_time: str | None = None
    renew_time: str | None = None
    lease_transitions: int | None = None


class Lease(_K):
    api_version: str = "coordination.k8s.io/v1"
    kind: str = "Lease"
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: LeaseSpec = msgspec.field(default_factory=LeaseSpec)


class ListMeta(_K):
    resource_version: str = ""
    continue_: str = msgspec.field(default="", name="continue")


T = TypeVar("T")


class ObjectList(_K, Generic[T]):
    metadata: ListMeta = msgspec.field(default_factory=ListMeta)
    items: list[T] = msgspec.field(default_factory=list)


class WatchEvent(_K):
    type: str
    object: msgspec.Raw


class Status(_K):
    """The API server's error body."""

    code: int = 0
    reason: str = ""
    message: str = ""


def meta_key(meta: ObjectMeta) -> str:
    """Cache key `namespace/name` (or `name` for cluster-scoped objects)."""
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
