"""Layers extracted while their bytes arrive (`stream_extract`), against a real containerd
2.x (overlayfs, rebase-capable) and real agents.

The tree the streaming extractor writes into an extraction snapshot equals what
containerd's own diff service `Apply` writes for the same layer into an overlay upper
directory (every member kind: files, directories, symlinks, hard links, devices, a fifo,
ownership, setuid/setgid/sticky, xattrs, whiteouts, an opaque directory, a member written
twice); a diff ID mismatch, a truncated stream, a stopped receive, a cancellation and an
unsafe member each leave no extraction snapshot; an import extracts its layers while
receiving (fast path and API path), and a resumed transfer applies the resumed layer once
it is whole, as before.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from tote_containerd._gen.containerd.services.diff.v1 import diff_pb2
from tote_containerd.agent import oci
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agent.asyncio_bridge import open_bridge
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import DataLoss
from tote_containerd.agent.stream_extract import LayerStream
from tote_containerd.agent.tokens import Signer
from tote_containerd.agent.unpack import Unpacker, _labels, _upper_only, chain_ids

from tests.cluster.containerd_env import AgentProc, Env
from tests.cluster.images import Blob, Image, compressed_image, digest_of, single_image

pytestmark = pytest.mark.integration
SN = "overlayfs"
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"
CAP_NET_RAW = bytes([1, 0, 0, 2, 0, 0x20, 0, 0]) + bytes(12)  # security.capability v2


@pytest.fixture(scope="module")
def cri(env: Env) -> Iterator[dict[str, AgentProc]]:
    """CRI node `s` (fast path) and `t` (API path)."""
    yield env.cri_pair("s", "t")


def _every_kind() -> bytes:
    out = io.BytesIO()

    def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, *,
            mode: int = 0o644, uid: int = 0, gid: int = 0, link: str = "",
            dev: tuple[int, int] = (0, 0), xattrs: dict[str, str] | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, link
        info.devmajor, info.devminor = dev
        info.mtime = 1_600_000_000 + len(name)
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        if data is not None:
            info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data is not None else None)

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add("./", tarfile.DIRTYPE, mode=0o755)
        add("etc/", tarfile.DIRTYPE, mode=0o755)
        add("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n")
        add("etc/hosts", data=b"first\n")
        add("etc/hosts", data=b"second, replacing the first\n", mode=0o600)
        add("etc/.wh.shadow")  # whiteout
        add("bin/", tarfile.DIRTYPE, mode=0o755)
        add("bin/busybox", data=os.urandom(300_000), mode=0o755)
        add("bin/busybox.hard", tarfile.LNKTYPE, link="bin/busybox", mode=0o755)
        add("bin/sh", tarfile.SYMTYPE, link="busybox", mode=0o777)
        add("bin/su", data=b"su", mode=0o4755)
        add("bin/wall", data=b"wall", mode=0o2755, gid=5)
        add("bin/ping", data=b"ping", mode=0o755,
            xattrs={"security.capability": CAP_NET_RAW.decode("utf-8", "surrogateescape"),
                    "user.tote": "a value"})
        add("lib", tarfile.SYMTYPE, link="usr/lib")
        add("tmp/", tarfile.DIRTYPE, mode=0o1777)
        add("home/u/", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000)
        add("home/u/.profile", data=b"export X=1\n", mode=0o600, uid=1000, gid=1000)
        add("dev/", tarfile.DIRTYPE, mode=0o755)
        add("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
        add("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0))
        add("run/fifo", tarfile.FIFOTYPE, mode=0o640)  # parent not in the tar
        add("var/cache/", tarfile.DIRTYPE, mode=0o755, xattrs={"user.dir": "d"})
        add("var/cache/.wh..wh..opq")  # opaque
        add("var/cache/new", data=b"")
        add("opt/deep/er/x", data=b"x" * 5000, uid=7, gid=8)
    return out.getvalue() + bytes(1024)  # trailing zeros: part of the diff ID


def _listing(root: Path) -> dict[str, object]:
    """Type, mode, owner, size, content hash, link target, device, xattrs and hard-link
    group of everything under `root`."""
    out: dict[str, object] = {}
    first: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(p, k, follow_symlinks=False).hex()
                for k in sorted(os.listxattr(p, follow_symlinks=False))}
            entry: dict[str, object] = {
                "kind": kind, "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid,
                "gid": st.st_gid, "xattrs": xattrs}
            if stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                entry["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
                entry["same_as"] = first.setdefault((st.st_dev, st.st_ino), rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            out[rel] = entry
    return out


@pytest.fixture
async def cd(env: Env, cri: dict[str, AgentProc]) -> AsyncIterator[ContainerdClient]:
    async with open_bridge() as bridge:
        client = ContainerdClient(bridge, env.nodes["s"].socket)
        await client.connect()
        await client.create_lease("stream-test", expire_in=600)
        try:
            yield client
        finally:
            await client.delete_lease("stream-test", sync=True)
            await client.close()


async def _store(cd: ContainerdClient, media_type: str, data: bytes) -> oci.Desc:
    d = oci.Desc(media_type, digest_of(data), len(data))
    async with cd.writer("stream-test-" + d.digest[7:], d.size, d.digest,
                         lease="stream-test") as w:
        if not w.exists:
            await w.write(data[w.offset:])
            await w.commit()
    return d


def _feeding(stream: LayerStream, blob: bytes, *, upto: int | None = None,
             end: str = "finish") -> threading.Thread:
    """A receive, in a thread: `blob[:upto]` in pieces, then finish/stop/nothing."""
    def run() -> None:
        data = blob[:upto]
        for i in range(0, len(data), 65536):
            stream.feed(data[i:i + 65536])
        if end == "finish":
            stream.finish()
        elif end == "stop":
            stream.stop("the receive failed")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def _no_op(digest: str) -> None:
    return None


def _extract_snapshots(env: Env) -> list[str]:
    out = env.nodes["s"].ctr("snapshots", "--snapshotter", SN, "ls").stdout
    return [line for line in out.splitlines() if "extract-" in line]


async def _streamed(un: Unpacker, d: oci.Desc, diff_id: str, blob: bytes, **feed: object
                    ) -> str | None:
    stream = LayerStream(d.digest, d.media_type)
    assert stream.attach()
    chain = chain_ids([diff_id])[0]
    t = _feeding(stream, blob, **feed)  # type: ignore[arg-type]
    try:
        return await un._extract_streaming(SN, d, diff_id, chain, _labels(chain, diff_id, ""),
                                           "stream-test", stream, _no_op)
    finally:
        stream.stop("test over")
        t.join(10)


@pytest.mark.parametrize("compress", ["gzip", "tar"])
async def test_the_streamed_tree_equals_containerds_apply(
        env: Env, cd: ContainerdClient, compress: str) -> None:
    tar = _every_kind()
    blob = gzip.compress(tar) if compress == "gzip" else tar
    d = await _store(cd, GZ if compress == "gzip" else TAR, blob)
    diff_id = digest_of(tar)
    chain = chain_ids([diff_id])[0]
    un = Unpacker(cd)
    assert await un.can_stream(SN)
    labels = _labels(chain, diff_id, "")
    # containerd: Apply into an overlay upper directory, as a rebased layer is applied.
    key_a, mounts = await un._prepare(SN, chain, "", labels, "stream-test")
    applied = await cd.call(un._diff.Apply, diff_pb2.ApplyRequest(
        diff=_desc(d),
        mounts=_upper_only(mounts)), lease="stream-test")
    assert applied.applied.digest == diff_id
    key_s = await _streamed(un, d, diff_id, blob)
    assert key_s is not None
    try:
        roots = [Path(m.source) for m in mounts]
        theirs = _listing(roots[0])
        ours = _listing(Path(_fs_of(env, key_s)))
        assert ours == theirs
        # What the layer is supposed to hold is there (the comparison is not of two nothings).
        assert theirs["etc/shadow"]["kind"] == stat.S_IFCHR  # type: ignore[index]
        assert theirs["var/cache"]["xattrs"]["trusted.overlay.opaque"] == "79"  # type: ignore[index]
        assert theirs["bin/busybox.hard"]["same_as"] == "bin/busybox"  # type: ignore[index]
        assert theirs["bin/su"]["mode"] == "0o4755"  # type: ignore[index]
    finally:
        await un.remove(SN, key_a)
        await un.remove(SN, key_s)


def _desc(d: oci.Desc) -> object:
    from tote_containerd._gen.containerd.types import descriptor_pb2

    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size)


def _fs_of(env: Env, key: str) -> str:
    """The directory of an active overlayfs snapshot, from `ctr snapshots mounts`."""
    out = env.nodes["s"].ctr("snapshots", "--snapshotter", SN, "mounts", "/mnt", key).stdout
    # "mount -t bind <src> /mnt -o rbind,rw"
    words = out.split()
    return words[words.index("bind") + 1]


async def test_a_diff_id_mismatch_leaves_no_snapshot(env: Env, cd: ContainerdClient) -> None:
    tar = _every_kind()
    bad = bytearray(tar)
    bad[tar.index(b"second, replacing")] ^= 0x01  # one byte of one file
    d = oci.Desc(TAR, digest_of(bytes(bad)), len(bad))
    with pytest.raises(DataLoss, match="unpacks to"):
        await _streamed(Unpacker(cd), d, digest_of(tar), bytes(bad))
    assert _extract_snapshots(env) == []


@pytest.mark.parametrize("end", ["finish", "stop", "cancel"])
async def test_a_truncated_or_stopped_stream_leaves_no_snapshot(
        env: Env, cd: ContainerdClient, end: str) -> None:
    tar = _every_kind()
    blob = gzip.compress(tar)
    d = oci.Desc(GZ, digest_of(blob), len(blob))
    un = Unpacker(cd)
    if end == "cancel":  # the import is cancelled while the layer is half extracted
        with trio.move_on_after(1.0) as scope:
            await _streamed(un, d, digest_of(tar), blob, upto=len(blob) // 2, end="")
        assert scope.cancelled_caught
    else:  # the extractor gives up: the layer is then applied once whole (None)
        assert await _streamed(un, d, digest_of(tar), blob, upto=len(blob) // 2,
                               end=end) is None
    assert _extract_snapshots(env) == []


async def test_an_unsafe_member_is_refused_and_leaves_no_snapshot(
        env: Env, cd: ContainerdClient, tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tf.addfile(link)
        info = tarfile.TarInfo("escape/pwned")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"no"))
    tar = out.getvalue()
    d = oci.Desc(TAR, digest_of(tar), len(tar))
    assert await _streamed(Unpacker(cd), d, digest_of(tar), tar) is None
    assert _nothing_in(tmp_path)
    assert _extract_snapshots(env) == []


def _nothing_in(path: Path) -> bool:
    return not any(path.iterdir())


async def _import(env: Env, target: str, img: Image) -> ImportProgress:
    c = env.pki.controller
    token = Signer(c.cert, c.key).mint(digest=img.digest, source="a", target=target, ttl=60)
    async with env.open_agent(target) as agent:
        return await agent.import_from(ImportRequest(
            source_node="a", source_endpoint=env.extra["a-fast"].endpoint, token=token,
            digest=img.digest, names=[img.name]))


def _log(cri: dict[str, AgentProc], node: str) -> str:
    return cri[node].proc.log_path.read_text(errors="replace")


def _unpacked(env: Env, node: str, img: Image) -> None:
    cfg = img.configs["linux/amd64"]
    for chain in chain_ids(json.loads(cfg.data or b"{}")["rootfs"]["diff_ids"]):
        info = env.nodes[node].ctr("snapshots", "--snapshotter", SN, "info", chain)
        assert json.loads(info.stdout)["Kind"] == "Committed"
    assert "extract-" not in env.nodes[node].ctr("snapshots", "--snapshotter", SN, "ls").stdout


@pytest.mark.parametrize("target", ["s", "t"])
async def test_an_import_extracts_while_receiving(
        env: Env, cri: dict[str, AgentProc], target: str, tmp_path: Path) -> None:
    """One layer (the single-layer case goes through the same path) and three, with the
    every-kind layer among them; the snapshots are those the ordinary unpack names."""
    tar = _every_kind()
    layers = [Blob(GZ, gz := gzip.compress(tar), digest_of(gz), len(gz))]
    one = single_image(f"docker.io/tote/stream-one-{target}:v1", layers,
                       diff_ids=[digest_of(tar)], cmd=["/bin/true"])
    three = compressed_image(f"docker.io/tote/stream-three-{target}:v1",
                             ["gzip", "tar", "gzip"], seed=171 + (target == "t"))
    for img in (one, three):
        env.nodes["a"].import_archive(img.write_archive(tmp_path / f"{img.name[-9:]}.tar"))
        before = _log(cri, target).count("extracted while receiving)")
        done = await _import(env, target, img)
        assert done.done
        _unpacked(env, target, img)
        assert _log(cri, target).count("extracted while receiving)") == before + 1


async def test_a_resumed_layer_is_applied_once_whole(
        env: Env, cri: dict[str, AgentProc], tmp_path: Path) -> None:
    """An earlier attempt left part of the layer (fast path): the transfer resumes from
    there, and that layer is applied from the committed blob (its first bytes were never
    streamed), the others are extracted while receiving."""
    img = compressed_image("docker.io/tote/stream-resume:v1", ["gzip", "gzip"],
                           size=2 * 1024 * 1024, seed=181)
    env.nodes["a"].import_archive(img.write_archive(tmp_path / "resume.tar"))
    layer = img.layers["linux/amd64"][0]
    assert layer.data is not None and layer.size > 3 * 4096
    tmp = env.nodes["s"].content_root / "tote-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{layer.digest[7:]}.part").write_bytes(layer.data[:2 * 4096 + 100])
    done = await _import(env, "s", img)
    assert done.done
    _unpacked(env, "s", img)
    log = _log(cri, "s")
    assert f"resuming {layer.digest} (fast path) at 8192" in log
    cfg = img.configs["linux/amd64"].digest
    assert any(f"(config {cfg})" in line and "(1 extracted while receiving)" in line
               for line in log.splitlines()), log
