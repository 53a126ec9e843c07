"""Pinned salvaged images: when tote hands them back to kubelet's image GC.

Every image tote salvages is pinned on its target node (CRI's label
`io.cri-containerd.pinned=pinned`, which kubelet's image GC skips): the registry could not
serve it, so a garbage-collected copy could not be pulled back. The reaper (leader only,
every `--reap-interval`) calls `Pins.cycle`, which unpins a record's image

- when the registry serves the record's digest again (`registry_serves` hook, with the pull
  secrets of the pod named in the record, else of the namespace's pods using the same
  repository): at most `CONCURRENCY` calls at once, each under a deadline, and backed off per
  record while the answer is not yes (the reap interval, doubling, at most `MAX_BACKOFF`), so
  a dead registry sees a handful of requests an hour;
- before the record is reaped (TTL): a failed unpin keeps the record for the next cycle, so
  no pinned image is left without a record saying so;
- at once when pinning is turned off (`--pin-salvaged-images=false`).

Only what a record names is touched: its digest, on its target node (`unpin_image` hook),
and only records whose status says pinned. A target node that no longer exists counts as
unpinned (its images went with it). Each unpin sets `status.pinned=false`, posts a Normal
`ImageUnpinned` event regarding the SalvageRecord and logs at info.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal

import trio

from tote_core.detect.reference import parse
from tote_core.errors import InvalidReference, KubeError
from tote_core.hooks.host import PluginHost
from tote_core.kube.cache import Caches
from tote_core.kube.events import EventRecorder
from tote_core.salvage.records import RecordStore
from tote_core.salvage.statuswriter import StatusPatch
from tote_core.structs.kube import Pod
from tote_core.structs.salvagerecord import SalvageRecord

log = logging.getLogger("tote.pins")

CONCURRENCY = 4  # registry lookups and agent calls in flight at once
UNPIN_TIMEOUT = 10.0  # per unpin_image call
MAX_BACKOFF = 3600.0  # between registry checks of one record (at least the reap interval)
BUDGET = 60.0  # per cycle; what did not fit is done next cycle
MAX_SECRETS = 16

Why = Literal["served", "expired", "disabled"]
REASON = "ImageUnpinned"
_WHY_TEXT = {
    "served": "the registry serves it again",
    "expired": "its SalvageRecord is older than --salvagerecord-ttl and is deleted next",
    "disabled": "pinning is turned off (--pin-salvaged-images=false)",
}


def backoff(failures: int, interval: float) -> float:
    """Seconds until a record whose registry check failed `failures` times in a row is
    checked again: the reap interval, doubling, capped at MAX_BACKOFF (or the interval,
    when that is longer)."""
    return float(min(interval * 2 ** max(failures - 1, 0), max(interval, MAX_BACKOFF)))


def _repository(image_ref: str) -> str | None:
    try:
        return parse(image_ref).repository
    except InvalidReference:
        return None


def pull_secrets(record: SalvageRecord, pods: Iterable[Pod]) -> list[str]:
    """The `imagePullSecrets` to ask the registry with: those of the pod the record names
    when it still exists (same name and namespace), else those of the namespace's pods whose
    containers use the record's repository (an owned pod tote restarted has a new name)."""
    pods = list(pods)
    named = [p for p in pods if p.metadata.name == record.spec.pod_name]
    if named:
        return list(dict.fromkeys(s.name for s in named[0].spec.image_pull_secrets))
    repo = _repository(record.spec.image_ref)
    found: dict[str, None] = {}
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        images = (c.image for c in (*pod.spec.containers, *pod.spec.init_containers))
        if repo is not None and any(_repository(i) == repo for i in images):
            found.update(dict.fromkeys(s.name for s in pod.spec.image_pull_secrets))
    return list(found)[:MAX_SECRETS]


def _due(record: SalvageRecord, expiring: set[str], enabled: bool) -> Why | Literal["check"] | None:
    """What this cycle does about one record: unpin it (and why), check the registry, or
    nothing (not pinned)."""
    if not record.status.pinned:
        return None
    if record.metadata.uid in expiring:
        return "expired"
    if not enabled:
        return "disabled"
    return "check"


# The reaper's bound on one `registry_serves` call (auth round trip + HEAD); the registry
# plugin's own `--registry-resolve-timeout` bounds each request inside it.
CHECK_DEADLINE = 30.0


