"""Built-in `transfer` plugin: moves an image between nodes by driving tote agents.

Controller side of the transfer. For a `TransferRequest` it finds the source and target agents
(static `--agent-endpoints`, else agent pods from the controller's pod cache), checks the
source really holds the whole platform chain (discarded layers are reported as not
salvageable), mints a short-lived single-use token for (digest, source, target), asks the
target agent to import from the source, and relays progress.

Errors: `RetryLater` (source/agent unreachable, stream cut, corrupt bytes from that source —
another source may work) and `PermanentError` (too_large, layers_discarded, platform_missing,
unauthorized, invalid_request).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from tote_containerd import doctor, push
from tote_containerd.inventory import Inventory
from tote_core.errors import PermanentError, RetryLater
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import (
    NodeHealth,
    ProgressCallback,
    PushRequest,
    PushResult,
    TransferProgress,
    TransferRequest,
    TransferResult,
)

log = logging.getLogger("tote.plugin.containerd")

TOKEN_TTL = 120.0  # the token is redeemed once, when the target opens its session
RPC_TIMEOUT = 30.0


def parse_selector(selector: str) -> dict[str, str]:
    """`a=b,c=d` (equality only, as in the chart's agent selector)."""
    out: dict[str, str] = {}
    for part in selector.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"unsupported selector term {part!r} (use key=value)")
        out[key.strip().rstrip("=")] = value.strip().lstrip("=")
    return out


def _pod_view(pod: Any) -> Any:
    """A flat view of a pod: the controller's informer holds `tote_core` Pod structs
    (metadata / spec / status); flat views pass through unchanged."""
    meta = getattr(pod, "metadata", None)
    if meta is None:
        return pod
    return SimpleNamespace(
        namespace=meta.namespace, labels=meta.labels, node_name=pod.spec.node_name,
        pod_ip=pod.status.pod_ip, phase=pod.status.phase,
    )


def endpoints_from_pods(pods: Iterable[Any], *, selector: str, namespace: str, port: int
                        ) -> dict[str, str]:
    """node name → `podIP:port` for running agent pods matching `selector` (and `namespace`
    unless empty). Pods are msgspec structs with `.node_name`, `.pod_ip`, `.labels`,
    `.namespace` (and optionally `.phase`)."""
    want = parse_selector(selector)
    out: dict[str, str] = {}
    for pod in map(_pod_view, pods):
        if namespace and getattr(pod, "namespace", "") != namespace:
            continue
        labels: Mapping[str, str] = getattr(pod, "labels", None) or {}
        if any(labels.get(k) != v for k, v in want.items()):
            continue
        phase = getattr(pod, "phase", "Running")
        ip = getattr(pod, "pod_ip", "") or ""
        node = getattr(pod, "node_name", "") or ""
        if not ip or not node or phase not in ("Running", "", None):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out[node] = f"{host}:{port}"
    return out


def agent_endpoints(settings: Any, cache: Any) -> dict[str, str]:
    """node name → agent endpoint for every node with a known agent: the static
    `--agent-endpoints` map over the agent pods found in the controller's pod cache."""
    namespace = getattr(settings, "agent_namespace", "") or getattr(settings, "namespace", "")
    pods = getattr(cache, "pods", None) if cache is not None else None
    found: dict[str, str] = {}
    if pods is not None:
        if namespace and hasattr(cache, "pods_in_namespace"):
            # The controller's namespace index: a fan-out to 500 nodes over 10 000 pods
            # scanned every pod once per node (seconds of a blocked event loop).
            pods = cache.pods_in_namespace(namespace)
        elif callable(pods):
            pods = pods()
        elif hasattr(pods, "items") and isinstance(pods.items, dict):
            pods = list(pods.items.values())  # the controller's pod informer
        found = endpoints_from_pods(
            pods, selector=getattr(settings, "agent_selector", ""), namespace=namespace,
            port=int(getattr(settings, "agent_port", 9090)))
    static: Mapping[str, str] = getattr(settings, "agent_endpoints", None) or {}
    return found | dict(static)


