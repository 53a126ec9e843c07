"""What a salvage job does to and for its pods: tell them (events, notifications) and
restart the owned ones so their owner recreates them at once.

Kept apart from the record's state machine because every outcome — completed, failed,
corrupt record removed — ends in these same few pod actions, and each must happen once per
pod however often kubelet's status makes detection resubmit it."""

from __future__ import annotations

import logging

from tote_core.errors import KubeError, NotFound
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Notification, NotificationType
from tote_core.incidents import IncidentStore
from tote_core.kube.cache import Caches
from tote_core.kube.client import KubeClient, resource_path
from tote_core.kube.events import EventRecorder
from tote_core.salvage.jobs import Job

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

    async def restart(self, job: Job) -> None:
        """Delete owned pods (UID precondition) so the owner recreates them at once.

        Standalone pods are never deleted: kubelet's next retry finds the image.
        """
        for key, seen in list(job.pods.items()):
            pod = self.caches.pods.get(key) or seen
            if pod.metadata.uid != seen.metadata.uid or not pod.metadata.owner_references:
                continue
            path = resource_path("v1", "pods", pod.metadata.namespace, pod.metadata.name)
            try:
                await self.kube.delete(path, uid=pod.metadata.uid)
                log.info("deleted pod %s (uid %s) so its owner recreates it", key,
                         pod.metadata.uid)
            except NotFound:
                pass
            except KubeError as exc:
                log.warning("could not delete pod %s: %s", key, exc)
