"""The receiving side of the fast-path data channel (`data_channel.py` has the protocol and the
server): download a blob range from a source agent straight into an O_DIRECT partial file,
verified by the caller (`fast_path.py`). Blocking; runs in worker threads."""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tote_containerd.agent import errors
from tote_containerd.agent.data_channel import CHUNK, IO_TIMEOUT, MAX_REQUEST, read_head
from tote_containerd.agent.tls import PeerRoleMismatch

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
            try:
                conn = ssl_context.wrap_socket(raw)
            except PeerRoleMismatch as exc:
                raise errors.PermissionDenied(f"data channel peer: {exc}",
                                              reason="unauthorized") from exc
        conn.sendall(json.dumps({"session": session, "digest": digest, "offset": offset,
                                 "length": 0}).encode() + b"\n")
        try:
            line, rest = read_head(conn, MAX_REQUEST)
        except ValueError:
            raise errors.DataLoss("oversized data channel header") from None
        meta = json.loads(line)
        if not meta.get("ok"):
            md = meta.get("metadata")
            raise errors.from_wire(str(meta.get("code", "UNKNOWN")), str(meta.get("message")),
                                   md if isinstance(md, dict) else None)
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
