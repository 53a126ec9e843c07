"""Bulk blob channel for the fast path: raw blob bytes over TLS 1.3 (same mTLS identities and
sessions as the gRPC API), served and received by blocking sockets in worker threads.

Why: HTTP/2 framing in Python (h2) costs more CPU per byte than TLS itself; a plain TLS stream
moves the same bytes at several times the rate (docs/benchmarks.md). Control stays on gRPC:
a target first redeems its token with `OpenSession` (gRPC), then asks for ranges here.

Protocol, one range per connection:
  → `{"session": …, "digest": …, "offset": N, "length": N}\\n` (JSON, ≤ 4 KiB)
  ← `{"ok": true, "offset": N, "end": N, "size": N}\\n` then exactly end-offset raw bytes
  ← or `{"ok": false, "code": "PERMISSION_DENIED", "message": …}\\n`
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
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

# (session, digest, offset, length, caller) → (file, offset, end, size)
Authorise = Callable[[str, str, int, int, Identity], Awaitable[tuple[Path, int, int, int]]]


def _readline(sock: Any, limit: int) -> bytes:
    buf = b""
    while b"\n" not in buf:
        data = sock.recv(1024)
        if not data:
            raise ConnectionError("peer closed before sending a full line")
        buf += data
        if len(buf) > limit:
            raise ValueError("request line too long")
    line, _, rest = buf.partition(b"\n")
    if rest:
        raise ValueError("unexpected bytes after the request line")
    return line


class DataServer:
    """Accepts connections in a thread; each connection is served in its own thread."""

    def __init__(self, authorise: Authorise, ssl_context: ssl.SSLContext | None) -> None:
        self.authorise = authorise
        self.ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, host: str, port: int, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        self._sock = sock
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._accept_loop, name="tote-data-accept",
                                  daemon=True)
        thread.start()
        task_status.started(sock.getsockname()[1])
        try:
            await trio.sleep_forever()
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="tote-data-conn",
                             daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(IO_TIMEOUT)
        conn: Any = raw
        try:
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(raw, server_side=True)
                ident = identity_of(conn.getpeercert())
                if ident.role != "agent":
                    self._reply(conn, False, code="PERMISSION_DENIED",
                                message="the data channel is for agent identities only")
                    return
            else:
                ident = INSECURE
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
                self._reply(conn, False, code=exc.code, message=str(exc))
                return
            self._reply(conn, True, offset=offset, end=end, size=size)
            sent = 0
            with path.open("rb") as f:
                f.seek(offset)
                left = end - offset
                while left:
                    data = f.read(min(CHUNK, left))
                    if not data:
                        raise OSError(f"{path} shorter than expected")
                    conn.sendall(data)
                    left -= len(data)
                    sent += len(data)
            metrics.BYTES_SENT.labels(path="fast").inc(sent)
        except (OSError, ValueError, ssl.SSLError, json.JSONDecodeError) as exc:
            log.debug("data connection failed: %s", exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _reply(conn: Any, ok: bool, **fields: Any) -> None:
        conn.sendall(json.dumps({"ok": ok, **fields}).encode() + b"\n")


def download(host: str, port: int, ssl_context: ssl.SSLContext | None, *, session: str,
             digest: str, offset: int, size: int, sink: Callable[[memoryview], None],
             on_bytes: Callable[[int], None], stop: threading.Event) -> int:
    """Blocking: fetch `digest[offset:size]` and feed it to `sink` in ≤ 4 MiB pieces.
    Returns the number of bytes received. Raises `errors.AgentError` for refusals and
    `ConnectionError`/`OSError` for transport failures (callers may fall back)."""
    raw = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    conn: Any = raw
    try:
        if ssl_context is not None:
            conn = ssl_context.wrap_socket(raw)
            peer = identity_of(conn.getpeercert())
            if peer.role != "agent":
                raise errors.PermissionDenied("data channel peer is not a tote agent")
        conn.sendall(json.dumps({"session": session, "digest": digest, "offset": offset,
                                 "length": 0}).encode() + b"\n")
        head = b""
        while b"\n" not in head:
            data = conn.recv(4096)
            if not data:
                raise ConnectionError("source closed the data channel")
            head += data
            if len(head) > MAX_REQUEST:
                raise errors.DataLoss("oversized data channel header")
        line, _, rest = head.partition(b"\n")
        meta = json.loads(line)
        if not meta.get("ok"):
            raise errors.from_code(str(meta.get("code", "UNKNOWN")), str(meta.get("message")))
        if meta.get("offset") != offset or meta.get("size") != size or meta.get("end") != size:
            raise errors.DataLoss(f"{digest}: source offered an unexpected range {meta}")
        want = size - offset
        got = 0
        buf = bytearray(CHUNK)
        mv = memoryview(buf)
        if rest:
            if len(rest) > want:
                raise errors.DataLoss(f"{digest}: source sent more bytes than the blob has")
            sink(memoryview(rest))
            got += len(rest)
            on_bytes(len(rest))
        while got < want:
            if stop.is_set():
                raise ConnectionAbortedError("cancelled")
            pos = 0
            limit = min(CHUNK, want - got)
            while pos < limit:
                n = conn.recv_into(mv[pos:limit])
                if not n:
                    break
                pos += n
            if pos == 0:
                raise ConnectionError(f"{digest}: stream ended at {offset + got} of {size}")
            sink(mv[:pos])
            got += pos
            on_bytes(pos)
        return got
    finally:
        with contextlib.suppress(OSError):
            conn.close()
