#!/usr/bin/env python3
"""Build the tote container image offline: Debian packages + the project's wheel → OCI image
archives for linux/amd64 and linux/arm64, with no container engine and no registry.

    python3 deploy/image/build.py [--out DIR] [--arch amd64|arm64]... [--wheel FILE]
                                  [--no-cache] [--json]

prints the host architecture's archive (`tote-<version>-<arch>.oci.tar`), the image name
inside it (`ghcr.io/tote-dev/tote:<version>`, the chart's default `image.repository`, so an
imported archive is what kubelet finds), and, when more than one architecture was built, the
multi-architecture archive (`tote-<version>.oci.tar`: index.json names one OCI image index
that lists a manifest per platform; what the release pushes). Import into a node with
`ctr -n k8s.io images import <archive>` (either archive; containerd takes its own platform).

How (docs/image.md says why):
1. the wheel is built from the source tree (`pip wheel --no-deps`), cached by a hash of the
   source files; its run-time requirements are downloaded as binary wheels for CPython 3.11
   on manylinux x86_64/aarch64 (never built from source, so no compiler is needed or shipped);
2. the base layer, per architecture: `mmdebstrap` creates a Debian 12 root filesystem (the
   Essential set plus `python3` and `ca-certificates`, without docs/man pages/locales) and,
   in its customize hooks, creates the venv /opt/tote and installs the dependencies offline
   from a pip wheel run by the image's own Python (pip itself is not installed into the
   image), byte-compiles them, drops bundled test suites and every cache, and adds the
   unprivileged user 65532. For the architecture that is not the host's, the kernel runs
   those binaries with qemu-user-static (a binfmt_misc entry; `foreign_unusable()` says when
   there is none). mmdebstrap's tarball (reproducible: SOURCE_DATE_EPOCH) is the layer;
3. tote's layer, one for every architecture (tote is pure Python): the wheel installed into
   the venv's paths as pip would, byte-compiled, tarred deterministically;
4. this script writes configs, manifests and indexes (OCI labels: source, version, revision)
   and packs them as OCI image-layout tars.

Layers are cached under ~/.cache/tote/image (TOTE_IMAGE_CACHE): the base layers keyed by
tote's requirements, the Debian suite, architecture and package set, and this file; tote's
layer by the wheel's contents and this file. A change of tote's code therefore rebuilds only
tote's layer (a second), never the emulated base layer; a run with the same inputs only
writes the small config/manifest/index blobs and the archives.

Standard library only, so the release workflow can run it with any Python >= 3.11.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TOTE_IMAGE_CACHE", Path.home() / ".cache" / "tote" / "image"))

# The chart's default `image.repository`, where the release workflow publishes the image: the
# name written into the archive, so that an imported archive is what kubelet finds for it.
IMAGE_REPOSITORY = "ghcr.io/tote-dev/tote"
# Every architecture the image is built for; the host's own is built natively, the others
# with their binaries run by qemu-user-static (binfmt_misc) during the bootstrap.
ARCHES = ("amd64", "arm64")
_QEMU = {"arm64": "aarch64", "amd64": "x86_64"}
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
  --disable-pip-version-check --no-warn-script-location -r /tmp/tote-wheels/requirements.txt
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
    """What a build produced.

    `archive` is the OCI image-layout tar of the host's architecture alone (what a node
    imports with `ctr images import`); `index_archive` holds the multi-architecture image
    (an image index over every built platform, what the release pushes), or is None when only
    the host's architecture was built.
    """

    archive: Path
    name: str  # ghcr.io/tote-dev/tote:<version>
    version: str
    digest: str  # the host architecture's manifest digest (what `ctr images ls` shows)
    size: int  # compressed layer + config + manifest bytes
    uncompressed_size: int  # bytes of the root filesystem layer as unpacked
    cached: bool  # True when every layer came from the cache
    arch: str = ""  # the architecture of `archive`
    platforms: dict[str, str] = field(default_factory=dict)  # arch -> manifest digest
    # arch -> the cached layer.tar.gz files, bottom first (base with the dependencies, tote)
    layers: dict[str, list[str]] = field(default_factory=dict)
    index_archive: Path | None = None
    index_digest: str | None = None  # the image index's digest (the multi-arch reference)
    seconds: dict[str, float] = field(default_factory=dict)  # arch -> base layer build time
    wheel: Path | None = None  # the tote wheel inside (pass it again for the same inputs)


def log(msg: str) -> None:
    print(f"[tote-image] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kw: object) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({res.returncode}):\n"
                         f"{res.stdout}{res.stderr}")
    return str(res.stdout)


def _project() -> dict[str, object]:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text()).get("project", {})
    return data if isinstance(data, dict) else {}


def version() -> str:
    """The package version: pyproject.toml's `version`, the one place it is written."""
    ver = _project().get("version")
    if not isinstance(ver, str) or not ver:
        raise SystemExit("cannot find project.version in pyproject.toml")
    return ver


