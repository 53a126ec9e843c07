"""Where the agents are: node name → agent endpoint, from the static `--agent-endpoints` map
and the running agent pods the controller's pod informer (or `tote doctor`) sees.

Agents are reached by pod IP, so a restarted agent is found under its new address at the
next lookup; nothing here is cached.
"""

from __future__ import annotations

from collections.abc import Iterable

from tote_core.errors import RetryLater
from tote_core.settings import ControllerSettings
from tote_core.structs.kube import Pod


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


def agent_namespace(settings: ControllerSettings) -> str:
    """Where agent pods run: `--agent-namespace`, else the controller's own namespace."""
    return settings.agent_namespace or settings.namespace


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


def agent_endpoints(settings: ControllerSettings, pods: Iterable[Pod]) -> dict[str, str]:
    """node name → agent endpoint for every node with a known agent: the static
    `--agent-endpoints` map over the agent pods among `pods`."""
    found = endpoints_from_pods(pods, selector=settings.agent_selector,
                                namespace=agent_namespace(settings), port=settings.agent_port)
    return found | settings.agent_endpoints


def agent_endpoint(settings: ControllerSettings, pods: Iterable[Pod], node: str) -> str:
    """Where the agent of `node` listens; RetryLater if unknown."""
    if node in settings.agent_endpoints:  # the static map wins; no pod scan needed
        return settings.agent_endpoints[node]
    endpoint = agent_endpoints(settings, pods).get(node)
    if endpoint is None:
        raise RetryLater(f"no tote agent known for node {node!r}", reason="agent_unavailable")
    return endpoint
