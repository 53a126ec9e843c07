"""Build OCI test images locally (no pulls): layers of given sizes, multi-arch indexes, and a
tiny runnable image whose command prints a marker.

Images are written as OCI image-layout tar archives that `ctr images import` accepts. Layers
are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`) of pseudo-random bytes, so
content is incompressible and digests are deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"

CACHE = Path(os.environ.get("TOTE_TEST_CACHE", Path.home() / ".cache" / "tote-test"))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Blob:
    media_type: str
    data: bytes | None  # None: stored in `path`
    digest: str
    size: int
    path: Path | None = None

    def descriptor(self, **extra: object) -> dict[str, object]:
        d: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest,
                                "size": self.size}
        d.update(extra)
        return d


@dataclass
class Image:
    """One image (a manifest or an index) and every blob it needs."""

    name: str
    top: Blob
    blobs: list[Blob] = field(default_factory=list)
    manifests: dict[str, Blob] = field(default_factory=dict)  # platform → manifest
    configs: dict[str, Blob] = field(default_factory=dict)  # platform → config
    layers: dict[str, list[Blob]] = field(default_factory=dict)  # platform → layers

    @property
    def digest(self) -> str:
        return self.top.digest

    def write_archive(self, path: Path) -> Path:
        """An OCI image-layout tar archive for `ctr images import`."""
        index = {
            "schemaVersion": 2,
            "manifests": [self.top.descriptor(annotations={
                "io.containerd.image.name": self.name,
                "org.opencontainers.image.ref.name": self.name.rsplit(":", 1)[-1],
            })],
        }
        with tarfile.open(path, "w") as tar:
            def add(name: str, data: bytes | None = None, src: Path | None = None) -> None:
                info = tarfile.TarInfo(name)
                info.mode = 0o644
                if src is not None:
                    info.size = src.stat().st_size
                    with src.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    assert data is not None
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

            add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            add("index.json", json.dumps(index).encode())
            seen: set[str] = set()
            for blob in self.blobs:
                if blob.digest in seen:
                    continue
                seen.add(blob.digest)
                add("blobs/sha256/" + blob.digest.split(":", 1)[1], blob.data, blob.path)
        return path


def _tar_with_file(name: str, payload: bytes, mode: int = 0o644) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = mode
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def random_layer(size: int, seed: int, *, spool_dir: Path | None = None) -> Blob:
    """An uncompressed tar layer holding one file of `size` pseudo-random bytes.

    Large layers (>= 64 MiB) are spooled to `spool_dir` instead of being held in memory.
    """
    rng = random.Random(seed)
    name = f"data-{seed}.bin"
    if spool_dir is None or size < 64 * 1024 * 1024:
        return _blob(MT_LAYER, _tar_with_file(name, rng.randbytes(size)))
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"layer-{seed}-{size}.tar"
    meta = path.with_suffix(".digest")
    if path.exists() and meta.exists():
        return Blob(MT_LAYER, None, meta.read_text(), path.stat().st_size, path)
    h = hashlib.sha256()
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        header = info.tobuf(tarfile.GNU_FORMAT)
        f.write(header)
        h.update(header)
        left = size
        while left:
            n = min(left, 8 * 1024 * 1024)
            chunk = rng.randbytes(n)
            f.write(chunk)
            h.update(chunk)
            left -= n
        pad = (-size) % 512 + 1024  # file padding + two zero end blocks
        tail = b"\0" * pad
        f.write(tail)
        h.update(tail)
    tmp.rename(path)
    d = "sha256:" + h.hexdigest()
    meta.write_text(d)
    return Blob(MT_LAYER, None, d, path.stat().st_size, path)


def _blob(media_type: str, data: bytes) -> Blob:
    return Blob(media_type, data, digest_of(data), len(data))


def _platform_manifest(
    layers: list[Blob], *, arch: str = "amd64", cmd: list[str] | None = None
) -> tuple[Blob, Blob]:
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": cmd or ["/bin/true"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers",
                   "diff_ids": [layer.digest for layer in layers]},  # uncompressed: diff = blob
    }
    cfg = _blob(MT_CONFIG, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": cfg.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return _blob(MT_MANIFEST, json.dumps(manifest, sort_keys=True).encode()), cfg


def layered_image(
    name: str, sizes: list[int], *, seed: int = 1, spool_dir: Path | None = None,
    extra_layers: list[Blob] | None = None, cmd: list[str] | None = None,
) -> Image:
    """A single-platform (linux/amd64) image with layers of the given sizes."""
    layers = list(extra_layers or []) + [
        random_layer(s, seed * 1000 + i, spool_dir=spool_dir) for i, s in enumerate(sizes)
    ]
    manifest, cfg = _platform_manifest(layers, cmd=cmd)
    img = Image(name=name, top=manifest)
    img.blobs = [manifest, cfg, *layers]
    img.manifests["linux/amd64"] = manifest
    img.configs["linux/amd64"] = cfg
    img.layers["linux/amd64"] = layers
    return img


COMPRESSED_LAYER = {
    ("oci", "tar"): MT_LAYER,
    ("oci", "gzip"): MT_LAYER + "+gzip",
    ("oci", "zstd"): MT_LAYER + "+zstd",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"


def compressed_image(name: str, compressions: list[str], *, size: int = 256 * 1024,
                     seed: int = 5, docker: bool = False) -> Image:
    """An image whose layers are compressed as asked ("tar", "gzip", "zstd"), each with a
    file of `size` random bytes; `docker=True` makes a Docker v2 schema 2 manifest (gzip
    layers only). The config's diff IDs are the digests of the uncompressed tars."""
    import gzip

    flavour = "docker" if docker else "oci"
    layers: list[Blob] = []
    diff_ids: list[str] = []
    for i, how in enumerate(compressions):
        rng = random.Random(seed * 1000 + i)
        tar = _tar_with_file(f"layer{i}/data", rng.randbytes(size))
        diff_ids.append(digest_of(tar))
        if how == "gzip":
            data = gzip.compress(tar, mtime=0)
        elif how == "zstd":
            data = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True,
                                  check=True).stdout
        else:
            data = tar
        layers.append(_blob(COMPRESSED_LAYER[(flavour, how)], data))
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Cmd": ["/bin/true"], "Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cfg = _blob(DOCKER_CONFIG if docker else MT_CONFIG,
                json.dumps(config, sort_keys=True).encode())
    manifest_type = DOCKER_MANIFEST if docker else MT_MANIFEST
    manifest = _blob(manifest_type, json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type, "config": cfg.descriptor(),
        "layers": [layer.descriptor() for layer in layers]}, sort_keys=True).encode())
    img = Image(name=name, top=manifest, blobs=[manifest, cfg, *layers])
    img.manifests["linux/amd64"] = manifest
    img.configs["linux/amd64"] = cfg
    img.layers["linux/amd64"] = layers
    return img


