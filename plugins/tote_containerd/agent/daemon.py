"""The agent daemon: `run(settings)`, what `tote agent` (`__main__.main`) runs inside
`trio.run`. It checks its settings and TLS files, connects to the local
containerd, serves the agent gRPC API (mTLS unless `--insecure`), grpc.health.v1 on the same
port, and plain HTTP `/metrics` + `/healthz` on `--metrics-port`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NoReturn

import trio

from tote_containerd.agent import data_channel, httpd, oci, server, tls
from tote_containerd.agent.asyncio_bridge import AsyncioBridge
from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import AgentError
from tote_containerd.agent.node_agent import NodeAgent
from tote_containerd.agent.peer import Peer
from tote_containerd.agent.server import Serving
from tote_containerd.agent.settings import AgentSettings
from tote_containerd.agent.tokens import Verifier
from tote_core import httpserver, tlsfiles
from tote_core.errors import ConfigError

__all__ = ["run"]

log = logging.getLogger("tote.agent")
PROBE_INTERVAL = 5.0


def _node_name(settings: AgentSettings) -> str:
    return settings.node_name or os.environ.get("NODE_NAME") or socket.gethostname()


def _check_tls(settings: AgentSettings) -> bool:
    """True when TLS is on. Refuses to start half-configured, with unusable TLS material
    (garbage PEM, key/cert mismatch, expired, CA not a CA) or without `--insecure`."""
    if tlsfiles.check_mtls(settings):
        return True
    log.warning("INSECURE MODE: mTLS is off; any client on the network can import, remove "
                "and read images through this agent. Never run like this in a cluster.")
    return False


def _fast_path_root(settings: AgentSettings, reported: str) -> str:
    root = settings.content_root or reported
    if not settings.fast_path or not root:
        return ""
    blobs = Path(root) / "blobs" / "sha256"
    try:
        # containerd 1.x creates its content directory at the first write, so on an empty
        # node it is not there yet; its parent (containerd's root) is, when it is mounted here.
        if Path(root).parent.is_dir():
            Path(root).mkdir(mode=0o711, exist_ok=True)
        if Path(root).is_dir() and os.access(root, os.R_OK | os.W_OK | os.X_OK):
            blobs.mkdir(parents=True, exist_ok=True)  # containerd creates it lazily too
            if os.access(blobs, os.R_OK | os.W_OK | os.X_OK):
                return root
    except OSError:
        pass
    log.info("fast path off: content directory %s is not readable and writable here", root)
    return ""


async def run(settings: AgentSettings, *,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
    """Run the agent until cancelled. Never returns normally: if a server task ends or
    crashes, this raises (and the process exits non-zero, so the kubelet restarts it).

    Configuration problems (TLS files missing or unreadable, bad `--platform`, a port that
    cannot be bound) raise a plain `ConfigError` before anything serves, so the CLI prints
    one line instead of a traceback: every check and every bind happens before the
    servers' nursery opens."""
    from tote_containerd.agent.asyncio_bridge import open_bridge

    checked = _check(settings)
    async with open_bridge() as bridge:
        cd = await _connect_containerd(bridge, settings)
        try:
            agent = await _node_agent(bridge, cd, settings, checked)
            ports = _bind(settings, data=agent.fast_path and settings.data_port > 0)
            try:
                async with trio.open_nursery() as nursery:
                    await _serve(nursery, bridge, agent, ports, checked)
                    nursery.start_soon(agent.target.release_finished_imports_forever)
                    log.info("agent %s serving on %s:%d (%s, platform %s, fast path %s, "
                             "data port %s)", checked.node, settings.listen_address,
                             settings.grpc_port, "mTLS" if checked.tls else "INSECURE",
                             checked.platform, "on" if agent.fast_path else "off",
                             agent.source.data_port or "off")
                    task_status.started()
                    await _probe_forever(agent, checked)
            finally:
                ports.close()
        finally:
            with trio.CancelScope(shield=True):
                await cd.close()


@dataclass(frozen=True)
class _Checked:
    """What start-up derived from the settings before touching anything."""

    settings: AgentSettings
    node: str
    platform: str
    verifier: Verifier
    tls: tls.AgentTLS | None
    serving: list[Serving] = field(default_factory=list)
    last_ok: list[float] = field(default_factory=lambda: [0.0])

    def peer_context(self) -> ssl.SSLContext | None:
        return self.tls.peer() if self.tls is not None else None


