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
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from tote_containerd.agent.peer import Peer
from tote_containerd.agent.settings import AgentSettings
from tote_core import tlsfiles
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
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the agent until cancelled. Never returns normally: if a server task ends or
    crashes, this raises (and the process exits non-zero, so the kubelet restarts it).

    Configuration problems (TLS files missing or unreadable, bad `--platform`, a port that
    cannot be bound) raise a plain `ConfigError`, never wrapped in an exception group, so the
    CLI prints one line instead of a traceback."""
    from tote_containerd.agent.errors import single_leaf

    try:
        await _run(settings, task_status=task_status)
    except BaseExceptionGroup as eg:
        leaf = single_leaf(eg)
        if isinstance(leaf, ConfigError):
            raise leaf from None
        raise
    # _run ends only by cancellation or by raising. Should it ever return, nothing serves
    # any more: raise, so the process exits non-zero instead of idling without a listener.
    raise RuntimeError("the agent stopped serving unexpectedly")


def _listen_error(what: str, host: str, port: int, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot listen on {host or '*'}:{port} ({what}): "
                       f"{exc.strerror or exc}")


async def _run(settings: AgentSettings, *, task_status: trio.TaskStatus[None]) -> None:
    import ssl

    from tote_containerd.agent import _aio, dataplane, httpd, oci, tls
    from tote_containerd.agent.client import AgentClient
    from tote_containerd.agent.containerd import ContainerdClient
    from tote_containerd.agent.errors import AgentError
    from tote_containerd.agent.node_agent import NodeAgent
    from tote_containerd.agent.server import GrpcServer
    from tote_containerd.agent.tokens import Verifier

    secure = _check_tls(settings)
    node = _node_name(settings)
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

    def peer_ctx() -> ssl.SSLContext | None:
        return agent_tls.peer() if agent_tls is not None else None

    @contextlib.asynccontextmanager
    async def open_peer(endpoint: str) -> AsyncIterator[Peer]:
        async with AgentClient.connect(endpoint, ssl_context=peer_ctx(), rpc_timeout=60) as c:
            yield c

    async with _aio.open_loop():
        cd = ContainerdClient(settings.containerd_socket, settings.containerd_namespace)
        await cd.connect()
        try:
            reported = ""
            try:
                reported = await cd.content_root()
            except Exception as exc:  # containerd may come up later; health says so
                log.warning("containerd introspection failed: %s", exc)
            root = _fast_path_root(settings, reported)
            agent = NodeAgent(
                cd=cd, node=node, platform=platform, verifier=verifier, open_peer=open_peer,
                content_root=root or reported, fast_path=bool(root),
                parallelism=settings.transfer_parallelism, data_ssl=peer_ctx)
            await agent.probe()
            last_ok = [time.monotonic() if agent.containerd_error == "" else 0.0]

            def healthy() -> tuple[bool, str]:
                if agent.containerd_error == "" and \
                        time.monotonic() - last_ok[0] < 3 * PROBE_INTERVAL:
                    return True, f"ok: containerd {agent.containerd_version}"
                return False, f"containerd unreachable: {agent.containerd_error or 'no answer'}"

            grpc_server = GrpcServer(agent, insecure=not secure)
            try:
                await grpc_server.start(settings.listen_address, settings.grpc_port,
                                        agent_tls.grpc.front if agent_tls else None)
            except OSError as exc:
                raise _listen_error("--grpc-port", settings.listen_address,
                                    settings.grpc_port, exc) from None
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await nursery.start(httpd.serve, settings.listen_address,
                                            settings.metrics_port, healthy)
                    except OSError as exc:
                        raise _listen_error("--metrics-port", settings.listen_address,
                                            settings.metrics_port, exc) from None
                    if agent.fast_path and settings.data_port:
                        data = dataplane.DataServer(agent.source.authorise_file_read,
                                                   agent_tls.data.front if agent_tls else None)
                        try:
                            agent.source.data_port = await nursery.start(
                                data.run, settings.listen_address, settings.data_port)
                        except OSError as exc:
                            raise _listen_error("--data-port", settings.listen_address,
                                                settings.data_port, exc) from None
                    log.info("agent %s serving on %s:%d (%s, platform %s, fast path %s, "
                             "data port %s)", node, settings.listen_address,
                             settings.grpc_port, "mTLS" if secure else "INSECURE", platform,
                             "on" if agent.fast_path else "off", agent.source.data_port or "off")
                    task_status.started()
                    while True:
                        if not grpc_server.listening():
                            # Never stay up without serving: end the process (non-zero),
                            # so the kubelet restarts the agent.
                            raise RuntimeError("the agent gRPC server stopped listening")
                        ok = await agent.probe()
                        if ok:
                            last_ok[0] = time.monotonic()
                        await grpc_server.set_serving(ok)
                        if agent_tls is not None:
                            agent_tls.refresh()
                        await trio.sleep(PROBE_INTERVAL)
            finally:
                with trio.CancelScope(shield=True):
                    await grpc_server.stop()
        finally:
            with trio.CancelScope(shield=True):
                await cd.close()
