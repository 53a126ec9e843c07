"""An in-process plugin host over the fake cluster: what `tote controller` builds at start-up
(caches synced, plugins registered, `configure` called with a real `PluginContext`), minus
the network, so a plugin's hooks run as the controller would call them.

    async with open_harness(plugins={"acme": AcmePlugin()},
                            plugin_settings={"acme": {"url": "http://x"}}) as h:
        h.cluster.add(objects.failing_pod(...))
        await h.settle()
        await h.reconciler()("shop/web-1")

The pytest plugin (`tote_core.testing.pytest_plugin`) offers the same as the `tote_harness`
fixture. Everything here is core's real code: `Caches` and their informers over the fake
API server, `PluginHost`, `EventRecorder`, `PodReconciler`, `SalvageEngine`.
"""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
import trio.testing

from tote_core.errors import ConfigError
from tote_core.hooks.context import PluginContext
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Incident, PluginSettings
from tote_core.kube.cache import Caches
from tote_core.kube.client import KubeClient
from tote_core.kube.events import EventRecorder
from tote_core.reconcile.engine import Engine
from tote_core.reconcile.pods import PodReconciler
from tote_core.reconcile.queue import WorkQueue
from tote_core.salvage.salvager import SalvageEngine
from tote_core.settings import ControllerSettings
from tote_core.structs.kube import Namespace, Node, Pod
from tote_core.testing.fakekube import FakeCluster

NAMESPACE = "tote-system"  # the controller's namespace in the harness (the chart's default)
SOURCE = "the test"  # where harness settings "came from", in validation errors


def core_settings(values: ControllerSettings | Mapping[str, Any] | None = None
                  ) -> ControllerSettings:
    """Core's settings for a test: `ControllerSettings` defaults with the harness namespace,
    updated from `values` (field names, `_` or `-`), validated like a config file."""
    if isinstance(values, ControllerSettings):
        return values
    data: dict[str, Any] = {"namespace": NAMESPACE}
    data.update({k.replace("-", "_"): v for k, v in (values or {}).items()})
    try:
        return msgspec.convert(data, ControllerSettings)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"core settings from {SOURCE}: {exc}") from exc


def plugin_settings_for(host: PluginHost, name: str, given: msgspec.Struct | Mapping[str, Any]
                        ) -> msgspec.Struct:
    """A plugin's settings: a Struct instance as given, or a mapping of its fields (as in
    the config file's `plugins.<name>:` section, `30s`-style durations included) validated
    against the Struct its `settings_type` hook returns, through core's settings loader."""
    if isinstance(given, msgspec.Struct):
        return given
    impls = [i for i in host.pm.hook.settings_type.get_hookimpls() if i.plugin_name == name]
    cls = impls[0].function() if impls else None
    if cls is None:
        raise ConfigError(f"plugin {name}: settings given but it has no settings_type hook "
                          "answering a Struct (or it is not registered)")
    from tote_core.hooks.loading import check_settings_type, plugin_group
    from tote_core.settings_loader import Merged

    check_settings_type(name, cls)
    merged = Merged(plugin_group(name, typing.cast(type[msgspec.Struct], cls)))
    merged.read_file(dict(given), SOURCE)
    value: msgspec.Struct = merged.validate()
    return value


@dataclass(eq=False)
class Harness:
    """A configured plugin host over a fake cluster, and core's pieces around it.

    `cluster`: the fake API server's state. `kube`: a real `KubeClient` over it. `caches`:
    the controller's informers, synced. `host`: the `PluginHost` with the test's plugins.
    `context`: what `configure` received. `recorder`: the event recorder
    (`cluster.events()` shows what it wrote). `nursery`: where the caches and plugin
    services run (cancelled when the harness closes).
    """

    cluster: FakeCluster
    settings: ControllerSettings
    kube: KubeClient
    caches: Caches
    host: PluginHost
    recorder: EventRecorder
    context: PluginContext
    nursery: trio.Nursery
    submitted: list[tuple[Incident, Pod]] = field(default_factory=list)

    async def settle(self) -> None:
        """Wait until every task (informers, workers, services) is blocked: the caches
        reflect every change made to the cluster so far, and queued work is done or
        waiting on time. With trio's MockClock no time passes while waiting."""
        await trio.testing.wait_all_tasks_blocked()

    def reconciler(self, *, salvage: Callable[[Incident, Pod], None] | None = None
                   ) -> PodReconciler:
        """Core's pod reconciler over this harness; salvageable incidents go to `salvage`
        (default: appended to `self.submitted`)."""
        return PodReconciler(self.settings, self.caches, self.host, self.recorder,
                             incidents=self.host.incidents, salvage=salvage or self._collect)

    def _collect(self, incident: Incident, pod: Pod) -> None:
        self.submitted.append((incident, pod))

    def salvage_engine(self) -> SalvageEngine:
        """Core's salvage engine over this harness (not started: call `reconcile(key)`
        yourself, or `run_pipeline` for the whole flow)."""
        return SalvageEngine(self.settings, self.kube, self.caches, self.host, self.recorder)

    async def run_pipeline(self) -> tuple[PodReconciler, SalvageEngine]:
        """Start detection and salvage as the controller wires them: informer handlers queue
        failing pods (and look again when the kill switch turns on, a node reports new
        images or a namespace changes), reconcile workers detect, the salvage pool
        transfers. Runs in the harness nursery until the harness closes."""
        salvage = self.salvage_engine()
        reconciler = self.reconciler(salvage=salvage.submit)
        queue = WorkQueue[str](base_delay=1.0, max_delay=300.0)
        engine = Engine[str]("pods", queue, reconciler, workers=self.settings.workers,
                        deadline=self.settings.reconcile_timeout)

        def on_pod(key: str, old: Pod | None, new: Pod | None) -> None:
            if new is None and old is not None:
                self.host.incidents.forget(old.metadata.uid)
            elif new is not None and any(
                    s.state.waiting is not None for s in
                    (*new.status.init_container_statuses, *new.status.container_statuses)):
                queue.add(key)

        def on_config(key: str, old: object, new: object) -> None:
            if reconciler.enabled():
                for pod_key in self.caches.pods.items:
                    queue.add(pod_key)

        def on_node(key: str, old: Node | None, new: Node | None) -> None:
            # A node reporting new images may give a waiting incident its source.
            if new is None or old is None or old.status.images != new.status.images:
                for pod_key in list(reconciler.waiting_on_nodes):
                    queue.add(pod_key)

        def on_namespace(key: str, old: Namespace | None, new: Namespace | None) -> None:
            if old is not None and new is not None and old != new:
                for pod_key, pod in self.caches.pods.items.items():
                    if pod.metadata.namespace == key:
                        queue.add(pod_key)

        self.caches.pods.add_handler(on_pod)
        self.caches.config.add_handler(on_config)
        self.caches.nodes.add_handler(on_node)
        self.caches.namespaces.add_handler(on_namespace)
        await self.nursery.start(salvage.run)
        await self.nursery.start(engine.run)
        for key in list(self.caches.pods.items):
            queue.add(key)
        return reconciler, salvage


