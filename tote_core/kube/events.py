"""Kubernetes events (events.k8s.io/v1) with aggregation into event series.

Names are deterministic per (pod UID, reason, message), so a repeat — even after a
controller restart — lands on the same Event and bumps its `series.count` instead of
posting a new one. Series updates for one key are throttled, so a pod stuck in back-off
does not turn into a stream of API writes.

Whoever wants to see the outcomes reported (the status board) registers an `EventListener`:
it is called, synchronously, with every event's subject, reason and note before the event
is posted — also when posting fails or is aggregated away.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import trio

from tote_core.errors import Conflict, KubeError, NotFound
from tote_core.kube.client import KubeClient, resource_path
from tote_core.structs.kube import ConfigMap, Namespace, Pod
from tote_core.structs.salvagerecord import GROUP_VERSION, SalvageRecord
from tote_core.timefmt import micro_time

log = logging.getLogger("tote.events")

REPORTING_CONTROLLER = "tote.dev/controller"
SERIES_MIN_INTERVAL = 30.0
MAX_NOTE = 1024

EventType = Literal["Normal", "Warning"]

# Events about cluster-scoped objects (a Namespace) must live in `default` (API validation
# for events.k8s.io/v1 with an eventTime); namespaced objects get events in their namespace.
CLUSTER_EVENTS_NAMESPACE = "default"

Regarding = Pod | Namespace | ConfigMap | SalvageRecord
# kind → (apiVersion, kind) of `regarding`.
_KIND = {Pod: ("v1", "Pod"), Namespace: ("v1", "Namespace"), ConfigMap: ("v1", "ConfigMap"),
         SalvageRecord: (GROUP_VERSION, "SalvageRecord")}

EventListener = Callable[[Regarding, str, str], None]  # (regarding, reason, note)


def event_name(pod: Regarding, reason: str, note: str) -> str:
    digest = hashlib.sha256(f"{pod.metadata.uid}\0{reason}\0{note}".encode()).hexdigest()[:16]
    return f"{pod.metadata.name[:200]}.tote.{digest}"


class EventRecorder:
    def __init__(self, client: KubeClient, *, instance: str,
                 listeners: Sequence[EventListener] = ()) -> None:
        self.client = client
        self.instance = instance
        self.listeners = list(listeners)
        self._seen: dict[str, tuple[int, float]] = {}  # name → (count, last write time)
        self.posted = 0
        self.aggregated = 0

    async def emit(
        self,
        pod: Regarding,
        reason: str,
        note: str,
        *,
        type_: EventType = "Warning",
        action: str = "Salvage",
        once: bool = False,
    ) -> None:
        """Post (or aggregate) one event about `pod` (or a Namespace / ConfigMap /
        SalvageRecord). Never raises: events are best effort.

        `once`: post only if no Event of that name exists yet, never aggregate: for a state
        change that a new leader re-reports on taking over (the kill switch), so a failover
        does not count the same change twice."""
        for listener in self.listeners:
            listener(pod, reason, note)
        note = note[:MAX_NOTE]
        name = event_name(pod, reason, note)
        ns = pod.metadata.namespace or CLUSTER_EVENTS_NAMESPACE
        path = resource_path("events.k8s.io/v1", "events", ns)
        now = trio.current_time()
        try:
            seen = self._seen.get(name)
            if seen is None:
                try:
                    body = self._body(pod, name, reason, note, type_, action)
                    await self.client.create(path, body)
                    self._seen[name] = (1, now)
                    self.posted += 1
                    return
                except Conflict:
                    if once:
                        self._seen[name] = (1, now)
                        return
                    current: dict[str, Any] = await self.client.get(f"{path}/{name}", dict)
                    count = int((current.get("series") or {}).get("count") or 1)
                    seen = (count, 0.0)
            if once:
                return
            count, last = seen
            if now - last < SERIES_MIN_INTERVAL:
                self._seen[name] = (count + 1, last)
                return
            count += 1
            patch = {"series": {"count": count, "lastObservedTime": micro_time()}}
            try:
                await self.client.patch(f"{path}/{name}", patch)
            except NotFound:
                self._seen.pop(name, None)
                await self.emit(pod, reason, note, type_=type_, action=action)
                return
            self._seen[name] = (count, now)
            self.aggregated += 1
        except KubeError as exc:
            log.warning(
                "could not record event %s on %s/%s: %s", reason, ns, pod.metadata.name, exc
            )
        if len(self._seen) > 20000:
            self._seen.clear()

    def _body(
        self, pod: Regarding, name: str, reason: str, note: str, type_: str, action: str
    ) -> dict[str, Any]:
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": pod.metadata.namespace or CLUSTER_EVENTS_NAMESPACE,
                "labels": {"app.kubernetes.io/managed-by": "tote"},
            },
            "eventTime": micro_time(),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.instance[:128],
            "action": action,
            "reason": reason,
            "type": type_,
            "note": note,
            "regarding": {
                "apiVersion": _KIND[type(pod)][0],
                "kind": _KIND[type(pod)][1],
                "name": pod.metadata.name,
                "namespace": pod.metadata.namespace,
                "uid": pod.metadata.uid,
            },
        }
