"""The plugin host: loads plugins, and is the only caller of their hooks.

pluggy calls implementations synchronously and cannot await. The host therefore walks the
implementations itself, in pluggy's own call order, calling each function with the
arguments it declares, awaiting coroutines, and isolating failures: a raising plugin is
logged with its name, counted in `tote_plugin_failures_total{plugin,hook}`, and skipped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from functools import partial
from importlib import metadata
from types import ModuleType
from typing import Any

import msgspec
import pluggy

from tote_core import metrics
from tote_core.hooks import hookspecs
from tote_core.hooks.context import PluginContext
from tote_core.hooks.types import (
    Incident,
    NodeHealth,
    NodeInfo,
    Notification,
    OptInQuery,
    ProgressCallback,
    PushRequest,
    PushResult,
    TransferRequest,
    TransferResult,
)

log = logging.getLogger("tote.plugins")
GROUP = "tote"
BUILTIN_DISTRIBUTION = "tote"


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin as `tote plugins` shows it."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    enabled: bool
    hooks: tuple[str, ...] = ()
    error: str = ""


class PluginHost:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []

    # -- loading -----------------------------------------------------------------------

    def register(self, module: ModuleType | object, name: str) -> None:
        """Register an already imported plugin object (tests, embedded use)."""
        self.pm.register(module, name=name)

    def load(self, disabled: Iterable[str] = ()) -> list[PluginInfo]:
        """Load every entry point in group `tote` except the disabled ones."""
        off = set(disabled)
        seen: set[str] = set()
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else "?"
            info = partial(
                PluginInfo, name=ep.name, module=ep.value, distribution=dist,
                version=ep.dist.version if ep.dist else "?", builtin=dist == BUILTIN_DISTRIBUTION,
            )
            if ep.name in off:
                self.plugins.append(info(enabled=False))
                continue
            try:
                obj = ep.load()
                self.pm.register(obj, name=ep.name)
            except Exception as exc:
                log.error("plugin %s failed to load: %s: %s", ep.name, type(exc).__name__, exc)
                metrics.PLUGIN_FAILURES.labels(ep.name, "load").inc()
                self.plugins.append(info(enabled=False, error=str(exc)))
                continue
            hooks = tuple(
                sorted(h.name for h in self.pm.get_hookcallers(obj) or [])
            )
            self.plugins.append(info(enabled=True, hooks=hooks))
        unknown = off - seen
        if unknown:
            log.warning("plugins.disabled names unknown plugins: %s", ", ".join(sorted(unknown)))
        return self.plugins

    # -- calling -----------------------------------------------------------------------

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        caller = getattr(self.pm.hook, hook_name)
        # pluggy calls the last registered (and tryfirst) implementations first.
        return list(reversed(caller.get_hookimpls()))

    async def _call_one(self, impl: pluggy.HookImpl, hook_name: str, kwargs: dict[str, Any]) -> Any:
        args = [kwargs[name] for name in impl.argnames]
        result = impl.function(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def broadcast(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation; failures are isolated. Returns non-None results."""
        results = []
        for impl in self._impls(hook_name):
            try:
                value = await self._call_one(impl, hook_name, kwargs)
            except Exception as exc:
                self._failed(impl, hook_name, exc)
                continue
            if value is not None:
                results.append(value)
        return results

    async def first(self, hook_name: str, *, isolate: bool = True, **kwargs: Any) -> Any:
        """Walk implementations in order; the first non-None awaited result wins.

        With `isolate=False` a plugin's exception propagates (used by `transfer`, whose
        RetryLater/PermanentError are control flow the engine must see).
        """
        for impl in self._impls(hook_name):
            try:
                value = await self._call_one(impl, hook_name, kwargs)
            except Exception as exc:
                if not isolate:
                    raise
                self._failed(impl, hook_name, exc)
                continue
            if value is not None:
                return value
        return None

    def _failed(self, impl: pluggy.HookImpl, hook_name: str, exc: BaseException) -> None:
        log.error(
            "plugin %s failed in %s: %s: %s", impl.plugin_name, hook_name, type(exc).__name__, exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        metrics.PLUGIN_FAILURES.labels(impl.plugin_name, hook_name).inc()

    # -- typed entry points --------------------------------------------------------------

    async def configure(self, context: PluginContext) -> None:
        await self.broadcast("configure", context=context)

    async def opt_in(self, query: OptInQuery) -> bool | None:
        value = await self.first("opt_in", query=query)
        return bool(value) if value is not None else None

    async def on_detected(self, incident: Incident) -> None:
        await self.broadcast("on_detected", incident=incident)

    async def select_source(
        self, incident: Incident, candidates: list[NodeInfo]
    ) -> list[str] | None:
        value = await self.first("select_source", incident=incident, candidates=candidates)
        return list(value) if value is not None else None

    async def transfer(
        self, request: TransferRequest, progress: ProgressCallback
    ) -> TransferResult | None:
        value = await self.first("transfer", isolate=False, request=request, progress=progress)
        return value  # type: ignore[no-any-return]

    async def find_image(self, digest: str, nodes: list[str]) -> list[str] | None:
        value = await self.first("find_image", digest=digest, nodes=nodes)
        return list(value) if value is not None else None

    async def resolve_tag(self, image_ref: str, nodes: list[str]) -> str | None:
        value = await self.first("resolve_tag", image_ref=image_ref, nodes=nodes)
        return str(value) if value is not None else None

    async def registry_resolve(
        self, image_ref: str, namespace: str, pull_secrets: list[str]
    ) -> str | None:
        value = await self.first(
            "registry_resolve", image_ref=image_ref, namespace=namespace,
            pull_secrets=pull_secrets,
        )
        return str(value) if value is not None else None

    async def remove_image(self, node: str, image_ref: str, digest: str | None) -> bool:
        value = await self.first("remove_image", node=node, image_ref=image_ref, digest=digest)
        return bool(value)

    async def on_salvaged(
        self, incident: Incident, request: TransferRequest, result: TransferResult
    ) -> None:
        await self.broadcast("on_salvaged", incident=incident, request=request, result=result)

    async def push_image(self, request: PushRequest) -> PushResult | None:
        """Errors propagate (not isolated): the push worker reports them as ImagePushFailed."""
        value = await self.first("push_image", isolate=False, request=request)
        return value  # type: ignore[no-any-return]

    async def notify(self, notification: Notification) -> None:
        await self.broadcast("notify", notification=notification)

    async def node_health(self, node: str, settings: Any, pods: list[Any]) -> NodeHealth | None:
        value = await self.first("node_health", node=node, settings=settings, pods=pods)
        return value if isinstance(value, NodeHealth) else None