def agent_endpoint(settings: Any, cache: Any, node: str) -> str:
    """Where the agent of `node` listens; RetryLater if unknown."""
    static: Mapping[str, str] = getattr(settings, "agent_endpoints", None) or {}
    if node in static:
        return static[node]
    found = agent_endpoints(settings, cache)
    if node in found:
        return found[node]
    raise RetryLater(f"no tote agent known for node {node!r}", reason="agent_unavailable")


def controller_ssl_context(settings: Any) -> ssl.SSLContext | None:
    from tote_containerd.agent.tls import client_context

    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_ca
    if cert and key and ca:
        return client_context(cert, key, ca)
    if getattr(settings, "insecure", False):
        return None
    raise PermanentError("mTLS to agents needs --tls-cert, --tls-key and --tls-ca "
                         "(or --insecure)", reason="tls_config")


@contextlib.asynccontextmanager
async def open_agent(node: str, settings: Any, cache: Any = None,
                     rpc_timeout: float = RPC_TIMEOUT) -> AsyncIterator[Any]:
    """An `AgentClient` for `node`'s agent with the controller's identity (for salvage code:
    inventory via `list_images`, `resolve_tag`, `remove_image`, `inspect`, `health`)."""
    from tote_containerd.agent.client import AgentClient

    endpoint = agent_endpoint(settings, cache, node)
    async with AgentClient.connect(endpoint, ssl_context=controller_ssl_context(settings),
                                   rpc_timeout=rpc_timeout) as client:
        yield client


def _translate(exc: Exception, where: str) -> Exception:
    from tote_containerd.agent import errors as e

    if not isinstance(exc, e.AgentError):
        return exc
    msg = f"{where}: {exc}"
    permanent = {"too_large", "layers_discarded", "platform_missing"}
    if exc.reason in permanent:
        return PermanentError(msg, reason=exc.reason)
    if isinstance(exc, e.DataLoss):
        return RetryLater(msg, reason="digest_mismatch")
    if isinstance(exc, (e.PermissionDenied, e.Unauthenticated)):
        return PermanentError(msg, reason="unauthorized")
    if isinstance(exc, e.InvalidArgument):
        return PermanentError(msg, reason="invalid_request")
    if isinstance(exc, e.NotFound):
        return RetryLater(msg, reason="source_unavailable")
    return RetryLater(msg, reason=exc.reason or "agent_unavailable")


async def run_transfer(request: TransferRequest, progress: ProgressCallback, *,
                       settings: Any, cache: Any = None) -> TransferResult:
    from tote_containerd.agent.api import ImportProgress, ImportRequest
    from tote_containerd.agent.client import ensure_loop
    from tote_containerd.agent.errors import AgentError
    from tote_containerd.agent.tokens import Signer

    started = time.monotonic()
    src_ep = agent_endpoint(settings, cache, request.source_node)
    secure = controller_ssl_context(settings) is not None
    signer = Signer(settings.tls_cert, settings.tls_key) if secure else Signer()
    async with ensure_loop():
        try:
            async with open_agent(request.target_node, settings, cache) as target:
                platform = (await target.health()).platform
        except AgentError as exc:
            raise _translate(exc, f"target agent {request.target_node}") from exc
        try:
            async with open_agent(request.source_node, settings, cache) as source:
                info = await source.inspect(request.digest, platform)
        except AgentError as exc:
            raise _translate(exc, f"source {request.source_node}") from exc
        if not info.complete:
            if info.layers_discarded:
                raise PermanentError(f"source {request.source_node}: {info.reason}",
                                     reason="layers_discarded")
            raise RetryLater(f"source {request.source_node} cannot serve {request.digest}: "
                             f"{info.reason}", reason="source_unavailable")
        token = signer.mint(digest=request.digest, source=request.source_node,
                            target=request.target_node, ttl=TOKEN_TTL)

        async def relay(p: ImportProgress) -> None:
            await progress(TransferProgress(
                bytes_total=p.bytes_total, bytes_transferred=p.bytes_transferred,
                blobs_total=p.blobs_total, blobs_skipped=p.blobs_skipped))

        try:
            async with open_agent(request.target_node, settings, cache) as target:
                done = await target.import_from(ImportRequest(
                    source_node=request.source_node, source_endpoint=src_ep, token=token,
                    digest=request.digest, names=[request.image_ref],
                    max_bytes=request.max_bytes, platform=platform), relay)
        except AgentError as exc:
            raise _translate(exc, f"import {request.source_node} → {request.target_node}"
                             ) from exc
    log.info("transferred %s %s → %s: %d bytes moved, %d blobs skipped", request.digest,
             request.source_node, request.target_node, done.bytes_total, done.blobs_skipped)
    return TransferResult(bytes_total=done.bytes_total,
                          bytes_transferred=done.bytes_transferred - done.bytes_resumed,
                          blobs_skipped=done.blobs_skipped,
                          duration_seconds=time.monotonic() - started)


