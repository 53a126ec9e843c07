"""What a salvage job does to and for its pods: tell them (events, notifications) and have
kubelet start them at once, in place.

Once the image is on the node, a pod in ImagePullBackOff would wait for kubelet's next retry
(its back-off doubles up to 5 minutes). kubelet syncs a pod at once when the pod's
annotations change, and with `IfNotPresent` it looks for the image before it consults the
back-off, so tote writes one annotation (`salvage.tote.dev/delivered-at`) and the waiting
container starts in the same pod — owned or standalone, no replacement pod, no new sandbox,
no rescheduling (measured on kubelet 1.37: 0.3 s to Running, against 0.8 to 1.1 s for deleting
the pod and letting its owner recreate it; docs/benchmarks.md).

Kept apart from the record's state machine because every outcome — completed, failed,
corrupt record removed — ends in these same few pod actions, and each must happen once per
pod however often kubelet's status makes detection resubmit it."""

from __future__ import annotations

import logging

from tote_core.annotations import DELIVERED_AT
from tote_core.errors import KubeError, NotFound
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Notification, NotificationType
from tote_core.incidents import IncidentStore
from tote_core.kube.cache import Caches
from tote_core.kube.client import KubeClient, resource_path
from tote_core.kube.events import EventRecorder
from tote_core.salvage.jobs import Job
from tote_core.timefmt import micro_time

log = logging.getLogger("tote.salvage")


class PodActions:
    def __init__(self, kube: KubeClient, caches: Caches, host: PluginHost,
                 recorder: EventRecorder, incidents: IncidentStore) -> None:
        self.kube = kube
        self.caches = caches
        self.host = host
        self.recorder = recorder
        self.incidents = incidents  # which pods were told ImageSalvaged

    async def announce(self, job: Job, text: str) -> None:
        """One ImageSalvaged event per pod (by UID), however often the pod is resubmitted."""
        for pod in job.pods.values():
            if not self.incidents.first(pod.metadata.uid, "event", "ImageSalvaged"):
                continue
            await self.recorder.emit(pod, "ImageSalvaged", text, type_="Warning",
                                     action="Salvage")

    async def failed(self, job: Job, text: str) -> None:
        for pod in job.pods.values():
            await self.recorder.emit(pod, "ImageSalvageFailed", text[:1024], action="Salvage")

    async def notify(self, type_: NotificationType, job: Job, *, source: str = "",
                     error: str = "") -> None:
        """One notification per pod of the job (each is an incident); the host drops
        repeats, so a retried salvage does not notify `failed` again."""
        inc = job.incident
        for pod in job.pods.values():
            await self.host.notify(Notification(
                type=type_, pod_name=pod.metadata.name, namespace=pod.metadata.namespace,
                pod_uid=pod.metadata.uid, image_ref=inc.image_ref, digest=inc.digest or "",
                source_node=source, target_node=inc.node_name or "", error=error,
            ))

    async def resume(self, job: Job) -> None:
        """Have kubelet start each pod of the job now: annotate it (`DELIVERED_AT`), which
        makes kubelet sync the pod, find the image and start the container in place.

        The patch carries the pod's UID, so a pod replaced in the meantime (same name, new
        UID) is left alone: the API server refuses the patch. A refused patch (RBAC, an
        admission policy that forbids pod updates) is logged: the pod still starts at
        kubelet's next retry of the pull.

        Once per pod and image: the annotation is itself a pod update, which brings the pod
        back through detection; a pod kubelet still cannot start (say, its image name is
        not among the records) must not be annotated in a loop."""
        digest = job.incident.digest or job.incident.image_ref
        for key, seen in list(job.pods.items()):
            pod = self.caches.pods.get(key) or seen
            if pod.metadata.uid != seen.metadata.uid or \
                    not self.incidents.first(pod.metadata.uid, "resume", digest):
                continue
            path = resource_path("v1", "pods", pod.metadata.namespace, pod.metadata.name)
            body = {"metadata": {"uid": pod.metadata.uid,
                                 "annotations": {DELIVERED_AT: micro_time()}}}
            try:
                await self.kube.patch(path, body)
                log.info("pod %s (uid %s): image delivered, kubelet asked to start it", key,
                         pod.metadata.uid)
            except NotFound:
                pass
            except KubeError as exc:
                if exc.status == 422:  # the UID no longer matches: a new pod of that name
                    log.debug("pod %s was replaced; not annotated", key)
                    continue
                log.warning("could not annotate pod %s (kubelet starts it at its next pull "
                            "retry instead): %s", key, exc)
