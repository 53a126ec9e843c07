"""What the controller hands plugins at `configure` time: typed clients and two callbacks.

A plugin keeps what it needs from the context on its own object (typed attributes), never in
module globals. It may not start tasks or threads: long-running work is registered with
`add_service` and started by the host in the controller's leader-only nursery, so it stops
when leadership is lost and never outlives the controller.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from tote_core.hooks.types import Notification

if TYPE_CHECKING:
    from tote_core.hooks.host import PluginHost
    from tote_core.kube.cache import Caches
    from tote_core.kube.client import KubeClient
    from tote_core.kube.events import EventRecorder
    from tote_core.settings import ControllerSettings


S = TypeVar("S", bound=msgspec.Struct)


class Service(Protocol):
    """A long-running plugin coroutine in the component shape: it calls
    `task_status.started()` once ready and then runs until cancelled."""

    def __call__(self, *, task_status: Any = ...) -> Awaitable[None]: ...


@dataclass
class PluginContext:
    """Settings, clients and caches a plugin may use; services; notifications.

    `settings`: core's validated controller settings; a plugin's own are
    `settings_for(ItsSettingsStruct)`. `kube`: the controller's Kubernetes
    client (its RBAC identity). `cache`: the informer caches (pods, nodes, namespaces),
    read-only. `host`: the plugin host, whose typed methods call other plugins' hooks (a
    plugin never imports another plugin). `recorder`: the controller's event recorder
    (events regarding pods), when the controller provides one.
    """

    settings: ControllerSettings
    kube: KubeClient
    cache: Caches
    host: PluginHost
    recorder: EventRecorder | None = None
    services: list[tuple[str, Service]] = field(default_factory=list)

    def settings_for(self, cls: type[S]) -> S:
        """This plugin's own validated settings: the instance of the Struct class its
        `settings_type` hook returned, filled from flags, environment and config file (its
        defaults when the plugin was registered by hand, as in a test)."""
        return self.host.plugin_settings.of(cls)

    def add_service(self, name: str, service: Service) -> None:
        """Register long-running work; the host starts it with `nursery.start(service)`
        when this replica leads, restarts it (after a pause) if it raises, and cancels it
        when leadership is lost."""
        self.services.append((name, service))

    async def notify(self, notification: Notification) -> None:
        """Emit a notification (e.g. `pushed`, or `failed` for a push) through the host: it
        fills in the timestamp, drops repeats of the same incident and type, and calls
        every `notify` implementation. Returns at once; delivery is the notifiers' job."""
        await self.host.notify(notification)
