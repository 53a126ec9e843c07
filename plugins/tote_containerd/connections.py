"""The controller's connections to agents: one asyncio loop and one HTTP/2 connection per
agent endpoint, kept while the plugin's service runs and shared by every hook call.

grpclib needs an asyncio loop (the asyncio bridge). Opening a bridge and a TLS connection for
each hook call cost a handshake per inventory probe, per transfer and per push, and a
reconcile that fans out to every node paid it once per node. A plugin may not start tasks of
its own, so the bridge is owned by a service (`run`) that the plugin registers at `configure`
and the host starts when this replica leads. Calls made while it runs get a pooled
`AgentClient` on that bridge, whichever task (worker, reconcile) makes them; calls made
without it (`tote doctor`, tests driving the plugin directly) open their own bridge and
connection.

A connection leaves the pool when a call on it fails in transport (unreachable, deadline,
cancelled mid-call) or when the controller's TLS files change, so the next call dials afresh
(a restarted agent, a rotated certificate); it is closed once its last user is done. Idle
connections are closed after `IDLE_TIMEOUT`. The agent's role is checked in every TLS
handshake by the client context (`agent.tls.client_context`), grpclib's silent reconnects
included.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from tote_containerd.agent import errors
from tote_containerd.agent.asyncio_bridge import AsyncioBridge, open_bridge
from tote_containerd.agent.client import AgentClient

log = logging.getLogger("tote.plugin.containerd.connections")

IDLE_TIMEOUT = 300.0
REAP_INTERVAL = 30.0


@dataclass(eq=False)
class _Pooled:
    client: AgentClient
    users: int = 0
    last_used: float = 0.0
    dropped: bool = False


def _connection_suspect(exc: BaseException) -> bool:
    """After this failure, is the connection itself in doubt? An agent's own answer
    (NOT_FOUND, a refused token, bytes that do not match) says the connection works."""
    if isinstance(exc, errors.AgentError):
        return isinstance(exc, (errors.Unavailable, errors.DeadlineExceeded))
    return True


class AgentConnections:
    """`agent(endpoint)` hands out a client for `endpoint`: pooled while `run` runs, else a
    connection of the call's own. `tls` answers the client context to dial with (None:
    plain HTTP/2, `--insecure`); it is asked at every call, so a new context (rotated files)
    takes effect for the next connection."""

    def __init__(self, tls: Callable[[], ssl.SSLContext | None]) -> None:
        self.tls = tls
        self.dialled = 0  # connections the pool created (tests and the bench read it)
        self._bridge: AsyncioBridge | None = None
        self._pool: dict[str, _Pooled] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The plugin service: own the bridge the pooled connections live on, close idle
        ones, and close them all when the service ends (leadership lost, shutdown)."""
        async with open_bridge() as bridge:
            self._bridge = bridge
            try:
                task_status.started()
                while True:
                    await trio.sleep(REAP_INTERVAL)
                    await self._close_idle(trio.current_time() - IDLE_TIMEOUT)
            finally:
                self._bridge = None
                pool, self._pool = self._pool, {}
                for entry in pool.values():
                    entry.dropped = True
                    await entry.client.close()

    @contextlib.asynccontextmanager
    async def agent(self, endpoint: str, rpc_timeout: float) -> AsyncIterator[AgentClient]:
        ssl_context = self.tls()
        bridge = self._bridge
        if bridge is None:
            async with AgentClient.connect(endpoint, ssl_context=ssl_context,
                                           rpc_timeout=rpc_timeout) as client:
                yield client
            return
        entry = await self._checkout(bridge, endpoint, ssl_context)
        try:
            yield entry.client.with_timeout(rpc_timeout)
        except BaseException as exc:
            if _connection_suspect(exc):
                self._drop(endpoint, entry)
            raise
        finally:
            await self._release(entry)

    async def _checkout(self, bridge: AsyncioBridge, endpoint: str,
                        ssl_context: ssl.SSLContext | None) -> _Pooled:
        entry = self._pool.get(endpoint)
        if entry is not None and entry.client.ssl_context is not ssl_context:
            # The TLS files changed: dial with the new identity.
            self._drop(endpoint, entry)
            if entry.users == 0:
                await entry.client.close()
            entry = None
        if entry is None:
            client = AgentClient(endpoint, bridge, ssl_context=ssl_context)
            await client.open()  # no I/O: the channel connects on its first call
            entry = self._pool.get(endpoint)
            if entry is None or entry.client.ssl_context is not ssl_context:
                entry = self._pool[endpoint] = _Pooled(client)
                self.dialled += 1
                log.debug("new connection to agent %s", endpoint)
            else:  # another task pooled one while we were creating ours
                await client.close()
        entry.users += 1
        entry.last_used = trio.current_time()
        return entry

    def _drop(self, endpoint: str, entry: _Pooled) -> None:
        """Take `entry` out of the pool; its users finish on it and the last one closes it
        (with none, the caller closes it)."""
        if self._pool.get(endpoint) is entry:
            del self._pool[endpoint]
        entry.dropped = True

    async def _release(self, entry: _Pooled) -> None:
        entry.users -= 1
        entry.last_used = trio.current_time()
        if entry.dropped and entry.users == 0:
            await entry.client.close()

    async def _close_idle(self, before: float) -> None:
        for endpoint, entry in list(self._pool.items()):
            if entry.users == 0 and entry.last_used < before:
                self._drop(endpoint, entry)
                await entry.client.close()
