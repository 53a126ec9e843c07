"""The salvage engine: a bounded pool of transfer workers fed by detection.

Detection calls `submit()` (synchronous, never blocks) and moves on. Jobs are keyed by
SalvageRecord — one per (digest, target node), whatever namespaces the pods are in — so
twenty failing pods of one Deployment on three nodes make three transfers, not twenty, and
the same image failing in five namespaces on one node makes one. The pool has
`--max-concurrent-salvages` workers; each job runs under `--transfer-timeout`. State that
must survive a leader change lives in the record's status (retryCount, lastAttemptAt,
phase): a new leader re-detects the failing pods, finds the record and carries on from
there; the agent resumes the transfer from containerd's committed offsets.

This module runs one attempt — inventory, source order, transfer, progress; how it ends
is `outcomes`, what the pods get is `pods`, corrupt image records are `corrupt`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import trio

from tote_core import metrics
from tote_core.errors import PermanentError, RetryLater
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import (
    Incident,
    NodeInfo,
    TransferProgress,
    TransferRequest,
    TransferResult,
)
from tote_core.incidents import IncidentStore
from tote_core.kube.cache import Caches
from tote_core.kube.client import KubeClient
from tote_core.kube.events import EventRecorder
from tote_core.reconcile.engine import Engine, Result
from tote_core.reconcile.queue import WorkQueue
from tote_core.salvage import planner
from tote_core.salvage.corrupt import CorruptRecords
from tote_core.salvage.jobs import Job, RemoveCorrupt, SalvageWork, Work
from tote_core.salvage.outcomes import Outcomes
from tote_core.salvage.pods import PodActions
from tote_core.salvage.records import RecordStore
from tote_core.salvage.statuswriter import StatusPatch
from tote_core.settings import ControllerSettings
from tote_core.structs.kube import Pod
from tote_core.structs.salvagerecord import SalvageRecord, SalvageRecordSpec
from tote_core.timefmt import micro_time, parse_time, utcnow

log = logging.getLogger("tote.salvage")

INVENTORY_TIMEOUT = 10.0
PROGRESS_INTERVAL = 1.0


class SalvageEngine:
    def __init__(
        self,
        settings: ControllerSettings,
        kube: KubeClient,
        caches: Caches,
        host: PluginHost,
        recorder: EventRecorder,
        records: RecordStore | None = None,
        incidents: IncidentStore | None = None,
    ) -> None:
        self.settings = settings
        self.caches = caches
        self.host = host
        self.records = records or RecordStore(kube)
        self.started = utcnow()  # configuration failures from before this are retried
        self.queue = WorkQueue[Work](base_delay=30.0, max_delay=300.0)
        self.jobs: dict[Work, Job] = {}
        self.active_by_source: Counter[str] = Counter()
        pods = PodActions(kube, caches, host, recorder,
                          incidents if incidents is not None else host.incidents)
        self.outcomes = Outcomes(self.records.status, pods, host)
        self.corrupt = CorruptRecords(host, pods)
        self.engine = Engine[Work](
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
            key: Work = RemoveCorrupt.of(pod, incident.container)
            self.jobs.setdefault(key, Job(pod.metadata.namespace, "", incident)).pods[pod_key] = pod
            self.queue.add(key)
            return
        assert incident.digest and target
        name = planner.record_name(incident.digest, target)
        key = SalvageWork(name)
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = Job(pod.metadata.namespace, name, incident)
        job.pods[pod_key] = pod
        self.queue.add(key)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.engine.run(task_status=task_status)

    # -- one job ----------------------------------------------------------------------------

    async def reconcile(self, key: Work) -> Result | None:
        job = self.jobs.get(key)
        if job is None:
            return None
        if isinstance(key, RemoveCorrupt):
            return await self.corrupt.handle(job, lambda: self._forget(key))
        return await self._salvage(key, job)

    def _forget(self, key: Work) -> None:
        self.jobs.pop(key, None)

    async def _salvage(self, key: SalvageWork, job: Job) -> Result | None:
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
            await self.outcomes.already_completed(job, record.spec.source_node)
            self._forget(key)
            return None
        # A Completed record whose image has since vanished from the target (GC, manual
        # removal, corrupt record removed) is salvaged again under the same record.
        if st.phase == "Failed" and planner.failure_is_final(st.conditions, self.started):
            self._forget(key)
            return None
        last = parse_time(st.last_attempt_at)
        if st.retry_count and last is not None:
            wait = planner.backoff(st.retry_count) - (utcnow() - last).total_seconds()
            if wait > 0:
                return Result(requeue_after=wait)

        if target in holders:
            await self.outcomes.complete(job, record, None, "already present on the target node")
            self._forget(key)
            return None
        candidates = sorted(holders - {target})
        if not candidates:
            # Not requeued (nothing to wait for), but not sticky either: if a node reports
            # the digest later, detection submits again and this record is retried.
            await self.outcomes.fail(job, f"no other node holds {digest}", "no_source",
                                     permanent=False)
            self._forget(key)
            return None
        order = await self._order(inc, candidates, target)
        if not order:
            return await self.outcomes.retry(job, record, "no ready source node",
                                             "no_ready_source")
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
                if exc.reason in planner.SOURCE_SPECIFIC and source != order[-1]:
                    # Only this source cannot serve it (e.g. it discarded layers after
                    # unpack); another may. Permanent only if every candidate says so.
                    errors.append(f"{source}: {exc}")
                    log.warning("salvage %s: source %s unusable: %s", key, source, exc)
                    continue
                await self.outcomes.fail(job, "; ".join([*errors, f"{source}: {exc}"]),
                                         exc.reason, permanent=True, source=source)
                self._forget(key)
                return None
            if result is None:
                await self.outcomes.fail(job, "no transfer plugin is loaded", "no_plugin",
                                         permanent=True, source=source)
                self._forget(key)
                return None
            await self.outcomes.complete(job, record, (source, result), None)
            self._forget(key)
            return None
        # The source named is the last one tried (the record's spec.sourceNode says the same).
        return await self.outcomes.retry(job, record, "; ".join(errors), reason,
                                         source=order[-1])

    async def _holders(self, digest: str) -> set[str]:
        nodes = list(self.caches.nodes.items.values())
        holders = set(self.caches.nodes_with_digest(digest))  # indexed: no scan (issue 12)
        holders.update(node for d, node in self.outcomes.delivered if d == digest)
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
        await self.records.status.patch(job.namespace, job.record, StatusPatch(
            phase="Transferring",
            started_at=record.status.started_at or now,
            last_attempt_at=now,
            error="",
            conditions=[],  # a retried configuration failure is history now
        ))
        request = TransferRequest(
            image_ref=inc.image_ref, digest=inc.digest, source_node=source,
            target_node=inc.node_name, max_bytes=self.settings.max_image_size,
            allow_snapshots=self.settings.snapshot_salvage,
            require_verified=self.settings.snapshot_salvage_strict,
            pin=self.settings.pin_salvaged_images,
        )
        last_write = 0.0

        async def progress(p: TransferProgress) -> None:
            nonlocal last_write
            t = time.monotonic()
            if t - last_write < PROGRESS_INTERVAL and p.bytes_transferred < p.bytes_total:
                return
            last_write = t
            await self.records.status.patch(job.namespace, job.record, StatusPatch(
                bytes_total=p.bytes_total,
                bytes_transferred=p.bytes_transferred,
                blobs_skipped=p.blobs_skipped,
                progress=planner.progress_text(p.bytes_transferred, p.bytes_total),
            ))

        metrics.SALVAGE_ATTEMPTS.inc()
        self.active_by_source[source] += 1
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
