"""The built-in `source-policy` plugin, called through the real host."""

from __future__ import annotations

from tote_sourcepolicy.plugin import SourcePolicyPlugin

from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Incident, NodeInfo

INCIDENT = Incident(
    namespace="ns", pod_name="p", pod_uid="u", container="c", init_container=False,
    image_ref="docker.io/library/x:1", digest="sha256:" + "a" * 64, node_name="t",
    kind="pull", message="",
)
CANDIDATES = [
    NodeInfo(name="a", ready=True, zone="z2", active_transfers=0),
    NodeInfo(name="b", ready=True, zone="z1", active_transfers=2),
    NodeInfo(name="c", ready=True, zone="z1", active_transfers=0),
    NodeInfo(name="d", ready=False, zone="z1", active_transfers=0),
]


async def test_ready_same_zone_then_least_busy() -> None:
    host = PluginHost()
    host.register(SourcePolicyPlugin(), "source-policy")
    in_z1 = NodeInfo(name="t", ready=True, zone="z1")
    assert await host.select_source(INCIDENT, CANDIDATES, in_z1) == ["c", "b", "a"]
    no_zone = NodeInfo(name="t", ready=True)
    assert await host.select_source(INCIDENT, CANDIDATES, no_zone) == ["a", "c", "b"]