def wheel_prefix() -> str:
    """The wheel file name's distribution part (`tote_salvage`), from pyproject's `name`."""
    name = _project().get("name")
    if not isinstance(name, str) or not name:
        raise SystemExit("cannot find project.name in pyproject.toml")
    return re.sub(r"[-_.]+", "_", name).lower()


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
    found = sorted(d.glob(f"{wheel_prefix()}-*.whl")) if d.is_dir() else []
    if found and not no_cache:
        return found[0]
    tmp = Path(tempfile.mkdtemp(prefix="tote-wheel-"))
    try:
        log("building the tote wheel")
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
              "--disable-pip-version-check", "-w", str(tmp), str(REPO)])
        (whl,) = tmp.glob(f"{wheel_prefix()}-*.whl")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(whl, d / whl.name)
        return d / whl.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def requirements(wheel: Path) -> list[str]:
    """The wheel's run-time requirements (Requires-Dist without extras), what the base layer
    installs: the base layer depends on these, not on tote's own code."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]
    return sorted(r for r in reqs if "extra ==" not in r.replace("extra==", "extra =="))


def download_wheels(reqs: list[str], dest: Path, arch: str) -> None:
    """The requirements as binary wheels for the image's Python and `arch`, and pip."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "requirements.txt").write_text("".join(r + "\n" for r in reqs))
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", PYTHON_TAG, "--implementation", "cp",
            "--abi", "cp" + PYTHON_TAG.replace(".", ""), "--abi", "abi3", "--abi", "none",
            "-d", str(dest)]
    for p in _pip_platforms(arch):
        argv += ["--platform", p]
    _run([*argv, "-r", str(dest / "requirements.txt"), "pip"])


