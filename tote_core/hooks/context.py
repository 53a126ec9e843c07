"""What the controller hands plugins at `configure` time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Service = Callable[[], Awaitable[None]]


@dataclass
class PluginContext:
    """Settings, clients and caches a plugin may use; plus a way to register services.

    `settings` is the controller's `ControllerSettings`; `kube` the `KubeClient`; `cache` the
    informer caches (`tote_core.kube.cache.Caches`); `host` the `PluginHost`, through whose
    typed methods a plugin may call other hooks (e.g. `notify`, `push_image`). Typed as Any
    here to keep the hook module free of import cycles; see those modules for the real types.
    """

    settings: Any
    kube: Any
    cache: Any
    host: Any = None
    recorder: Any = None  # the controller's `EventRecorder` (events regarding pods)
    services: list[tuple[str, Service]] = field(default_factory=list)

    def add_service(self, name: str, service: Service) -> None:
        """Register a long-running coroutine the host runs in the controller's nursery."""
        self.services.append((name, service))
