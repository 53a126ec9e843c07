"""Corrupt image records: the node has the image's record but not all of its
content, so kubelet's CreateContainer fails for ever and never pulls again.

The record is removed (through the node's plugin) and kubelet asked to sync its pods (in
place, `PodActions.resume`), so the next attempt pulls — or, with the registry down, fails
to pull and is salvaged. At most once per (node, image) a minute: a record that keeps
coming back is not removed in a loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from tote_core.hooks.host import PluginHost
from tote_core.reconcile.engine import Result
from tote_core.salvage.jobs import Job
from tote_core.salvage.pods import PodActions

log = logging.getLogger("tote.salvage")

CORRUPT_BACKOFF = 60.0


class CorruptRecords:
    def __init__(self, host: PluginHost, pods: PodActions) -> None:
        self.host = host
        self.pods = pods
        self._seen: dict[tuple[str, str], float] = {}

    async def handle(self, job: Job, forget: Callable[[], None]) -> Result | None:
        """Remove the stale record; `Result` to wait out the back-off first. `forget` drops
        the job once an attempt was made (before the pods are resumed: a pod resubmitted
        meanwhile starts a new job)."""
        inc = job.incident
        node = inc.node_name or ""
        marker = (node, inc.digest or inc.image_ref)
        last = self._seen.get(marker)
        now = trio.current_time()
        if last is not None and now - last < CORRUPT_BACKOFF:
            return Result(requeue_after=CORRUPT_BACKOFF - (now - last))
        self._seen[marker] = now
        removed = await self.host.remove_image(node, inc.image_ref, inc.digest)
        forget()
        if not removed:
            log.warning("could not remove stale image record %s on %s", inc.image_ref, node)
            return None
        log.info("removed stale image record %s on %s", inc.image_ref, node)
        await self.pods.resume(job)
        return None
