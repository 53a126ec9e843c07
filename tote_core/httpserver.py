"""A small HTTP/1.1 server on trio + h11 for /metrics, /healthz, /readyz and admission.

Routes are plain async functions returning (status, content type, body); `body_routes`
take the POSTed body (the admission webhook). With an `ssl_context` the same server speaks
HTTPS (the API server only calls webhooks over TLS). Kept tiny on purpose: probes,
Prometheus scrapes and AdmissionReviews need nothing more, and h11 is already in the
dependency tree through httpx.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import h11
import trio

log = logging.getLogger("tote.http")

Response = tuple[int, str, bytes]
Route = Callable[[], Awaitable[Response]]
BodyRoute = Callable[[bytes], Awaitable[Response]]
MAX_REQUEST = 64 * 1024
MAX_BODY = 8 * 1024 * 1024  # an AdmissionReview carries the whole object (twice on update)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def listen_socket(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A TCP socket listening on host:port now (port 0 picks one). A daemon binds all its
    ports before it starts serving, so a busy port fails start-up with that one OSError
    instead of tearing down servers that already run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = bytes(await stream.receive_some(65536))
        conn.receive_data(data)
        if not data:
            return h11.ConnectionClosed()


async def _read_body(conn: h11.Connection, stream: trio.abc.Stream) -> bytes | None:
    """The request body, or None when it is cut short or larger than MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next(conn, stream)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                return None
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            return None


async def _respond(
    target: str, method: bytes, conn: h11.Connection, stream: trio.abc.Stream,
    routes: dict[str, Route], body_routes: dict[str, BodyRoute],
) -> Response:
    if target in body_routes:
        if method != b"POST":
            return 405, "text/plain", b"POST only\n"
        payload = await _read_body(conn, stream)
        if payload is None:
            return 413, "text/plain", f"body missing or over {MAX_BODY} bytes\n".encode()
        return await body_routes[target](payload)
    route = routes.get(target)
    if route is None:
        return 404, "text/plain", b"not found\n"
    return await route()


async def _handle(
    stream: trio.abc.Stream, routes: dict[str, Route],
    body_routes: dict[str, BodyRoute] | None = None,
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        with trio.move_on_after(10):
            while True:
                event = await _next(conn, stream)
                if isinstance(event, h11.Request):
                    target = event.target.decode().split("?", 1)[0]
                    try:
                        status, ctype, body = await _respond(
                            target, event.method, conn, stream, routes, body_routes or {})
                    except (trio.BrokenResourceError, trio.ClosedResourceError,
                            h11.RemoteProtocolError):
                        raise
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
        return  # includes failed TLS handshakes: the client went away or spoke nonsense
    finally:
        with trio.move_on_after(1), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError
        ):
            await stream.aclose()


async def serve(
    address: str,
    routes: dict[str, Route],
    *,
    body_routes: dict[str, BodyRoute] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `routes` on `address` (host:port; port 0 picks one); started() gets the port.

    `body_routes` answer POSTs with their body; `ssl_context` turns on HTTPS; `sock` is a
    socket already listening on `address` (`listen_socket`), served instead of binding.
    """
    host, port = split_address(address)
    tcp = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))] if sock is not None \
        else await trio.open_tcp_listeners(port, host=host)
    bound = tcp[0].socket.getsockname()[1]
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp)
    if ssl_context is not None:
        listeners = [trio.SSLListener(lst, ssl_context, https_compatible=True) for lst in tcp]
    names = sorted([*routes, *(body_routes or {})])
    log.info("serving %s on %s:%d%s", ", ".join(names), host, bound,
             " (HTTPS)" if ssl_context else "")
    task_status.started(bound)
    await trio.serve_listeners(
        partial(_handle, routes=routes, body_routes=body_routes), listeners)
