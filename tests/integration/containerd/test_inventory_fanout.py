"""The controller's inventory fan-out (`tote_containerd.inventory`) over the bounded
connection pool (`tote_containerd.connections`) against the agent's real gRPC server code
with mTLS: 40 simulated nodes (`tests/cluster/sim_agents`: the agent server on a loopback
address each, image records in memory instead of a containerd).

Checked from the servers' side (calls they answered) and the kernel's (connections
established): one sweep serves lookups of other digests and tags held somewhere;
concurrent lookups share one fan-out; once the pool is full the sweep dials connections of
its own and leaves the pool to the nodes in use; the pool never holds more than its bound;
a black-holed agent neither keeps a patient caller from its answer nor slows the next
sweep."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from tote_containerd.agent.asyncio_bridge import open_bridge
from tote_containerd.agent.tls import server_context
from tote_containerd.agents import Agents, ControllerTLS
from tote_containerd.connections import AgentConnections
from tote_containerd.discovery import AgentDiscovery
from tote_containerd.inventory import PER_AGENT_TIMEOUT, Inventory

from tests.cluster.pki import PKI, make_pki
from tests.cluster.sim_agents import SimNode, ip_of, serve_node
from tote_core.settings import ControllerSettings

pytestmark = pytest.mark.integration

NODES = 40
FIRST = 12_000  # loopback addresses 127.1.48.x: apart from the fan-out benchmark's
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
COMMON = "sha256:" + "c" * 64


@dataclass
class Sim:
    nodes: dict[str, SimNode]
    endpoints: dict[str, str]
    ports: set[int]
    pki: PKI

    def calls(self) -> int:
        return sum(n.calls for n in self.nodes.values())

    def agents(self, max_pooled: int, extra: dict[str, str] | None = None) -> Agents:
        c = self.pki.controller
        settings = ControllerSettings(tls_cert=c.cert, tls_key=c.key, tls_ca=c.ca)
        return Agents(settings, discovery=AgentDiscovery(
            endpoints={**self.endpoints, **(extra or {})}),
            connections=AgentConnections(ControllerTLS(settings), max_pooled=max_pooled))


def established(ports: set[int]) -> int:
    """Client-side TCP connections in ESTABLISHED state to any of `ports` (from
    /proc/net/tcp: what the kernel holds, not what the pool believes)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) in ports:
            count += 1
    return count


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    pki = make_pki(tmp_path)
    ctx = server_context(pki.agent.cert, pki.agent.key, pki.agent.ca)
    nodes: dict[str, SimNode] = {}
    endpoints: dict[str, str] = {}
    ports: set[int] = set()
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        for i in range(NODES):
            name = f"node-{i:02d}"
            node = nodes[name] = SimNode(name)
            node.hold(COMMON, "docker.io/sim/common:v1")
            if i in (3, 17, 29):
                node.hold(D1, "docker.io/sim/app:v1")
            if i in (8, 9):
                node.hold(D2, "docker.io/sim/app:v2", complete=i == 8)
            sock = socket.socket()
            sock.bind((ip_of(FIRST + i), 0))
            sock.listen(64)
            port = sock.getsockname()[1]
            ports.add(port)
            endpoints[name] = f"{ip_of(FIRST + i)}:{port}"
            await serve_node(nursery, bridge, node, sock, ctx)
        yield Sim(nodes, endpoints, ports, pki)
        nursery.cancel_scope.cancel()


async def test_one_sweep_answers_every_digest_and_the_pool_keeps_the_nodes_in_use(
        sim: Sim) -> None:
    agents = sim.agents(max_pooled=4)
    names = sorted(sim.nodes)
    inventory = Inventory(agents, lambda d: ["node-03"] if d == D1 else [])
    async with trio.open_nursery() as service:
        await service.start(agents.connections.run)
        await service.start(inventory.run)
        results: list[list[str] | None] = []

        async def reconcile() -> None:
            results.append(await inventory.find_image(D1, names))

        async with trio.open_nursery() as burst:
            for _ in range(30):
                burst.start_soon(reconcile)
        assert results == [["node-03", "node-17", "node-29"]] * 30
        # One hinted check (2 calls), one sweep (a call per node), the 2 other holders.
        assert inventory.stats.sweeps == 1 and sim.calls() == 2 + NODES + 4
        # Once the pool was full the sweep used connections of its own; the pool kept the
        # holders (bounded).
        assert agents.connections.transient >= NODES - 4
        assert agents.connections.pooled <= 4
        with trio.fail_after(10):
            while established(sim.ports) > agents.connections.pooled:
                await trio.sleep(0.05)

        # Another digest, and a tag: from the index, no second sweep.
        before = sim.calls()
        assert await inventory.find_image(D2, names) == ["node-08"]  # 09 lacks the blobs
        assert await inventory.resolve_tag("docker.io/sim/app:v2", names) == D2
        assert inventory.stats.sweeps == 1 and sim.calls() - before == 4
        # A tag no node has: "none" only from a sweep begun after the question.
        assert await inventory.resolve_tag("docker.io/sim/app:v9", names) is None
        assert inventory.stats.sweeps == 2

        # More nodes in use than the bound: the least recently used idle ones are closed.
        for name in names[:10]:
            async with agents.agent(name) as agent:
                assert (await agent.health()).node_name == name
        assert agents.connections.pooled == 4 and agents.connections.evicted >= 6
        with trio.fail_after(10):
            while established(sim.ports) > 4:
                await trio.sleep(0.05)
        service.cancel_scope.cancel()
    with trio.fail_after(10):
        while established(sim.ports):
            await trio.sleep(0.05)


async def test_a_black_holed_agent_delays_neither_the_answer_nor_the_next_sweep(
        sim: Sim) -> None:
    # Accepts TCP (backlog) but never speaks TLS: every call to it waits for its deadline.
    hole = socket.socket()
    hole.bind((ip_of(FIRST + NODES), 0))
    hole.listen(8)
    agents = sim.agents(max_pooled=64, extra={
        "node-hole": f"{ip_of(FIRST + NODES)}:{hole.getsockname()[1]}"})
    names = [*sorted(sim.nodes), "node-hole"]
    inventory = Inventory(agents)
    try:
        async with trio.open_nursery() as service:
            await service.start(agents.connections.run)
            await service.start(inventory.run)
            # A detection reconcile gives up after its deadline; the sweep goes on.
            with trio.move_on_after(1.0) as gave_up:
                await inventory.find_image(D1, names)
            assert gave_up.cancelled_caught
            with trio.fail_after(PER_AGENT_TIMEOUT + 5):
                while ("index",) in inventory._flights or inventory.stats.sweeps == 0:
                    await trio.sleep(0.05)
            t = trio.current_time()
            assert await inventory.find_image(D1, names) == ["node-03", "node-17", "node-29"]
            assert trio.current_time() - t < 1.0 and inventory.stats.sweeps == 1
            # The next sweep leaves the black hole out: done well within its deadline.
            inventory.invalidate()
            t = trio.current_time()
            assert await inventory.find_image(D2, names) == ["node-08"]
            assert trio.current_time() - t < PER_AGENT_TIMEOUT / 2
            assert inventory.stats.sweeps == 2 and inventory.stats.skipped_down == 1
            service.cancel_scope.cancel()
    finally:
        hole.close()
