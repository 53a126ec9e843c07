#!/usr/bin/env python3
"""Build the tote container image offline: Debian packages + the project's wheel → an OCI
image archive, with no container engine and no registry.

    python3 deploy/image/build.py [--out DIR] [--wheel FILE] [--no-cache] [--json]

prints the archive path and the image name inside it (`docker.io/library/tote:<version>`,
which is what kubelet looks up for the chart's default `image.repository: tote`). Import it
into a node with `ctr -n k8s.io images import <archive>`.

How (docs/image.md says why):
1. the wheel is built from the source tree (`pip wheel --no-deps`), cached by a hash of the
   source files; the run-time dependencies are downloaded as binary wheels for CPython 3.11
   on manylinux x86_64/aarch64 (never built from source, so no compiler is needed or shipped);
2. `mmdebstrap` creates a Debian 12 root filesystem (the Essential set plus `python3` and
   `ca-certificates`, without docs/man pages/locales) and, in its customize hooks, creates
   the venv /opt/tote and installs the wheels offline from a pip wheel run by the image's own
   Python (pip itself is not installed into the image), byte-compiles them, drops bundled
   test suites and every cache, and adds the unprivileged user 65532;
3. the tarball mmdebstrap writes (reproducible: SOURCE_DATE_EPOCH) becomes the one layer;
   this script writes config, manifest and index (OCI labels: source, version, revision) and
   packs them as an OCI image-layout tar.

Step 1-3 results are cached under ~/.cache/tote/image (TOTE_IMAGE_CACHE), keyed by the wheel
contents, the Debian suite, architecture and package set, and this file; a second run with
the same inputs only writes the small config/manifest blobs and the archive.

Standard library only, so the release workflow can run it with any Python >= 3.11.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TOTE_IMAGE_CACHE", Path.home() / ".cache" / "tote" / "image"))

# The image reference kubelet resolves the chart's default `image.repository: tote` to.
IMAGE_REPOSITORY = "docker.io/library/tote"
UID = 65532  # the controller's user; the agent runs as root, set by the chart

SUITE = "bookworm"
MIRROR = os.environ.get("TOTE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("TOTE_DEBIAN_SECURITY_MIRROR",
                                 "http://deb.debian.org/debian-security")
# Besides the Essential set (dpkg needs it to configure packages): the interpreter and the
# system trust store (registry lookups use system roots plus an optional bundle), and the C++
# runtime manylinux wheels may link against (greenlet, via trio-asyncio).
DEB_PACKAGES = ("python3", "ca-certificates", "libstdc++6")
PYTHON_TAG = "3.11"  # bookworm's python3
# manylinux tags glibc 2.36 (bookworm) satisfies, newest first.
_MANYLINUX = [f"manylinux_2_{n}" for n in range(36, 16, -1)] + ["manylinux2014"]
_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                  "/usr/share/locale/*", "/usr/share/lintian/*")
_DPKG_INCLUDES = ("/usr/share/doc/*/copyright",)

# Run in the new root by mmdebstrap after all packages are configured. "$1" is the root.
_CUSTOMIZE = r"""
set -eu
root="$1"
chroot "$root" python3 -m venv --without-pip /opt/tote
pipwhl=$(ls "$root"/tmp/tote-wheels/pip-*.whl | head -n1)
chroot "$root" /opt/tote/bin/python "/tmp/tote-wheels/$(basename "$pipwhl")/pip" install \
  --quiet --no-index --find-links /tmp/tote-wheels --no-cache-dir --no-compile \
  --disable-pip-version-check --no-warn-script-location /tmp/tote-wheels/{wheel}
site="$root/opt/tote/lib/python{py}/site-packages"
# Test suites bundled inside dependencies are not needed to run tote.
find "$site" -mindepth 2 -maxdepth 2 -type d \( -name tests -o -name _tests -o -name test \
  -o -name e2e_test \) -prune -exec rm -rf {{}} +