def _layer_key(reqs: list[str], arch: str) -> str:
    spec = {
        "requires": reqs, "suite": SUITE, "arch": arch, "packages": sorted(DEB_PACKAGES),
        "recipe": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def foreign_unusable(arch: str) -> str | None:
    """Why this machine cannot run `arch` binaries (None when it can, natively or emulated).

    A foreign root filesystem is configured by running its own dpkg, shell and Python: the
    kernel hands them to qemu-user-static through a binfmt_misc entry. Debian's
    qemu-user-static registers `qemu-<cpu>` with the F flag (the interpreter is opened at
    registration, so it works inside the chroot without being copied in).
    """
    if arch == deb_arch():
        return None
    if arch not in _QEMU:
        return f"no emulator known for architecture {arch!r} (known: {', '.join(_QEMU)})"
    entry = Path("/proc/sys/fs/binfmt_misc") / f"qemu-{_QEMU[arch]}"
    try:
        enabled = entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        enabled = False
    if not enabled:
        return (f"{arch} binaries cannot run here: no enabled binfmt_misc entry {entry} "
                "(install qemu-user-static and binfmt-support, as .ci/install does)")
    return None


def build_rootfs_tar(reqs: list[str], tar_path: Path, arch: str, epoch: int) -> None:
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap is not installed (apt-get install mmdebstrap)")
    if why := foreign_unusable(arch):
        raise SystemExit(why)
    work = Path(tempfile.mkdtemp(prefix="tote-image-"))
    try:
        wheels = work / "wheels"
        log("downloading dependency wheels")
        download_wheels(reqs, wheels, arch)
        hook = work / "customize.sh"
        hook.write_text(_CUSTOMIZE.format(py=PYTHON_TAG, uid=UID))
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
        log(f"mmdebstrap {SUITE}/{arch}: essential + {', '.join(DEB_PACKAGES)} + the venv "
            "with tote's dependencies")
        _run(argv, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def cached_layer(reqs: list[str], arch: str, no_cache: bool) -> tuple[dict[str, object], bool]:
    """The gzip'ed base layer (root filesystem + venv with tote's dependencies) and its
    metadata, built once per cache key: requirements, Debian suite, architecture, packages."""
    d = base_dir(reqs, arch)
    d.mkdir(parents=True, exist_ok=True)
    # One builder per key: a concurrent build of the same inputs (a test session and a release
    # dry run) waits here and then finds the layer, instead of writing the same files at once.
    with (d / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _cached_layer_locked(d, reqs, arch, no_cache)


def base_dir(reqs: list[str], arch: str) -> Path:
    return CACHE / "layers" / _layer_key(reqs, arch)


def _gzip_layer(d: Path, raw: Path) -> dict[str, object]:
    """Compress `raw` into d/layer.tar.gz (deterministic gzip); diff ID, digest and sizes."""
    diff_id = _sha256_file(raw)
    size = raw.stat().st_size
    gz = d / "layer.tar.gz.tmp"
    with raw.open("rb") as src, gz.open("wb") as out, \
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as z:
        shutil.copyfileobj(src, z, 1 << 20)
    raw.unlink()
    gz.rename(d / "layer.tar.gz")
    return {"diff_id": diff_id, "digest": _sha256_file(d / "layer.tar.gz"),
            "size": (d / "layer.tar.gz").stat().st_size, "uncompressed_size": size}


def _cached_layer_locked(d: Path, reqs: list[str], arch: str,
                         no_cache: bool) -> tuple[dict[str, object], bool]:
    meta_file = d / "layer.json"
    if meta_file.exists() and (d / "layer.tar.gz").exists() and not no_cache:
        return json.loads(meta_file.read_text()), True
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or _git_epoch()
    d.mkdir(parents=True, exist_ok=True)
    raw = d / "rootfs.tar"
    t0 = time.monotonic()
    build_rootfs_tar(reqs, raw, arch, epoch)
    meta = {**_gzip_layer(d, raw), "epoch": epoch, "requires": reqs, "arch": arch,
            "packages": list(DEB_PACKAGES), "suite": SUITE,
            "build_seconds": round(time.monotonic() - t0, 1)}
    log(f"{arch} base layer built in {meta['build_seconds']}s")
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta, False


# The launcher pip would write for a console script, pointing at the image's venv.
_LAUNCHER = """#!/opt/tote/bin/python
import sys
from {module} import {func}
if __name__ == "__main__":
    sys.exit({func}())
"""


def _console_scripts(entry_points: str) -> dict[str, str]:
    import configparser

    cp = configparser.ConfigParser(delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # names are case-sensitive
    cp.read_string(entry_points)
    return dict(cp["console_scripts"]) if cp.has_section("console_scripts") else {}


def _record_line(rel: str, data: bytes) -> str:
    import base64

    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def _app_tree(wheel: Path, root: Path) -> None:
    """The tote wheel installed into `root`/opt/tote as pip would: the packages and dist-info
    in site-packages, the console scripts in bin/, a fresh RECORD, byte-code compiled for the
    image's paths (by this interpreter, when it is the image's Python version)."""
    import py_compile

    site = root / "opt" / "tote" / "lib" / f"python{PYTHON_TAG}" / "site-packages"
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        for n in names:
            if n != f"{dist_info}/RECORD":
                (site / n).parent.mkdir(parents=True, exist_ok=True)
                (site / n).write_bytes(z.read(n))
        eps = z.read(f"{dist_info}/entry_points.txt").decode()
    (site / dist_info / "INSTALLER").write_text("deploy/image/build.py\n")
    bindir = root / "opt" / "tote" / "bin"
    bindir.mkdir(parents=True)
    for name, target in _console_scripts(eps).items():
        module, _, func = target.partition(":")
        (bindir / name).write_text(_LAUNCHER.format(module=module.strip(), func=func.strip()))
        (bindir / name).chmod(0o755)
    if sys.version_info[:2] == tuple(int(x) for x in PYTHON_TAG.split(".")):
        for py in sorted(site.rglob("*.py")):
            py_compile.compile(str(py), dfile="/" + str(py.relative_to(root)), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    else:
        log(f"not byte-compiling tote: this is Python {sys.version_info[0]}."
            f"{sys.version_info[1]}, the image's is {PYTHON_TAG}")
    files = sorted(f for f in site.rglob("*") if f.is_file()) + \
        sorted(f for f in bindir.iterdir() if f.is_file())
    record = f"{dist_info}/RECORD"
    lines = [_record_line(os.path.relpath(f, site), f.read_bytes()) for f in files]
    (site / record).write_text("\n".join([*lines, f"{record},,"]) + "\n")


def _tar_tree(root: Path, out: Path, epoch: int) -> None:
    """A deterministic tar of `root`: sorted, root-owned, one mtime."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = epoch
            info.mode = 0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def app_dir(wheel: Path) -> Path:
    key = hashlib.sha256(json.dumps({
        "wheel": wheel_content_hash(wheel), "python": PYTHON_TAG,
        "recipe": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }, sort_keys=True).encode()).hexdigest()[:24]
    return CACHE / "app" / key


def app_layer(wheel: Path, no_cache: bool) -> tuple[dict[str, object], bool]:
    """The layer with tote itself: pure Python, so one layer serves every architecture and a
    change of tote's code rebuilds only this (a second), never the emulated base layer."""
    d = app_dir(wheel)
    d.mkdir(parents=True, exist_ok=True)
    with (d / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta_file = d / "layer.json"
        if meta_file.exists() and (d / "layer.tar.gz").exists() and not no_cache:
            return json.loads(meta_file.read_text()), True
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or _git_epoch()
        work = Path(tempfile.mkdtemp(prefix="tote-app-"))
        try:
            _app_tree(wheel, work / "root")
            _tar_tree(work / "root", d / "app.tar", epoch)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        meta = {**_gzip_layer(d, d / "app.tar"), "epoch": epoch, "wheel": wheel.name}
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


def _labels(meta: dict[str, object], ver: str) -> dict[str, str]:
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
    return labels


@dataclass(frozen=True)
class _Platform:
    """One architecture's image: its manifest and config blobs and its layers (base, app)."""

    arch: str
    manifest: tuple[str, bytes]  # digest, bytes
    config: tuple[str, bytes]
    layers: list[tuple[str, Path]]  # (digest, layer.tar.gz), bottom first
    meta: dict[str, object]  # the base layer's
    size: int  # compressed layers + config + manifest
    uncompressed_size: int

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": self.manifest[0], "size": len(self.manifest[1]),
                "platform": {"architecture": self.arch, "os": "linux"}}


def _platform(base: tuple[Path, dict[str, object]], app: tuple[Path, dict[str, object]],
              ver: str) -> _Platform:
    """Config and manifest of one architecture's image over its cached layers."""
    meta, app_meta = base[1], app[1]
    labels = _labels({**meta, "epoch": max(int(str(meta["epoch"])),
                                           int(str(app_meta["epoch"])))}, ver)
    created = labels["org.opencontainers.image.created"]
    config = {
        "architecture": str(meta["arch"]), "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": ["/opt/tote/bin/tote"],
            "Cmd": ["--help"],
            "WorkingDir": "/",
            "Env": ["PATH=/opt/tote/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                    "/sbin:/bin", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [meta["diff_id"], app_meta["diff_id"]]},
        "history": [{"created": created,
                     "created_by": f"deploy/image/build.py: mmdebstrap {SUITE} "
                                   f"essential+{'+'.join(DEB_PACKAGES)}, venv /opt/tote with "
                                   "tote's dependencies"},
                    {"created": created,
                     "created_by": f"deploy/image/build.py: {app_meta.get('wheel', 'tote')}"}],
    }
    cfg = _blob(json.dumps(config, sort_keys=True).encode())
    layers = [(str(m["digest"]), d / "layer.tar.gz") for d, m in (base, app)]
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg[0], "size": len(cfg[1])},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": m["digest"], "size": m["size"]} for m in (meta, app_meta)],
        "annotations": _annotations(labels),
    }
    man = _blob(json.dumps(manifest, sort_keys=True).encode())
    return _Platform(
        arch=str(meta["arch"]), config=cfg, meta=meta, manifest=man, layers=layers,
        size=sum(int(str(m["size"])) for m in (meta, app_meta)) + len(cfg[1]) + len(man[1]),
        uncompressed_size=sum(int(str(m["uncompressed_size"])) for m in (meta, app_meta)))


def _annotations(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items()
            if k.rsplit(".", 1)[-1] in ("version", "revision", "source", "created")}


def _write_layout(archive: Path, top: dict[str, object], blobs: list[tuple[str, bytes]],
                  layers: list[tuple[str, Path]], mtime: int) -> None:
    """An OCI image-layout tar: oci-layout, index.json naming `top`, and the blobs."""
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [top]}
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")  # concurrent writers
    seen: set[str] = set()
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(path: str, data: bytes | None = None, src: Path | None = None) -> None:
            if path in seen:
                return
            seen.add(path)
            info = tarfile.TarInfo(path)
            info.mode, info.mtime = 0o644, mtime
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
        for digest, data in blobs:
            add("blobs/sha256/" + digest[7:], data)
        for digest, src in layers:
            add("blobs/sha256/" + digest[7:], src=src)
    tmp.rename(archive)


def _ref_annotations(name: str, ver: str) -> dict[str, str]:
    # io.containerd.image.name: the name `ctr images import` gives the image (kubelet's lookup);
    # ref.name: the tag skopeo's oci-archive transport and other OCI tools select by.
    return {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": ver}


def write_archive(out: Path, plat: _Platform, ver: str) -> Path:
    """The single-architecture archive `tote-<version>-<arch>.oci.tar` (what nodes import)."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"tote-{ver}-{plat.arch}.oci.tar"
    top = {**plat.descriptor(), "annotations": _ref_annotations(f"{IMAGE_REPOSITORY}:{ver}", ver)}
    _write_layout(archive, top, [plat.manifest, plat.config], plat.layers,
                  int(str(plat.meta["epoch"])))
    return archive


def write_index_archive(out: Path, plats: list[_Platform], ver: str) -> tuple[Path, str]:
    """The multi-architecture archive `tote-<version>.oci.tar`: index.json names one image
    index (the reference users pull), which lists one manifest per platform."""
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(plats[0].meta, ver)
    image_index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [p.descriptor() for p in plats],
        "annotations": _annotations(labels),
    }
    idx = _blob(json.dumps(image_index, sort_keys=True).encode())
    top = {"mediaType": image_index["mediaType"], "digest": idx[0], "size": len(idx[1]),
           "annotations": _ref_annotations(f"{IMAGE_REPOSITORY}:{ver}", ver)}
    archive = out / f"tote-{ver}.oci.tar"
    blobs = [idx] + [b for p in plats for b in (p.manifest, p.config)]
    _write_layout(archive, top, blobs, [layer for p in plats for layer in p.layers],
                  max(int(str(p.meta["epoch"])) for p in plats))
    return archive, idx[0]


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk


def build(out: Path | None = None, *, wheel: Path | None = None, no_cache: bool = False,
          arches: tuple[str, ...] | None = None) -> BuiltImage:
    """Build (or reuse) the image and write its archives into `out`.

    `arches` defaults to the host's architecture alone (what a test node imports); with more
    than one, the multi-architecture archive is written too. The host's architecture is
    always built, since `archive` is the one this machine can import and run.
    """
    out = out or CACHE / "out"
    host = deb_arch()
    wanted = [host] + [a for a in (arches or ()) if a != host]
    for a in wanted:
        if a not in ARCHES:
            raise SystemExit(f"unknown architecture {a!r} (this build makes: "
                             f"{', '.join(ARCHES)})")
    whl = wheel or build_wheel(no_cache)
    ver = version()
    if f"{wheel_prefix()}-{ver}-" not in whl.name:
        raise SystemExit(f"{whl.name} is not {wheel_prefix()} {ver}")
    reqs = requirements(whl)
    app = app_layer(whl, no_cache)
    plats: list[_Platform] = []
    all_cached = app[1]
    seconds: dict[str, float] = {}
    for a in wanted:
        meta, cached = cached_layer(reqs, a, no_cache)
        all_cached &= cached
        if not cached:
            seconds[a] = float(str(meta.get("build_seconds", 0)))
        plats.append(_platform((base_dir(reqs, a), meta), (app_dir(whl), app[0]), ver))
    host_plat = plats[0]
    archive = write_archive(out, host_plat, ver)
    index_archive, index_digest = (write_index_archive(out, plats, ver) if len(plats) > 1
                                   else (None, None))
    return BuiltImage(
        archive=archive, name=f"{IMAGE_REPOSITORY}:{ver}", version=ver,
        digest=host_plat.manifest[0], size=host_plat.size,
        uncompressed_size=host_plat.uncompressed_size, cached=all_cached,
        arch=host, platforms={p.arch: p.manifest[0] for p in plats},
        layers={p.arch: [str(path) for _, path in p.layers] for p in plats},
        index_archive=index_archive, index_digest=index_digest, seconds=seconds, wheel=whl)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy/image/build.py",
                                description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--out", type=Path, default=None,
                   help=f"directory for the archives (default {CACHE / 'out'})")
    p.add_argument("--wheel", type=Path, default=None,
                   help="use this tote wheel instead of building one from the source tree")
    p.add_argument("--arch", action="append", choices=ARCHES, default=None,
                   help="build this architecture (repeatable; default: all of "
                        f"{', '.join(ARCHES)}); the host's is always built")
    p.add_argument("--no-cache", action="store_true", help="rebuild everything")
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    img = build(args.out, wheel=args.wheel, no_cache=args.no_cache,
                arches=tuple(args.arch or ARCHES))
    log(f"{img.name} {img.digest} ({img.arch}) {img.size / 1e6:.1f} MB compressed, "
        f"{img.uncompressed_size / 1e6:.1f} MB unpacked, "
        f"{'cached' if img.cached else 'built'} in {time.monotonic() - t0:.1f}s"
        + "".join(f"; {a} layer built in {t:.0f}s" for a, t in img.seconds.items()))
    if args.json:
        print(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                          for k, v in asdict(img).items()}))
    else:
        print(img.archive)
        print(img.name)
        if img.index_archive is not None:
            print(img.index_archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
