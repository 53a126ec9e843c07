"""The fast path of a transfer (target side): each missing blob is written as a verified file
next to containerd's blobs — bytes from the source's data channel (worker thread, see
`data_channel`), the rest over gRPC — then hard-linked into place and registered with
containerd (STAT + COMMIT). Partial files stay for a resume; stale ones are swept."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tote_containerd.agent import data_channel_receive, metrics, oci
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import (
    AgentError,
    DataLoss,
    DigestMismatch,
    FailedPrecondition,
    Unavailable,
)
from tote_containerd.agent.peer import Peer
from tote_containerd.agent.progress import Reporter
from tote_containerd.agent.stream_extract import LayerStream
from tote_containerd.agent.tls import ClientTLS

log = logging.getLogger("tote.agent")



def _place(part: Path, final: Path) -> bool:
    """Hard-link the verified file into containerd's blob directory (if not there yet)."""
    if final.exists():
        return True
    if not part.exists():
        return False
    with contextlib.suppress(FileExistsError):
        os.link(part, final)
    return True


def _sweep_parts(tmpdir: Path, max_age: float) -> None:
    """Delete partial fast-path files nobody resumed within `max_age` seconds."""
    if not tmpdir.is_dir():
        return
    cutoff = time.time() - max_age
    for p in tmpdir.glob("*.part"):
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                p.unlink()


def _sha256_file_prefix(path: Path, length: int) -> Any:
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = length
        while left:
            chunk = f.read(min(left, 8 * 1024 * 1024))
            if not chunk:
                raise OSError(f"{path} shorter than {length}")
            h.update(chunk)
            left -= len(chunk)
    return h