def _check(settings: AgentSettings) -> _Checked:
    """TLS files, node name and platform; a `ConfigError` names what is wrong."""
    secure = _check_tls(settings)
    try:
        platform = oci.check_platform(settings.platform) if settings.platform \
            else oci.node_platform()
    except AgentError as exc:
        raise ConfigError(f"invalid --platform {settings.platform!r}: {exc}") from None
    verifier = Verifier()
    agent_tls: tls.AgentTLS | None = None
    if secure:
        try:
            agent_tls = tls.AgentTLS(settings, verifier)
            verifier.load(settings.tls_ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot use the TLS files (--tls-cert {settings.tls_cert}, "
                              f"--tls-key {settings.tls_key}, --tls-ca {settings.tls_ca}): "
                              f"{exc}") from None
    return _Checked(settings, _node_name(settings), platform, verifier, agent_tls)


async def _connect_containerd(bridge: AsyncioBridge, settings: AgentSettings
                              ) -> ContainerdClient:
    cd = ContainerdClient(bridge, settings.containerd_socket, settings.containerd_namespace)
    await cd.connect()  # no I/O: the channel connects on its first call
    return cd


async def _node_agent(bridge: AsyncioBridge, cd: ContainerdClient, settings: AgentSettings,
                      checked: _Checked) -> NodeAgent:
    """The agent, with the fast path on when containerd's content directory is usable."""
    reported = ""
    try:
        reported = await cd.content_root()
    except Exception as exc:  # containerd may come up later; health says so
        log.warning("containerd introspection failed: %s", exc)
    root = _fast_path_root(settings, reported)

    @contextlib.asynccontextmanager
    async def open_peer(endpoint: str) -> AsyncIterator[Peer]:
        async with AgentClient.connect(endpoint, bridge=bridge, rpc_timeout=60,
                                       ssl_context=checked.peer_context()) as client:
            yield client

    agent = NodeAgent(
        cd=cd, node=checked.node, platform=checked.platform, verifier=checked.verifier,
        open_peer=open_peer, content_root=root or reported, fast_path=bool(root),
        parallelism=settings.transfer_parallelism, data_ssl=checked.peer_context)
    if await agent.probe():
        checked.last_ok[0] = time.monotonic()
    return agent


@dataclass
class _Ports:
    grpc: socket.socket
    metrics: socket.socket
    data: socket.socket | None

    def close(self) -> None:
        for sock in (self.grpc, self.metrics, self.data):
            if sock is not None:
                sock.close()


def _bind(settings: AgentSettings, *, data: bool) -> _Ports:
    """Every listening socket, bound before anything serves (a busy port: `ConfigError`)."""
    bound: list[socket.socket] = []

    def listen(flag: str, port: int) -> socket.socket:
        try:
            sock = httpserver.listen_socket(settings.listen_address, port)
        except OSError as exc:
            for sock in bound:
                sock.close()
            raise ConfigError(f"cannot listen on {settings.listen_address or '*'}:{port} "
                              f"({flag}): {exc.strerror or exc}") from None
        bound.append(sock)
        return sock

    return _Ports(listen("--grpc-port", settings.grpc_port),
                  listen("--metrics-port", settings.metrics_port),
                  listen("--data-port", settings.data_port) if data else None)


async def _serve(nursery: trio.Nursery, bridge: AsyncioBridge, agent: NodeAgent,
                 ports: _Ports, checked: _Checked) -> None:
    """Start the gRPC API, the probe/metrics endpoint and the fast path's data channel."""
    agent_tls = checked.tls
    checked.serving.append(await nursery.start(partial(
        server.serve, bridge, agent, ports.grpc, agent_tls.grpc.front if agent_tls else None,
        insecure=agent_tls is None)))

    def healthy() -> tuple[bool, str]:
        if agent.containerd_error == "" and \
                time.monotonic() - checked.last_ok[0] < 3 * PROBE_INTERVAL:
            return True, f"ok: containerd {agent.containerd_version}"
        return False, f"containerd unreachable: {agent.containerd_error or 'no answer'}"

    await nursery.start(httpd.serve, ports.metrics, healthy)
    if ports.data is not None:
        data = data_channel.DataServer(agent.source.authorise_file_read,
                                    agent_tls.data.front if agent_tls else None)
        agent.source.data_port = await nursery.start(data.run, ports.data)


async def _probe_forever(agent: NodeAgent, checked: _Checked) -> NoReturn:
    """Every PROBE_INTERVAL: containerd's health into grpc.health.v1 and /healthz, and the
    TLS files re-read (rotated certificates)."""
    while True:
        ok = await agent.probe()
        if ok:
            checked.last_ok[0] = time.monotonic()
        for serving in checked.serving:
            await serving.set_serving(ok)
        if checked.tls is not None:
            checked.tls.refresh()
        await trio.sleep(PROBE_INTERVAL)
