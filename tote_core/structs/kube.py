"""The subset of Kubernetes objects tote reads, decoded straight from JSON by msgspec.

Only fields tote uses are declared; msgspec skips the rest while decoding, so caches stay
small. `pod_ip` is kept on purpose: the Go original dropped it and never found its agents.
"""

from __future__ import annotations

from sys import intern
from typing import Any, Generic, TypeVar

import msgspec


class _K(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True, gc=False):
    """Base: camelCase on the wire, snake_case in Python.

    `gc=False`: these are plain data decoded from JSON (no object refers back to its owner),
    so they can never be part of a reference cycle and reference counting frees them. Not
    tracking them spares the cyclic collector ~7 objects per cached pod and 16 bytes each.
    """


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
    # kubelet writes `"names": null` for an image with neither a tag nor a digest left (a
    # dangling image, e.g. after `ctr images rm` of its last name): decoding must take it,
    # or one such image on one node stops the node informer's list and the controller
    # never becomes ready (found by the soak).
    names: list[str] | None = None


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


def _shared_map(values: dict[str, str]) -> dict[str, str]:
    return {intern(k): intern(v) for k, v in values.items()} if values else values


def _share_meta(meta: ObjectMeta) -> None:
    meta.namespace = intern(meta.namespace)
    if meta.creation_timestamp is not None:  # objects created in the same second share it
        meta.creation_timestamp = intern(meta.creation_timestamp)
    meta.labels = _shared_map(meta.labels)
    meta.annotations = _shared_map(meta.annotations)
    for ref in meta.owner_references:  # a ReplicaSet's pods name the same owner
        ref.api_version, ref.kind = intern(ref.api_version), intern(ref.kind)
        ref.name, ref.uid = intern(ref.name), intern(ref.uid)


def _share_containers(containers: list[Container]) -> None:
    for c in containers:
        c.name, c.image = intern(c.name), intern(c.image)
        c.image_pull_policy = intern(c.image_pull_policy)


def _share_statuses(statuses: list[ContainerStatus]) -> None:
    for st in statuses:
        st.name, st.image, st.image_id = intern(st.name), intern(st.image), intern(st.image_id)
        waiting = st.state.waiting
        if waiting is not None:
            waiting.reason = intern(waiting.reason)


def share_pod_strings(pod: Pod) -> Pod:
    """The same `pod` with the strings many pods repeat (namespace, node name, image
    references, container names, label and annotation keys and values, owners, phase)
    replaced by one shared copy each (`sys.intern`).

    A cache of 150 000 pods otherwise holds 150 000 copies of each: decoding gives every
    object its own strings. Interning about halves what a cached pod costs beyond its
    unique fields (name, uid, resourceVersion, IP). Interned strings are still freed when
    the last object using them goes."""
    _share_meta(pod.metadata)
    spec = pod.spec
    spec.node_name = intern(spec.node_name)
    _share_containers(spec.containers)
    _share_containers(spec.init_containers)
    status = pod.status
    status.phase = intern(status.phase)
    _share_statuses(status.container_statuses)
    _share_statuses(status.init_container_statuses)
    return pod


def share_node_strings(node: Node) -> Node:
    """`node` with its image names (the same images on many nodes), labels and condition
    strings shared, as `share_pod_strings` does for pods: at 5 000 nodes reporting ~40
    images each, the names are most of the node cache."""
    _share_meta(node.metadata)
    for image in node.status.images:
        image.names = [intern(n) for n in image.names or ()]
    for cond in node.status.conditions:
        cond.type, cond.status = intern(cond.type), intern(cond.status)
    return node


def meta_key(meta: ObjectMeta) -> str:
    """Cache key `namespace/name` (or `name` for cluster-scoped objects)."""
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
