"""Where the status board gets its data: the seams detection and salvage already use.

- Incidents: every outcome detection and salvage report about a pod goes through the event
  recorder (`ImageSalvageable`, `ImageNotActionable`, `ImageCorrupt`, `ImageSalvaged`, ...);
  `PublishingRecorder` posts the event as before and puts the pod's latest outcome on the
  board. `incident_submitted` adds what only the salvage hand-off knows (digest, target).
- Transfers: every SalvageRecord status write goes through the record store;
  `PublishingRecordStore` publishes the record the API server returned, so the board shows
  exactly what `kubectl get salvagerecords` shows, at the engine's progress cadence (1 s).

Neither the detector nor the salvage engine imports anything from here: the controller's
manager builds these subclasses in place of the plain recorder and store.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tote_core.hooks.types import Incident
from tote_core.kube.client import KubeClient
from tote_core.kube.events import EventRecorder, EventType, Regarding
from tote_core.salvage.records import RecordStore
from tote_core.status.board import StatusBoard
from tote_core.structs.kube import Pod
from tote_core.structs.salvagerecord import SalvageRecord, SalvageRecordSpec
from tote_core.structs.status import Item
from tote_core.timefmt import micro_time


def incident_key(pod: Pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}/{pod.metadata.uid}"


def _failing_image(pod: Pod) -> str:
    for status in (*pod.status.init_container_statuses, *pod.status.container_statuses):
        if status.state.waiting is not None:
            return status.image
    return ""


def record_item(record: SalvageRecord) -> Item:
    spec, st = record.spec, record.status
    return Item(
        kind="transfer",
        key=f"{record.metadata.namespace}/{record.metadata.name}",
        namespace=record.metadata.namespace or "",
        pod=spec.pod_name, image=spec.image_ref, digest=spec.digest,
        source=spec.source_node, target=spec.target_node,
        phase=st.phase or "Pending", message=st.progress,
        bytes_transferred=st.bytes_transferred, bytes_total=st.bytes_total,
        retry_count=st.retry_count, started_at=st.started_at or "",
        updated_at=micro_time(), completed_at=st.completed_at or "", error=st.error,
    )


class PublishingRecorder(EventRecorder):
    """The event recorder, plus the pod's latest outcome on the status board."""

    def __init__(self, client: KubeClient, *, instance: str, board: StatusBoard) -> None:
        super().__init__(client, instance=instance)
        self.board = board

    async def emit(
        self, pod: Regarding, reason: str, note: str, *, type_: EventType = "Warning",
        action: str = "Salvage", once: bool = False,
    ) -> None:
        if not isinstance(pod, Pod):  # Namespace / ConfigMap warnings are no incidents
            await super().emit(pod, reason, note, type_=type_, action=action, once=once)
            return
        key = incident_key(pod)
        old = self.board.get(key)
        if old is None or (old.phase, old.message) != (reason, note):
            now = micro_time()
            base = old or Item(
                kind="incident", key=key, namespace=pod.metadata.namespace,
                pod=pod.metadata.name, image=_failing_image(pod),
                target=pod.spec.node_name, started_at=now,
            )
            self.board.publish(msgspec.structs.replace(
                base, phase=reason, message=note, updated_at=now))
        await super().emit(pod, reason, note, type_=type_, action=action, once=once)


def incident_submitted(board: StatusBoard, incident: Incident, pod: Pod) -> None:
    """Detection handed `incident` to salvage: the board learns its digest and target."""
    key = incident_key(pod)
    old = board.get(key)
    now = micro_time()
    base = old or Item(kind="incident", key=key, namespace=pod.metadata.namespace,
                       pod=pod.metadata.name, started_at=now, phase="Detected")
    item = msgspec.structs.replace(
        base, image=incident.image_ref, digest=incident.digest or "",
        target=incident.node_name or "", source=",".join(incident.candidate_nodes),
    )
    if item != base:
        board.publish(msgspec.structs.replace(item, updated_at=now))


class PublishingRecordStore(RecordStore):
    """The SalvageRecord store, plus every record it writes on the status board."""

    def __init__(self, kube: KubeClient, board: StatusBoard) -> None:
        super().__init__(kube)
        self.board = board

    async def ensure(self, namespace: str, spec: SalvageRecordSpec) -> SalvageRecord:
        record = await super().ensure(namespace, spec)
        self.board.publish(record_item(record))
        return record

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> SalvageRecord | None:
        record = await super().patch_status(namespace, name, status)
        if record is not None:
            self.board.publish(record_item(record))
        return record
