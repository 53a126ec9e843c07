"""The plugin host: loads plugins, and is the only caller of their hooks.

pluggy does the calling: order, `tryfirst`/`trylast`, wrappers (new- and old-style) and
first-result all happen in pluggy's own loop (`pm.hook.<name>(...)`). The host adds the two
things pluggy cannot do:

- **Awaiting** (`bridge.py`). pluggy calls implementations synchronously. The host runs the
  pluggy call in a greenlet (greenlet is already installed with trio-asyncio); when an
  implementation returns an awaitable, its bridge switches back to the calling trio task,
  which awaits it and switches the result (or exception) back in. pluggy therefore only ever
  sees awaited values: an async implementation answering None passes to the next one, a
  wrapper receives the awaited answer, and deadlines and cancellation are the calling
  task's. Everything runs in the trio thread, inside the task that called the host.
- **Isolation.** Each implementation is registered through a bridge that catches its
  exception, logs it at ERROR with the plugin name and traceback, counts it in
  `tote_plugin_failures_total{plugin,hook}` and answers None, so the call goes on with the
  remaining implementations. A new-style wrapper that raises is skipped the same way (the
  result passes through unchanged). `transfer` is not isolated: its RetryLater /
  PermanentError are the salvage engine's control flow.

Loading: built-ins and third-party plugins alike come from entry points in group `tote`. An
entry point names a class (or a zero-argument factory function); the host builds one object
and registers it under the entry-point name, so a plugin's state lives on its object and
`configure` fills it in. An entry point naming an object (or a module) registers it as is.
`plugins.disabled` names are blocked with pluggy's `set_blocked`. After loading,
`check_pending()` turns a misspelled hook name into a start-up error naming the plugin;
pluggy's own validation at registration (unknown argument names, a wrapper that is not a
generator) does the same.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import msgspec
import pluggy
import trio

from tote_core import DISTRIBUTION, metrics
from tote_core.errors import ConfigError
from tote_core.hooks import bridge, hookspecs
from tote_core.hooks import types as hooktypes
from tote_core.hooks.context import PluginContext, Service
from tote_core.settings import ControllerSettings
from tote_core.structs.kube import Pod
from tote_core.timefmt import utcnow

log = logging.getLogger("tote.plugins")
GROUP = "tote"
BUILTIN_DISTRIBUTION = DISTRIBUTION  # plugins this package ships are shown as built-in
# Hooks whose exceptions are the caller's control flow, never isolated.
CONTROL_FLOW_HOOKS = frozenset({"transfer", "push_image"})
SERVICE_RESTART_DELAY = 5.0
NOTIFIED_MAX = 20000  # (incident, type) keys remembered for the once-per-incident rule


def _normalized(dist: str) -> str:
    """A distribution name as PEP 503 compares them (metadata may spell `tote_salvage`)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


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


class _Registered:
    """What pluggy holds for one plugin: the plugin's hook functions behind bridges."""

    def __init__(self, plugin: object) -> None:
        self._tote_plugin = plugin


# -- the host ------------------------------------------------------------------------------


