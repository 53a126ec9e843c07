"""Where the status board gets its data: listeners on the seams detection and salvage
already use, fed by composition (neither the recorder nor the store knows the board).

- Incidents: every outcome detection and salvage report about a pod goes through the event
  recorder (`ImageSalvageable`, `ImageNotActionable`, `ImageCorrupt`, `ImageSalvaged`, ...);
  `BoardPublisher.event`, one of the recorder's listeners, puts the pod's latest outcome on
  the board. `submitted` adds what only the salvage hand-off knows (digest, target).
- Transfers: every SalvageRecord status write goes through the `StatusWriter`;
  `BoardPublisher.record`, one of its listeners, publishes the record the API server
  returned, so the board shows exactly what `kubectl get salvagerecords` shows, at the
  engine's progress cadence (1 s).

Neither the detector nor the salvage engine imports anything from here: the controller's
manager registers the listeners when it builds the recorder and the record store.
"""

from __future__ import annotations

import msgspec

from tote_core.hooks.types import Incident
from tote_core.kube.events import Regarding
from tote_core.status.board import StatusBoard
from tote_core.structs.kube import Pod
from tote_core.structs.salvagerecord import SalvageRecord
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


class BoardPublisher:
    """Puts what the recorder and the status writer report on `board`."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def event(self, regarding: Regarding, reason: str, note: str) -> None:
        """An event listener: the pod's latest outcome (Namespace / ConfigMap /
        SalvageRecord warnings are no incidents)."""
        if not isinstance(regarding, Pod):
            return
        pod = regarding
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

    def record(self, record: SalvageRecord) -> None:
        """A record listener: the record as the API server returned it."""
        self.board.publish(record_item(record))

    def submitted(self, incident: Incident, pod: Pod) -> None:
        """Detection handed `incident` to salvage: the board learns its digest and target."""
        key = incident_key(pod)
        old = self.board.get(key)
        now = micro_time()
        base = old or Item(kind="incident", key=key, namespace=pod.metadata.namespace,
                           pod=pod.metadata.name, started_at=now, phase="Detected")
        item = msgspec.structs.replace(
            base, image=incident.image_ref, digest=incident.digest or "",
            target=incident.node_name or "", source=",".join(incident.candidate_nodes),
        )
        if item != base:
            self.board.publish(msgspec.structs.replace(item, updated_at=now))
