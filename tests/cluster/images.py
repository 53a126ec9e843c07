"""The harness's one OCI image builder: layers, configs, manifests, indexes, OCI image-layout
directories and archives, written in Python (nothing is pulled, no image tool runs).

Every test image is built here: the e2e cluster's pause, hello and CoreDNS images
(tests/cluster/oci.py, tests/cluster/network_images.py), the integration suites' images of
given layer sizes, compressions and platforms, the layers of every filesystem entry kind
(tests/images/rootfs_cases.py), and the benchmarks' images. `Image.write_archive` gives what
`ctr images import` and `skopeo copy oci-archive:` take, `Image.write_layout` what `skopeo copy
oci:` takes.

Layers are uncompressed tars (`application/vnd.oci.image.layer.v1.tar`) unless asked
(`compressed_image`), written deterministically (root-owned, fixed mtime), so a digest
depends only on the content; random payloads come from seeded generators. The product's
image (deploy/image/build.py, the tote image) is not built here: it is the product's own
build, with its own reproducibility contract and cache key (tests/images/tote_image.py runs
it).
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"  # a layout's tag for a manifest
CONTAINERD_NAME = "io.containerd.image.name"  # what `ctr images import` names an image

CACHE = Path(os.environ.get("TOTE_TEST_CACHE", Path.home() / ".cache" / "tote-test"))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def go_arch() -> str:
    """The host's architecture as Go and OCI name it."""
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


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

    def write_to(self, path: Path) -> None:
        if self.path is not None:
            shutil.copyfile(self.path, path)
        else:
            assert self.data is not None
            path.write_bytes(self.data)


def write_oci_archive(path: Path, index: Mapping[str, object], blobs: Iterable[Blob]) -> Path:
    """An OCI image-layout tar archive: `oci-layout`, `index.json` and each blob once."""
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
        for blob in blobs:
            if blob.digest in seen:
                continue
            seen.add(blob.digest)
            add("blobs/sha256/" + blob.digest.split(":", 1)[1], blob.data, blob.path)
    return path


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
        """An OCI image-layout tar archive for `ctr images import` (named `self.name`)."""
        index = {
            "schemaVersion": 2,
            "manifests": [self.top.descriptor(annotations={
                CONTAINERD_NAME: self.name,
                REF_NAME: self.name.rsplit(":", 1)[-1],
            })],
        }
        return write_oci_archive(path, index, self.blobs)

    def write_layout(self, layout: Path, tag: str) -> Path:
        """An OCI image-layout directory holding this image as `tag` (`skopeo copy
        oci:<layout>:<tag>`); replaces what was there."""
        if layout.exists():
            shutil.rmtree(layout)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (layout / "index.json").write_text(json.dumps({
            "schemaVersion": 2, "mediaType": MT_INDEX,
            "manifests": [self.top.descriptor(annotations={REF_NAME: tag})],
        }))
        for blob in self.blobs:
            blob.write_to(blobs / blob.digest.split(":", 1)[1])
        return layout


def _tar_with_file(name: str, payload: bytes, mode: int = 0o644) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = mode
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def file_layer(files: Mapping[str, bytes | Path], *, mode: int = 0o755,
               spool: Path | None = None) -> Blob:
    """An uncompressed layer holding `files` (in-image path → bytes or a host file), each
    with `mode`, their parent directories 0755; root-owned, mtime 0, sorted. `spool`: write
    the tar there (streamed, for large payloads) instead of holding it in memory."""
    with (spool.open("w+b") if spool is not None else io.BytesIO()) as out:
        with tarfile.open(fileobj=out, mode="w") as tar:
            dirs: set[str] = set()
            for dest in sorted(files):
                rel = dest.strip("/")
                parts = rel.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in dirs:
                        dirs.add(d)
                        info = tarfile.TarInfo(d)
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                        tar.addfile(info)
                src = files[dest]
                info = tarfile.TarInfo(rel)
                info.mode, info.mtime = mode, 0
                if isinstance(src, Path):
                    info.size = src.stat().st_size
                    with src.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    info.size = len(src)
                    tar.addfile(info, io.BytesIO(src))
        if spool is None:
            assert isinstance(out, io.BytesIO)
            return _blob(MT_LAYER, out.getvalue())
        out.seek(0)
        h = hashlib.sha256()
        while chunk := out.read(8 << 20):
            h.update(chunk)
        return Blob(MT_LAYER, None, "sha256:" + h.hexdigest(), spool.stat().st_size, spool)


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


def json_blob(media_type: str, doc: object) -> Blob:
    """A JSON document as a blob (keys sorted: the same document, the same digest)."""
    return _blob(media_type, json.dumps(doc, sort_keys=True).encode())