def multiarch_image(name: str, sizes: list[int], *, seed: int = 7) -> Image:
    """An OCI index with a linux/amd64 and a linux/arm64 manifest (different layers)."""
    img: Image | None = None
    entries = []
    blobs: list[Blob] = []
    parts = {}
    for n, arch in enumerate(["amd64", "arm64"]):
        layers = [random_layer(s, seed * 1000 + n * 100 + i) for i, s in enumerate(sizes)]
        manifest, cfg = _platform_manifest(layers, arch=arch)
        entries.append(manifest.descriptor(platform={"architecture": arch, "os": "linux"}))
        blobs += [manifest, cfg, *layers]
        parts[f"linux/{arch}"] = (manifest, cfg, layers)
    index = _blob(MT_INDEX, json.dumps(
        {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}, sort_keys=True
    ).encode())
    img = Image(name=name, top=index, blobs=[index, *blobs])
    for plat, (m, c, ls) in parts.items():
        img.manifests[plat] = m
        img.configs[plat] = c
        img.layers[plat] = ls
    return img


def marker_binary() -> Path:
    """A static linux/amd64 binary printing $TOTE_MARKER; built once with Go and cached."""
    src = Path(__file__).parent / "marker"
    out = CACHE / "marker" / "marker"
    stamp = hashlib.sha256((src / "main.go").read_bytes()).hexdigest()
    stamp_file = out.with_suffix(".stamp")
    if out.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = dict(os.environ, CGO_ENABLED="0", GOOS="linux", GOARCH="amd64",
               GOFLAGS="-mod=mod", GOCACHE=str(CACHE / "gocache"))
    subprocess.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(out), "."],
                   cwd=src, env=env, check=True)
    stamp_file.write_text(stamp)
    return out


def runnable_image(name: str, sizes: list[int], *, seed: int = 3) -> Image:
    """A linux/amd64 image whose entry point prints a marker, plus filler layers."""
    binary = marker_binary().read_bytes()
    bin_layer = _blob(MT_LAYER, _tar_with_file("bin/marker", binary, mode=0o755))
    return layered_image(name, sizes, seed=seed, extra_layers=[bin_layer],
                         cmd=["/bin/marker"])
