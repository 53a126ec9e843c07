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

import difflib
import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Literal

import msgspec
import pluggy
import trio

from tote_core import DISTRIBUTION, metrics
from tote_core.errors import ConfigError
from tote_core.hooks import bridge, hookspecs
from tote_core.hooks import types as hooktypes
from tote_core.hooks.context import PluginContext, Service
from tote_core.kube.client import KubeClient
from tote_core.settings import ControllerSettings
from tote_core.timefmt import utcnow

log = logging.getLogger("tote.plugins")
GROUP = "tote"
BUILTIN_DISTRIBUTION = DISTRIBUTION  # plugins this package ships are shown as built-in
# Hooks whose exceptions are the caller's control flow, never isolated.
CONTROL_FLOW_HOOKS = frozenset({"transfer", "push_image"})
# Hooks whose exceptions reach the caller: the control-flow ones, and start-up's
# `settings_type`, whose failure is a start-up error naming the plugin.
UNISOLATED_HOOKS = CONTROL_FLOW_HOOKS | {"settings_type"}
SERVICE_RESTART_DELAY = 5.0
NOTIFIED_MAX = 20000  # (incident, type) keys remembered for the once-per-incident rule
# `plugins:` keys of the config file that are not plugin sections.
RESERVED_NAMES = frozenset({"disabled", "config"})  # keys of plugins: (file, chart)
# Built-in plugins' former names, for the error that names them in plugins.disabled.
RENAMED = {"containerd": "agent", "notify": "webhook"}


def _normalized(dist: str) -> str:
    """A distribution name as PEP 503 compares them (metadata may spell `tote_salvage`)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


class SettingInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin setting as `tote plugins --json` shows it."""

    name: str  # the field
    flag: str
    env: str
    type: str
    default: Any
    value: Any
    source: str  # "default", "the command line", "TOTE_…", "config file …"
    help: str = ""


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
    state: Literal["enabled", "disabled", "failed"] = "enabled"
    reason: str = ""  # why disabled or failed
    settings: tuple[SettingInfo, ...] = ()


