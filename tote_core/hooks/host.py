"""The plugin host: the one caller of plugins' hooks, and the object the rest of tote holds.

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

The host's other jobs are each a module of their own, which it is made of: finding plugins
(`discovery.py`: entry points in group `tote`), registering them (`registry.py`: pluggy and
tote's checks), recording what became of each and of failing hooks (`roster.py`), describing
their settings (`setting_info.py`) and running their services (`services.py`). Its methods
for those delegate, so callers (and plugin authors' tests) hold one object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec
import trio

from tote_core import metrics
from tote_core.errors import ConfigError
from tote_core.hooks import bridge, discovery, services
from tote_core.hooks import types as hooktypes
from tote_core.hooks.context import PluginContext
from tote_core.hooks.registry import CONTROL_FLOW_HOOKS, PluginRegistry
from tote_core.hooks.roster import PluginInfo, Roster, hook_failed
from tote_core.hooks.setting_info import SettingInfo
from tote_core.incidents import IncidentStore
from tote_core.kube.client import KubeClient
from tote_core.settings import ControllerSettings
from tote_core.timefmt import utcnow

log = logging.getLogger("tote.plugins")


class PluginHost:
    def __init__(self) -> None:
        self.registry = PluginRegistry()
        self.pm = self.registry.pm
        self.roster = Roster()
        self.context: PluginContext | None = None
        # Each plugin's validated settings (`tote_core.hooks.loading` fills it in).
        self.plugin_settings = hooktypes.PluginSettings()
        # What was notified, once per incident and type: the controller's incident store
        # (`tote_core.incidents`; the controller shares its own, forgetting a pod's entries
        # when the pod goes).
        self.incidents = IncidentStore()

    # -- plugins: found, registered, recorded (delegated) ---------------------------------

    def register(self, plugin: object, name: str) -> bool:
        """Register a plugin object under `name`; False when `name` is disabled; a
        ConfigError naming the plugin when it does not fit the hook specs (`registry.py`)."""
        return self.registry.register(plugin, name)

    def load(self, disabled: Iterable[str] = (), *, disabled_by: str = "") -> list[PluginInfo]:
        """Load every entry point in group `tote` except the disabled ones
        (`discovery.py`); never raises: failures are rows of `plugins`."""
        return discovery.discover(self.registry, self.roster, disabled,
                                  disabled_by=disabled_by)

    @property
    def plugins(self) -> list[PluginInfo]:
        """One row per installed plugin, in load order (`tote plugins`)."""
        return self.roster.plugins

    @property
    def unknown_disabled(self) -> list[str]:
        return self.roster.unknown_disabled

    @staticmethod
    def hook_names() -> list[str]:
        return PluginRegistry.hook_names()

    def plugin(self, name: str) -> object | None:
        """The plugin object registered under `name` (not pluggy's bridged view of it)."""
        return self.registry.plugin(name)

    def implementers(self, hook: str) -> list[str]:
        """Names of the registered plugins implementing `hook` (e.g. /readyz: is any
        `transfer` plugin loaded?)."""
        return self.registry.implementers(hook)

    def unknown_disabled_error(self, disabled_by: str) -> ConfigError | None:
        return self.roster.unknown_disabled_error(disabled_by)

    def failure(self) -> ConfigError | None:
        return self.roster.failure()

    def check(self) -> None:
        """Raise the first load failure (see `Roster.failure`)."""
        failure = self.roster.failure()
        if failure is not None:
            raise failure

    def mark_failed(self, name: str, reason: str) -> None:
        """A loaded plugin turned out unusable (its settings): unregister it and list it as
        failed, so nothing of it runs and the caller sees why."""
        self.registry.unregister(name)
        self.roster.mark_failed(name, reason)

    def describe_settings(self, settings: dict[str, tuple[SettingInfo, ...]]) -> None:
        """Attach each plugin's settings to its `tote plugins` row."""
        self.roster.describe_settings(settings)

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
            hook_failed("?", hook, exc)
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
        subject = n.pod_uid or f"{n.namespace}/{n.pod_name}"
        if not self.incidents.first(subject, "notify", n.type, n.digest or n.image_ref,
                                    n.target_node):
            return False
        if not n.timestamp:
            n = msgspec.structs.replace(n, timestamp=utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"))
        await self.call("notify", notification=n)
        return True

    # -- services ------------------------------------------------------------------------

    async def run_services(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every service plugins registered at `configure`; ready once all are."""
        found = self.context.services if self.context is not None else []
        await services.run_services(found, task_status=task_status)

    async def node_health(self, node: str, settings: ControllerSettings, kube: KubeClient
                          ) -> hooktypes.NodeHealth | None:
        """Isolated: a failing plugin answers None, which doctor shows as "no agent check"
        rather than aborting the whole report."""
        value = await self.call("node_health", node=node, settings=settings,
                                plugin_settings=self.plugin_settings, kube=kube)
        return value if isinstance(value, hooktypes.NodeHealth) else None
