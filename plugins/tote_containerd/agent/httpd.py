"""Plain-HTTP endpoints of the agent: `/metrics` and `/healthz` (probes; no TLS, no client
certificate), on core's HTTP server. /healthz (and /readyz, /livez) is 200 while containerd
answered recently, else 503 with the reason."""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tote_containerd.agent.metrics import REGISTRY
from tote_core import httpserver


async def serve(sock: socket.socket, healthy: Callable[[], tuple[bool, str]], *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on `sock`, listening already (the daemon binds its ports before serving)."""
    async def metrics() -> httpserver.Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)

    async def health() -> httpserver.Response:
        ok, why = healthy()
        return (200 if ok else 503), "text/plain", (why + "\n").encode()

    routes: dict[str, httpserver.Route] = {
        "/metrics": metrics, "/healthz": health, "/readyz": health, "/livez": health}
    host, port = sock.getsockname()[:2]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    await httpserver.serve(address, routes, sock=sock, task_status=task_status)
