"""Bulk blob channel for the fast path: raw blob bytes over TLS 1.3 (same mTLS identities and
sessions as the gRPC API; a client certificate is required in the handshake), served (here)
and received (`data_channel_receive.py`) by blocking sockets in worker threads that trio starts and
bounds.

Why: HTTP/2 framing in Python (h2) costs more CPU per byte than TLS itself; a plain TLS stream
moves the same bytes at several times the rate (docs/benchmarks.md). Control stays on gRPC:
a target first redeems its token with `OpenSession` (gRPC), then asks for ranges here.

Protocol, one range per connection:
  → `{"session": …, "digest": …, "offset": N, "length": N}\\n` (JSON, ≤ 4 KiB)
  ← `{"ok": true, "offset": N, "end": N, "size": N}\\n` then exactly end-offset raw bytes
  ← or `{"ok": false, "code": "PERMISSION_DENIED", "message": …, "metadata": {…}}\\n` (an
    agent error as `errors.to_wire` puts it: its reason under "tote-reason", as over gRPC)
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from tote_containerd.agent import errors, metrics
from tote_containerd.agent.tls import INSECURE, Identity, identity_of

log = logging.getLogger("tote.agent.data")

CHUNK = 4 * 1024 * 1024
MAX_REQUEST = 4096
IO_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 10.0
# Open data connections per agent. A target opens one per blob stream (--transfer-parallelism,
# default 4), so this serves four imports at full parallelism at once.
MAX_CONNECTIONS = 16


# (session, digest, offset, length, caller) → (file, offset, end, size)
Authorise = Callable[[str, str, int, int, Identity], Awaitable[tuple[Path, int, int, int]]]


async def _accept(sock: socket.socket) -> socket.socket:
    """Wait (in trio) for the next connection on a non-blocking listening socket."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            conn, _addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:  # e.g. ECONNABORTED, EMFILE: log, back off, keep serving
            log.warning("data channel accept failed: %s", exc)
            await trio.sleep(0.1)
            continue
        return conn


def read_head(sock: Any, limit: int) -> tuple[bytes, bytes]:
    """The protocol's JSON line (without its newline) and any bytes that came after it.
    Raises ConnectionError when the peer closes first, ValueError past `limit` bytes."""
    buf = b""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("peer closed before sending a full line")
        buf += data
        if len(buf) > limit:
            raise ValueError("header line too long")
    line, _, rest = buf.partition(b"\n")
    return line, rest


def _readline(sock: Any, limit: int) -> bytes:
    line, rest = read_head(sock, limit)
    if rest:
        raise ValueError("unexpected bytes after the request line")
    return line


class DataServer:
    """Accepts in trio; each connection's TLS handshake and byte pump run in a worker thread
    (blocking `ssl` sockets move bulk bytes with the least CPU per byte; docs/benchmarks.md
    compares a trio `SSLStream`). At most `max_connections` connections are open at once:
    beyond that the listener stops accepting (the kernel backlog holds the rest), so neither
    threads nor file handles grow with what peers open.

    The TLS context must require a client certificate (`tls.data_server_context`): a peer
    without one fails the handshake before a byte of the request is read."""

    def __init__(self, authorise: Authorise, ssl_context: ssl.SSLContext | None, *,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        if ssl_context is not None and ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the data channel's TLS context must require client certificates")
        self.authorise = authorise
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self._threads = trio.CapacityLimiter(max_connections)
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, sock: socket.socket, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on `sock`, listening already (`httpserver.listen_socket`); closes it."""
        try:
            sock.setblocking(False)
            self._token = trio.lowlevel.current_trio_token()
            slots = trio.Semaphore(self.max_connections)
            async with trio.open_nursery() as nursery:
                task_status.started(sock.getsockname()[1])
                while True:
                    await slots.acquire()
                    try:
                        conn = await _accept(sock)
                    except BaseException:
                        slots.release()
                        raise
                    nursery.start_soon(self._connection, conn, slots)
        finally:
            sock.close()

    async def _connection(self, conn: socket.socket, slots: trio.Semaphore) -> None:
        try:
            await trio.to_thread.run_sync(self._serve, conn, limiter=self._threads,
                                          abandon_on_cancel=True)
        except Exception:  # a bug in serving one connection must not end the agent
            log.exception("data connection crashed")
        finally:
            # On cancellation (agent stopping) wake the thread if it is blocked in I/O.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            slots.release()

    def _serve(self, raw: socket.socket) -> None:
        raw.setblocking(True)
        raw.settimeout(HANDSHAKE_TIMEOUT)
        conn: Any = raw
        try:
            if self.ssl_context is not None:
                try:
                    conn = self.ssl_context.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.info("data connection refused in the TLS handshake: %s", exc)
                    return
                ident = identity_of(conn.getpeercert())
                if ident.role != "agent":
                    self._reply(conn, False, code="PERMISSION_DENIED",
                                message="the data channel is for agent identities only")
                    return
            else:
                ident = INSECURE
            conn.settimeout(IO_TIMEOUT)
            req = json.loads(_readline(conn, MAX_REQUEST))
            if not isinstance(req, dict):
                raise ValueError("request is not an object")
            assert self._token is not None
            try:
                path, offset, end, size = trio.from_thread.run(
                    self.authorise, str(req.get("session", "")), str(req.get("digest", "")),
                    int(req.get("offset", 0)), int(req.get("length", 0)), ident,
                    trio_token=self._token)
            except errors.AgentError as exc:
                code, message, metadata = errors.to_wire(exc)
                self._reply(conn, False, code=code, message=message, metadata=metadata)
                return
            self._reply(conn, True, offset=offset, end=end, size=size)
            with path.open("rb", buffering=0) as f:
                sent = _send_file(conn, f, offset, end)
            metrics.BYTES_SENT.labels(path="fast").inc(sent)
        except (OSError, ValueError, ssl.SSLError, json.JSONDecodeError,
                trio.RunFinishedError) as exc:
            log.debug("data connection failed: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _reply(conn: Any, ok: bool, **fields: Any) -> None:
        conn.sendall(json.dumps({"ok": ok, **fields}).encode() + b"\n")


def _send_file(conn: Any, f: Any, offset: int, end: int) -> int:
    """Send `f[offset:end]`, encrypting straight from the page cache (a read-only mapping):
    a read() into a buffer first was a third of the source agent's CPU (perf:
    `_copy_to_iter`). Blob files are immutable (content-addressed, only ever unlinked, which
    leaves a mapping valid), so the mapping cannot lose pages under us. Returns bytes sent."""
    if end <= offset:
        return 0
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if len(m) < end:
            raise OSError(f"blob file shorter ({len(m)}) than expected ({end})")
        if hasattr(m, "madvise"):
            m.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(m)
        pos = offset
        while pos < end:
            n = min(CHUNK, end - pos)
            conn.sendall(view[pos:pos + n])
            pos += n
        view.release()
    finally:
        # When sending failed (peer gone), the exception's traceback still references the
        # slice being sent: closing now would raise BufferError over the real error. The
        # mapping then goes with the last reference.
        with contextlib.suppress(BufferError):
            m.close()
    return end - offset
