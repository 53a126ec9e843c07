"""The pod reconciler: opt-in → detection → classification → events, hooks, metrics.

It runs under the reconcile deadline and never waits behind a transfer: a salvageable
incident is handed to the salvage sink (a bounded queue of its own), if one is attached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from prometheus_client import Counter

from tote_core import metrics
from tote_core.annotations import ALLOW, AUTO_SALVAGE, SYSTEM_NAMESPACES, flag
from tote_core.detect import messages, pull_failures
from tote_core.detect.detector import Failure, Verdict, detect
from tote_core.detect.pull_failures import PullFailures
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Incident, OptInQuery, detected
from tote_core.incidents import IncidentStore
from tote_core.kube.cache import Caches
from tote_core.kube.events import EventRecorder
from tote_core.reconcile.engine import Result
from tote_core.settings import ControllerSettings
from tote_core.structs.kube import CoreEvent, Pod
from tote_core.timefmt import parse_time, utcnow

log = logging.getLogger("tote.detect")

AGENT_TIMEOUT = 5.0

SalvageSink = Callable[[Incident, Pod], None]


@dataclass
class PodReconciler:
    settings: ControllerSettings
    caches: Caches
    host: PluginHost
    recorder: EventRecorder
    incidents: IncidentStore = field(default_factory=IncidentStore)
    salvage: SalvageSink | None = None
    # Pods with an incident that may become actionable when a node reports new images.
    waiting_on_nodes: set[str] = field(default_factory=set)
    # What kubelet's Events said before the pod status does (detect/pull_failures.py).
    pull_failures: PullFailures = field(
        default_factory=lambda: PullFailures(trio.current_time))

    def kubelet_event(self, event: CoreEvent) -> str | None:
        """Note the pull failure kubelet just reported in `event`; the key of its pod, to
        reconcile now. None when the Event is no pull failure, is older than a hint is
        kept, or names a pod that is gone or was replaced."""
        failure = pull_failures.from_event(event)
        if failure is None:
            return None
        when = parse_time(event.last_timestamp or event.event_time)
        if when is None or (utcnow() - when).total_seconds() > pull_failures.HINT_TTL:
            return None
        obj = event.involved_object
        key = f"{obj.namespace}/{obj.name}"
        pod = self.caches.pods.get(key)
        if pod is None or pod.metadata.uid != failure.pod_uid:
            return None
        self.pull_failures.add(failure)
        return key

    def enabled(self) -> bool:
        # The runtime ConfigMap decides once written (`tote disable` / `tote enable`); the
        # flag is the install-time default only. An unparseable value is OFF.
        on = self.caches.switch_state(self.settings.enabled).enabled
        metrics.ENABLED.set(1 if on else 0)
        return on

    def namespace_allowed(self, namespace: str) -> bool:
        if namespace in SYSTEM_NAMESPACES or namespace in self.settings.deny_namespaces:
            return False
        ns = self.caches.namespace_obj(namespace)
        return ns is not None and flag(ns.metadata.annotations, ALLOW) is True

    async def pod_opted_in(self, pod: Pod) -> bool:
        own = flag(pod.metadata.annotations, AUTO_SALVAGE)
        if own is not None:
            return own
        if not pod.metadata.owner_references:
            return False
        query = OptInQuery(
            namespace=pod.metadata.namespace,
            pod_name=pod.metadata.name,
            owner_references=tuple(
                (o.api_version, o.kind, o.name) for o in pod.metadata.owner_references
            ),
        )
        return await self.host.opt_in(query) is True

    async def __call__(self, key: str) -> Result | None:
        pod = self.caches.pods.get(key)
        if pod is None:
            self.waiting_on_nodes.discard(key)
            return None
        if not self.enabled() or not self.namespace_allowed(pod.metadata.namespace):
            return None
        pod = pull_failures.overlay(pod, self.pull_failures.of(pod.metadata.uid))
        failures = detect(pod)
        if not failures:
            self.waiting_on_nodes.discard(key)
            return None
        if not await self.pod_opted_in(pod):
            return None
        for failure in failures:
            await self._handle(pod, key, failure)
        return None

    async def _handle(self, pod: Pod, key: str, failure: Failure) -> None:
        uid = pod.metadata.uid
        image_key = failure.reference.name if failure.reference else failure.raw_image
        if self.incidents.first(uid, "detect", failure.container, image_key, "detected"):
            metrics.DETECTED_FAILURES.inc()
            log.info(
                "detected %s for %s/%s container %s image %s",
                failure.reason, pod.metadata.namespace, pod.metadata.name,
                failure.container, failure.raw_image,
            )
        if failure.verdict is Verdict.INVALID:
            await self._not_actionable(pod, failure, image_key, failure.detail)
            return
        if failure.verdict is Verdict.ALWAYS or (
            failure.verdict is Verdict.AUTH and not self.settings.salvage_on_auth_failure
        ):
            await self._not_actionable(pod, failure, image_key, failure.detail)
            return
        ref = failure.reference
        assert ref is not None
        if failure.verdict is Verdict.CORRUPT:
            # Handled by the salvage engine (next layer); detection only reports it.
            await self._report(
                pod, failure, image_key, "corrupt", metrics.CORRUPT_IMAGES, "ImageCorrupt",
                f"Image {ref.name} is present on node {pod.spec.node_name} but its content is "
                f"missing ({failure.message[:200]}). {messages.DEBT}",
                action="Salvage",
            )
            await self._submit(pod, failure, ref.digest, [], kind="corrupt")
            return
        # Indexed lookups: a scan of every node's image list per reconcile was the
        # detection tail at 500 nodes (issue 12).
        digest = ref.digest or self.caches.resolve_tag(ref)
        from_registry = False
        if digest is None and ref.tagged:
            with trio.move_on_after(AGENT_TIMEOUT):
                digest = await self.host.resolve_tag(ref.tagged, self._node_names())
        if digest is None and ref.tagged:  # a `registry_resolve` plugin (off: no answer)
            digest = await self.host.registry_resolve(
                ref.name, pod.metadata.namespace,
                [s.name for s in pod.spec.image_pull_secrets],
            )
            from_registry = digest is not None
        if digest is None:
            self.waiting_on_nodes.add(key)
            await self._not_actionable(
                pod, failure, image_key,
                f"no node reports a digest for tag {ref.tagged}; the exact image cannot be "
                "identified",
            )
            return
        target = pod.spec.node_name
        holders = set(self.caches.nodes_with_digest(digest))
        if not holders - {target}:
            # kubelet lists at most 50 images per node: ask the nodes themselves.
            with trio.move_on_after(AGENT_TIMEOUT):
                holders.update(await self.host.find_image(digest, self._node_names()) or [])
        if target and target in holders:
            log.debug("%s: target node %s already holds %s; kubelet will retry", key, target,
                      digest)
            return
        candidates = sorted(holders - {target})
        if not candidates:
            self.waiting_on_nodes.add(key)
            if from_registry:
                await self._report(
                    pod, failure, image_key, "uncached", metrics.NOT_ACTIONABLE,
                    "ImageResolvedUncached",
                    f"Registry resolves {ref.name} to {digest}, but no node holds that "
                    f"digest; nothing to salvage from. {messages.DEBT}",
                )
                return
            await self._not_actionable(
                pod, failure, image_key, f"no other node holds digest {digest}"
            )
            return
        self.waiting_on_nodes.discard(key)
        await self._report(
            pod, failure, image_key, "salvageable", metrics.SALVAGEABLE_IMAGES,
            "ImageSalvageable", messages.salvageable(ref.name, digest, candidates),
        )
        await self._submit(pod, failure, digest, candidates, kind="pull")

    def _node_names(self) -> list[str]:
        return sorted(self.caches.nodes.items)

    async def _submit(
        self, pod: Pod, failure: Failure, digest: str | None, candidates: list[str], *,
        kind: str,
    ) -> None:
        ref = failure.reference
        assert ref is not None
        incident = Incident(
            namespace=pod.metadata.namespace,
            pod_name=pod.metadata.name,
            pod_uid=pod.metadata.uid,
            container=failure.container,
            init_container=failure.init_container,
            image_ref=ref.name,
            digest=digest,
            node_name=pod.spec.node_name or None,
            kind="corrupt" if kind == "corrupt" else "pull",
            message=failure.message,
            candidate_nodes=tuple(candidates),
        )
        if self.incidents.first(pod.metadata.uid, "detect", failure.container, ref.name,
                                "hooked"):
            await self.host.on_detected(incident)
            await self.host.notify(detected(incident))
        if self.salvage is not None:
            self.salvage(incident, pod)

    async def _not_actionable(
        self, pod: Pod, failure: Failure, image_key: str, why: str
    ) -> None:
        await self._report(
            pod, failure, image_key, "not_actionable", metrics.NOT_ACTIONABLE,
            "ImageNotActionable", messages.not_actionable(failure.raw_image, why),
        )

    async def _report(
        self, pod: Pod, failure: Failure, image_key: str, outcome: str, counter: Counter,
        reason: str, note: str, *, action: str = "Detect",
    ) -> None:
        """Count `outcome` once per incident; post (or aggregate) the event every time."""
        if self.incidents.first(pod.metadata.uid, "detect", failure.container, image_key,
                                outcome):
            counter.inc()
        await self.recorder.emit(pod, reason, note, action=action)
