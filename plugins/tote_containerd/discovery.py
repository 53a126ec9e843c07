"""Where the agents are: node name → agent endpoint, from the static `--agent-endpoints` map
and the running agent pods the controller's pod informer (or `tote doctor`) sees.

Agents are reached by pod IP, so a restarted agent is found under its new address at the
next lookup; nothing here is cached. The `--agent-*` settings are the `agent` plugin's own
(`AgentDiscovery`, declared through `settings_type`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import msgspec

from tote_core.errors import RetryLater
from tote_core.structs.kube import Pod
from tote_core.values import check_port

DEFAULT_SELECTOR = "app.kubernetes.io/component=agent,app.kubernetes.io/name=tote"


class AgentDiscovery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`--agent-*`: how the controller (and `tote doctor`) finds each node's agent."""

    endpoints: dict[str, str] = msgspec.field(default_factory=dict)
    namespace: str = ""  # where agent pods run; empty = the controller's namespace
    selector: str = DEFAULT_SELECTOR
    port: int = 9090

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "endpoints": "static node=host:port,... map of agents (out-of-cluster runs)",
        "namespace": "namespace of agent pods (default: the controller's)",
        "selector": "label selector of agent pods",
        "port": "agent gRPC port (default 9090)",
    }

    def __post_init__(self) -> None:
        check_port("agent_port", self.port)
        try:
            parse_selector(self.selector)
        except ValueError as exc:
            raise ValueError(f"--agent-selector: {exc}") from None


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


def agent_namespace(d: AgentDiscovery, controller_namespace: str) -> str:
    """Where agent pods run: `--agent-namespace`, else the controller's own namespace."""
    return d.namespace or controller_namespace


def endpoints_from_pods(pods: Iterable[Pod], *, selector: str, namespace: str, port: int
                        ) -> dict[str, str]:
    """node name → `podIP:port` for running agent pods matching `selector` (and `namespace`
    unless empty)."""
    want = parse_selector(selector)
    out: dict[str, str] = {}
    for pod in pods:
        if namespace and pod.metadata.namespace != namespace:
            continue
        if any(pod.metadata.labels.get(k) != v for k, v in want.items()):
            continue
        ip, node = pod.status.pod_ip, pod.spec.node_name
        if not ip or not node or pod.status.phase not in ("Running", ""):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out[node] = f"{host}:{port}"
    return out


def agent_endpoints(d: AgentDiscovery, controller_namespace: str, pods: Iterable[Pod]
                    ) -> dict[str, str]:
    """node name → agent endpoint for every node with a known agent: the static
    `--agent-endpoints` map over the agent pods among `pods`."""
    found = endpoints_from_pods(pods, selector=d.selector,
                                namespace=agent_namespace(d, controller_namespace), port=d.port)
    return found | d.endpoints


def agent_endpoint(d: AgentDiscovery, controller_namespace: str, pods: Iterable[Pod],
                   node: str) -> str:
    """Where the agent of `node` listens; RetryLater if unknown."""
    if node in d.endpoints:  # the static map wins; no pod scan needed
        return d.endpoints[node]
    endpoint = agent_endpoints(d, controller_namespace, pods).get(node)
    if endpoint is None:
        raise RetryLater(f"no tote agent known for node {node!r}", reason="agent_unavailable")
    return endpoint
