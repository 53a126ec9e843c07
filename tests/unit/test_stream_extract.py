"""The streaming layer extractor (`stream_extract`) on its own: what it refuses, and that a
refusal writes nothing outside the snapshot directory; the stream's end states (truncated,
stopped); the diff ID it computes. Its tree against containerd's own Apply (devices,
whiteouts, ownership, xattrs) is checked with a real containerd in
tests/integration/containerd/test_stream_extract.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest
from tote_containerd.agent.stream_extract import LayerStream, Refused, StreamStopped, extract

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info.uid, info.gid = os.getuid(), os.getgid()
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None,
            link: str = "", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 1_700_000_000
    if data is not None:
        info.size = len(data)
    return info, data


def _run(blob: bytes, root: Path, *, piece: int = 7000, end: str = "finish") -> str:
    """Feed `blob` from another thread (as the receive does) while extracting."""
    stream = LayerStream("sha256:" + hashlib.sha256(blob).hexdigest(), GZ)
    assert stream.attach()

    def receive() -> None:
        for i in range(0, len(blob), piece):
            stream.feed(blob[i:i + piece])
        stream.finish() if end == "finish" else stream.stop("the receive failed")

    t = threading.Thread(target=receive)
    t.start()
    try:
        return extract(stream, str(root))
    finally:
        stream.stop("test over")  # a receive still feeding must not wait for us
        t.join(10)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "snapshot" / "fs", tmp_path / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    return root, outside


def test_files_dirs_links_and_the_diff_id(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    tar = _tar(_member("./", tarfile.DIRTYPE, mode=0o755),
               _member("etc/", tarfile.DIRTYPE, mode=0o750),
               _member("etc/motd", data=b"hello\n" * 50_000, mode=0o4755),
               _member("etc/motd.link", tarfile.LNKTYPE, link="etc/motd", mode=0o4755),
               _member("etc/rel", tarfile.SYMTYPE, link="../motd"),
               _member("deep/er/file", data=b"x"))
    blob = gzip.compress(tar[:5000]) + gzip.compress(tar[5000:])  # two gzip members
    assert _run(blob, root) == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert (root / "etc" / "motd").read_bytes() == b"hello\n" * 50_000
    assert (root / "etc" / "motd").stat().st_mode & 0o7777 == 0o4755
    assert (root / "etc").stat().st_mode & 0o7777 == 0o750
    assert os.path.samefile(root / "etc" / "motd", root / "etc" / "motd.link")
    assert os.readlink(root / "etc" / "rel") == "../motd"
    assert (root / "deep" / "er" / "file").read_bytes() == b"x"
    assert int((root / "etc" / "motd").stat().st_mtime) == 1_700_000_000


def test_an_uncompressed_layer_is_hashed_as_is(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    tar = _tar(_member("a", data=b"a")) + b"\0" * 4096  # bytes after the end blocks count
    assert _run(tar, root) == "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.mark.parametrize("members", [
    pytest.param(lambda o: [_member(str(o / "abs"), data=b"x")], id="absolute"),
    pytest.param(lambda o: [_member("../outside/up", data=b"x")], id="dot-dot"),
    pytest.param(lambda o: [_member("a/../../outside/up", data=b"x")], id="inner-dot-dot"),
    pytest.param(lambda o: [_member("esc", tarfile.SYMTYPE, link=str(o)),
                            _member("esc/pwned", data=b"x")], id="through-a-symlink"),
    pytest.param(lambda o: [_member("esc", tarfile.SYMTYPE, link="../outside"),
                            _member("esc/sub/pwned", data=b"x")], id="through-a-relative-link"),
    pytest.param(lambda o: [_member("hl", tarfile.LNKTYPE, link="../outside/f")],
                 id="hard-link-out"),
    pytest.param(lambda o: [_member("hl", tarfile.LNKTYPE, link="etc/passwd")],
                 id="hard-link-to-no-member"),
    pytest.param(lambda o: [_member("esc", tarfile.SYMTYPE, link=str(o)),
                            _member("esc/.wh.x", data=b"")], id="whiteout-through-a-link"),
])
def test_unsafe_members_are_refused_and_write_nothing_outside(
        dirs: tuple[Path, Path], members: object) -> None:
    root, outside = dirs
    (outside / "f").write_bytes(b"keep")
    before = sorted(p.name for p in outside.rglob("*"))
    blob = gzip.compress(_tar(*members(outside)))  # type: ignore[operator]
    with pytest.raises(Refused):
        _run(blob, root)
    assert sorted(p.name for p in outside.rglob("*")) == before
    assert (outside / "f").read_bytes() == b"keep"
    assert not os.path.lexists(root / "abs") and not os.path.lexists(root.parent / "outside")


def test_a_directory_member_over_a_symlink_replaces_the_symlink(dirs: tuple[Path, Path]
                                                                ) -> None:
    """A later member of another kind replaces an earlier one (as containerd's applier
    does): the symlink goes, a real directory takes its place, nothing is followed."""
    root, outside = dirs
    _run(gzip.compress(_tar(_member("d", tarfile.SYMTYPE, link=str(outside)),
                            _member("d", tarfile.DIRTYPE), _member("d/f", data=b"in"))), root)
    assert (root / "d").is_dir() and not (root / "d").is_symlink()
    assert (root / "d" / "f").read_bytes() == b"in" and list(outside.iterdir()) == []


def test_a_truncated_gzip_stream_is_refused(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    blob = gzip.compress(_tar(_member("f", data=os.urandom(100_000))))
    with pytest.raises(Refused, match="truncated"):
        _run(blob[:-9], root)


def test_a_receive_that_fails_stops_the_extraction(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    blob = gzip.compress(_tar(_member("f", data=os.urandom(100_000))))
    with pytest.raises(StreamStopped, match="receive failed"):
        _run(blob[:len(blob) // 2], root, end="stop")


def test_zstd_is_left_to_containerd(dirs: tuple[Path, Path]) -> None:
    root, _ = dirs
    with pytest.raises(Refused, match="zstd"):
        _run(b"\x28\xb5\x2f\xfd" + b"\0" * 100, root)


def test_a_stopped_stream_never_blocks_its_receive() -> None:
    stream = LayerStream("sha256:" + "0" * 64, GZ)
    for _ in range(50):  # more than the queue holds: would wait if nobody had stopped it
        if _ == 3:
            stream.stop("nobody extracts it")
        stream.feed(b"x" * 10)
    assert not stream.attach()
    with pytest.raises(StreamStopped):
        stream.read_chunk()
