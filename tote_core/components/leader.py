"""Leader election on a coordination.k8s.io/v1 Lease (client-go's algorithm).

Acquire when the lease is free or its holder has not renewed within its duration; renew
every `retry_period`; if renewing fails for `renew_deadline`, leadership is lost and the
leader-only scope is cancelled at once (the lease may already belong to someone else).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime

import msgspec
import trio

from tote_core import metrics
from tote_core.errors import Conflict, KubeError, NotFound
from tote_core.kube.client import KubeClient, resource_path
from tote_core.structs.kube import Lease, LeaseSpec, ObjectMeta
from tote_core.timefmt import micro_time, parse_time

log = logging.getLogger("tote.leader")


@dataclass(eq=False)
class LeaderElector:
    client: KubeClient
    _: KW_ONLY
    namespace: str
    name: str
    identity: str
    lease_duration: float
    renew_deadline: float
    retry_period: float
    is_leader: bool = field(default=False, init=False)
    leader_identity: str | None = field(default=None, init=False)
    _renewed_at: float = field(default=0.0, init=False)  # trio clock

    def __post_init__(self) -> None:
        self._path = resource_path("coordination.k8s.io/v1", "leases", self.namespace)

    async def _try_acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await self.client.get(f"{self._path}/{self.name}", Lease)
        except NotFound:
            lease = Lease(
                metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                spec=LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=int(self.lease_duration),
                    acquire_time=micro_time(now),
                    renew_time=micro_time(now),
                    lease_transitions=0,
                ),
            )
            try:
                await self.client.create(self._path, msgspec.to_builtins(lease))
            except Conflict:
                return False
            self.leader_identity = self.identity
            return True
        spec = lease.spec
        self.leader_identity = spec.holder_identity
        renewed = parse_time(spec.renew_time)
        duration = spec.lease_duration_seconds or int(self.lease_duration)
        held_by_other = bool(spec.holder_identity) and spec.holder_identity != self.identity
        if held_by_other and renewed and (now - renewed).total_seconds() < duration:
            return False
        if spec.holder_identity != self.identity:
            spec.acquire_time = micro_time(now)
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.renew_time = micro_time(now)
        spec.lease_duration_seconds = int(self.lease_duration)
        try:
            await self.client.update(f"{self._path}/{self.name}", msgspec.to_builtins(lease))
        except Conflict:
            return False
        self.leader_identity = self.identity
        return True

    async def _attempt(self, limit: float | None = None) -> bool:
        """One try; on success `_renewed_at` is when it started: the renewTime it wrote is
        no earlier, so the Lease is valid for others until at least then + lease_duration."""
        started = trio.current_time()
        try:
            with trio.fail_after(self.retry_period * 2 if limit is None else limit):
                ok = await self._try_acquire_or_renew()
        except (KubeError, trio.TooSlowError) as exc:
            log.debug("lease %s/%s: %s", self.namespace, self.name, exc)
            return False
        if ok:
            self._renewed_at = started
        return ok

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Forever: wait to acquire, run `lead()` while renewing, cancel it on loss."""
        while True:
            await self._acquire()
            log.info("became leader (lease %s/%s, identity %s)", self.namespace, self.name,
                     self.identity)
            self.is_leader = True
            metrics.IS_LEADER.set(1)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lead)
                    await self._renew_loop()
                    nursery.cancel_scope.cancel()
            finally:
                self.is_leader = False
                metrics.IS_LEADER.set(0)
            log.warning("lost leadership (lease %s/%s); leader-only work stopped",
                        self.namespace, self.name)

    async def _acquire(self) -> None:
        """Poll the lease every retry period until this replica holds it."""
        acquired = await self._attempt()
        while not acquired:
            await trio.sleep(self.retry_period)
            acquired = await self._attempt()

    async def _renew_loop(self) -> None:
        """Renew every retry period; return (leadership lost) at the latest renew_deadline
        after the last successful renewal began. Each wait and each attempt is cut to what
        is left of that deadline: an attempt hanging on a dead connection must not carry
        the leader past it, because others may take the Lease lease_duration after that
        renewal, and lease_duration > renew_deadline is what keeps two leaders from acting
        at once."""
        while True:
            left = self._renewed_at + self.renew_deadline - trio.current_time()
            await trio.sleep(max(0.0, min(self.retry_period, left)))
            left = self._renewed_at + self.renew_deadline - trio.current_time()
            if left <= 0:
                return
            if await self._attempt(min(self.retry_period * 2, left)):
                continue
            if self.leader_identity not in (None, self.identity):
                return

    async def release(self) -> None:
        """On clean shutdown, hand the lease back so another replica takes over at once."""
        if self.leader_identity != self.identity:
            return
        try:
            with trio.fail_after(2):
                lease = await self.client.get(f"{self._path}/{self.name}", Lease)
                if lease.spec.holder_identity != self.identity:
                    return
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                await self.client.update(f"{self._path}/{self.name}", msgspec.to_builtins(lease))
                log.info("released lease %s/%s", self.namespace, self.name)
        except (KubeError, trio.TooSlowError) as exc:
            log.debug("releasing lease failed: %s", exc)
