"""Leader-only reaper: delete SalvageRecords older than `--salvagerecord-ttl`, and unpin.

Age counts from `completedAt`, or from creation for records that never completed. Each
cycle also does the pin work (`pins.py`): unpin what the registry serves again, and unpin a
pinned record's image before deleting the record (a record whose image could not be
unpinned stays for the next cycle). It refreshes the `tote_salvagerecords_total{phase}` and
`tote_pinned_images` gauges. A full list every ten minutes is fine here: it is one request,
off the hot path.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

import trio

from tote_core import metrics
from tote_core.errors import KubeError
from tote_core.salvage.pins import Pins
from tote_core.salvage.records import RecordStore
from tote_core.structs.salvagerecord import PHASES, SalvageRecord
from tote_core.timefmt import parse_time

log = logging.getLogger("tote.reaper")
CYCLE_TIMEOUT = 120.0


def expired(record: SalvageRecord, ttl: float, now: datetime) -> bool:
    since = parse_time(record.status.completed_at) or parse_time(record.metadata.creation_timestamp)
    return since is not None and (now - since).total_seconds() > ttl


class Reaper:
    def __init__(self, records: RecordStore, *, ttl: float, interval: float = 600.0,
                 pins: Pins | None = None) -> None:
        self.records = records
        self.ttl = ttl
        self.interval = interval
        self.pins = pins
        self.deleted = 0

    async def reap_once(self) -> int:
        items = await self.records.list_all()
        now = datetime.now(UTC)
        expiring = {r.metadata.uid for r in items if expired(r, self.ttl, now)}
        unpinned: set[str] = set()
        if self.pins is not None:
            unpinned = await self.pins.cycle(items, expiring)
        phases: Counter[str] = Counter()
        pinned = deleted = 0
        for record in items:
            meta = record.metadata
            still_pinned = record.status.pinned and meta.uid not in unpinned
            # A pinned image is never left without its record: unpin first, delete after.
            if meta.uid in expiring and not still_pinned and await self.records.delete(
                meta.namespace, meta.name, meta.uid
            ):
                deleted += 1
                log.debug("reaped SalvageRecord %s/%s (phase %s)", meta.namespace,
                          meta.name, record.status.phase)
                continue
            phases[record.status.phase or "Pending"] += 1
            pinned += still_pinned and record.status.phase == "Completed"
        for phase in PHASES:
            metrics.SALVAGERECORDS.labels(phase).set(phases.get(phase, 0))
        metrics.PINNED_IMAGES.set(pinned)
        self.deleted += deleted
        if deleted:
            log.info("reaped %d expired SalvageRecords (ttl %.0fs)", deleted, self.ttl)
        return deleted

    async def run(self) -> None:
        while True:
            try:
                with trio.fail_after(CYCLE_TIMEOUT):
                    await self.reap_once()
            except (KubeError, trio.TooSlowError) as exc:
                log.warning("reaper: %s", exc)
            await trio.sleep(self.interval)