# Byte-code that never needs revalidation: the root filesystem is read-only at run time.
chroot "$root" /opt/tote/bin/python -m compileall -q -j0 --invalidation-mode unchecked-hash \
  /opt/tote/lib
echo 'tote:x:{uid}:{uid}:tote:/nonexistent:/usr/sbin/nologin' >> "$root/etc/passwd"
echo 'tote:x:{uid}:' >> "$root/etc/group"
rm -rf "$root"/tmp/tote-wheels "$root"/var/cache/* "$root"/var/log/* \
  "$root"/var/lib/apt/lists/* "$root"/root/.cache "$root"/etc/machine-id
find "$root/usr/lib/python3" "$root/usr/lib/python{py}" -name '*.pyc' -path '*/test/*' -delete \
  2>/dev/null || true
mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
"""


@dataclass(frozen=True)
class BuiltImage:
    """What a build produced; `archive` is an OCI image-layout tar for `ctr images import`."""

    archive: Path
    name: str  # docker.io/library/tote:<version>
    version: str
    digest: str  # the manifest digest (what `ctr images ls` shows)
    size: int  # compressed layer + config + manifest bytes
    uncompressed_size: int  # bytes of the root filesystem layer as unpacked
    cached: bool  # True when the root filesystem layer came from the cache


def log(msg: str) -> None:
    print(f"[tote-image] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kw: object) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({res.returncode}):\n"
                         f"{res.stdout}{res.stderr}")
    return str(res.stdout)


def version() -> str:
    """The package version: pyproject.toml's `version`, the one place it is written."""
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    ver = data.get("project", {}).get("version")
    if not isinstance(ver, str) or not ver:
        raise SystemExit("cannot find project.version in pyproject.toml")
    return ver


def deb_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _pip_platforms(arch: str) -> list[str]:
    m = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
    return [f"{tag}_{m}" for tag in _MANYLINUX]


def _source_files() -> list[Path]:
    """Files that make up the wheel (tracked and untracked-but-not-ignored)."""
    roots = ["pyproject.toml", "README.md", "tote_core", "plugins"]
    try:
        out = _run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "--",
                    *roots])
        files = [REPO / line for line in out.splitlines() if line]
    except (SystemExit, FileNotFoundError):
        files = [p for r in roots for p in ([REPO / r] if (REPO / r).is_file()
                                            else (REPO / r).rglob("*"))]
    return sorted(f for f in files if f.is_file() and "__pycache__" not in f.parts)


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def wheel_content_hash(wheel: Path) -> str:
    """Hash of the wheel's members (names and bytes), independent of zip timestamps."""
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
    return h.hexdigest()


def build_wheel(no_cache: bool) -> Path:
    """The project's wheel, cached by a hash of the source files that go into it."""
    key = _hash_files(_source_files())[:24]
    d = CACHE / "wheels" / key
    found = sorted(d.glob("tote-*.whl")) if d.is_dir() else []
    if found and not no_cache:
        return found[0]
    tmp = Path(tempfile.mkdtemp(prefix="tote-wheel-"))
    try:
        log("building the tote wheel")
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
              "--disable-pip-version-check", "-w", str(tmp), str(REPO)])
        (whl,) = tmp.glob("tote-*.whl")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(whl, d / whl.name)
        return d / whl.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_wheels(wheel: Path, dest: Path, arch: str) -> None:
    """The wheel, its dependencies as binary wheels for the image's Python, and pip."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, dest / wheel.name)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", PYTHON_TAG, "--implementation", "cp",
            "--abi", "cp" + PYTHON_TAG.replace(".", ""), "--abi", "abi3", "--abi", "none",
            "-d", str(dest)]
    for p in _pip_platforms(arch):
        argv += ["--platform", p]
    _run([*argv, str(dest / wheel.name), "pip"])


def _layer_key(wheel_hash: str, arch: str) -> str:
    spec = {
        "wheel": wheel_hash, "suite": SUITE, "arch": arch, "packages": sorted(DEB_PACKAGES),
        "recipe": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def build_rootfs_tar(wheel: Path, tar_path: Path, arch: str, epoch: int) -> None:
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap is not installed (apt-get install mmdebstrap)")
    work = Path(tempfile.mkdtemp(prefix="tote-image-"))
    try:
        wheels = work / "wheels"
        log("downloading dependency wheels")
        download_wheels(wheel, wheels, arch)
        hook = work / "customize.sh"
        hook.write_text(_CUSTOMIZE.format(wheel=wheel.name, py=PYTHON_TAG, uid=UID))
        argv = [
            "mmdebstrap", "--quiet", "--variant=essential", f"--architectures={arch}",
            # usr-is-merged from the start, instead of the usrmerge converter (and its perl).
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            "--include=" + ",".join(DEB_PACKAGES), "--format=tar",
            *[f"--dpkgopt=path-exclude={p}" for p in _DPKG_EXCLUDES],
            *[f"--dpkgopt=path-include={p}" for p in _DPKG_INCLUDES],
            "--customize-hook=mkdir -p \"$1/tmp/tote-wheels\"",
            f"--customize-hook=copy-in {' '.join(str(p) for p in sorted(wheels.iterdir()))}"
            " /tmp/tote-wheels",
            f"--customize-hook=sh {hook} \"$1\"",
            SUITE, str(tar_path),
            f"deb {MIRROR} {SUITE} main",
            f"deb {MIRROR} {SUITE}-updates main",
            f"deb {SECURITY_MIRROR} {SUITE}-security main",
        ]
        log(f"mmdebstrap {SUITE}/{arch}: essential + {', '.join(DEB_PACKAGES)} + tote venv")
        _run(argv, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def cached_layer(wheel: Path, arch: str, no_cache: bool) -> tuple[dict[str, object], bool]:
    """The gzip'ed root filesystem layer and its metadata, built once per cache key."""
    d = CACHE / "layers" / _layer_key(wheel_content_hash(wheel), arch)
    meta_file = d / "layer.json"
    if meta_file.exists() and (d / "layer.tar.gz").exists() and not no_cache:
        return json.loads(meta_file.read_text()), True
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or _git_epoch()
    d.mkdir(parents=True, exist_ok=True)
    raw = d / "rootfs.tar"
    build_rootfs_tar(wheel, raw, arch, epoch)
    diff_id = _sha256_file(raw)
    size = raw.stat().st_size
    gz = d / "layer.tar.gz.tmp"
    with raw.open("rb") as src, gz.open("wb") as out, \
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as z:
        shutil.copyfileobj(src, z, 1 << 20)
    raw.unlink()
    gz.rename(d / "layer.tar.gz")
    meta = {"diff_id": diff_id, "digest": _sha256_file(d / "layer.tar.gz"),
            "size": (d / "layer.tar.gz").stat().st_size, "uncompressed_size": size,
            "epoch": epoch, "arch": arch, "packages": list(DEB_PACKAGES), "suite": SUITE}
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta, False


def _git(*args: str) -> str:
    try:
        return _run(["git", "-C", str(REPO), *args]).strip()
    except (SystemExit, FileNotFoundError):
        return ""


def _git_epoch() -> int:
    return int(_git("log", "-1", "--format=%ct") or time.time())


def revision() -> str:
    rev = _git("rev-parse", "HEAD")
    if rev and _git("status", "--porcelain", "--untracked-files=no"):
        rev += "-dirty"
    return rev or "unknown"


def source_url() -> str:
    """org.opencontainers.image.source: $TOTE_IMAGE_SOURCE, else the git `origin` remote."""
    url = os.environ.get("TOTE_IMAGE_SOURCE") or _git("remote", "get-url", "origin")
    m = re.fullmatch(r"git@([^:]+):(.+?)(\.git)?", url)
    if m:
        url = f"https://{m.group(1)}/{m.group(2)}"
    return url


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def write_archive(out: Path, layer_dir: Path, meta: dict[str, object], ver: str) -> BuiltImage:
    name = f"{IMAGE_REPOSITORY}:{ver}"
    created = dt.datetime.fromtimestamp(int(str(meta["epoch"])), dt.UTC)
    labels = {
        "org.opencontainers.image.title": "tote",
        "org.opencontainers.image.description":
            "tote controller and node agent (one image; entrypoint `tote`)",
        "org.opencontainers.image.version": ver,
        "org.opencontainers.image.revision": revision(),
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.base.name": f"debian:{SUITE}",
    }
    if src := source_url():
        labels["org.opencontainers.image.source"] = src
    config = {
        "architecture": str(meta["arch"]), "os": "linux",
        "created": labels["org.opencontainers.image.created"],
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": ["/opt/tote/bin/tote"],
            "Cmd": ["--help"],
            "WorkingDir": "/",
            "Env": ["PATH=/opt/tote/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                    "/sbin:/bin", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [meta["diff_id"]]},
        "history": [{"created": labels["org.opencontainers.image.created"],
                     "created_by": f"deploy/image/build.py: mmdebstrap {SUITE} "
                                   f"essential+{'+'.join(DEB_PACKAGES)}, venv /opt/tote"}],
    }
    cfg_digest, cfg = _blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": meta["digest"], "size": meta["size"]}],
        "annotations": {k: v for k, v in labels.items()
                        if k.rsplit(".", 1)[-1] in ("version", "revision", "source",
                                                    "created")},
    }
    man_digest, man = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": manifest["mediaType"], "digest": man_digest, "size": len(man),
            "platform": {"architecture": str(meta["arch"]), "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": ver},
        }],
    }
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"tote-{ver}-{meta['arch']}.oci.tar"
    tmp = archive.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(path: str, data: bytes | None = None, src: Path | None = None) -> None:
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = 0o644, int(created.timestamp())
            if src is not None:
                info.size = src.stat().st_size
                with src.open("rb") as f:
                    tar.addfile(info, f)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, _Bytes(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        add("blobs/sha256/" + man_digest[7:], man)
        add("blobs/sha256/" + cfg_digest[7:], cfg)
        add("blobs/sha256/" + str(meta["digest"])[7:], src=layer_dir / "layer.tar.gz")
    tmp.rename(archive)
    return BuiltImage(archive=archive, name=name, version=ver, digest=man_digest,
                      size=int(str(meta["size"])) + len(cfg) + len(man),
                      uncompressed_size=int(str(meta["uncompressed_size"])), cached=False)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk


def build(out: Path | None = None, *, wheel: Path | None = None,
          no_cache: bool = False) -> BuiltImage:
    """Build (or reuse) the image and write its OCI archive into `out`."""
    out = out or CACHE / "out"
    arch = deb_arch()
    whl = wheel or build_wheel(no_cache)
    ver = version()
    if f"tote-{ver}-" not in whl.name:
        raise SystemExit(f"{whl.name} is not tote {ver}")
    meta, cached = cached_layer(whl, arch, no_cache)
    layer_dir = CACHE / "layers" / _layer_key(wheel_content_hash(whl), arch)
    img = write_archive(out, layer_dir, meta, ver)
    return BuiltImage(**{**asdict(img), "cached": cached})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy/image/build.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help=f"directory for the archive (default {CACHE / 'out'})")
    p.add_argument("--wheel", type=Path, default=None,
                   help="use this tote wheel instead of building one from the source tree")
    p.add_argument("--no-cache", action="store_true", help="rebuild everything")
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    img = build(args.out, wheel=args.wheel, no_cache=args.no_cache)
    log(f"{img.name} {img.digest} {img.size / 1e6:.1f} MB compressed, "
        f"{img.uncompressed_size / 1e6:.1f} MB unpacked, "
        f"{'cached' if img.cached else 'built'} in {time.monotonic() - t0:.1f}s")
    if args.json:
        print(json.dumps({**asdict(img), "archive": str(img.archive)}))
    else:
        print(img.archive)
        print(img.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
