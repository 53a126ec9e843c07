"""Configuration mistakes are never silent: one Warning event per problem, webhook or not.

The validating webhook is optional and fails open, so a typo such as
`tote.dev/auto-salvage: "yes"` or `tote.dev/auto-slavage` can still reach the cluster, and
an unparseable kill-switch value (`enabled: maybe`) keeps salvage OFF. Either way tote
tells the user once, on the object itself:

- `InvalidAnnotation` (Warning) on a Namespace (its event lives in `default`, as for every
  cluster-scoped object) or on a Pod in an opted-in namespace;
- `InvalidConfiguration` (Warning) on the kill-switch ConfigMap.

The same poster reports the kill switch itself: `SalvageDisabled` / `SalvageEnabled`
(Normal) on its ConfigMap, "by <who> at <when>: <why>", when it changes while this replica
leads (`switch`), and once more, create-only, when a replica starts leading (so a change made
while no one led is reported, and a failover never reports one change twice).

Each problem is posted once per object (the incident store, `tote_core/incidents.py`,
forgets an object's problems when the object is deleted). Informer handlers call the sync
`namespace` / `pod` / `config` methods (they never block: a bounded channel, dropped when
full and retried on the object's next update); the task in `run` posts the events. Only the
leader posts (started in its scope), and it rescans everything when it starts leading, so a
problem made while no one led is still reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from tote_core import killswitch
from tote_core.annotations import SYSTEM_NAMESPACES, problems
from tote_core.incidents import IncidentStore
from tote_core.kube.cache import Caches
from tote_core.kube.events import EventRecorder, EventType, Regarding
from tote_core.structs.kube import Namespace, Pod

log = logging.getLogger("tote.config")

INVALID_ANNOTATION = "InvalidAnnotation"
INVALID_CONFIGURATION = "InvalidConfiguration"
_QUEUE = 256
# (regarding, reason, note, type, action, create-only)
_Post = tuple[Regarding, str, str, EventType, str, bool]


class ConfigWarnings:
    def __init__(
        self, caches: Caches, recorder: EventRecorder, *, deny_namespaces: list[str],
        pods_allowed_in: Callable[[str], bool], enabled_default: bool = True,
        incidents: IncidentStore | None = None,
    ) -> None:
        self.caches = caches
        self.recorder = recorder
        self.deny_namespaces = set(deny_namespaces)
        self.pods_allowed_in = pods_allowed_in
        self.enabled_default = enabled_default
        self._send, self._recv = trio.open_memory_channel[_Post](_QUEUE)
        # Which problems were warned about, per object (forgotten when the object goes).
        self.incidents = incidents if incidents is not None else IncidentStore()
        self.active = False

    # -- sync checks (informer handlers) -----------------------------------------------------

    def _post(self, obj: Regarding, reason: str, note: str) -> None:
        subject = obj.metadata.uid or f"{obj.metadata.namespace}/{obj.metadata.name}"
        if not self.active or self.incidents.seen(subject, "config", reason, note):
            return
        try:
            self._send.send_nowait((obj, reason, note, "Warning", "Validate", False))
        except trio.WouldBlock:
            return  # retried on the object's next update or the next leader's scan
        self.incidents.record(subject, "config", reason, note)

    def namespace(self, ns: Namespace | None) -> None:
        if ns is None:
            return
        name = ns.metadata.name
        if name in SYSTEM_NAMESPACES or name in self.deny_namespaces:
            return
        found = problems(ns.metadata.annotations, "Namespace")
        if found:
            self._post(ns, INVALID_ANNOTATION,
                       f"Namespace {name}: " + "; ".join(found) + ". tote treats the "
                       "namespace as not opted in until this is fixed.")

    def pod(self, pod: Pod | None) -> None:
        if pod is None or not self.pods_allowed_in(pod.metadata.namespace):
            return
        found = problems(pod.metadata.annotations, "Pod")
        if found:
            self._post(pod, INVALID_ANNOTATION,
                       f"Pod {pod.metadata.namespace}/{pod.metadata.name}: "
                       + "; ".join(found) + ". tote treats the pod as not opted in until "
                       "this is fixed.")

    def config(self) -> None:
        _, problem = self.caches.runtime_switch()
        cm = self.caches.config_obj()
        if problem and cm is not None:
            self._post(cm, INVALID_CONFIGURATION, problem)

    def switch(self, *, once: bool = False) -> None:
        """The kill switch changed (or, `once`, this replica starts leading): its Event on
        the ConfigMap. Nothing when the flag decides (no ConfigMap) or the value is invalid
        (`config` warns about that)."""
        cm = self.caches.config_obj()
        found = killswitch.event_of(self.caches.switch_state(self.enabled_default))
        if not self.active or cm is None or found is None:
            return
        reason, note = found
        try:
            self._send.send_nowait((cm, reason, note, "Normal", "KillSwitch", once))
        except trio.WouldBlock:
            log.warning("kill switch: event queue full; %s not evented: %s", reason, note)

    def scan(self) -> None:
        self.config()
        self.switch(once=True)
        for ns in list(self.caches.namespaces.items.values()):
            self.namespace(ns)
        for pod in list(self.caches.pods.items.values()):
            self.pod(pod)

    # -- posting (leader scope) ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.active = True
        try:
            self.scan()
            task_status.started()
            async for obj, reason, note, type_, action, once in self._recv:
                if type_ == "Warning":
                    log.warning("%s: %s", reason, note)
                await self.recorder.emit(obj, reason, note, type_=type_, action=action,
                                         once=once)
        finally:
            # What was queued but not posted stays queued for this replica's next term.
            self.active = False
