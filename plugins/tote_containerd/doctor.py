"""`node_health` for `tote doctor`: reach a node's agent with the controller's identity.

Uses the same discovery (`--agent-endpoints`, else agent pods) and mTLS set-up as a
transfer, so a green row means a salvage could reach this agent. In the controller (its
`/agents` report) the configured agents are used; in `tote doctor`'s own process the agent
pods are listed once (`AgentPods`). containerd's
`discard_unpacked_layers` setting is not visible through its API; instead a few of the
node's images are inspected (`SAMPLE` distinct digests): if their compressed layers are
gone, the node discards them and serves salvages in snapshot mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from tote_containerd.agent.errors import AgentError
from tote_containerd.agents import Agents
from tote_containerd.discovery import AgentDiscovery, agent_namespace, parse_selector
from tote_core.errors import ToteError
from tote_core.hooks.types import NodeHealth
from tote_core.kube.client import KubeClient, resource_path
from tote_core.structs.kube import Pod

SAMPLE = 3


class AgentPods:
    """The agent pods `tote doctor` found, listed once for all its per-node checks (they
    run at once; one LIST instead of one per node)."""

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._pods: Sequence[Pod] | None = None

    async def get(self, kube: KubeClient, d: AgentDiscovery, controller_namespace: str
                  ) -> Sequence[Pod]:
        async with self._lock:
            if self._pods is None:
                selector = ",".join(f"{k}={v}" for k, v in parse_selector(d.selector).items())
                path = resource_path("v1", "pods", agent_namespace(d, controller_namespace))
                self._pods = (await kube.list(path, Pod, labelSelector=selector)).items
            return self._pods


async def node_health(node: str, agents: Agents) -> NodeHealth | None:
    endpoint = ""
    try:
        endpoint = agents.endpoint(node)
        async with agents.at(endpoint) as agent:
            health = await agent.health()
            digests: list[str] = []
            for record in await agent.list_images():
                if record.digest not in digests:
                    digests.append(record.digest)
            discarded: bool | None = None
            sampled = 0
            for digest in digests[:SAMPLE]:
                info = await agent.inspect(digest)
                sampled += 1
                discarded = bool(discarded) or info.layers_discarded
    except (AgentError, ToteError, OSError) as exc:
        return NodeHealth(node=node, reachable=False, endpoint=endpoint, error=str(exc))

    return NodeHealth(
        node=node, reachable=True, endpoint=endpoint, containerd_ok=health.containerd_ok,
        containerd_version=health.containerd_version, layers_discarded=discarded,
        images_sampled=sampled, error=health.error)
