"""Test images whose layers hold every kind of filesystem entry a layer can carry — regular
files with owners and modes (setuid included), directories, symlinks, hard links, character
devices, FIFOs, extended attributes, whiteouts, an opaque directory and an empty layer — and
an image built from blobs someone else wrote (e.g. tars containerd's own diff service made,
as BuildKit makes its layers)."""

from __future__ import annotations

import io
import random
import struct
import tarfile

from tests.cluster.images import MT_LAYER, Blob, Image, digest_of, layered_image

# A file capability (vfs_cap_data revision 2, effective, CAP_NET_RAW permitted): the one
# extended attribute containerd's tar writer carries.
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes | None = None,
           mode: int = 0o644, uid: int = 0, gid: int = 0, link: str = "",
           dev: tuple[int, int] = (0, 0), xattrs: dict[str, str] | None = None,
           ) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = 1_700_000_000
    info.linkname = link
    info.devmajor, info.devminor = dev
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    if kind == tarfile.REGTYPE:
        payload = data or b""
        info.size = len(payload)
        return info, payload
    return info, None


def special_layers(seed: int = 11) -> list[bytes]:
    """Three layer tars: a base with one of each entry kind, a layer of whiteouts and an
    opaque directory, and an empty layer."""
    rng = random.Random(seed)
    d = tarfile.DIRTYPE
    base = _tar([
        _entry("etc", d, mode=0o755),
        _entry("etc/hello", data=b"hello\n", mode=0o640, uid=1000, gid=1001),
        _entry("etc/xattr", data=b"labelled\n", xattrs={"user.tote": "salvaged"}),
        _entry("bin", d, mode=0o755),
        _entry("bin/tool", data=rng.randbytes(4096), mode=0o4755),
        _entry("bin/ping", data=rng.randbytes(1024), mode=0o755,
               xattrs={"security.capability": CAP_NET_RAW.decode("latin-1")}),
        _entry("usr", d, mode=0o755),
        _entry("usr/lib", d, mode=0o755),
        _entry("usr/lib/libx.so", data=rng.randbytes(100_000), mode=0o755),
        _entry("usr/lib/libx.so.1", tarfile.LNKTYPE, link="usr/lib/libx.so", mode=0o755),
        _entry("lib", tarfile.SYMTYPE, link="usr/lib", mode=0o777),
        _entry("dev", d, mode=0o755),
        _entry("dev/null2", tarfile.CHRTYPE, dev=(1, 3), mode=0o666),
        _entry("run", d, mode=0o755),
        _entry("run/fifo", tarfile.FIFOTYPE, mode=0o600),
        _entry("var", d, mode=0o755),
        _entry("var/cache", d, mode=0o700, uid=33, gid=33),
        _entry("var/cache/a", data=b"a\n"),
        _entry("var/cache/b", data=b"b\n"),
        _entry("opt", d, mode=0o755),
        _entry("opt/keep", data=b"v1\n"),
        _entry("empty", d, mode=0o1777),
    ])
    changes = _tar([
        _entry("etc", d, mode=0o755),
        _entry("etc/.wh.hello"),
        _entry("var", d, mode=0o755),
        _entry("var/cache", d, mode=0o700, uid=33, gid=33),
        _entry("var/cache/.wh..wh..opq"),
        _entry("var/cache/c", data=b"c\n"),
        _entry("opt", d, mode=0o755),
        _entry("opt/keep", data=b"v2, changed\n", mode=0o600),
    ])
    empty = _tar([])
    return [base, changes, empty]


def image_of_tars(name: str, tars: list[bytes]) -> Image:
    """A linux/amd64 image whose layers are these uncompressed tars, as given."""
    return layered_image(name, [], extra_layers=[Blob(MT_LAYER, t, digest_of(t), len(t))
                                                 for t in tars])
