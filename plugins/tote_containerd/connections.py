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
connections are closed after `IDLE_TIMEOUT`.

The pool is bounded: a TLS connection costs the controller about 350 KiB (asyncio's TLS
transport alone keeps a 256 KiB read buffer), so one per node of a 5 000-node cluster would be
1.7 GiB. At most `MAX_POOLED` are kept; opening another first closes the least recently used
idle one. Calls that touch every node once (the inventory's record sweep, `pooled=False`)
use a pooled connection if there is one and pool a new one while the pool has room; once it
is full they get a connection for the call, closed after it, so a sweep of a large cluster
neither grows the pool nor pushes out the connections to the nodes in use (sources,
targets). Those connections are bounded by the caller's concurrency.

The agent's role is checked in every TLS handshake by the client context
(`agent.tls.client_context`), grpclib's silent reconnects included.
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
MAX_POOLED = 256


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

    def __init__(self, tls: Callable[[], ssl.SSLContext | None], *,
                 max_pooled: int = MAX_POOLED) -> None:
        self.tls = tls
        self.max_pooled = max_pooled
        self.dialled = 0  # connections the pool created (tests and the bench read it)
        self.evicted = 0  # idle connections closed to make room
        self.transient = 0  # connections dialled for one call (`pooled=False`)
        self._bridge: AsyncioBridge | None = None
        self._pool: dict[str, _Pooled] = {}  # least recently used first
        self._opening = 0  # pool entries being created (not in `_pool` yet)

    @property
    def pooled(self) -> int:
        """Connections in the pool now."""
        return len(self._pool)

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
    async def agent(self, endpoint: str, rpc_timeout: float, *, pooled: bool = True
                    ) -> AsyncIterator[AgentClient]:
        """A client for `endpoint`. `pooled=False`: never make room in the pool for it; with
        the pool full and no connection to `endpoint` in it, a connection for this call
        only (closed after it)."""
        ssl_context = self.tls()
        bridge = self._bridge
        if bridge is None or (not pooled and endpoint not in self._pool
                              and len(self._pool) + self._opening >= self.max_pooled):
            if bridge is not None:
                self.transient += 1
            async with AgentClient.connect(endpoint, bridge=bridge, ssl_context=ssl_context,
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
            self._opening += 1
            try:
                await client.open()  # no I/O: the channel connects on its first call
            finally:
                self._opening -= 1
            if len(self._pool) >= self.max_pooled:
                await self._make_room()
            entry = self._pool.get(endpoint)
            if entry is None or entry.client.ssl_context is not ssl_context:
                entry = self._pool[endpoint] = _Pooled(client)
                self.dialled += 1
                log.debug("new connection to agent %s", endpoint)
            else:  # another task pooled one while we were creating ours
                await client.close()
        else:  # most recently used goes last
            del self._pool[endpoint]
            self._pool[endpoint] = entry
        entry.users += 1
        entry.last_used = trio.current_time()
        return entry

    async def _make_room(self) -> None:
        """Close least recently used idle connections until one more fits. Connections in
        use are never closed: with all of them busy the pool grows past `max_pooled` until
        they are released (their number is bounded by the callers' concurrency)."""
        for endpoint, entry in list(self._pool.items()):
            if len(self._pool) < self.max_pooled:
                return
            if entry.users == 0:
                self._drop(endpoint, entry)
                self.evicted += 1
                await entry.client.close()

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