class Pins:
    def __init__(self, host: PluginHost, records: RecordStore, recorder: EventRecorder,
                 caches: Caches, *, enabled: bool, interval: float,
                 check_timeout: float = CHECK_DEADLINE,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.host = host
        self.records = records
        self.recorder = recorder
        self.caches = caches
        self.enabled = enabled
        self.interval = interval
        self.check_timeout = check_timeout
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # uid → (failures, next check)
        self.checks = 0  # registry lookups made (tests read it)

    async def cycle(self, items: list[SalvageRecord], expiring: set[str]) -> set[str]:
        """Do this cycle's pin work on `items` (`expiring`: UIDs of records past their TTL);
        returns the UIDs of the records unpinned now."""
        self._failures = {u: v for u, v in self._failures.items()
                          if u in {r.metadata.uid for r in items}}
        now = self.clock()
        unpins: list[tuple[SalvageRecord, Why]] = []
        groups: dict[tuple[str, str, str, tuple[str, ...]], list[SalvageRecord]] = {}
        for record in items:
            what = _due(record, expiring, self.enabled)
            if what is None:
                continue
            if what != "check":
                unpins.append((record, what))
                continue
            if self._failures.get(record.metadata.uid, (0, now))[1] > now:
                continue  # backed off
            ns = record.metadata.namespace
            secrets = tuple(pull_secrets(record, self.caches.pods_in_namespace(ns)))
            key = (ns, record.spec.image_ref, record.spec.digest, secrets)
            groups.setdefault(key, []).append(record)
        unpinned: set[str] = set()
        if not unpins and not groups:
            return unpinned
        limiter = trio.CapacityLimiter(CONCURRENCY)

        async def unpin(record: SalvageRecord, why: Why) -> None:
            if await self._unpin(record, why, limiter):
                unpinned.add(record.metadata.uid)
                self._failures.pop(record.metadata.uid, None)

        async def check(key: tuple[str, str, str, tuple[str, ...]],
                        group: list[SalvageRecord]) -> None:
            ns, image_ref, digest, secrets = key
            served: bool | None = None
            async with limiter:
                self.checks += 1
                with trio.move_on_after(self.check_timeout):
                    served = await self.host.registry_serves(image_ref, digest, ns,
                                                             list(secrets))
            if served:
                for record in group:
                    await unpin(record, "served")
                return
            for record in group:
                failures = self._failures.get(record.metadata.uid, (0, 0.0))[0] + 1
                self._failures[record.metadata.uid] = (
                    failures, self.clock() + backoff(failures, self.interval))
            log.debug("%s (%s) is not served by its registry (%s): still pinned on %s",
                      image_ref, digest, "no" if served is False else "cannot tell",
                      ", ".join(r.spec.target_node for r in group))

        with trio.move_on_after(BUDGET):
            async with trio.open_nursery() as nursery:
                for record, why in unpins:
                    nursery.start_soon(unpin, record, why)
                for key, group in groups.items():
                    nursery.start_soon(check, key, group)
        return unpinned

    async def _unpin(self, record: SalvageRecord, why: Why,
                     limiter: trio.CapacityLimiter) -> bool:
        meta, spec = record.metadata, record.spec
        node, digest = spec.target_node, spec.digest
        gone = self.caches.synced and self.caches.node(node) is None
        done: bool | None = True
        if not gone:
            done = False
            async with limiter:
                with trio.move_on_after(UNPIN_TIMEOUT):
                    done = await self.host.unpin_image(node, digest)
        if not done:
            keep = " keeping the SalvageRecord for the next cycle;" if why == "expired" else ""
            log.warning("could not unpin %s (%s) on node %s (%s):%s trying again next cycle",
                        spec.image_ref, digest, node,
                        "no plugin manages the node" if done is None
                        else "its agent did not answer", keep)
            return False
        try:
            await self.records.status.patch(meta.namespace, meta.name,
                                              StatusPatch(pinned=False))
        except KubeError as exc:
            if why != "expired":  # an expiring record is deleted anyway
                log.warning("unpinned %s on node %s but could not record it on "
                            "SalvageRecord %s/%s: %s", digest, node, meta.namespace,
                            meta.name, exc)
                return False
        text = (f"Node {node} no longer exists: nothing left to unpin of {spec.image_ref} "
                f"({digest})." if gone else
                f"Unpinned {spec.image_ref} ({digest}) on node {node}: {_WHY_TEXT[why]}. "
                "kubelet's image garbage collection may remove it from now on.")
        await self.recorder.emit(record, REASON, text, type_="Normal", action="Unpin")
        log.info("unpinned %s (%s) on node %s, SalvageRecord %s/%s: %s", spec.image_ref,
                 digest, node, meta.namespace, meta.name,
                 "node gone" if gone else _WHY_TEXT[why])
        return True
