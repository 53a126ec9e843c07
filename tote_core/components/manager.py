"""The controller's root: start-up order, the leader-only scope, and graceful shutdown.

Order (DESIGN.md): HTTP endpoints (metrics/health) → informers synced → leader election →
leader-only work (reconcile workers). Losing the lease cancels only the leader-only scope;
the caches and endpoints keep running so the replica is ready to lead again.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from functools import partial

import msgspec
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tote_core import __version__, httpserver, killswitch, tlsfiles, tlsreload
from tote_core.components import admission
from tote_core.components.agent_report import AgentReport
from tote_core.components.cert_issuer import CertIssuer
from tote_core.components.config_warnings import ConfigWarnings
from tote_core.components.leader import LeaderElector
from tote_core.components.statusfeed import StatusFeed
from tote_core.detect import pull_failures
from tote_core.errors import ConfigError, KubeError
from tote_core.hooks.context import PluginContext
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Incident
from tote_core.incidents import IncidentStore
from tote_core.kube import config as kube_config
from tote_core.kube.cache import Caches
from tote_core.kube.client import KubeClient, resource_path
from tote_core.kube.events import EventRecorder
from tote_core.kube.informer import Informer
from tote_core.reconcile.engine import Engine
from tote_core.reconcile.pods import PodReconciler
from tote_core.reconcile.queue import WorkQueue
from tote_core.salvage.pins import Pins
from tote_core.salvage.reaper import Reaper
from tote_core.salvage.records import RecordStore
from tote_core.salvage.salvager import SalvageEngine
from tote_core.settings import ControllerSettings
from tote_core.status.board import StatusBoard
from tote_core.status.publish import BoardPublisher
from tote_core.structs.kube import ConfigMap, CoreEvent, Namespace, Node, Pod
from tote_core.structs.status import Switch

log = logging.getLogger("tote.controller")


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _interesting(pod: Pod | None) -> bool:
    """Cheap pre-filter: only pods with a waiting container reach the queue."""
    if pod is None:
        return False
    return any(
        s.state.waiting is not None
        for s in (*pod.status.init_container_statuses, *pod.status.container_statuses)
    )


@dataclass
class Controller:
    settings: ControllerSettings
    host: PluginHost = field(default_factory=PluginHost)
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = kube_config.load(self.settings.kubeconfig)
        self.namespace = self.settings.namespace or cfg.namespace
        # Plugins read the resolved namespace (agent discovery defaults to it).
        self.settings.namespace = self.namespace
        self.identity = self.settings.identity or default_identity()
        self.kube = KubeClient(cfg)
        self.caches = Caches(
            self.kube, namespace=self.namespace, config_map=self.settings.config_map
        )
        # The status board sees incidents through the recorder and transfers through the
        # status writer, as their listener (tote_core/status/publish.py); the feed serves it
        # to `tote status`.
        self.board = StatusBoard()
        # Once per incident, for detection, salvage's pod events, notifications and
        # configuration warnings alike; a subject's entries go when the informers see it go.
        self.incidents = IncidentStore()
        self.host.incidents = self.incidents
        self.publisher = BoardPublisher(self.board)
        self.recorder = EventRecorder(self.kube, instance=self.identity,
                                      listeners=[self.publisher.event])
        self.queue = WorkQueue[str](base_delay=1.0, max_delay=300.0)
        self.salvage = SalvageEngine(
            self.settings, self.kube, self.caches, self.host, self.recorder,
            records=RecordStore(self.kube, listeners=[self.publisher.record]),
            incidents=self.incidents,
        )
        self.reaper = Reaper(
            self.salvage.records, ttl=self.settings.salvagerecord_ttl,
            interval=self.settings.reap_interval,
            pins=Pins(self.host, self.salvage.records, self.recorder, self.caches,
                      enabled=self.settings.pin_salvaged_images,
                      interval=self.settings.reap_interval),
        )
        self.reconciler = PodReconciler(
            self.settings, self.caches, self.host, self.recorder, incidents=self.incidents,
            salvage=self._submit,
        )
        self.engine = Engine[str](
            "pods", self.queue, self.reconciler,
            workers=self.settings.workers, deadline=self.settings.reconcile_timeout,
        )
        self.elector = LeaderElector(
            self.kube,
            namespace=self.namespace,
            name=self.settings.lease_name,
            identity=self.identity,
            lease_duration=self.settings.lease_duration,
            renew_deadline=self.settings.renew_deadline,
            retry_period=self.settings.retry_period,
        )
        self.warnings = ConfigWarnings(
            self.caches, self.recorder, deny_namespaces=self.settings.deny_namespaces,
            pods_allowed_in=self.reconciler.namespace_allowed,
            enabled_default=self.settings.enabled, incidents=self.incidents,
        )
        self.feed = StatusFeed(
            self.board, self.settings.status_address, self.identity,
            is_leader=lambda: self.elector.is_leader,
            leader_identity=lambda: self.elector.leader_identity,
        )
        self._leading = False
        self._switch: Switch | None = None  # the kill switch as last logged
        # kubelet's pull failures, which reach the API server before the pod status says so
        # (leader only: only its workers detect). Watched, not cached.
        self.kubelet_events: Informer[CoreEvent] = Informer(
            self.kube, resource_path("v1", "events"), CoreEvent, name="kubelet-events",
            field_selector=pull_failures.FIELD_SELECTOR, store=False)
        self.kubelet_events.add_handler(self._on_kubelet_event)
        self.caches.pods.add_handler(self._on_pod)
        self.caches.nodes.add_handler(self._on_node)
        self.caches.config.add_handler(self._on_config)
        self.caches.namespaces.add_handler(self._on_namespace)

    # -- event handlers (sync, never block) ---------------------------------------------

    def _submit(self, incident: Incident, pod: Pod) -> None:
        self.publisher.submitted(incident, pod)
        self.salvage.submit(incident, pod)

    def _on_pod(self, key: str, old: Pod | None, new: Pod | None) -> None:
        self.warnings.pod(new)
        if new is None:
            if old is not None:
                self.incidents.forget(old.metadata.uid)
                self.reconciler.pull_failures.forget(old.metadata.uid)
            self.reconciler.waiting_on_nodes.discard(key)
            return
        if _interesting(new):
            self.queue.add(key)

    def _on_kubelet_event(self, key: str, old: CoreEvent | None, new: CoreEvent | None
                          ) -> None:
        pod_key = self.reconciler.kubelet_event(new) if new is not None else None
        if pod_key is not None:
            self.queue.add(pod_key)

    def _on_node(self, key: str, old: Node | None, new: Node | None) -> None:
        if new is None or old is None or old.status.images != new.status.images:
            for pod_key in list(self.reconciler.waiting_on_nodes):
                self.queue.add(pod_key)

    def _requeue_failing(self) -> None:
        for key, pod in self.caches.pods.items.items():
            if _interesting(pod):
                self.queue.add(key)

    def _on_config(self, key: str, old: ConfigMap | None, new: ConfigMap | None) -> None:
        if new is None and old is not None:
            self.incidents.forget(old.metadata.uid)
        enabled = self.reconciler.enabled()
        _, problem = self.caches.runtime_switch()
        if problem:
            log.warning("runtime kill switch: %s", problem)
            self.warnings.config()
        if self._switch_changed():
            self.warnings.switch()
        if enabled:
            self._requeue_failing()

    def _switch_changed(self) -> bool:
        """Read the kill switch; on a change, one log line (every replica: each decides for
        itself) and the status board (`tote status`). The Event is the leader's
        (`warnings.switch`)."""
        sw = self.caches.switch_state(self.settings.enabled)
        if killswitch.same_state(sw, self._switch):
            return False
        self._switch = sw
        log.info("runtime kill switch: %s", killswitch.describe(sw, shout=False))
        self.board.publish_switch(sw)
        return True

    def _on_namespace(self, key: str, old: Namespace | None, new: Namespace | None) -> None:
        self.warnings.namespace(new)
        if new is None and old is not None:
            self.incidents.forget(old.metadata.uid)
        if old is not None and new is not None and old != new and self.caches.synced:
            for pod_key, pod in self.caches.pods.items.items():
                if pod.metadata.namespace == key and _interesting(pod):
                    self.queue.add(pod_key)

    # -- HTTP ------------------------------------------------------------------------------

    async def _metrics(self) -> httpserver.Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest()

    async def _healthz(self) -> httpserver.Response:
        return 200, "text/plain", b"ok\n"

    def not_ready_reasons(self) -> list[str]:
        """Why this replica cannot do its job; empty when ready."""
        reasons = []
        if not self.caches.synced:
            reasons.append("informer caches not synced yet")
        if not self.host.implementers("transfer"):
            reasons.append("no transfer plugin is loaded (is the containerd plugin in "
                           "plugins.disabled?): nothing could be salvaged")
        return reasons

    async def _readyz(self) -> httpserver.Response:
        reasons = self.not_ready_reasons()
        body = msgspec.json.encode(
            {
                "ready": not reasons,
                "reasons": reasons,
                "synced": self.caches.synced,
                "leader": self.elector.is_leader,
                "leaderIdentity": self.elector.leader_identity,
                "identity": self.identity,
                "version": __version__,
                "enabled": self.reconciler.enabled() if self.caches.synced else None,
            }
        )
        return (503 if reasons else 200), "application/json", body + b"\n"

    def _admission_tls(self) -> ssl.SSLContext:
        cert, key = self.settings.admission_tls_cert, self.settings.admission_tls_key
        tlsfiles.check_pair(cert, key, cert_flag="--admission-tls-cert",
                            key_flag="--admission-tls-key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        return ctx

    async def _follow_admission_tls(self, context: tlsreload.ServerContext) -> None:
        """A renewed serving certificate (cert-manager, tote's issuer) is served from the
        next handshake on; the API server trusts it through the webhook's caBundle."""
        stamp = tlsreload.FileStamp((self.settings.admission_tls_cert,
                                     self.settings.admission_tls_key))
        while True:
            await trio.sleep(tlsreload.RELOAD_INTERVAL)
            if stamp.changed() and context.reload():
                log.info("admission webhook: renewed serving certificate in use")

    async def _issue_certificates(self) -> CertIssuer | None:
        """With --tls-issue-secrets: bring the Secrets up to date and write this process's
        files before anything that uses them starts; then check them like given files."""
        s = self.settings
        if not s.tls_issue_secrets:
            return None
        files = {"controller": (s.tls_cert, s.tls_key, s.tls_ca)}
        if s.admission_address:
            files["webhook"] = (s.admission_tls_cert, s.admission_tls_key, "")
        issuer = CertIssuer(self.kube, self.namespace, s.tls_issue_secrets,
                            validity=s.tls_issue_validity, files=files,
                            webhook_config=s.admission_webhook_name)
        try:
            await issuer.reconcile()
        except KubeError as exc:
            raise ConfigError(f"--tls-issue-secrets {s.tls_issue_secrets}: cannot issue the "
                              f"certificates: {exc}") from None
        tlsfiles.check_mtls(s)
        return issuer

    # -- lifecycle ---------------------------------------------------------------------------

    async def _lead(self) -> None:
        log.info("leading: starting %d reconcile workers", self.settings.workers)
        async with trio.open_nursery() as nursery:
            # Plugin services first (e.g. the webhook worker), so the first reconcile's
            # notifications already have someone to deliver them.
            await nursery.start(self.host.run_services)
            await nursery.start(self.salvage.run)
            await nursery.start(self.engine.run)
            await nursery.start(self.warnings.run)
            nursery.start_soon(self.reaper.run)
            nursery.start_soon(self.kubelet_events.run)
            try:
                self._requeue_failing()
                await trio.sleep_forever()
            finally:
                # A standby has no data: viewers reconnect and find the new leader.
                self.board.close_all("this replica stopped leading")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.plugin_context = PluginContext(
            settings=self.settings, kube=self.kube, cache=self.caches, host=self.host,
            recorder=self.recorder,
        )
        await self.host.configure(self.plugin_context)
        issuer = await self._issue_certificates()
        try:
            async with trio.open_nursery() as nursery:
                if issuer is not None:
                    nursery.start_soon(issuer.run)
                routes_metrics: dict[str, httpserver.Route] = {"/metrics": self._metrics}
                routes_health: dict[str, httpserver.Route] = {
                    "/healthz": self._healthz,
                    "/readyz": self._readyz,
                    "/agents": AgentReport(self.kube, self.host, self.settings).serve,
                }
                if self.settings.metrics_address == self.settings.health_address:
                    routes_health.update(routes_metrics)
                    self.ports["health"] = self.ports["metrics"] = await nursery.start(
                        httpserver.serve, self.settings.health_address, routes_health
                    )
                else:
                    self.ports["metrics"] = await nursery.start(
                        httpserver.serve, self.settings.metrics_address, routes_metrics
                    )
                    self.ports["health"] = await nursery.start(
                        httpserver.serve, self.settings.health_address, routes_health
                    )
                if self.settings.admission_address:
                    # Every replica answers AdmissionReviews; they need no cache or lease.
                    admission_tls = tlsreload.ServerContext(self._admission_tls, "admission")
                    self.ports["admission"] = await nursery.start(partial(
                        httpserver.serve, self.settings.admission_address, {},
                        body_routes={admission.PATH: admission.review},
                        ssl_context=admission_tls.front,
                    ))
                    nursery.start_soon(self._follow_admission_tls, admission_tls)
                self.ports["status"] = await nursery.start(self.feed.run)
                t0 = trio.current_time()
                await nursery.start(self.caches.run)
                log.info(
                    "caches synced in %.2fs: %d pods, %d nodes, %d namespaces",
                    trio.current_time() - t0, len(self.caches.pods.items),
                    len(self.caches.nodes.items), len(self.caches.namespaces.items),
                )
                # Also when no ConfigMap exists (no informer event): the flag decides.
                self._switch_changed()
                task_status.started()
                if self.settings.leader_election:
                    await self.elector.run(self._lead)
                else:
                    self.elector.is_leader = True
                    await self._lead()
        finally:
            with trio.CancelScope(shield=True):
                await self.elector.release()
                await self.kube.aclose()