@asynccontextmanager
async def open_harness(
    *,
    plugins: Mapping[str, object] | None = None,
    entry_points: bool | Iterable[str] = False,
    settings: ControllerSettings | Mapping[str, Any] | None = None,
    plugin_settings: Mapping[str, msgspec.Struct | Mapping[str, Any]] | None = None,
    cluster: FakeCluster | None = None,
    configure: bool = True,
    services: bool = False,
) -> AsyncIterator[Harness]:
    """Build and configure a plugin host over a (new, or the given) fake cluster.

    `plugins`: plugin objects registered under their names (after any entry points, so
    they are called first, as a third-party plugin is). `entry_points`: also load the
    installed plugins (group `tote`): True for all, or an iterable of the names to load.
    `settings`: core's (`ControllerSettings` or a mapping of fields). `plugin_settings`:
    per plugin name, its settings Struct or a mapping of its fields. `configure`: call the
    `configure` hook. `services`: start the services plugins registered in `configure`.
    """
    async with trio.open_nursery() as nursery:
        harness = await start_harness(
            nursery, plugins=plugins, entry_points=entry_points, settings=settings,
            plugin_settings=plugin_settings, cluster=cluster, configure=configure,
            services=services)
        try:
            yield harness
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await harness.kube.aclose()


async def start_harness(
    nursery: trio.Nursery,
    *,
    plugins: Mapping[str, object] | None = None,
    entry_points: bool | Iterable[str] = False,
    settings: ControllerSettings | Mapping[str, Any] | None = None,
    plugin_settings: Mapping[str, msgspec.Struct | Mapping[str, Any]] | None = None,
    cluster: FakeCluster | None = None,
    configure: bool = True,
    services: bool = False,
) -> Harness:
    """`open_harness` in a nursery the caller owns (the pytest fixture's); the caller
    closes `harness.kube` when done."""
    cluster = cluster if cluster is not None else FakeCluster()
    core = core_settings(settings)
    host = PluginHost()
    if entry_points is not False:
        from importlib import metadata

        from tote_core.hooks.discovery import GROUP

        installed = {ep.name for ep in metadata.entry_points(group=GROUP)}
        wanted = installed if entry_points is True else set(entry_points)
        unknown = wanted - installed
        if unknown:
            raise ConfigError(f"entry_points names plugins that are not installed: "
                              f"{', '.join(sorted(unknown))} (installed: "
                              f"{', '.join(sorted(installed)) or 'none'})")
        host.load(sorted(installed - wanted))
        host.check()
    for name, plugin in (plugins or {}).items():
        host.register(plugin, name)
    given = dict(plugin_settings or {})
    values: dict[str, msgspec.Struct] = {}
    for name in given:
        values[name] = plugin_settings_for(host, name, given[name])
    for impl in host.pm.hook.settings_type.get_hookimpls():
        if impl.plugin_name not in values:
            cls = impl.function()
            if cls is not None:  # defaults, as with no flag, variable or file value
                values[impl.plugin_name] = plugin_settings_for(host, impl.plugin_name, {})
    host.plugin_settings = PluginSettings(values)

    kube = cluster.client(namespace=core.namespace)
    caches = Caches(kube, namespace=core.namespace, config_map=core.config_map)
    await nursery.start(caches.run)
    recorder = EventRecorder(kube, instance="tote-test")
    context = PluginContext(settings=core, kube=kube, cache=caches, host=host,
                            recorder=recorder)
    if configure:
        await host.configure(context)
    else:
        host.context = context
    if services:
        await nursery.start(host.run_services)
    return Harness(cluster=cluster, settings=core, kube=kube, caches=caches, host=host,
                   recorder=recorder, context=context, nursery=nursery)