def _is_builtin(ep: metadata.EntryPoint) -> bool:
    return ep.dist is not None and _normalized(ep.dist.name) == BUILTIN_DISTRIBUTION


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _closest(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known hooks: {', '.join(names)}"


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
        self.unknown_disabled: list[str] = []  # disabled names no entry point has
        self.context: PluginContext | None = None
        # Each plugin's validated settings (`tote_core.hooks.loading` fills it in).
        self.plugin_settings = hooktypes.PluginSettings()
        self._notified: dict[tuple[str, ...], None] = {}

    # -- loading -----------------------------------------------------------------------

    def register(self, plugin: object, name: str) -> bool:
        """Register a plugin object under `name`; False when `name` is disabled.

        Raises ConfigError naming the plugin when it does not fit the hook specs: an
        implementation of no known hook (with the closest hook name), an argument a spec
        does not have, a wrapper that is not a generator function. Nothing of a refused
        plugin stays registered.
        """
        if self.pm.is_blocked(name):
            return False
        proxy = _Registered(plugin)
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = getattr(plugin, attr)
            if not self._is_spec(attr):
                raise ConfigError(f"plugin {name}: {attr} is not a hook"
                                  f"{_closest(attr, self.hook_names())}")
            if opts.get("wrapper") and not inspect.isgeneratorfunction(function):
                # The isolating shim is a generator whatever the plugin wrote, so pluggy
                # cannot see this; without the check every call would fail instead.
                raise ConfigError(f"plugin {name}: {attr} is a wrapper (wrapper=True) but not "
                                  "a generator function; a wrapper must `yield` exactly once")
            bridged = self._bridge(name, attr, function, opts)
            setattr(bridged, f"{hookspecs.PROJECT}_impl", opts)
            setattr(proxy, attr, bridged)
        try:
            self.pm.register(proxy, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin {name}: {_one_line(exc)}") from exc
        return True

    @classmethod
    def hook_names(cls) -> list[str]:
        return sorted(n for n in dir(hookspecs) if cls._is_spec(n))

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

    def load(self, disabled: Iterable[str] = (), *, disabled_by: str = "") -> list[PluginInfo]:
        """Load every entry point in group `tote` except the disabled ones.

        Order: the built-in plugins first, then third-party ones, each group by entry-point
        name. pluggy calls the last registered implementation first, so a third-party
        plugin answers before the built-ins (its first-result `select_source` wins over
        `source-policy`'s); `tryfirst`/`trylast` and wrappers reorder within that.

        Nothing raises here: a plugin that fails to import, to build or to fit the hook
        specs is listed with state `failed` and its reason, and not registered; the caller
        decides (`tote controller` refuses to start, `tote plugins` shows the table).
        `disabled_by` says where the disabled names came from (shown as their reason).
        """
        off = set(disabled)
        for name in off:
            self.pm.set_blocked(name)
        seen: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=GROUP):
            seen.setdefault(ep.name, ep)
        ordered = sorted(seen.values(), key=lambda e: (not _is_builtin(e), e.name))
        for ep in ordered:
            dist = ep.dist.name if ep.dist else "?"
            base = functools.partial(
                PluginInfo, name=ep.name, module=ep.value, distribution=dist,
                version=ep.dist.version if ep.dist else "?", builtin=_is_builtin(ep),
            )
            if ep.name in RESERVED_NAMES:
                self._refuse(base, ep.name, f"the name {ep.name!r} is reserved in the config "
                             "file's plugins section; rename the entry point")
                continue
            if self.pm.is_blocked(ep.name):
                self.plugins.append(base(enabled=False, state="disabled",
                                         reason=f"disabled by {disabled_by}" if disabled_by
                                         else "disabled"))
                continue
            try:
                loaded = ep.load()
                # A class or factory is called once; an object (or module) is the plugin.
                built = isinstance(loaded, type) or inspect.isroutine(loaded)
                plugin = loaded() if built else loaded
            except Exception as exc:
                self._refuse(base, ep.name, f"failed to load ({ep.value}): "
                             f"{type(exc).__name__}: {_one_line(exc)}", exc)
                continue
            try:
                self.register(plugin, ep.name)
            except ConfigError as exc:
                self._refuse(base, ep.name, str(exc).removeprefix(f"plugin {ep.name}: "))
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(
                self.pm.get_plugin(ep.name)) or []))
            self.plugins.append(base(enabled=True, state="enabled", hooks=hooks))
        self.unknown_disabled = sorted(off - set(seen))
        return self.plugins

    def unknown_disabled_error(self, disabled_by: str) -> ConfigError | None:
        """Disabling a plugin that is not installed is refused: the name is misspelled, or
        it is a built-in's old name, and what the operator meant to turn off would run."""
        if not self.unknown_disabled:
            return None
        names = ", ".join(f"{n} (now called {RENAMED[n]})" if n in RENAMED else n
                          for n in self.unknown_disabled)
        installed = ", ".join(sorted(p.name for p in self.plugins)) or "none"
        return ConfigError(f"{disabled_by} names plugins that are not installed: {names} "
                           f"(installed: {installed})")

    def _refuse(self, base: Callable[..., PluginInfo], name: str, reason: str,
                exc: BaseException | None = None) -> None:
        # Not logged at ERROR: the caller reports it (start-up error, or the table); the
        # traceback is there at debug level for the plugin's author.
        log.debug("plugin %s: %s", name, reason, exc_info=exc)
        metrics.PLUGIN_FAILURES.labels(name, "load").inc()
        self.plugins.append(base(enabled=False, state="failed", error=reason, reason=reason))

    def failure(self) -> ConfigError | None:
        """The first plugin that could not be loaded, as the one-line start-up error (with
        how to run without it); None when every plugin loaded or was disabled."""
        for p in self.plugins:
            if p.state == "failed":
                return ConfigError(
                    f"plugin {p.name}: {p.error} (to run without it: --plugins-disabled "
                    f"{p.name}, TOTE_PLUGINS_DISABLED={p.name} or plugins.disabled: "
                    f"[{p.name}] in the config file)")
        return None

    def mark_failed(self, name: str, reason: str) -> None:
        """A loaded plugin turned out unusable (its settings): unregister it and list it as
        failed, so nothing of it runs and the caller sees why."""
        proxy = self.pm.get_plugin(name)
        if proxy is not None:
            self.pm.unregister(proxy, name=name)
        metrics.PLUGIN_FAILURES.labels(name, "load").inc()
        self.plugins = [
            msgspec.structs.replace(p, enabled=False, state="failed", error=reason,
                                    reason=reason, hooks=())
            if p.name == name else p for p in self.plugins]

    def describe_settings(self, settings: dict[str, tuple[SettingInfo, ...]]) -> None:
        """Attach each plugin's settings to its `tote plugins` row."""
        self.plugins = [msgspec.structs.replace(p, settings=settings.get(p.name, ()))
                        for p in self.plugins]

    def check(self) -> None:
        """Raise the first load failure (see `failure`)."""
        failure = self.failure()
        if failure is not None:
            raise failure

    # -- bridging ------------------------------------------------------------------------

    def _bridge(
        self, plugin: str, hook: str, function: Callable[..., Any], opts: Any
    ) -> Callable[..., Any]:
        return bridge.bridge(plugin, hook, function, opts,
                             isolate=hook not in UNISOLATED_HOOKS, failed=self._failed)

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

    async def node_health(self, node: str, settings: ControllerSettings, kube: KubeClient
                          ) -> hooktypes.NodeHealth | None:
        """Isolated: a failing plugin answers None, which doctor shows as "no agent check"
        rather than aborting the whole report."""
        value = await self.call("node_health", node=node, settings=settings,
                                plugin_settings=self.plugin_settings, kube=kube)
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
