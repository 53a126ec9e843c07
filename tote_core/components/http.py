"""A small HTTP/1.1 server on trio + h11 for /metrics, /healthz, /readyz.

Routes are plain async functions returning (status, content type, body). Kept tiny on
purpose: probes and Prometheus scrapes need nothing more, and h11 is already in the
dependency tree through httpx.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import h11
import trio

log = logging.getLogger("tote.http")

Response = tuple[int, str, bytes]
Route = Callable[[], Awaitable[Response]]
MAX_REQUEST = 64 * 1024


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


async def _handle(stream: trio.SocketStream, routes: dict[str, Route]) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        with trio.move_on_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    target = event.target.decode().split("?", 1)[0]
                    route = routes.get(target)
                    if route is None:
                        status, ctype, body = 404, "text/plain", b"not found\n"
                    else:
                        try:
                            status, ctype, body = await route()
                        except Exception as exc:
                            log.exception("route %s failed", target)
                            status, ctype, body = 500, "text/plain", f"{exc}\n".encode()
                    headers = [
                        ("content-type", ctype),
                        ("content-length", str(len(body))),
                        ("connection", "close"),
                    ]
                    head = h11.Response(status_code=status, headers=headers)
                    await stream.send_all(conn.send(head))
                    if event.method != b"HEAD":
                        await stream.send_all(conn.send(h11.Data(data=body)))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    return
                if isinstance(event, (h11.ConnectionClosed, h11.EndOfMessage)):
                    return
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


async def serve(
    address: str,
    routes: dict[str, Route],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `routes` on `address` (host:port; port 0 picks one); started() gets the port."""
    host, port = split_address(address)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("serving %s on %s:%d", ", ".join(sorted(routes)), host, bound)
    task_status.started(bound)
    await trio.serve_listeners(partial(_handle, routes=routes), listeners)
