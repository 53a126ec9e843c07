"""Plain-HTTP endpoints of the agent (trio): `/metrics` and `/healthz` (probes; no TLS, no
client certificate). /healthz is 200 while containerd answered recently, else 503."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tote_containerd.agent.metrics import REGISTRY

log = logging.getLogger("tote.agent.http")


async def serve(host: str, port: int, healthy: Callable[[], tuple[bool, str]], *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    task_status.started()
    async def handler(stream: trio.abc.Stream) -> None:
        await _handle(stream, healthy)

    await trio.serve_listeners(handler, listeners)


async def _handle(stream: trio.abc.Stream, healthy: Callable[[], tuple[bool, str]]) -> None:
    try:
        with trio.move_on_after(10):
            buf = b""
            while b"\r\n\r\n" not in buf and len(buf) < 16384:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
            line = buf.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
            elif path in ("/healthz", "/readyz", "/livez"):
                ok, why = healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", (why + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            await stream.send_all(head + (b"" if parts[:1] == ["HEAD"] else body))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()