def config_blob(diff_ids: list[str], *, arch: str = "amd64", entrypoint: list[str] | None = None,
                cmd: list[str] | None = None, env: list[str] | None = None,
                labels: Mapping[str, str] | None = None, media_type: str = MT_CONFIG) -> Blob:
    """An image config for linux/`arch`; `Entrypoint`, `Cmd` and `Labels` only when given."""
    conf: dict[str, object] = {"Env": env if env is not None else ["PATH=/bin"]}
    if entrypoint is not None:
        conf["Entrypoint"] = entrypoint
    if cmd is not None:
        conf["Cmd"] = cmd
    if labels:
        conf["Labels"] = dict(labels)
    return json_blob(media_type, {
        "architecture": arch, "os": "linux", "config": conf,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })


def manifest_blob(config: Blob, layers: list[Blob], *, media_type: str = MT_MANIFEST) -> Blob:
    return json_blob(media_type, {
        "schemaVersion": 2, "mediaType": media_type, "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    })


def single_image(name: str, layers: list[Blob], *, arch: str = "amd64",
                 diff_ids: list[str] | None = None, manifest_type: str = MT_MANIFEST,
                 config_type: str = MT_CONFIG, **config: object) -> Image:
    """A single-platform (linux/`arch`) image of these layers; `diff_ids` default to the
    layers' digests (uncompressed layers); `config`: `config_blob`'s keywords."""
    cfg = config_blob(diff_ids if diff_ids is not None else [x.digest for x in layers],
                      arch=arch, media_type=config_type, **config)  # type: ignore[arg-type]
    manifest = manifest_blob(cfg, layers, media_type=manifest_type)
    plat = f"linux/{arch}"
    return Image(name=name, top=manifest, blobs=[manifest, cfg, *layers],
                 manifests={plat: manifest}, configs={plat: cfg}, layers={plat: list(layers)})


def index_image(name: str, platforms: list[Image]) -> Image:
    """An OCI index over single-platform images (each entry with its platform)."""
    entries = []
    img = Image(name=name, top=Blob("", b"", "", 0))
    for part in platforms:
        for plat, manifest in part.manifests.items():
            os_, arch = plat.split("/", 1)
            entries.append(manifest.descriptor(platform={"architecture": arch, "os": os_}))
            img.manifests[plat] = manifest
            img.configs[plat] = part.configs[plat]
            img.layers[plat] = part.layers[plat]
        img.blobs += part.blobs
    img.top = json_blob(MT_INDEX, {"schemaVersion": 2, "mediaType": MT_INDEX,
                                   "manifests": entries})
    img.blobs.insert(0, img.top)
    return img


def layered_image(
    name: str, sizes: list[int], *, seed: int = 1, spool_dir: Path | None = None,
    extra_layers: list[Blob] | None = None, cmd: list[str] | None = None,
) -> Image:
    """A single-platform (linux/amd64) image with layers of the given sizes."""
    layers = list(extra_layers or []) + [
        random_layer(s, seed * 1000 + i, spool_dir=spool_dir) for i, s in enumerate(sizes)
    ]
    return single_image(name, layers, cmd=cmd or ["/bin/true"])


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
    return single_image(name, layers, diff_ids=diff_ids, cmd=["/bin/true"],
                        manifest_type=DOCKER_MANIFEST if docker else MT_MANIFEST,
                        config_type=DOCKER_CONFIG if docker else MT_CONFIG)


def multiarch_image(name: str, sizes: list[int], *, seed: int = 7) -> Image:
    """An OCI index with a linux/amd64 and a linux/arm64 manifest (different layers)."""
    return index_image(name, [
        single_image(name, [random_layer(s, seed * 1000 + n * 100 + i)
                            for i, s in enumerate(sizes)], arch=arch, cmd=["/bin/true"])
        for n, arch in enumerate(["amd64", "arm64"])
    ])


def go_binary(src: Path, *, arch: str | None = None) -> Path:
    """A static linux/`arch` (default: the host's) build of the Go program in `src`,
    cached under the test cache by a hash of its sources."""
    arch = arch or go_arch()
    h = hashlib.sha256()
    for f in sorted(src.glob("*")):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    out = CACHE / "go-bin" / f"{src.name}-{arch}-{h.hexdigest()[:16]}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod",
           "GOOS": "linux", "GOARCH": arch}
    res = subprocess.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "."],
                         cwd=src, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"go build in {src} failed ({res.returncode}):\n"
                           f"{res.stderr}{res.stdout}")
    tmp.rename(out)
    return out


MARKER_SRC = Path(__file__).resolve().parents[1] / "images" / "marker"


def runnable_image(name: str, sizes: list[int], *, seed: int = 3) -> Image:
    """A linux/amd64 image whose entry point prints a marker ($TOTE_MARKER), plus filler
    layers."""
    binary = go_binary(MARKER_SRC, arch="amd64").read_bytes()
    bin_layer = _blob(MT_LAYER, _tar_with_file("bin/marker", binary, mode=0o755))
    return layered_image(name, sizes, seed=seed, extra_layers=[bin_layer],
                         cmd=["/bin/marker"])
