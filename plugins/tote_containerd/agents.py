"""How the controller side reaches a node's agent: where it listens (`discovery`), with which
identity (the controller's mTLS files, re-read when they change), over which connection
(`connections`: pooled while the plugin's service runs)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterable

from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.tls import client_context
from tote_containerd.agent.tokens import Signer
from tote_containerd.connections import AgentConnections
from tote_containerd.discovery import AgentDiscovery, agent_endpoint, agent_endpoints
from tote_core import tlsreload
from tote_core.errors import PermanentError
from tote_core.settings import ControllerSettings
from tote_core.structs.kube import Pod

RPC_TIMEOUT = 30.0


class ControllerTLS:
    """The controller's client context for agents. Rebuilt when one of its files changes
    (Secret volumes are updated in place when a certificate is renewed), so a renewed
    certificate is used from the next connection on without a restart."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.files = (settings.tls_cert, settings.tls_key, settings.tls_ca)
        self.insecure = settings.insecure
        self._stamp: tlsreload.Stamp = ()
        self._context: ssl.SSLContext | None = None

    def __call__(self) -> ssl.SSLContext | None:
        cert, key, ca = self.files
        if not (cert and key and ca):
            if self.insecure:
                return None
            raise PermanentError("mTLS to agents needs --tls-cert, --tls-key and --tls-ca "
                                 "(or --insecure)", reason="tls_config")
        stamp = tlsreload.file_stamp(self.files)
        if self._context is None or stamp != self._stamp:
            self._context = client_context(cert, key, ca, peer_role="agent")
            self._stamp = stamp
        return self._context


class Agents:
    """The agents of the cluster as the controller's hooks see them. `settings` are core's
    (the mTLS identity), `discovery` the plugin's; `pods` answers the current agent pods
    (the controller's pod cache, or the pods `tote doctor` listed)."""

    def __init__(self, settings: ControllerSettings,
                 pods: Callable[[], Iterable[Pod]] = tuple,
                 connections: AgentConnections | None = None, *,
                 discovery: AgentDiscovery | None = None) -> None:
        self.settings = settings
        self.discovery = discovery or AgentDiscovery()
        self.pods = pods
        self.connections = connections or AgentConnections(ControllerTLS(settings))

    def known(self) -> dict[str, str]:
        """node name → endpoint of every node with a known agent."""
        return agent_endpoints(self.discovery, self.settings.namespace, self.pods())

    def endpoint(self, node: str) -> str:
        """Where `node`'s agent listens; RetryLater if unknown."""
        return agent_endpoint(self.discovery, self.settings.namespace, self.pods(), node)

    def signer(self) -> Signer:
        """Mints transfer tokens with the controller's key (read afresh: it may have been
        renewed); unsigned under `--insecure`."""
        if self.connections.tls() is None:
            return Signer()
        return Signer(self.settings.tls_cert, self.settings.tls_key)

    @contextlib.asynccontextmanager
    async def agent(self, node: str, rpc_timeout: float | None = None
                    ) -> AsyncIterator[AgentClient]:
        """A client for `node`'s agent with the controller's identity."""
        async with self.at(self.endpoint(node), rpc_timeout) as client:
            yield client

    def at(self, endpoint: str, rpc_timeout: float | None = None, *, pooled: bool = True
           ) -> contextlib.AbstractAsyncContextManager[AgentClient]:
        """A client for the agent at `endpoint` (already looked up, e.g. from `known()` for
        a fan-out: one discovery pass instead of one per node). `pooled=False` for calls
        that visit every node once (`AgentConnections.agent`)."""
        return self.connections.agent(endpoint,
                                      RPC_TIMEOUT if rpc_timeout is None else rpc_timeout,
                                      pooled=pooled)


@contextlib.asynccontextmanager
async def open_agent(node: str, settings: ControllerSettings, pods: Iterable[Pod] = (),
                     rpc_timeout: float = RPC_TIMEOUT, *,
                     discovery: AgentDiscovery | None = None) -> AsyncIterator[AgentClient]:
    """One connection to `node`'s agent outside the controller (tests, benches, doctor)."""
    async with Agents(settings, lambda: pods, discovery=discovery).agent(
            node, rpc_timeout) as client:
        yield client