class FastPath:
    def __init__(self, cd: ContainerdClient, content_root: str,
                 data_ssl: ClientTLS) -> None:
        self.cd = cd
        self.root = Path(content_root)
        self.tmpdir = self.root / "tote-tmp"
        self.data_ssl = data_ssl

    async def sweep(self, max_age: float) -> None:
        """Delete partial files nobody resumed within `max_age` seconds."""
        await trio.to_thread.run_sync(_sweep_parts, self.tmpdir, max_age)

    async def discard_parts(self, digests: list[str]) -> None:
        """Remove the partial files of blobs that are committed now. An earlier attempt
        cancelled between its COMMIT and removing its file leaves one, and the blob being
        present, no later fetch would touch it again (the sweep would, an hour on)."""
        def discard() -> None:
            for digest in digests:
                (self.tmpdir / f"{digest.split(':', 1)[1]}.part").unlink(missing_ok=True)

        await trio.to_thread.run_sync(discard)

    async def fetch(self, peer: Peer, session: str, d: oci.Desc, lease: str,
                    reporter: Reporter, data_ep: tuple[str, int] | None,
                    tee: LayerStream | None = None) -> None:
        """Write a verified blob file next to containerd's blobs, then link it via the API.
        `tee`: also handed every byte as it is written (a layer extracted while it arrives),
        and stopped unless it got the whole blob from its first byte (a resumed transfer
        is extracted once whole)."""
        try:
            await self._fetch(peer, session, d, lease, reporter, data_ep, tee)
        except BaseException:
            if tee is not None:
                tee.stop("the receive failed")
            raise

    async def _fetch(self, peer: Peer, session: str, d: oci.Desc, lease: str,
                     reporter: Reporter, data_ep: tuple[str, int] | None,
                     tee: LayerStream | None) -> None:
        hexd = d.digest.split(":", 1)[1]
        final = self.root / "blobs" / "sha256" / hexd
        tmpdir = self.tmpdir
        part = tmpdir / f"{hexd}.part"
        if not final.exists():
            await trio.to_thread.run_sync(lambda: tmpdir.mkdir(parents=True, exist_ok=True))
            offset = data_channel_receive.resume_offset(part.stat().st_size if part.exists() else 0,
                                             d.size)
            h = (await trio.to_thread.run_sync(_sha256_file_prefix, part, offset)
                 if offset else hashlib.sha256())
            if offset and tee is not None:
                tee.stop(f"resumed at {offset}")
            if offset:
                reporter.resumed(offset)
                log.info("resuming %s (fast path) at %d of %d", d.digest, offset, d.size)
            f = await trio.to_thread.run_sync(data_channel_receive.PartWriter, part, offset)
            complete = False
            try:
                pos = offset

                def _put(data: bytes | memoryview) -> None:
                    h.update(data)
                    f.write(data)
                    if tee is not None:
                        tee.feed(data)

                def _received(view: memoryview) -> None:  # already in f's buffer
                    h.update(view)
                    if tee is not None:
                        tee.feed(view)  # copies: the buffer is reused after `advance`
                    f.advance(len(view))

                if pos < d.size and data_ep is not None:
                    pos += await self._fetch_data_channel(data_ep, session, d, pos, _received,
                                                          reporter, into=f.reserve)
                if pos < d.size:
                    async with peer.read_blob(session, d.digest, pos) as chunks:
                        async for off, data, total in chunks:
                            if total != d.size or off != pos or pos + len(data) > d.size:
                                raise DataLoss(f"{d.digest}: source sent an unexpected range")
                            await trio.to_thread.run_sync(_put, data)
                            pos += len(data)
                            reporter.add(len(data))
                            metrics.BYTES_RECEIVED.labels(path="fast").inc(len(data))
                if pos != d.size:
                    raise Unavailable(f"{d.digest}: stream ended at {pos} of {d.size}")
                complete = True
                if tee is not None:
                    tee.finish()
            finally:
                # Complete: durable before containerd registers it. Interrupted: kept for a
                # resume, which re-hashes the prefix anyway. Closed even when cancelled.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(functools.partial(f.close, sync=complete))
            if "sha256:" + h.hexdigest() != d.digest:
                part.unlink(missing_ok=True)
                metrics.DIGEST_MISMATCH.inc()
                raise DigestMismatch(f"{d.digest}: bytes from the source do not match the "
                                     "digest; rejected")
            os.chmod(part, 0o444)
        else:
            if tee is not None:
                tee.stop("the blob is here already")
            reporter.add(d.size)
        await self._link(d, final, part, lease)

    async def _fetch_data_channel(self, data_ep: tuple[str, int], session: str, d: oci.Desc,
                                  offset: int, sink: Callable[[memoryview], None],
                                  reporter: Reporter,
                                  into: Callable[[], memoryview] | None = None) -> int:
        """Bulk bytes over the data channel (worker thread). Returns bytes written to `sink`;
        on a transport failure the caller continues from there over gRPC."""
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        written = [0]

        def counted(mv: memoryview) -> None:
            sink(mv)
            written[0] += len(mv)

        def on_bytes(n: int) -> None:
            metrics.BYTES_RECEIVED.labels(path="fast").inc(n)
            trio.from_thread.run_sync(reporter.add, n, trio_token=token)

        fetch = functools.partial(
            data_channel_receive.download, data_ep[0], data_ep[1], self.data_ssl(), session=session,
            digest=d.digest, offset=offset, size=d.size, sink=counted, on_bytes=on_bytes,
            stop=stop, into=into)
        try:
            await trio.to_thread.run_sync(fetch, abandon_on_cancel=True)
        except (OSError, ValueError) as exc:
            log.info("data channel for %s failed after %d bytes (%s); continuing over gRPC",
                     d.digest, written[0], exc)
        except FailedPrecondition as exc:
            log.debug("data channel refused %s: %s", d.digest, exc)
        finally:
            stop.set()
        return written[0]

    async def _link(self, d: oci.Desc, final: Path, part: Path, lease: str) -> None:
        """Place the verified file and register it: STAT (offset == total) + COMMIT.

        A containerd GC between placing and COMMIT deletes blob files it has no metadata for,
        so the verified copy stays hard-linked under tote-tmp until COMMIT succeeded and is
        re-linked if the GC got there first."""
        ref = f"tote-fast-{d.digest.split(':', 1)[1]}"
        last: Exception | None = None
        for attempt in range(6):
            if not await trio.to_thread.run_sync(_place, part, final):
                raise Unavailable(f"{d.digest}: placed blob vanished before registration")
            try:
                async with self.cd.writer(ref, d.size, d.digest, lease=lease) as w:
                    if w.exists:
                        break
                    if w.offset == d.size:
                        await w.commit()
                        break
                await self.cd.abort(ref)  # the file went between link and STAT: again
            except AgentError as exc:
                # GC raced us, or containerd is still tearing down the previous attempt's
                # ingest of this ref ("unlinkat …/ingest/…: directory not empty"): again.
                last = exc
                with contextlib.suppress(AgentError):
                    await self.cd.abort(ref)
            await trio.sleep(0.05 * (attempt + 1))
        else:
            raise Unavailable(f"{d.digest}: containerd did not accept the placed blob "
                              f"({last})")
        await trio.to_thread.run_sync(functools.partial(part.unlink, missing_ok=True))
