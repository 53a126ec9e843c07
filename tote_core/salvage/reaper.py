"""Leader-only reaper: delete SalvageRecords older than `--salvagerecord-ttl`.

Age counts from `completedAt`, or from creation for records that never completed. The
reaper also refreshes the `tote_salvagerecords_total{phase}` gauge. A full list every ten
minutes is fine here: it is one request, off the hot path.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

import trio

from tote_core import metrics
from tote_core.errors import KubeError
from tote_core.salvage.records import RecordStore
from tote_core.structs.salvagerecord import PHASES, SalvageRecord
from tote_core.timefmt import parse_time

log = logging.getLogger("tote.reaper")



def expired(record: SalvageRecord, ttl: float, now: datetime) -> bool:
    since = parse_time(record.status.completed_at) or parse_time(record.metadata.creation_timestamp)
    return since is not None and (now - since).total_seconds() > ttl


class Reaper:
    def __init__(self, records: RecordStore, *, ttl: float, interval: float = 600.0) -> None:
        self.records = records
        self.ttl = ttl
        self.interval = interval
        self.deleted = 0

    async def reap_once(self) -> int:
        items = await self.records.list_all()
        now = datetime.now(UTC)
        phases: Counter[str] = Counter()
        deleted = 0
        for record in items:
            meta = record.metadata
            if expired(record, self.ttl, now) and await self.records.delete(
                meta.namespace, meta.name, meta.uid
            ):
                deleted += 1
                log.debug("reaped SalvageRecord %s/%s (phase %s)", meta.namespace,
                          meta.name, record.status.phase)
                continue
            phases[record.status.phase or "Pending"] += 1
        for phase in PHASES:
            metrics.SALVAGERECORDS.labels(phase).set(phases.get(phase, 0))
        self.deleted += deleted
        if deleted:
            log.info("reaped %d expired SalvageRecords (ttl %.0fs)", deleted, self.ttl)
        return deleted

    async def run(self) -> None:
        while True:
            try:
                with trio.fail_after(120):
                    await self.reap_once()
            except (KubeError, trio.TooSlowError) as exc:
                log.warning("reaper: %s", exc)
            await trio.sleep(self.interval)
