"""Built-in `agent` plugin: moves an image between nodes by driving tote agents.

The controller side. `AgentPlugin` wires the hooks to the modules that do the work:
`transfer` (a salvage's copy), `inventory` (who holds a digest, what a tag points to,
removing stale records), `pins` (unpinning a salvaged image), `push` (backup push from a
node) and `doctor` (node health for `tote doctor`). All of them reach the agents through
one `Agents` (discovery, the controller's mTLS identity, pooled connections), so
`plugins.disabled: [agent]` turns all of them off together. Its settings are agent
discovery's (`--agent-endpoints`, `--agent-namespace`, `--agent-selector`, `--agent-port`:
`discovery.AgentDiscovery`).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from tote_containerd import doctor, pins, push
from tote_containerd.agents import Agents
from tote_containerd.discovery import AgentDiscovery, agent_namespace
from tote_containerd.inventory import Inventory
from tote_containerd.transfer import run_transfer
from tote_core.errors import KubeError
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import (
    Incident,
    NodeHealth,
    NodeInfo,
    PluginSettings,
    ProgressCallback,
    PushRequest,
    PushResult,
    TransferRequest,
    TransferResult,
)
from tote_core.settings import ControllerSettings

if TYPE_CHECKING:
    from tote_core.hooks.context import PluginContext
    from tote_core.kube.client import KubeClient


class AgentPlugin:
    """The `agent` plugin, one object per process, built by the plugin host from the
    entry point. Without `configure` (no controller) every controller hook answers None;
    `node_health` is `tote doctor`'s and needs no `configure`."""

    def __init__(self) -> None:
        self.agents: Agents | None = None
        self.inventory: Inventory | None = None
        self.doctor_pods = doctor.AgentPods()

    @hookimpl
    def settings_type(self) -> type[AgentDiscovery]:
        return AgentDiscovery

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        settings, cache = context.settings, context.cache
        discovery = context.settings_for(AgentDiscovery)
        namespace = agent_namespace(discovery, settings.namespace)
        self.agents = Agents(settings, lambda: cache.pods_in_namespace(namespace),
                             discovery=discovery)
        self.inventory = Inventory(self.agents, cache.nodes_with_digest)
        context.add_service("containerd-agent-connections", self.agents.connections.run)
        context.add_service("containerd-agent-inventory", self.inventory.run)

    @hookimpl
    async def transfer(self, request: TransferRequest, progress: ProgressCallback
                       ) -> TransferResult | None:
        if self.agents is None or self.inventory is None:
            return None
        try:
            return await run_transfer(request, progress, self.agents)
        finally:
            # The target may hold the image now: a cached "who holds it" answer from before
            # the transfer would make the next pod on that node salvage it again.
            self.inventory.invalidate(request.digest)

    @hookimpl(wrapper=True)
    def select_source(self, incident: Incident, candidates: list[NodeInfo], target: NodeInfo
                      ) -> Generator[None, list[str] | None, list[str] | None]:
        """Whatever order the source policy chose, sources that hold the blobs come before
        those that would serve the image from snapshots (they discarded the blobs)."""
        order = yield
        if order is None or self.inventory is None or not incident.digest:
            return order
        return self.inventory.blob_sources_first(incident.digest, list(order))

    @hookimpl
    async def find_image(self, digest: str, nodes: list[str]) -> list[str] | None:
        if self.inventory is None:
            return None
        return await self.inventory.find_image(digest, nodes)

    @hookimpl
    async def resolve_tag(self, image_ref: str, nodes: list[str]) -> str | None:
        if self.inventory is None:
            return None
        return await self.inventory.resolve_tag(image_ref, nodes)

    @hookimpl
    async def remove_image(self, node: str, image_ref: str, digest: str | None
                           ) -> bool | None:
        if self.inventory is None:
            return None
        return await self.inventory.remove_image(node, image_ref, digest)

    @hookimpl
    async def unpin_image(self, node: str, digest: str) -> bool | None:
        if self.agents is None:
            return None
        return await pins.unpin_image(node, digest, self.agents)

    @hookimpl
    async def node_health(self, node: str, settings: ControllerSettings,
                          plugin_settings: PluginSettings, kube: KubeClient
                          ) -> NodeHealth | None:
        agents = self.agents  # in the controller: its own agents, from its pod cache
        if agents is None:  # `tote doctor`: list the agent pods once
            discovery = plugin_settings.of(AgentDiscovery)
            try:
                pods = await self.doctor_pods.get(kube, discovery, settings.namespace)
            except KubeError as exc:
                return NodeHealth(node=node, reachable=False,
                                  error=f"cannot list agent pods: {exc}")
            agents = Agents(settings, lambda: pods, discovery=discovery)
        return await doctor.node_health(node, agents)

    @hookimpl
    async def push_image(self, request: PushRequest) -> PushResult | None:
        if self.agents is None:
            return None
        return await push.push_image(request, self.agents)
