"""Controller side of the containerd plugin: endpoint discovery, error mapping, settings."""

from __future__ import annotations

import msgspec
import pytest
from tote_containerd import discovery
from tote_containerd.agent import errors
from tote_containerd.agent.settings import AgentSettings
from tote_containerd.agents import ControllerTLS

from tote_core.errors import ConfigError, PermanentError, RetryLater
from tote_core.settings import ControllerSettings
from tote_core.settings_loader import parse_args
from tote_core.structs.kube import Pod

SEL = "app.kubernetes.io/component=agent,app.kubernetes.io/name=tote"
LABELS = {"app.kubernetes.io/component": "agent", "app.kubernetes.io/name": "tote"}


def agent_pod(node: str, ip: str, ns: str = "tote-system", phase: str = "Running",
              labels: dict[str, str] | None = None) -> Pod:
    """An agent pod as the controller's informer holds it (tote_core's Pod struct)."""
    return msgspec.convert({
        "metadata": {"name": f"agent-{node}", "namespace": ns,
                     "labels": LABELS if labels is None else labels},
        "spec": {"nodeName": node},
        "status": {"podIP": ip, "phase": phase},
    }, Pod)


def test_parse_selector() -> None:
    assert discovery.parse_selector(SEL) == LABELS
    assert discovery.parse_selector("a==b, c=d") == {"a": "b", "c": "d"}
    with pytest.raises(ValueError):
        discovery.parse_selector("a in (b)")


def test_endpoints_from_pods() -> None:
    """The controller's informer holds tote_core Pod structs (metadata/spec/status):
    discovery reads those — the Go original never found its agents."""
    pods = [
        agent_pod("n1", "10.0.0.1"),
        agent_pod("n2", "fd00::2"),
        agent_pod("n3", "10.0.0.3", ns="other"),
        agent_pod("n4", ""),
        agent_pod("n5", "10.0.0.5", labels={"app": "x"}),
        agent_pod("n6", "10.0.0.6", phase="Pending"),
    ]
    got = discovery.endpoints_from_pods(pods, selector=SEL, namespace="tote-system",
                                        port=9090)
    assert got == {"n1": "10.0.0.1:9090", "n2": "[fd00::2]:9090"}


def test_agent_endpoint_static_then_pods() -> None:
    d = discovery.AgentDiscovery(endpoints={"n1": "127.0.0.1:1"}, namespace="t")
    pods = [agent_pod("n2", "10.1.1.1", ns="t")]
    assert discovery.agent_endpoint(d, "ctl", [], "n1") == "127.0.0.1:1"
    assert discovery.agent_endpoint(d, "ctl", pods, "n2") == "10.1.1.1:9090"
    with pytest.raises(RetryLater) as err:
        discovery.agent_endpoint(d, "ctl", pods, "n9")
    assert err.value.reason == "agent_unavailable"


def test_agent_namespace_defaults_to_the_controllers() -> None:
    pods = [agent_pod("n1", "10.0.0.1", ns="ctl"), agent_pod("n2", "10.0.0.2", ns="else")]
    assert discovery.agent_endpoints(discovery.AgentDiscovery(), "ctl", pods) == {
        "n1": "10.0.0.1:9090"}


def test_controller_tls_required_unless_insecure() -> None:
    with pytest.raises(PermanentError):
        ControllerTLS(ControllerSettings())()
    assert ControllerTLS(ControllerSettings(insecure=True))() is None


@pytest.mark.parametrize("exc,kind,reason", [
    (errors.FailedPrecondition("x", reason="too_large"), PermanentError, "too_large"),
    (errors.FailedPrecondition("x", reason="platform_missing"), PermanentError,
     "platform_missing"),
    (errors.DataLoss("x", reason="digest_mismatch"), RetryLater, "digest_mismatch"),
    (errors.PermissionDenied("x"), PermanentError, "unauthorized"),
    (errors.InvalidArgument("x"), PermanentError, "invalid_request"),
    (errors.NotFound("x"), RetryLater, "source_unavailable"),
    (errors.Unavailable("x"), RetryLater, "agent_unavailable"),
])
def test_error_translation(exc: errors.AgentError, kind: type, reason: str) -> None:
    out = errors.for_salvage(exc, "here")
    assert isinstance(out, kind) and out.reason == reason  # type: ignore[attr-defined]


def test_agent_settings_flags() -> None:
    s = parse_args(AgentSettings, ["--no-fast-path", "--data-port", "0", "--insecure",
                                   "--platform", "linux/arm64"], "tote agent")
    assert (s.fast_path, s.data_port, s.insecure, s.platform) == (False, 0, True, "linux/arm64")
    with pytest.raises(ConfigError):
        parse_args(AgentSettings, ["--grpc-port", "x"], "tote agent")


@pytest.mark.parametrize("endpoint", ["", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:0",
                                      "127.0.0.1:-5", ":1", "host:x"])
def test_agent_endpoints_outside_host_port_are_invalid_arguments(endpoint: str) -> None:
    """Tried: every shape the RPC fuzz sends; a port above 65535 once crashed connect()
    (INTERNAL) instead of being refused."""
    from tote_containerd.agent.peer import split_endpoint

    with pytest.raises(errors.InvalidArgument, match="invalid agent endpoint"):
        split_endpoint(endpoint)


def test_agent_endpoint_split() -> None:
    from tote_containerd.agent.peer import split_endpoint

    assert split_endpoint("[::1]:9090") == ("::1", 9090)
    assert split_endpoint("10.0.0.5:1") == ("10.0.0.5", 1)


async def test_sources_with_the_blobs_come_before_snapshot_only_ones() -> None:
    """Through pluggy with the real source policy: whatever order the policy chose (same
    zone first here), holders the inventory saw only as snapshots (they discarded the layer
    blobs) are tried last; without that knowledge the policy's order stands."""
    import pluggy
    from tote_containerd.inventory import Inventory
    from tote_containerd.plugin import AgentPlugin
    from tote_sourcepolicy.plugin import SourcePolicyPlugin

    from tote_core.hooks import hookspecs
    from tote_core.hooks.types import Incident, NodeInfo

    pm = pluggy.PluginManager("tote")
    pm.add_hookspecs(hookspecs)
    plugin = AgentPlugin()
    plugin.inventory = Inventory(None)  # type: ignore[arg-type]  # no agent is asked here
    pm.register(plugin, "agent")
    pm.register(SourcePolicyPlugin(), "source-policy")
    digest = "sha256:" + "a" * 64
    incident = Incident(namespace="ns", pod_name="p", pod_uid="u", container="c",
                        init_container=False, image_ref="docker.io/library/x:1",
                        digest=digest, node_name="t", kind="pull", message="")
    candidates = [NodeInfo(name=n, ready=True, zone=z)
                  for n, z in (("blob-1", "a"), ("eks-1", "b"), ("eks-2", "b"))]
    target = NodeInfo(name="t", ready=True, zone="b")

    def order() -> list[str]:
        return list(pm.hook.select_source(incident=incident, candidates=candidates,
                                          target=target))

    assert order() == ["eks-1", "eks-2", "blob-1"]  # the policy's: same zone first
    plugin.inventory._snapshot_only.put(digest, {"eks-1", "eks-2"})
    assert order() == ["blob-1", "eks-1", "eks-2"]
    plugin.inventory._snapshot_only.put(digest, set())
    assert order() == ["eks-1", "eks-2", "blob-1"]
