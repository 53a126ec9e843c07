"""kubelet's pull-failure Events, read as early evidence of what the pod status will say.

kubelet posts `Failed` (`Failed to pull image "X": <error>`) the moment a pull fails; the
pod status that says `ErrImagePull` reaches the API server later, after the status
manager's next write — measured on kubelet 1.37: the Event after 0.49 to 0.60 s, the status
after 0.54 to 1.49 s (docs/benchmarks.md). Salvage can start at the Event: detection reads the
pod as it will be (`overlay`) and goes on exactly as for the status, classification
included — the Event carries kubelet's error text, as the status message does.

Pure: parsing, and a small store with the caller's clock. Only a container that has not
shown a failure or started yet is overlaid (status missing, or waiting in
`ContainerCreating`/`PodInitializing`); whatever the status says once it says it wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec

from tote_core.structs.kube import (
    ContainerState,
    ContainerStateWaiting,
    ContainerStatus,
    CoreEvent,
    Pod,
)

# kubelet's wording (pkg/kubelet/images: "Failed to pull image %q: %v"), reason "Failed".
_FAILED_TO_PULL = re.compile(r'Failed to pull image "(?P<image>[^"]+)": (?P<error>.+)', re.S)
_FIELD_PATH = re.compile(r"spec\.(?P<kind>containers|initContainers)\{(?P<name>[^}]+)\}")
REASON = "Failed"
# The list/watch that brings exactly those Events (core/v1 field selectors).
FIELD_SELECTOR = "involvedObject.kind=Pod,reason=Failed"
WAITING_BEFORE_START = frozenset({"", "ContainerCreating", "PodInitializing"})
HINT_TTL = 120.0  # beyond that the pod status has long caught up
MAX_PODS = 50_000


class PullFailure(msgspec.Struct, frozen=True):
    """One container's failed pull as kubelet's Event told it."""

    pod_uid: str
    container: str
    init_container: bool
    image: str
    message: str


def from_event(event: CoreEvent) -> PullFailure | None:
    """The pull failure a kubelet Event reports; None for any other Event."""
    obj = event.involved_object
    if event.reason != REASON or obj.kind != "Pod" or not obj.uid:
        return None
    failed = _FAILED_TO_PULL.match(event.message)
    where = _FIELD_PATH.fullmatch(obj.field_path)
    if failed is None or where is None:
        return None
    return PullFailure(pod_uid=obj.uid, container=where["name"],
                       init_container=where["kind"] == "initContainers",
                       image=failed["image"], message=event.message)


def overlay(pod: Pod, failures: list[PullFailure]) -> Pod:
    """`pod` as its status will read once kubelet reports `failures`: each failing
    container that has not shown a failure or started yet waits in `ErrImagePull` with
    kubelet's message. Containers whose image is not the one that failed are left alone
    (the spec changed)."""
    if not failures:
        return pod
    status = pod.status
    for init, specs, attr in ((True, pod.spec.init_containers, "init_container_statuses"),
                              (False, pod.spec.containers, "container_statuses")):
        mine = {f.container: f for f in failures if f.init_container is init}
        if not mine:
            continue
        images = {c.name: c.image for c in specs}
        statuses: list[ContainerStatus] = list(getattr(status, attr))
        present = {s.name for s in statuses}
        for i, st in enumerate(statuses):
            f = mine.get(st.name)
            waiting = st.state.waiting
            if f is not None and images.get(st.name) == f.image and waiting is not None \
                    and waiting.reason in WAITING_BEFORE_START:
                statuses[i] = msgspec.structs.replace(st, state=_err_image_pull(f))
        for name, f in mine.items():
            if name not in present and images.get(name) == f.image:
                statuses.append(ContainerStatus(name=name, image=f.image,
                                                state=_err_image_pull(f)))
        status = msgspec.structs.replace(status, **{attr: statuses})
    return msgspec.structs.replace(pod, status=status)


def _err_image_pull(f: PullFailure) -> ContainerState:
    return ContainerState(waiting=ContainerStateWaiting(reason="ErrImagePull",
                                                        message=f.message))


class PullFailures:
    """Recent pull failures by pod UID, for `HINT_TTL` seconds of the caller's clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._by_pod: dict[str, dict[tuple[str, bool], tuple[float, PullFailure]]] = {}

    def add(self, failure: PullFailure) -> None:
        if len(self._by_pod) >= MAX_PODS and failure.pod_uid not in self._by_pod:
            self._by_pod.pop(next(iter(self._by_pod)))
        per_pod = self._by_pod.setdefault(failure.pod_uid, {})
        per_pod[(failure.container, failure.init_container)] = (self.clock(), failure)

    def of(self, pod_uid: str) -> list[PullFailure]:
        per_pod = self._by_pod.get(pod_uid)
        if not per_pod:
            return []
        now = self.clock()
        fresh = {k: v for k, v in per_pod.items() if now - v[0] < HINT_TTL}
        if len(fresh) != len(per_pod):
            if fresh:
                self._by_pod[pod_uid] = fresh
            else:
                del self._by_pod[pod_uid]
        return [f for _, f in fresh.values()]

    def forget(self, pod_uid: str) -> None:
        self._by_pod.pop(pod_uid, None)

    def __len__(self) -> int:
        return len(self._by_pod)
