"""The fast path's partial-file writer (O_DIRECT with a buffered tail): bytes land exactly,
in any piece sizes, resumed at a block boundary, on disk filesystems and on tmpfs."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from tote_containerd.agent.data_channel import CHUNK
from tote_containerd.agent.data_channel_receive import ALIGN, PartWriter, resume_offset

from tests.cluster.ci import require
from tote_core.httpserver import listen_socket

DIRS = [None, "/dev/shm"]


def _pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 100, ALIGN, ALIGN + 7, CHUNK - 3, CHUNK, 3 * CHUNK // 2])
        out.append(data[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("where", DIRS, ids=["disk", "tmpfs"])
def test_pieces_of_any_size_land_exactly(tmp_path: Path, where: str | None) -> None:
    require(where is None or os.path.isdir(where), f"no {where}")
    d = Path(where) if where else tmp_path
    path = d / f"tote-test-{os.getpid()}.part"
    rng = random.Random(7)
    data = rng.randbytes(2 * CHUNK + 12345)
    try:
        w = PartWriter(path, 0)
        for piece in _pieces(data, rng):
            w.write(piece)
        w.close(sync=True)
        assert path.read_bytes() == data
        with pytest.raises(ValueError):
            w.write(b"late")  # an abandoned download thread after close
    finally:
        path.unlink(missing_ok=True)


def test_interrupted_then_resumed_at_a_block_boundary(tmp_path: Path) -> None:
    path = tmp_path / "blob.part"
    data = random.Random(8).randbytes(CHUNK + 99999)
    w = PartWriter(path, 0)
    w.write(data[:CHUNK + 5000])
    w.close(sync=False)  # interrupted: everything received is kept
    assert path.read_bytes() == data[:CHUNK + 5000]
    offset = resume_offset(path.stat().st_size, len(data))
    assert offset % ALIGN == 0 and CHUNK <= offset <= CHUNK + 5000
    w = PartWriter(path, offset)  # cuts the unaligned tail
    w.write(data[offset:])
    w.close(sync=True)
    assert path.read_bytes() == data
    assert resume_offset(len(data) + 1, len(data)) == 0
    with pytest.raises(ValueError):
        PartWriter(path, 5)


def test_source_sends_ranges_from_the_mapped_file(tmp_path: Path) -> None:
    """The data channel's sender: exact ranges from a mapped blob file; a file shorter than
    the range is an error, not a short send; an empty range sends nothing."""
    import socket
    import threading

    from tote_containerd.agent.data_channel import _send_file

    path = tmp_path / "blob"
    data = random.Random(9).randbytes(CHUNK + 777)
    path.write_bytes(data)
    for offset, end in [(0, len(data)), (5, CHUNK + 1), (len(data), len(data))]:
        a, b = socket.socketpair()
        got = bytearray()

        def reader(sock: socket.socket = b, out: bytearray = got) -> None:
            while chunk := sock.recv(1 << 20):
                out += chunk

        t = threading.Thread(target=reader)
        t.start()
        with path.open("rb", buffering=0) as f:
            assert _send_file(a, f, offset, end) == end - offset
        a.close()
        t.join()
        b.close()
        assert bytes(got) == data[offset:end]
    with socket.socket() as s, path.open("rb", buffering=0) as f, \
            pytest.raises(OSError, match="shorter"):
        _send_file(s, f, 0, len(data) + 1)


async def test_download_straight_into_the_part_file(tmp_path: Path) -> None:
    """The data channel end to end without TLS (DataServer ↔ download): bytes received
    straight into the writer's staging buffer (`into=reserve`) land exactly, also when
    resumed mid-blob; the shipped server replies with the requested range."""
    import hashlib
    import threading

    import trio
    from tote_containerd.agent.data_channel import DataServer
    from tote_containerd.agent.data_channel_receive import download

    blob = tmp_path / "blob"
    data = random.Random(10).randbytes(2 * CHUNK + 4321)
    blob.write_bytes(data)

    async def authorise(session: str, digest: str, offset: int, length: int,
                        caller: object) -> tuple[Path, int, int, int]:
        return blob, offset, len(data), len(data)

    server = DataServer(authorise, None, max_connections=2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run, listen_socket("127.0.0.1", 0))
        for offset in (0, ALIGN * 3):
            part = tmp_path / f"blob-{offset}.part"
            part.write_bytes(data[:offset])
            w = PartWriter(part, offset)
            h = hashlib.sha256(data[:offset])

            def take(view: memoryview, w: PartWriter = w, h: object = h) -> None:
                h.update(view)  # type: ignore[attr-defined]
                w.advance(len(view))

            got = await trio.to_thread.run_sync(lambda w=w, take=take, offset=offset: download(
                "127.0.0.1", port, None, session="s", digest="sha256:x", offset=offset,
                size=len(data), sink=take, on_bytes=lambda n: None, stop=threading.Event(),
                into=w.reserve))
            w.close(sync=True)
            assert got == len(data) - offset
            assert part.read_bytes() == data
            assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        nursery.cancel_scope.cancel()


def test_peer_gone_mid_send_is_an_os_error(tmp_path: Path) -> None:
    """A receiver that disappears mid-blob: the sender sees the connection error, not a
    BufferError from closing the mapping (which used to end the whole source agent)."""
    import socket

    from tote_containerd.agent.data_channel import _send_file

    path = tmp_path / "blob"
    path.write_bytes(random.Random(11).randbytes(3 * CHUNK))
    a, b = socket.socketpair()
    b.close()
    with path.open("rb", buffering=0) as f, pytest.raises(OSError):
        _send_file(a, f, 0, 3 * CHUNK)
    a.close()

    class TlsLike:
        """Like `SSLSocket.sendall`, a Python frame that holds the data when it raises."""

        def sendall(self, data: memoryview) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    with path.open("rb", buffering=0) as f, pytest.raises(BrokenPipeError):
        _send_file(TlsLike(), f, 0, 3 * CHUNK)
