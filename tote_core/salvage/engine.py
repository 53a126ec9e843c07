"""The salvage engine: a bounded pool of transfer workers fed by detection.

Detection calls `submit()` (synchronous, never blocks) and moves on. Jobs are keyed by
SalvageRecord — one per (digest, target node), whatever namespaces the pods are in — so
twenty failing pods of one Deployment on three nodes make three transfers, not twenty, and
the same image failing in five namespaces on one node makes one. The pool has
`--max-concurrent-salvages` workers; each job runs under `--transfer-timeout`. State that
must survive a leader change lives in the record's status (retryCount, lastAttemptAt,
phase): a new leader re-detects the failing pods, finds the record and carries on from
there; the agent resumes the transfer from containerd's committed offsets.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import trio

from tote_core import metrics
from tote_core.components.events import EventRecorder
from tote_core.detect import messages
from tote_core.errors import KubeError, NotFound, PermanentError, RetryLater
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import (
    Incident,
    NodeInfo,
    Notification,
    NotificationType,
    TransferProgress,
    TransferRequest,
    TransferResult,
)
from tote_core.kube.cache import Caches
from tote_core.kube.client import KubeClient, resource_path
from tote_core.reconcile.engine import Engine, Result
from tote_core.reconcile.queue import WorkQueue
from tote_core.salvage import planner
from tote_core.salvage.records import RecordStore
from tote_core.settings import ControllerSettings
from tote_core.structs.kube import Pod
from tote_core.structs.salvagerecord import Condition, SalvageRecord, SalvageRecordSpec
from tote_core.timefmt import micro_time, parse_time, utcnow

log = logging.getLogger("tote.salvage")

INVENTORY_TIMEOUT = 10.0
PROGRESS_INTERVAL = 1.0
CORRUPT_BACKOFF = 60.0
PERMANENT = "Permanent"
# Permanent for one source, not for the salvage: try the next candidate.
SOURCE_SPECIFIC = frozenset({"layers_discarded", "platform_missing"})
# Failures caused by tote's own configuration (SPEC §11), never a property of the image:
# recorded with the condition reason CONFIGURATION, not retried by the process that hit them
# (same configuration, same result), retried by any controller started after them — so a
# restart with fixed configuration carries on without anyone deleting records. Records an
# older version marked Permanent for these reasons are retried too.
CONFIGURATION = "ConfigurationError"
CONFIG_REASONS = frozenset({"tls_config", "no_plugin"})


def _failure_is_final(conditions: list[Condition], started: datetime) -> bool:
    """Whether a Failed record's conditions forbid this controller process to retry it."""
    for c in conditions:
        if c.reason == PERMANENT and c.message.split(":", 1)[0] not in CONFIG_REASONS:
            return True
        if c.reason == CONFIGURATION:
            failed_at = parse_time(c.last_transition_time)
            if failed_at is None or failed_at >= started:
                return True
    return False




@dataclass
class Job:
    """Everything known about one (digest, target node) salvage.

    `namespace` is where its record lives: the first failing pod's, until the record is
    found in another (the pods themselves may be in any namespace)."""

    namespace: str
    record: str
    incident: Incident
    pods: dict[str, Pod] = field(default_factory=dict)  # pod key → latest seen


