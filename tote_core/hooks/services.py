"""Running the long-lived work plugins register at `configure` (`PluginContext.add_service`):
each started in the leader-only nursery, supervised, restarted after a pause when it raises
(a plugin's service never takes the controller down)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from tote_core.hooks.context import Service
from tote_core.hooks.roster import hook_failed

log = logging.getLogger("tote.plugins")
SERVICE_RESTART_DELAY = 5.0


async def run_services(
    services: Sequence[tuple[str, Service]], *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start every service; ready once all are."""
    async with trio.open_nursery() as nursery:
        for name, service in services:
            log.debug("starting plugin service %s", name)
            await nursery.start(supervise, name, service)
        task_status.started()


async def supervise(
    name: str, service: Service, *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a service; a raising service is logged, counted and restarted after a pause."""
    status = _StartedOnce(task_status)
    while True:
        try:
            await service(task_status=status)
            return
        except Exception as exc:
            hook_failed(name, "service", exc)
        status.started()  # never keep the host waiting on a service that crashed
        await trio.sleep(SERVICE_RESTART_DELAY)


class _StartedOnce:
    """A task status whose `started()` may be called again (by a restarted service)."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started()
