"""Bulk blob channel for the fast path: raw blob bytes over TLS 1.3 (same mTLS identities and
sessions as the gRPC API; a client certificate is required in the handshake), served and
received by blocking sockets in worker threads that trio starts and bounds.

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
import errno
import json
import logging
import mmap
import os
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

    async def run(self, host: str, port: int, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
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
                self._reply(conn, False, code=exc.code, message=str(exc))
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


ALIGN = 4096  # O_DIRECT needs buffer, offset and length aligned to the logical block size


class PartWriter:
    """Appends a blob's bytes to its partial file, bypassing the page cache (O_DIRECT).

    Why: on the target the copy of every byte into the page cache was the largest CPU cost
    of a transfer (perf: `copy_folio_from_iter_atomic`, about half of the target agent's
    time; docs/benchmarks.md), and the pages it fills push other nodes' memory out just to
    be written back once. Direct writes DMA from one page-aligned 4 MiB staging buffer.
    Bytes are staged and written in full buffers; only the final tail (not a block
    multiple) is written through the page cache. Filesystems without O_DIRECT (tmpfs, …) get
    ordinary buffered writes. Blocking: call from a worker thread.

    `offset` must be a multiple of `ALIGN` (see `resume_offset`); the file is cut there."""

    def __init__(self, path: Path, offset: int) -> None:
        if offset % ALIGN:
            raise ValueError(f"unaligned resume offset {offset}")
        self.pos = offset  # bytes in the file
        self._buf = mmap.mmap(-1, CHUNK)  # page aligned
        self._view = memoryview(self._buf)
        self._fill = 0
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self.direct = hasattr(os, "O_DIRECT")
        try:
            self._fd = os.open(path, flags | (os.O_DIRECT if self.direct else 0), 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False
            self._fd = os.open(path, flags, 0o644)
        os.ftruncate(self._fd, offset)
        # An abandoned download thread may still deliver bytes after `close` (fast_path cancels
        # without waiting for it): never into a closed (possibly reused) descriptor.
        self._lock = threading.Lock()
        self._closed = False

    def write(self, data: bytes | memoryview) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("write to a closed blob file")
            self._write(memoryview(data))

    def reserve(self) -> memoryview:
        """The free part of the staging buffer, to receive into (then `advance`)."""
        with self._lock:
            if self._closed:
                raise ValueError("write to a closed blob file")
            return self._view[self._fill:]

    def advance(self, n: int) -> None:
        """`n` bytes were placed at the start of what `reserve` returned."""
        with self._lock:
            if self._closed:
                raise ValueError("write to a closed blob file")
            if not 0 <= n <= CHUNK - self._fill:
                raise ValueError(f"advance by {n} with {CHUNK - self._fill} bytes free")
            self._fill += n
            if self._fill == CHUNK:
                self._flush(CHUNK)

    def _write(self, mv: memoryview) -> None:
        while mv:
            n = min(len(mv), CHUNK - self._fill)
            self._view[self._fill:self._fill + n] = mv[:n]
            self._fill += n
            mv = mv[n:]
            if self._fill == CHUNK:
                self._flush(CHUNK)

    def _flush(self, n: int) -> None:
        done = 0
        while done < n:
            try:
                w = os.pwrite(self._fd, self._view[done:n], self.pos)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self._buffered()  # the filesystem refused direct I/O after all
                continue
            done += w
            self.pos += w
        remaining = self._fill - n
        if remaining:
            self._view[:remaining] = self._view[n:self._fill]
        self._fill = remaining

    def _buffered(self) -> None:
        import fcntl

        fl = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fl & ~os.O_DIRECT)
        self.direct = False

    def close(self, *, sync: bool) -> None:
        """Write what is staged (the tail through the page cache), fsync if `sync`, close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close(sync)

    def _close(self, sync: bool) -> None:
        try:
            aligned = self._fill - self._fill % ALIGN
            if aligned:
                self._flush(aligned)
            if self._fill:
                if self.direct:
                    self._buffered()
                self._flush(self._fill)
            if sync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            # A view handed out by `reserve` may still be held by an abandoned download
            # thread: then the mapping goes when that view does.
            with contextlib.suppress(BufferError):
                self._view.release()
                self._buf.close()


def resume_offset(size_on_disk: int, blob_size: int) -> int:
    """Where to continue a partial file: its length rounded down to `ALIGN` (0 if it is
    longer than the blob)."""
    if size_on_disk > blob_size:
        return 0
    return size_on_disk - size_on_disk % ALIGN


def download(host: str, port: int, ssl_context: ssl.SSLContext | None, *, session: str,
             digest: str, offset: int, size: int, sink: Callable[[memoryview], None],
             on_bytes: Callable[[int], None], stop: threading.Event,
             into: Callable[[], memoryview] | None = None) -> int:
    """Blocking: fetch `digest[offset:size]` and feed it to `sink` in ≤ 4 MiB pieces.
    With `into` (e.g. `PartWriter.reserve`) bytes are received straight into the free space
    it returns and `sink` is handed that part of it (no copy); else into a buffer of our own.
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
        own = memoryview(bytearray(CHUNK)) if into is None else None

        def space() -> memoryview:
            if own is not None:
                return own
            assert into is not None
            return into()

        if len(rest) > want:
            raise errors.DataLoss(f"{digest}: source sent more bytes than the blob has")
        extra = memoryview(rest)
        while extra:  # bytes that came with the reply line
            target = space()
            n = min(len(target), len(extra))
            target[:n] = extra[:n]
            sink(target[:n])
            extra = extra[n:]
            got += n
            on_bytes(n)
        while got < want:
            if stop.is_set():
                raise ConnectionAbortedError("cancelled")
            target = space()
            pos = 0
            limit = min(len(target), want - got)
            while pos < limit:
                n = conn.recv_into(target[pos:limit])
                if not n:
                    break
                pos += n
            if pos == 0:
                raise ConnectionError(f"{digest}: stream ended at {offset + got} of {size}")
            sink(target[:pos])
            got += pos
            on_bytes(pos)
        return got
    finally:
        with contextlib.suppress(OSError):
            conn.close()