class SalvageEngine:
    def __init__(
        self,
        settings: ControllerSettings,
        kube: KubeClient,
        caches: Caches,
        host: PluginHost,
        recorder: EventRecorder,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.caches = caches
        self.host = host
        self.recorder = recorder
        self.records = RecordStore(kube)
        self.started = utcnow()  # configuration failures from before this are retried
        self.queue = WorkQueue(base_delay=30.0, max_delay=300.0)
        self.jobs: dict[str, Job] = {}
        self.active_by_source: Counter[str] = Counter()
        self.active = 0
        self._corrupt_seen: dict[tuple[str, str], float] = {}
        # (digest, node) this controller put there itself: fresher than any inventory cache.
        self._delivered: set[tuple[str, str]] = set()
        self._announced: set[str] = set()  # pod UIDs told ImageSalvaged
        self.engine = Engine(
            "salvage", self.queue, self.reconcile,
            workers=settings.max_concurrent_salvages,
            deadline=settings.transfer_timeout + 60.0,
        )

    # -- intake (called from detection; must not block) ----------------------------------

    def submit(self, incident: Incident, pod: Pod) -> None:
        target = incident.node_name
        if (not target or not incident.digest) and incident.kind != "corrupt":
            return
        pod_key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if incident.kind == "corrupt":
            key = f"corrupt/{pod.metadata.namespace}/{pod.metadata.uid}/{incident.container}"
            self.jobs.setdefault(key, Job(pod.metadata.namespace, "", incident)).pods[pod_key] = pod
            self.queue.add(key)
            return
        assert incident.digest and target
        key = planner.record_name(incident.digest, target)  # never contains "/"
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = Job(pod.metadata.namespace, key, incident)
        job.pods[pod_key] = pod
        self.queue.add(key)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.engine.run(task_status=task_status)

    # -- one job ----------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        job = self.jobs.get(key)
        if job is None:
            return None
        if key.startswith("corrupt/"):
            return await self._corrupt(key, job)
        return await self._salvage(key, job)

    async def _salvage(self, key: str, job: Job) -> Result | None:
        inc = job.incident
        assert inc.digest and inc.node_name
        digest, target = inc.digest, inc.node_name
        record = await self.records.ensure(
            job.namespace,
            SalvageRecordSpec(
                pod_name=inc.pod_name, pod_uid=inc.pod_uid, digest=digest,
                image_ref=inc.image_ref, target_node=target,
            ),
        )
        job.namespace = record.metadata.namespace or job.namespace
        st = record.status
        holders = await self._holders(digest)
        if st.phase == "Completed" and target in holders:
            # Pods that failed while (or after) the image was delivered: tell them too.
            await self._announce(job, (
                f"Image {inc.image_ref} ({digest}) was salvaged to node {target} "
                f"(SalvageRecord {job.namespace}/{job.record}). {messages.DEBT}"
            ))
            await self._notify("salvaged", job, source=record.spec.source_node)
            await self._restart_pods(job)
            self.jobs.pop(key, None)
            return None
        # A Completed record whose image has since vanished from the target (GC, manual
        # removal, corrupt record removed) is salvaged again under the same record.
        if st.phase == "Failed" and _failure_is_final(st.conditions, self.started):
            self.jobs.pop(key, None)
            return None
        last = parse_time(st.last_attempt_at)
        if st.retry_count and last is not None:
            wait = planner.backoff(st.retry_count) - (utcnow() - last).total_seconds()
            if wait > 0:
                return Result(requeue_after=wait)

        if target in holders:
            await self._complete(job, record, None, "already present on the target node")
            return None
        candidates = sorted(holders - {target})
        if not candidates:
            # Not requeued (nothing to wait for), but not sticky either: if a node reports
            # the digest later, detection submits again and this record is retried.
            await self._fail(job, record, f"no other node holds {digest}", "no_source",
                             permanent=False)
            self.jobs.pop(key, None)
            return None
        order = await self._order(inc, candidates, target)
        if not order:
            return await self._retry(job, record, "no ready source node", "no_ready_source")
        errors: list[str] = []
        reason = "source_unavailable"
        for source in order:
            try:
                result = await self._transfer(job, record, source)
            except RetryLater as exc:
                errors.append(f"{source}: {exc}")
                reason = exc.reason
                log.warning("salvage %s from %s failed: %s; trying the next source", key,
                            source, exc)
                continue
            except PermanentError as exc:
                if exc.reason in SOURCE_SPECIFIC and source != order[-1]:
                    # Only this source cannot serve it (e.g. it discarded layers after
                    # unpack); another may. Permanent only if every candidate says so.
                    errors.append(f"{source}: {exc}")
                    log.warning("salvage %s: source %s unusable: %s", key, source, exc)
                    continue
                await self._fail(job, record, "; ".join([*errors, f"{source}: {exc}"]),
                                 exc.reason, permanent=True, source=source)
                return None
            if result is None:
                await self._fail(job, record, "no transfer plugin is loaded", "no_plugin",
                                 permanent=True, source=source)
                return None
            await self._complete(job, record, (source, result), None)
            return None
        # The source named is the last one tried (the record's spec.sourceNode says the same).
        return await self._retry(job, record, "; ".join(errors), reason, source=order[-1])

    async def _holders(self, digest: str) -> set[str]:
        nodes = list(self.caches.nodes.items.values())
        holders = set(self.caches.nodes_with_digest(digest))  # indexed: no scan (issue 12)
        holders.update(node for d, node in self._delivered if d == digest)
        names = sorted(n.metadata.name for n in nodes)
        with trio.move_on_after(INVENTORY_TIMEOUT):
            found = await self.host.find_image(digest, names)
            if found:
                holders.update(found)
        return holders

    async def _order(self, inc: Incident, candidates: list[str], target: str) -> list[str]:
        """Source order from the `select_source` plugins; core's fallback if none answers."""
        infos = [self._node_info(name) for name in candidates]
        chosen = await self.host.select_source(inc, infos, self._node_info(target))
        if chosen is not None:
            return [n for n in chosen if n in candidates]
        return planner.fallback_source_order(infos)

    def _node_info(self, name: str) -> NodeInfo:
        node = self.caches.node(name)
        return NodeInfo(
            name=name, ready=bool(node and node.ready), zone=node.zone if node else None,
            active_transfers=self.active_by_source[name],
        )

    async def _transfer(
        self, job: Job, record: SalvageRecord, source: str
    ) -> TransferResult | None:
        inc = job.incident
        assert inc.digest and inc.node_name
        now = micro_time()
        await self.records.patch_spec(job.namespace, job.record, {"sourceNode": source})
        await self.records.patch_status(job.namespace, job.record, {
            "phase": "Transferring",
            "startedAt": record.status.started_at or now,
            "lastAttemptAt": now,
            "error": "",
            "conditions": [],  # a retried configuration failure is history now
        })
        request = TransferRequest(
            image_ref=inc.image_ref, digest=inc.digest, source_node=source,
            target_node=inc.node_name, max_bytes=self.settings.max_image_size,
        )
        last_write = 0.0

        async def progress(p: TransferProgress) -> None:
            nonlocal last_write
            t = time.monotonic()
            if t - last_write < PROGRESS_INTERVAL and p.bytes_transferred < p.bytes_total:
                return
            last_write = t
            await self.records.patch_status(job.namespace, job.record, {
                "bytesTotal": p.bytes_total,
                "bytesTransferred": p.bytes_transferred,
                "blobsSkipped": p.blobs_skipped,
                "progress": planner.progress_text(p.bytes_transferred, p.bytes_total),
            })

        metrics.SALVAGE_ATTEMPTS.inc()
        self.active_by_source[source] += 1
        self.active += 1
        log.info("salvage %s/%s: %s from %s to %s", job.namespace, job.record, inc.digest,
                 source, inc.node_name)
        try:
            with trio.fail_after(self.settings.transfer_timeout):
                return await self.host.transfer(request, progress)
        except trio.TooSlowError as exc:
            raise RetryLater(
                f"transfer exceeded {self.settings.transfer_timeout:.0f}s", reason="timeout"
            ) from exc
        finally:
            self.active_by_source[source] -= 1
            self.active -= 1

    # -- outcomes -----------------------------------------------------------------------------

    async def _complete(
        self, job: Job, record: SalvageRecord,
        moved: tuple[str, TransferResult] | None, note: str | None,
    ) -> None:
        inc = job.incident
        status: dict[str, object] = {"phase": "Completed", "completedAt": micro_time(),
                                     "error": ""}
        if inc.digest and inc.node_name:
            self._delivered.add((inc.digest, inc.node_name))
            if len(self._delivered) > 10000:
                self._delivered.clear()
        if moved is not None:
            source, result = moved
            # Completed means the whole image is on the target: progress reads total/total
            # even when this attempt moved less (blobs already there, or bytes resumed from
            # an attempt a leader before this one started). What this attempt moved is in
            # the ImageSalvaged event and the tote_salvage_image_bytes histogram.
            status.update({
                "bytesTotal": result.bytes_total,
                "bytesTransferred": result.bytes_total,
                "blobsSkipped": result.blobs_skipped,
                "progress": planner.progress_text(result.bytes_total, result.bytes_total),
            })
            metrics.SALVAGE_SUCCESSES.inc()
            metrics.SALVAGE_DURATION.observe(result.duration_seconds)
            metrics.SALVAGE_IMAGE_BYTES.observe(result.bytes_transferred)
            text = (
                f"Salvaged {inc.image_ref} ({inc.digest}) from node {source} to node "
                f"{inc.node_name}: {planner.human_bytes(result.bytes_transferred)} moved, "
                f"{result.blobs_skipped} blobs already present, "
                f"{result.duration_seconds:.1f}s. {messages.DEBT}"
            )
        else:
            text = f"Image {inc.image_ref} ({inc.digest}) is {note}; nothing to move."
            total = record.status.bytes_total
            if total and record.status.bytes_transferred != total:
                # A transfer another leader started finished without its last progress
                # report being written: the image is whole, so is the progress.
                status.update({"bytesTransferred": total,
                               "progress": planner.progress_text(total, total)})
        await self.records.patch_status(job.namespace, job.record, status)
        if moved is not None:
            # After the record says Completed: nothing on_salvaged does (e.g. the backup
            # push it queues) can hold up or fail the salvage.
            source, result = moved
            request = TransferRequest(image_ref=inc.image_ref, digest=inc.digest or "",
                                      source_node=source, target_node=inc.node_name or "")
            await self.host.on_salvaged(inc, request, result)
            await self._notify("salvaged", job, source=source)
        await self._announce(job, text)
        log.info("salvage %s/%s completed%s", job.namespace, job.record,
                 f" ({note})" if note else "")
        await self._restart_pods(job)
        self.jobs.pop(job.record, None)

    async def _announce(self, job: Job, text: str) -> None:
        """One ImageSalvaged event per pod (by UID), however often the pod is resubmitted."""
        for pod in job.pods.values():
            if pod.metadata.uid in self._announced:
                continue
            self._announced.add(pod.metadata.uid)
            await self.recorder.emit(pod, "ImageSalvaged", text, type_="Warning",
                                     action="Salvage")
        if len(self._announced) > 50000:
            self._announced.clear()

    async def _fail(
        self, job: Job, record: SalvageRecord, error: str, reason: str, *,
        permanent: bool, source: str = "", retry_count: int | None = None,
    ) -> None:
        inc = job.incident
        metrics.SALVAGE_FAILURES.labels(reason).inc()
        status: dict[str, object] = {
            "phase": "Failed", "error": error[:1000], "lastAttemptAt": micro_time(),
        }
        if retry_count is not None:
            status["retryCount"] = retry_count
        configuration = permanent and reason in CONFIG_REASONS
        if permanent:
            status["conditions"] = [{
                "type": "Failed", "status": "True",
                "reason": CONFIGURATION if configuration else PERMANENT,
                "message": f"{reason}: {error}"[:1000], "lastTransitionTime": micro_time(),
            }]
        await self.records.patch_status(job.namespace, job.record, status)
        verdict = ("tote's configuration: retried after the controller restarts with it "
                   "fixed" if configuration else "not retried" if permanent else "will retry")
        text = (f"Salvage of {inc.image_ref} ({inc.digest}) to node {inc.node_name} failed "
                f"({reason}, {verdict}): {error}. {messages.DEBT}")
        for pod in job.pods.values():
            await self.recorder.emit(pod, "ImageSalvageFailed", text[:1024], action="Salvage")
        await self._notify("failed", job, source=source, error=error)
        log.warning("salvage %s/%s failed (%s, %s): %s", job.namespace, job.record, reason,
                    verdict, error)
        if permanent:
            self.jobs.pop(job.record, None)

    async def _retry(
        self, job: Job, record: SalvageRecord, error: str, reason: str, *, source: str = ""
    ) -> Result:
        count = record.status.retry_count + 1
        await self._fail(job, record, error, reason, permanent=False, retry_count=count,
                         source=source)
        delay = planner.backoff(count)
        log.info("salvage %s/%s: retry %d in %.0fs", job.namespace, job.record, count, delay)
        return Result(requeue_after=delay)

    async def _notify(self, type_: NotificationType, job: Job, *, source: str = "",
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

    async def _restart_pods(self, job: Job) -> None:
        """WO-1: delete owned pods (UID precondition) so the owner recreates them at once.

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

    # -- corrupt image records (WO-11) ------------------------------------------------------

    async def _corrupt(self, key: str, job: Job) -> Result | None:
        inc = job.incident
        node = inc.node_name or ""
        marker = (node, inc.digest or inc.image_ref)
        last = self._corrupt_seen.get(marker)
        now = trio.current_time()
        if last is not None and now - last < CORRUPT_BACKOFF:
            return Result(requeue_after=CORRUPT_BACKOFF - (now - last))
        self._corrupt_seen[marker] = now
        removed = await self.host.remove_image(node, inc.image_ref, inc.digest)
        self.jobs.pop(key, None)
        if not removed:
            log.warning("could not remove stale image record %s on %s", inc.image_ref, node)
            return None
        log.info("removed stale image record %s on %s", inc.image_ref, node)
        await self._restart_pods(job)
        return None