class ContainerdPlugin:
    """The `containerd` plugin, one object per process, built by the plugin host from the
    entry point. `configure` hands it the controller's settings and caches; its hooks —
    transfer, the inventory (`inventory.py`), doctor's node health (`doctor.py`) and the
    backup push (`push.py`) — reach the agents with them, so `plugins.disabled: [containerd]`
    turns all of them off together. Without `configure` (no controller) every hook answers
    None."""

    def __init__(self) -> None:
        self.settings: Any = None
        self.cache: Any = None
        self.inventory = Inventory(self)

    # -- how the hooks reach the agents (inventory.Agents) ---------------------------------

    @property
    def configured(self) -> bool:
        return self.settings is not None

    def known_agents(self) -> dict[str, str]:
        return agent_endpoints(self.settings, self.cache)

    def agent(self, node: str, rpc_timeout: float | None = None
              ) -> contextlib.AbstractAsyncContextManager[Any]:
        return open_agent(node, self.settings, self.cache,
                          RPC_TIMEOUT if rpc_timeout is None else rpc_timeout)

    # -- hooks ---------------------------------------------------------------------------

    @hookimpl
    def configure(self, context: Any) -> None:
        self.settings = context.settings
        self.cache = context.cache

    @hookimpl
    async def transfer(self, request: TransferRequest, progress: ProgressCallback
                       ) -> TransferResult | None:
        if not self.configured:
            return None
        try:
            return await run_transfer(request, progress, settings=self.settings,
                                      cache=self.cache)
        finally:
            # The target may hold the image now: a cached "who holds it" answer from before
            # the transfer would make the next pod on that node salvage it again.
            self.inventory.invalidate()

    @hookimpl
    async def find_image(self, digest: str, nodes: list[str]) -> list[str] | None:
        return await self.inventory.find_image(digest, nodes)

    @hookimpl
    async def resolve_tag(self, image_ref: str, nodes: list[str]) -> str | None:
        return await self.inventory.resolve_tag(image_ref, nodes)

    @hookimpl
    async def remove_image(self, node: str, image_ref: str, digest: str | None
                           ) -> bool | None:
        return await self.inventory.remove_image(node, image_ref, digest)

    @hookimpl
    async def node_health(self, node: str, settings: Any, pods: list[Any]
                          ) -> NodeHealth | None:
        return await doctor.node_health(node, settings, pods)

    @hookimpl
    async def push_image(self, request: PushRequest) -> PushResult | None:
        if not self.configured:
            return None
        return await push.push_image(request, self.agent)


__all__ = ["ContainerdPlugin", "agent_endpoint", "agent_endpoints", "controller_ssl_context",
           "open_agent", "run_transfer"]