class PluginHost:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.context: PluginContext | None = None
        self._notified: dict[tuple[str, ...], None] = {}

    # -- loading -----------------------------------------------------------------------

    def register(self, plugin: object, name: str) -> bool:
        """Register a plugin object under `name`; False when `name` is disabled.

        Raises ConfigError naming the plugin when pluggy rejects it (an argument a spec does
        not have, a wrapper that is not a generator).
        """
        if self.pm.is_blocked(name):
            return False
        proxy = _Registered(plugin)
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = getattr(plugin, attr)
            bridged = self._bridge(name, attr, function, opts)
            setattr(bridged, f"{hookspecs.PROJECT}_impl", opts)
            setattr(proxy, attr, bridged)
        try:
            self.pm.register(proxy, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin {name}: {exc}") from exc
        return True

    def check(self) -> None:
        """pluggy's `check_pending`: an implementation of no known hook fails start-up."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or "?"
            unknown = [
                attr for attr in dir(exc.plugin)
                if not attr.startswith("_") and getattr(self.pm.hook, attr, None) is not None
                and not getattr(self.pm.hook, attr).has_spec()
            ]  # fmt: skip
            known = ", ".join(sorted(n for n in dir(hookspecs) if self._is_spec(n)))
            raise ConfigError(
                f"plugin {name} implements unknown hook(s) {', '.join(unknown)}; "
                f"known hooks: {known}"
            ) from exc

    @staticmethod
    def _is_spec(name: str) -> bool:
        return hasattr(getattr(hookspecs, name, None), f"{hookspecs.PROJECT}_spec")

    def plugin(self, name: str) -> object | None:
        """The plugin object registered under `name` (not pluggy's bridged view of it)."""
        proxy = self.pm.get_plugin(name)
        return proxy._tote_plugin if isinstance(proxy, _Registered) else None

    def implementers(self, hook: str) -> list[str]:
        """Names of the registered plugins implementing `hook` (e.g. /readyz: is any
        `transfer` plugin loaded?)."""
        caller = getattr(self.pm.hook, hook)
        return [impl.plugin_name for impl in caller.get_hookimpls()]

    def load(self, disabled: Iterable[str] = ()) -> list[PluginInfo]:
        """Load every entry point in group `tote` except the disabled ones, then check.

        A plugin that fails to import or build is logged, counted and listed with its error
        (the controller runs without it); one that does not match the hook specs stops
        start-up (ConfigError naming it).
        """
        off = set(disabled)
        for name in off:
            self.pm.set_blocked(name)
        seen: set[str] = set()
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else "?"
            base = functools.partial(
                PluginInfo, name=ep.name, module=ep.value, distribution=dist,
                version=ep.dist.version if ep.dist else "?",
                builtin=_normalized(dist) == BUILTIN_DISTRIBUTION,
            )
            if self.pm.is_blocked(ep.name):
                self.plugins.append(base(enabled=False))
                continue
            try:
                loaded = ep.load()
                # A class or factory is called once; an object (or module) is the plugin.
                built = isinstance(loaded, type) or inspect.isroutine(loaded)
                plugin = loaded() if built else loaded
            except Exception as exc:
                log.error("plugin %s failed to load: %s: %s", ep.name, type(exc).__name__, exc,
                          exc_info=exc)
                metrics.PLUGIN_FAILURES.labels(ep.name, "load").inc()
                self.plugins.append(base(enabled=False, error=str(exc)))
                continue
            self.register(plugin, ep.name)
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(
                self.pm.get_plugin(ep.name)) or []))
            self.plugins.append(base(enabled=True, hooks=hooks))
        unknown = off - seen
        if unknown:
            log.warning("plugins.disabled names unknown plugins: %s", ", ".join(sorted(unknown)))
        self.check()
        return self.plugins

    # -- bridging ------------------------------------------------------------------------

    def _bridge(
        self, plugin: str, hook: str, function: Callable[..., Any], opts: Any
    ) -> Callable[..., Any]:
        return bridge.bridge(plugin, hook, function, opts,
                             isolate=hook not in CONTROL_FLOW_HOOKS, failed=self._failed)

    def _failed(self, plugin: str, hook: str, exc: BaseException) -> None:
        log.error("plugin %s failed in %s: %s: %s", plugin, hook, type(exc).__name__, exc,
                  exc_info=exc)
        metrics.PLUGIN_FAILURES.labels(plugin, hook).inc()

    # -- calling -------------------------------------------------------------------------

    async def call(self, hook: str, **kwargs: Any) -> Any:
        """`pm.hook.<hook>(**kwargs)`, with every awaitable an implementation returns awaited
        in the calling task. Returns what pluggy returns: the list of non-None results
        (broadcast) or the first non-None result (first-result)."""
        caller = getattr(self.pm.hook, hook)
        if not caller.get_hookimpls():
            return None if caller.spec and caller.spec.opts.get("firstresult") else []
        try:
            return await bridge.drive(caller, kwargs)
        except Exception as exc:
            if hook in CONTROL_FLOW_HOOKS:
                raise
            # Only pluggy's own errors and old-style wrappers get here; bridges isolate.
            self._failed("?", hook, exc)
            return None if caller.spec and caller.spec.opts.get("firstresult") else []

    # -- typed entry points ----------------------------------------------------------------

    async def configure(self, context: PluginContext) -> None:
        self.context = context
        await self.call("configure", context=context)

    async def opt_in(self, query: hooktypes.OptInQuery) -> bool | None:
        value = await self.call("opt_in", query=query)
        return bool(value) if value is not None else None

    async def on_detected(self, incident: hooktypes.Incident) -> None:
        await self.call("on_detected", incident=incident)

    async def select_source(
        self, incident: hooktypes.Incident, candidates: list[hooktypes.NodeInfo],
        target: hooktypes.NodeInfo,
    ) -> list[str] | None:
        value = await self.call(
            "select_source", incident=incident, candidates=candidates, target=target
        )
        if value is None:
            return None
        if isinstance(value, str) or not all(isinstance(n, str) for n in value):
            log.error("select_source answered %r, not a list of node names; ignored", value)
            metrics.PLUGIN_FAILURES.labels("?", "select_source").inc()
            return None
        return list(value)

    async def transfer(
        self, request: hooktypes.TransferRequest, progress: hooktypes.ProgressCallback
    ) -> hooktypes.TransferResult | None:
        value = await self.call("transfer", request=request, progress=progress)
        return value  # type: ignore[no-any-return]

    async def find_image(self, digest: str, nodes: list[str]) -> list[str] | None:
        value = await self.call("find_image", digest=digest, nodes=nodes)
        return list(value) if value is not None else None

    async def resolve_tag(self, image_ref: str, nodes: list[str]) -> str | None:
        value = await self.call("resolve_tag", image_ref=image_ref, nodes=nodes)
        return str(value) if value is not None else None

    async def registry_resolve(
        self, image_ref: str, namespace: str, pull_secrets: list[str]
    ) -> str | None:
        value = await self.call(
            "registry_resolve", image_ref=image_ref, namespace=namespace,
            pull_secrets=pull_secrets,
        )
        return str(value) if value is not None else None

    async def remove_image(self, node: str, image_ref: str, digest: str | None) -> bool:
        value = await self.call("remove_image", node=node, image_ref=image_ref, digest=digest)
        return bool(value)

    async def registry_serves(self, image_ref: str, digest: str, namespace: str,
                              pull_secrets: list[str]) -> bool | None:
        """True/False from the first plugin that can tell; None when none can."""
        value = await self.call("registry_serves", image_ref=image_ref, digest=digest,
                                namespace=namespace, pull_secrets=pull_secrets)
        return bool(value) if value is not None else None

    async def unpin_image(self, node: str, digest: str) -> bool | None:
        """True once `node` holds no pinned record of `digest`; False = try again later;
        None = no plugin manages `node`'s images."""
        value = await self.call("unpin_image", node=node, digest=digest)
        return bool(value) if value is not None else None

    async def on_salvaged(
        self, incident: hooktypes.Incident, request: hooktypes.TransferRequest,
        result: hooktypes.TransferResult,
    ) -> None:
        await self.call("on_salvaged", incident=incident, request=request, result=result)

    async def push_image(self, request: hooktypes.PushRequest) -> hooktypes.PushResult | None:
        """Not isolated (a control-flow hook): the push worker reports errors as
        ImagePushFailed."""
        value = await self.call("push_image", request=request)
        return value if isinstance(value, hooktypes.PushResult) else None

    async def notify(self, notification: hooktypes.Notification) -> bool:
        """Pass `notification` to every `notify` implementation, once per incident and type.

        Fills in the timestamp (RFC3339 UTC) when empty. Returns False for a repeat, which
        is dropped. Core and plugins (through `PluginContext.notify`) both come here.
        """
        n = notification
        key = (n.type, n.namespace, n.pod_uid or n.pod_name, n.digest or n.image_ref,
               n.target_node)
        if key in self._notified:
            return False
        self._notified[key] = None
        if len(self._notified) > NOTIFIED_MAX:
            del self._notified[next(iter(self._notified))]
        if not n.timestamp:
            n = msgspec.structs.replace(n, timestamp=utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"))
        await self.call("notify", notification=n)
        return True

    # -- services ------------------------------------------------------------------------

    async def run_services(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every service plugins registered at `configure`; ready once all are."""
        services = self.context.services if self.context is not None else []
        async with trio.open_nursery() as nursery:
            for name, service in services:
                log.debug("starting plugin service %s", name)
                await nursery.start(self._supervise, name, service)
            task_status.started()

    async def _supervise(
        self, name: str, service: Service, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a service; a raising service is logged, counted and restarted after a pause
        (it never takes the controller down)."""
        status = _StartedOnce(task_status)
        while True:
            try:
                await service(task_status=status)
                return
            except Exception as exc:
                self._failed(name, "service", exc)
            status.started()  # never keep the host waiting on a service that crashed
            await trio.sleep(SERVICE_RESTART_DELAY)

    async def node_health(self, node: str, settings: ControllerSettings, pods: list[Pod]
                          ) -> hooktypes.NodeHealth | None:
        """Isolated: a failing plugin answers None, which doctor shows as "no agent check"
        rather than aborting the whole report."""
        value = await self.call("node_health", node=node, settings=settings, pods=pods)
        return value if isinstance(value, hooktypes.NodeHealth) else None


class _StartedOnce:
    """A task status whose `started()` may be called again (by a restarted service)."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started()
