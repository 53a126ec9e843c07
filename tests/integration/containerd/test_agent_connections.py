"""The controller's pooled agent connections (`tote_containerd.connections`) against real
agents: one connection per agent shared by every call, re-dialled after the agent went away,
every (re)connection's peer checked for the agent role, renewed TLS files used for new
connections, and nothing left open when the service ends."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from tote_containerd.agent import errors
from tote_containerd.agents import Agents

from tests.cluster.containerd_env import AgentProc, Env, start_agent
from tests.cluster.pki import issue

pytestmark = pytest.mark.integration


def established_to(port: int) -> int:
    """Client-side TCP connections to 127.0.0.1:`port` in ESTABLISHED state (from
    /proc/net/tcp: what the kernel holds, not what the pool believes)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            count += 1
    return count


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(10):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def _own_agent(env: Env, name: str, *tls: str, port: int = 0) -> AgentProc:
    return start_agent(env.group, env.nodes["c"], *(tls or env.tls_args()), "--no-fast-path",
                       name=name, port=port)


async def test_one_connection_per_agent_shared_by_every_call(env: Env) -> None:
    agents = env.client_agents()
    ports = [env.agents[n].port for n in ("a", "b", "c")]
    async with trio.open_nursery() as service:
        await service.start(agents.connections.run)
        seen: list[str] = []

        async def probe(node: str) -> None:
            async with agents.agent(node) as agent:
                seen.append((await agent.health()).node_name)

        async with trio.open_nursery() as callers:
            for _ in range(20):
                for node in ("a", "b", "c"):
                    callers.start_soon(probe, node)
        assert sorted(set(seen)) == ["a", "b", "c"] and len(seen) == 60
        assert agents.connections.dialled == 3
        assert [established_to(p) for p in ports] == [1, 1, 1]
        service.cancel_scope.cancel()
    await wait_for(lambda: all(established_to(p) == 0 for p in ports),
                   "the service's end to close every pooled connection")
    # Without the service, a call still works on a connection of its own.
    async with agents.agent("a") as agent:
        assert (await agent.health()).node_name == "a"
    assert agents.connections.dialled == 3


@contextlib.asynccontextmanager
async def pooled_then_gone(env: Env, name: str) -> AsyncIterator[tuple[Agents, int]]:
    """A pool (its service running) holding a connection to an agent of node c that has
    since stopped; yields the pool and the port the agent listened on."""
    own = _own_agent(env, name)
    agents = env.client_agents(endpoints={"c": own.endpoint})
    try:
        async with trio.open_nursery() as service:
            await service.start(agents.connections.run)
            async with agents.agent("c") as agent:
                await agent.health()
            own.proc.stop()
            yield agents, own.port
            service.cancel_scope.cancel()
    finally:
        own.proc.stop()


async def test_an_agent_that_went_away_is_dialled_again(env: Env) -> None:
    async with pooled_then_gone(env, "agent-c-pool-restart") as (agents, port):
        with pytest.raises(errors.Unavailable):
            async with agents.agent("c") as agent:
                await agent.health()
        again = _own_agent(env, "agent-c-pool-restart-2", port=port)
        try:
            async with agents.agent("c") as agent:
                assert (await agent.health()).node_name == "c"
            assert agents.connections.dialled == 2
            assert established_to(port) == 1
        finally:
            again.proc.stop()


async def test_a_silent_reconnect_is_checked_for_the_agent_role(env: Env) -> None:
    """What was tried: the pooled connection's agent stops and a server with a valid tote
    certificate of the *controller* role takes its port. grpclib reconnects on its own at
    the next call; that handshake is checked like the first one, and refused."""
    ctl = env.pki.controller
    async with pooled_then_gone(env, "agent-c-pool-impostor") as (agents, port):
        impostor = _own_agent(env, "agent-c-impostor", "--tls-cert", ctl.cert,
                              "--tls-key", ctl.key, "--tls-ca", ctl.ca, port=port)
        try:
            # Let the pool's loop see the old connection close, as it would between two
            # salvages; the next call then reconnects without an error first.
            await trio.sleep(0.5)
            with pytest.raises(errors.PermissionDenied, match="expected 'agent'") as err:
                async with agents.agent("c") as agent:
                    await agent.list_images()
            assert err.value.reason == "unauthorized"
            assert agents.connections.dialled == 1  # the pooled channel's own reconnect
        finally:
            impostor.proc.stop()


async def test_renewed_tls_files_are_used_for_the_next_connection(env: Env,
                                                                  tmp_path: Path) -> None:
    """The controller's certificate files are replaced in place (as a renewed Secret is):
    the next call dials with the new identity and the old connection is closed."""
    ctl = env.pki.controller
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(ctl.cert, cert)
    shutil.copy(ctl.key, key)
    agents = env.client_agents(tls_cert=str(cert), tls_key=str(key))
    port = env.agents["a"].port
    async with trio.open_nursery() as service:
        await service.start(agents.connections.run)
        async with agents.agent("a") as agent:
            await agent.list_images()
        first = agents.connections.tls()
        (tmp_path / "renewed").mkdir()
        renewed = issue(tmp_path / "renewed", env.pki.root, "tote-controller",
                        "spiffe://tote/controller")
        shutil.copy(renewed.cert, cert)
        shutil.copy(renewed.key, key)
        async with agents.agent("a") as agent:
            await agent.list_images()  # an RPC the agent serves to controllers only
        assert agents.connections.tls() is not first
        assert agents.connections.dialled == 2
        await wait_for(lambda: established_to(port) == 1, "the old connection to close")
        service.cancel_scope.cancel()
