"""How a salvage attempt ends: the record's status, the pods' events and notifications, the
metrics, and what this controller remembers about it.

One place writes Completed and Failed so the record, the events and the notifications can
never disagree: Completed always reads total/total, a failure always says whether it will
be retried and why."""

from __future__ import annotations

import logging

import msgspec

from tote_core import metrics
from tote_core.detect import messages
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import TransferRequest, TransferResult
from tote_core.reconcile.engine import Result
from tote_core.salvage import planner
from tote_core.salvage.jobs import Job
from tote_core.salvage.pods import PodActions
from tote_core.salvage.statuswriter import StatusPatch, StatusWriter
from tote_core.structs.salvagerecord import Condition, SalvageRecord
from tote_core.timefmt import micro_time

log = logging.getLogger("tote.salvage")

DELIVERED_MAX = 10000


class Outcomes:
    def __init__(self, status: StatusWriter, pods: PodActions, host: PluginHost) -> None:
        self.status = status
        self.pods = pods
        self.host = host
        # (digest, node) this controller put there itself: fresher than any inventory cache.
        self.delivered: set[tuple[str, str]] = set()

    async def complete(
        self, job: Job, record: SalvageRecord,
        moved: tuple[str, TransferResult] | None, note: str | None,
    ) -> None:
        inc = job.incident
        status = StatusPatch(phase="Completed", completed_at=micro_time(), error="")
        if inc.digest and inc.node_name:
            self.delivered.add((inc.digest, inc.node_name))
            if len(self.delivered) > DELIVERED_MAX:
                self.delivered.clear()
        if moved is not None:
            source, result = moved
            # Completed means the whole image is on the target: progress reads total/total
            # even when this attempt moved less (blobs already there, or bytes resumed from
            # an attempt a leader before this one started). What this attempt moved is in
            # the ImageSalvaged event and the tote_salvage_image_bytes histogram.
            status = msgspec.structs.replace(
                status,
                bytes_total=result.bytes_total,
                bytes_transferred=result.bytes_total,
                blobs_skipped=result.blobs_skipped,
                progress=planner.progress_text(result.bytes_total, result.bytes_total),
                mode=result.mode,
                layers_regenerated=result.layers_regenerated,
                layers_verified=result.layers_verified,
                pinned=result.pinned,
            )
            metrics.SALVAGE_SUCCESSES.inc()
            metrics.SALVAGE_DURATION.observe(result.duration_seconds)
            metrics.SALVAGE_IMAGE_BYTES.observe(result.bytes_transferred)
            text = (
                f"Salvaged {inc.image_ref} ({inc.digest}) from node {source} to node "
                f"{inc.node_name}: {planner.human_bytes(result.bytes_transferred)} moved, "
                f"{result.blobs_skipped} blobs already present, "
                f"{result.duration_seconds:.1f}s.{planner.mode_text(result)} {messages.DEBT}"
            )
        else:
            text = f"Image {inc.image_ref} ({inc.digest}) is {note}; nothing to move."
            total = record.status.bytes_total
            if total and record.status.bytes_transferred != total:
                # A transfer another leader started finished without its last progress
                # report being written: the image is whole, so is the progress.
                status = msgspec.structs.replace(
                    status, bytes_transferred=total,
                    progress=planner.progress_text(total, total))
        await self.status.patch(job.namespace, job.record, status)
        if moved is not None:
            # After the record says Completed: nothing on_salvaged does (e.g. the backup
            # push it queues) can hold up or fail the salvage.
            source, result = moved
            request = TransferRequest(image_ref=inc.image_ref, digest=inc.digest or "",
                                      source_node=source, target_node=inc.node_name or "")
            await self.host.on_salvaged(inc, request, result)
            await self.pods.notify("salvaged", job, source=source)
        await self.pods.announce(job, text)
        log.info("salvage %s/%s completed%s", job.namespace, job.record,
                 f" ({note})" if note else "")
        await self.pods.resume(job)

    async def already_completed(self, job: Job, source: str) -> None:
        """Pods that failed while (or after) the image was delivered: tell them too."""
        inc = job.incident
        await self.pods.announce(job, (
            f"Image {inc.image_ref} ({inc.digest}) was salvaged to node {inc.node_name} "
            f"(SalvageRecord {job.namespace}/{job.record}). {messages.DEBT}"
        ))
        await self.pods.notify("salvaged", job, source=source)
        await self.pods.resume(job)

    async def fail(
        self, job: Job, error: str, reason: str, *,
        permanent: bool, source: str = "", retry_count: int | None = None,
    ) -> None:
        inc = job.incident
        metrics.SALVAGE_FAILURES.labels(reason).inc()
        configuration = permanent and reason in planner.CONFIG_REASONS
        status = StatusPatch(
            phase="Failed", error=error[:1000], last_attempt_at=micro_time(),
            retry_count=msgspec.UNSET if retry_count is None else retry_count,
            conditions=[Condition(
                type="Failed", status="True",
                reason=planner.CONFIGURATION if configuration else planner.PERMANENT,
                message=f"{reason}: {error}"[:1000], last_transition_time=micro_time(),
            )] if permanent else msgspec.UNSET,
        )
        await self.status.patch(job.namespace, job.record, status)
        verdict = ("tote's configuration: retried after the controller restarts with it "
                   "fixed" if configuration else "not retried" if permanent else "will retry")
        text = (f"Salvage of {inc.image_ref} ({inc.digest}) to node {inc.node_name} failed "
                f"({reason}, {verdict}): {error}. {messages.DEBT}")
        await self.pods.failed(job, text)
        await self.pods.notify("failed", job, source=source, error=error)
        log.warning("salvage %s/%s failed (%s, %s): %s", job.namespace, job.record, reason,
                    verdict, error)

    async def retry(
        self, job: Job, record: SalvageRecord, error: str, reason: str, *, source: str = ""
    ) -> Result:
        count = record.status.retry_count + 1
        await self.fail(job, error, reason, permanent=False, retry_count=count, source=source)
        delay = planner.backoff(count)
        log.info("salvage %s/%s: retry %d in %.0fs", job.namespace, job.record, count, delay)
        return Result(requeue_after=delay)
