#!/usr/bin/env python3
"""A tote image with extra plugin wheels: the tote image plus one layer, offline.

    python3 deploy/image/derive.py --extra-wheel WHEEL [--extra-wheel WHEEL]...
                                   [--from ARCHIVE | --arch amd64|arm64 ...]
                                   [--name REF] [--out DIR] [--json]

Without `--from`, the tote image is built (or taken from the cache) by deploy/image/build.py
for the host's architecture (and every `--arch`); with `--from`, an existing tote image
archive is the base (a per-platform `tote-<version>-<arch>.oci.tar` or the
multi-architecture `tote-<version>.oci.tar`, e.g. the released image fetched with
`skopeo copy docker://ghcr.io/tote-dev/tote:<version> oci-archive:tote.tar`). Either way
the base's layers are reused byte for byte, and one layer is added per platform: the wheels
installed into the image's environment (/opt/tote, the venv tote runs from) the way pip
would install them — files into site-packages, launchers for console scripts, a RECORD per
distribution, byte-code compiled like the rest of the image (unchecked-hash, the root
filesystem is read-only at run time). tote finds the plugins through their entry points in
group `tote`, like any installed distribution.

Offline: nothing is downloaded. Every wheel is given, and each one's requirements must be
met by the base image (tote and its dependencies) or another given wheel; a requirement
that is not (or only at a version the specifier refuses) stops the build with one line
naming it. A distribution the base already holds is refused too (two copies of one
distribution confuse `importlib.metadata`). Pure-Python wheels (`py3-none-any`) serve every
architecture; a binary wheel must match the platform (CPython 3.11, manylinux x86_64 or
aarch64).

Prints, like build.py: the host architecture's archive, the image name inside it, and the
multi-architecture archive when more than one platform was derived. The default name is
`localhost/tote:<tote version>-plugins` — a name no registry serves, so kubelet can only use
an imported copy; give `--name` the reference you will push it to. Import it with
`ctr -n k8s.io images import <archive>` and install the chart with `image.repository` /
`image.tag` set to that name (docs/plugins.md, "Shipping a plugin").

deploy/image/Containerfile.plugins is the same recipe for a container engine. This is a
separate script (not a build.py option) on purpose: build.py's own hash keys the cached base
layers, so the plugin layer can change without rebuilding them.

Standard library plus `packaging` (or the copy vendored in pip), Python >= 3.11.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SITE = "opt/tote/lib/python{py}/site-packages"
_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}


def _build_module() -> ModuleType:
    """deploy/image/build.py, loaded once under the name the tests use for it."""
    mod = sys.modules.get("tote_image_build")
    if mod is None:
        spec = importlib.util.spec_from_file_location("tote_image_build", HERE / "build.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["tote_image_build"] = mod  # dataclasses resolve their module by name
        spec.loader.exec_module(mod)
    return mod


B = _build_module()


def _packaging() -> tuple[Any, Any]:
    """(Requirement, Version) from `packaging`, else from pip's vendored copy."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment]
            from pip._vendor.packaging.version import Version  # type: ignore[no-redef,assignment]
        except ImportError:
            raise SystemExit("derive.py needs the `packaging` module (or pip) to check the "
                             "wheels' requirements") from None
    return Requirement, Version


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- the extra wheels ---------------------------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical distribution name
    version: str
    tags: frozenset[tuple[str, str, str]]  # (python, abi, platform)
    requires: tuple[str, ...]  # Requires-Dist lines
    dist_info: str

    def fits(self, arch: str) -> bool:
        """Whether the image's CPython 3.11 on linux/`arch` can use this wheel."""
        py = B.PYTHON_TAG.replace(".", "")
        plats = {"any", f"linux_{_MACHINE[arch]}", *B._pip_platforms(arch)}
        for pyt, abi, plat in self.tags:
            if plat not in plats:
                continue
            if abi == "none" and pyt in ("py3", f"py{py}", f"cp{py}"):
                return True
            if abi == f"cp{py}" and pyt == f"cp{py}":
                return True
            if abi == "abi3" and pyt.startswith("cp3") and int(pyt[3:] or 0) <= int(py[1:]):
                return True
        return False


def read_wheel(path: Path) -> Wheel:
    """A wheel's name, version, tags and requirements, or one line saying why it is none."""
    m = re.fullmatch(r"([^-]+)-([^-]+)(?:-\d[^-]*)?-([^-]+)-([^-]+)-([^-]+)\.whl", path.name)
    if not path.is_file() or m is None:
        raise SystemExit(f"--extra-wheel {path}: not a wheel file "
                         "(NAME-VERSION-PYTHON-ABI-PLATFORM.whl)")
    try:
        with zipfile.ZipFile(path) as z:
            meta_name = next((n for n in z.namelist()
                              if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
            if meta_name is None:
                raise SystemExit(f"--extra-wheel {path}: no .dist-info/METADATA inside")
            meta = z.read(meta_name).decode()
    except zipfile.BadZipFile:
        raise SystemExit(f"--extra-wheel {path}: not a zip archive") from None
    headers: dict[str, list[str]] = {}
    for line in meta.split("\n\n", 1)[0].splitlines():
        if ":" in line and not line.startswith((" ", "\t")):
            k, _, v = line.partition(":")
            headers.setdefault(k.strip(), []).append(v.strip())
    tags = frozenset((p, a, pl) for p in m.group(3).split(".") for a in m.group(4).split(".")
                     for pl in m.group(5).split("."))
    return Wheel(path=path, name=canonical(headers.get("Name", [m.group(1)])[0]),
                 version=headers.get("Version", [m.group(2)])[0], tags=tags,
                 requires=tuple(headers.get("Requires-Dist", [])),
                 dist_info=meta_name.split("/")[0])


def _marker_env(arch: str) -> dict[str, str]:
    """PEP 508 marker values of the image's interpreter (Debian 12's CPython 3.11, Linux)."""
    return {"python_version": B.PYTHON_TAG, "python_full_version": f"{B.PYTHON_TAG}.2",
            "implementation_name": "cpython", "implementation_version": f"{B.PYTHON_TAG}.2",
            "platform_python_implementation": "CPython", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux",
            "platform_machine": _MACHINE[arch], "platform_release": "", "platform_version": "",
            "extra": ""}


def check_requirements(wheels: list[Wheel], present: dict[str, str], arch: str) -> None:
    """Every requirement of every wheel met by the base image or another wheel (one line
    naming the first that is not); no wheel re-installing what the base already holds."""
    requirement_cls, version_cls = _packaging()
    have = dict(present)
    for w in wheels:
        if w.name in present:
            raise SystemExit(f"--extra-wheel {w.path.name}: {w.name} {present[w.name]} is "
                             "already in the tote image; drop this wheel (the image's copy "
                             "is what tote runs with)")
        if w.name in have:
            raise SystemExit(f"--extra-wheel {w.path.name}: {w.name} is given twice for "
                             f"linux/{arch}")
        have[w.name] = w.version
    env = _marker_env(arch)
    for w in wheels:
        for line in w.requires:
            req = requirement_cls(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonical(req.name)
            if name not in have:
                raise SystemExit(
                    f"--extra-wheel {w.path.name}: requires {line.split(';')[0].strip()}, "
                    f"which neither the tote image nor another --extra-wheel provides "
                    f"(linux/{arch}); pass its wheel with --extra-wheel")
            if req.specifier and not req.specifier.contains(version_cls(have[name]),
                                                            prereleases=True):
                where = "the tote image has" if name in present else "the given wheel is"
                raise SystemExit(
                    f"--extra-wheel {w.path.name}: requires {line.split(';')[0].strip()}, "
                    f"but {where} {name} {have[name]}")


# -- the base image -----------------------------------------------------------------------


@dataclass
class BasePlatform:
    """One platform of the base image, as read from its archive."""

    arch: str
    digest: str  # the manifest's, as the archive lists it
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[tuple[str, Path]] = field(default_factory=list)  # (digest, file), bottom first


@dataclass
class BaseImage:
    name: str  # "" when the archive does not say (skopeo's oci-archive)
    tag: str  # org.opencontainers.image.ref.name
    platforms: list[BasePlatform]


def read_archive(archive: Path, blob_dir: Path, known: dict[str, Path]) -> BaseImage:
    """The platforms of an OCI image-layout tar (one manifest, or an index of them); layer
    blobs not in `known` (digest → file, the build cache) are extracted into `blob_dir`."""
    if not archive.is_file():
        raise SystemExit(f"--from {archive}: no such file")
    if not tarfile.is_tarfile(archive):
        raise SystemExit(f"--from {archive}: not an OCI image archive (not a tar file)")
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> bytes:
            try:
                f = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            except KeyError:
                f = None
            if f is None:
                raise SystemExit(f"--from {archive}: blob {digest} missing")
            return f.read()

        try:
            top = json.loads(blob_or(tar, "index.json"))["manifests"][0]
        except (KeyError, IndexError, ValueError):
            raise SystemExit(f"--from {archive}: no index.json naming an image") from None
        notes = top.get("annotations") or {}
        # build.py and ctr name the image; skopeo's oci-archive only tags it (ref.name)
        name = str(notes.get("io.containerd.image.name") or "")
        tag = str(notes.get("org.opencontainers.image.ref.name") or "")
        descs = [top]
        if top.get("mediaType") in ("application/vnd.oci.image.index.v1+json",
                                    "application/vnd.docker.distribution.manifest.list.v2+json"):
            descs = json.loads(blob(top["digest"]))["manifests"]
        plats = []
        for d in descs:
            man = json.loads(blob(d["digest"]))
            cfg = json.loads(blob(man["config"]["digest"]))
            plat = BasePlatform(arch=str(cfg.get("architecture", "")), digest=str(d["digest"]),
                                manifest=man, config=cfg)
            if plat.arch not in _MACHINE:
                raise SystemExit(f"--from {archive}: platform {plat.arch!r} is not one tote "
                                 f"is built for ({', '.join(_MACHINE)})")
            for layer in man["layers"]:
                dg = str(layer["digest"])
                path = known.get(dg) or blob_dir / dg.split(":", 1)[1]
                if not path.exists():
                    member = tar.extractfile("blobs/sha256/" + dg.split(":", 1)[1])
                    if member is None:
                        raise SystemExit(f"--from {archive}: layer {dg} missing")
                    with path.open("wb") as out:
                        shutil.copyfileobj(member, out, 1 << 20)
                plat.layers.append((dg, path))
            plats.append(plat)
    return BaseImage(name=name, tag=tag, platforms=plats)


def blob_or(tar: tarfile.TarFile, member: str) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise KeyError(member)
    return f.read()


def installed(layer: tuple[str, Path]) -> dict[str, str]:
    """Distributions (canonical name → version) a layer installs into the image's venv, from
    its .dist-info directory names; cached by the layer's digest (reading 200 MB of gzip'ed
    tar takes seconds, the answer never changes)."""
    digest, path = layer
    cache = B.CACHE / "dists" / (digest.split(":", 1)[1] + ".json")
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    site = SITE.format(py=B.PYTHON_TAG) + "/"
    found: dict[str, str] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            rel = info.name.lstrip("./")
            if not rel.startswith(site):
                continue
            m = re.fullmatch(r"([^/-]+)-([^/-]+)\.dist-info", rel[len(site):].rstrip("/")
                             .split("/")[0])
            if m:
                found[canonical(m.group(1))] = m.group(2)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(found, sort_keys=True))
    return found


# -- the plugin layer ---------------------------------------------------------------------


def _install_wheel(wheel: Wheel, root: Path) -> None:
    """Install one wheel into `root`/opt/tote as pip would (purelib/platlib into
    site-packages, scripts and console scripts into bin/, a fresh RECORD)."""
    site = root / SITE.format(py=B.PYTHON_TAG)
    bindir = root / "opt" / "tote" / "bin"
    data_dir = wheel.dist_info.removesuffix(".dist-info") + ".data"
    written: list[Path] = []
    with zipfile.ZipFile(wheel.path) as z:
        for n in z.namelist():
            if n.endswith("/") or n == f"{wheel.dist_info}/RECORD":
                continue
            dest = site / n
            body = z.read(n)
            if n.startswith(data_dir + "/"):
                kind, _, rest = n[len(data_dir) + 1:].partition("/")
                if kind in ("purelib", "platlib"):
                    dest = site / rest
                elif kind == "scripts":
                    dest = bindir / rest
                    if body.startswith(b"#!python"):
                        body = b"#!/opt/tote/bin/python" + body[len(b"#!python"):]
                elif kind == "data":
                    dest = root / "opt" / "tote" / rest
                else:  # headers: nothing at run time uses them
                    continue
            if dest.exists():
                raise SystemExit(f"--extra-wheel {wheel.path.name}: {n} would overwrite a "
                                 "file another given wheel installs")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(body)
            if dest.parent == bindir:
                dest.chmod(0o755)
            written.append(dest)
        eps = (z.read(f"{wheel.dist_info}/entry_points.txt").decode()
               if f"{wheel.dist_info}/entry_points.txt" in z.namelist() else "")
    for name, target in B._console_scripts(eps).items():
        module, _, func = target.partition(":")
        script = bindir / name
        bindir.mkdir(parents=True, exist_ok=True)
        script.write_text(B._LAUNCHER.format(module=module.strip(), func=func.strip()))
        script.chmod(0o755)
        written.append(script)
    info = site / wheel.dist_info
    (info / "INSTALLER").write_text("deploy/image/derive.py\n")
    written.append(info / "INSTALLER")
    if sys.version_info[:2] == tuple(int(x) for x in B.PYTHON_TAG.split(".")):
        import py_compile

        for py in sorted(p for p in written if p.suffix == ".py" and site in p.parents):
            pyc = py_compile.compile(
                str(py), dfile="/" + str(py.relative_to(root)), doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            if pyc is not None:
                written.append(Path(pyc))
    record = f"{wheel.dist_info}/RECORD"
    lines = [B._record_line(os.path.relpath(f, site), f.read_bytes()) for f in sorted(written)]
    (site / record).write_text("\n".join([*lines, f"{record},,"]) + "\n")


def plugin_layer(wheels: list[Wheel], work: Path, epoch: int) -> tuple[Path, dict[str, Any]]:
    """The layer holding `wheels`, gzip'ed (deterministic: the same wheels give the same
    digest), in a directory of its own under `work`."""
    key = hashlib.sha256("".join(sorted(B.wheel_content_hash(w.path) for w in wheels))
                         .encode()).hexdigest()[:16]
    d = work / key
    if (d / "layer.tar.gz").exists():
        return d / "layer.tar.gz", json.loads((d / "layer.json").read_text())
    root = d / "root"
    for w in wheels:
        _install_wheel(w, root)
    B._tar_tree(root, d / "plugins.tar", epoch)
    shutil.rmtree(root)
    meta = dict(B._gzip_layer(d, d / "plugins.tar"))
    (d / "layer.json").write_text(json.dumps(meta))
    return d / "layer.tar.gz", meta


# -- putting it together ------------------------------------------------------------------

# One platform of the derived image: (arch, manifest, config, layers bottom first), the
# manifest and config as (digest, bytes), the layers as (digest, file).
_Plat = tuple[str, tuple[str, bytes], tuple[str, bytes], list[tuple[str, Path]]]


@dataclass(frozen=True)
class DerivedImage:
    """What a derivation produced (the fields build.py's BuiltImage has, where they apply)."""

    archive: Path  # the host architecture's (else the first platform's) archive
    name: str
    version: str  # the tag
    digest: str  # that archive's manifest digest
    image_id: str  # its config digest: the image ID (what the CRI reports as a pod's imageID)
    arch: str
    base: str  # the base image's name
    base_digest: str  # and its manifest digest for `arch`
    platforms: dict[str, str]  # arch -> manifest digest
    plugins: dict[str, str]  # distribution -> version
    layer_digest: dict[str, str]  # arch -> the added layer's digest
    index_archive: Path | None = None
    index_digest: str | None = None
    seconds: float = 0.0


def _epoch(base_cfg: dict[str, Any]) -> int:
    if env := os.environ.get("SOURCE_DATE_EPOCH"):
        return int(env)
    created = str(base_cfg.get("created", ""))
    try:
        return int(dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ")
                   .replace(tzinfo=dt.UTC).timestamp())
    except ValueError:
        return 0


def derive(wheel_paths: list[Path], *, base_archive: Path | None = None,
           arches: tuple[str, ...] | None = None, name: str | None = None,
           out: Path | None = None, no_cache: bool = False) -> DerivedImage:
    """The base image (`base_archive`, or build.py's image for `arches`) plus one layer with
    the wheels, written as OCI archives into `out`."""
    t0 = time.monotonic()
    if not wheel_paths:
        raise SystemExit("give at least one --extra-wheel")
    wheels = [read_wheel(p.resolve()) for p in wheel_paths]
    out = out or B.CACHE / "out"
    known: dict[str, Path] = {}
    if base_archive is None:
        built = B.build(None, arches=arches, no_cache=no_cache)
        base_archive = built.index_archive or built.archive
        for paths in built.layers.values():
            for p in map(Path, paths):
                known[json.loads((p.parent / "layer.json").read_text())["digest"]] = p
    work = Path(tempfile.mkdtemp(prefix="tote-derive-"))
    try:
        base = read_archive(base_archive, work, known)
        host = B.deb_arch()
        base.platforms.sort(key=lambda p: (p.arch != host, p.arch))
        ref = name or f"localhost/tote:{_base_version(base)}-plugins"
        if not re.fullmatch(r"[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?:[\w][\w.-]{0,127}", ref):
            raise SystemExit(f"--name {ref!r}: not an image reference REPOSITORY:TAG")
        repo, tag = ref.rsplit(":", 1)
        for w in wheels:
            if not any(w.fits(p.arch) for p in base.platforms):
                raise SystemExit(f"--extra-wheel {w.path.name}: built for "
                                 f"{sorted({t[2] for t in w.tags})}, not for linux/"
                                 f"{' or linux/'.join(p.arch for p in base.platforms)} "
                                 f"with CPython {B.PYTHON_TAG}")
        plats: list[_Plat] = []
        added: dict[str, str] = {}
        for plat in base.platforms:
            mine = [w for w in wheels if w.fits(plat.arch)]
            lacking = sorted({w.name for w in wheels} - {w.name for w in mine})
            if lacking:
                raise SystemExit(f"no wheel of {', '.join(lacking)} fits linux/{plat.arch} "
                                 "(every platform of the base needs one)")
            present: dict[str, str] = {}
            for base_layer in plat.layers:
                present.update(installed(base_layer))
            if "tote-salvage" not in present:
                raise SystemExit(f"--from {base_archive}: linux/{plat.arch} has no tote "
                                 f"(tote-salvage) in /{SITE.format(py=B.PYTHON_TAG)}")
            check_requirements(mine, present, plat.arch)
            epoch = _epoch(plat.config)
            layer, meta = plugin_layer(mine, work / "layers", epoch)
            added[plat.arch] = str(meta["digest"])
            plats.append(_platform(plat, base, layer, meta, mine, epoch))
        version = tag
        host_arch, man, cfg, _ = plats[0]
        archive = _write(out, plats[0], ref, repo, tag)
        index_archive = index_digest = None
        if len(plats) > 1:
            index_archive, index_digest = _write_index(out, plats, ref, repo, tag)
        return DerivedImage(
            archive=archive, name=ref, version=version, digest=man[0], image_id=cfg[0],
            arch=host_arch,
            base=base.name, base_digest=base.platforms[0].digest,
            platforms={p[0]: p[1][0] for p in plats},
            plugins={w.name: w.version for w in wheels}, layer_digest=added,
            index_archive=index_archive, index_digest=index_digest,
            seconds=round(time.monotonic() - t0, 2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _base_version(base: BaseImage) -> str:
    """The base image's version for the default name: its tag, else its version label,
    else this checkout's version."""
    last = base.name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[-1]
    if base.tag:
        return base.tag
    labels = (base.platforms[0].config.get("config") or {}).get("Labels") or {}
    return str(labels.get("org.opencontainers.image.version") or B.version())


def _platform(plat: BasePlatform, base: BaseImage, layer: Path, meta: dict[str, Any],
              wheels: list[Wheel], epoch: int) -> _Plat:
    """Config and manifest of the derived image for one platform."""
    created = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cfg = json.loads(json.dumps(plat.config))
    listed = ", ".join(f"{w.name} {w.version}" for w in wheels)
    labels = dict(cfg.get("config", {}).get("Labels") or {})
    base_digest = plat.digest
    labels.update({"org.opencontainers.image.base.digest": base_digest,
                   "dev.tote.plugins": listed})
    labels.pop("org.opencontainers.image.base.name", None)  # the tote image's own (Debian)
    if base.name:
        labels["org.opencontainers.image.base.name"] = base.name
    cfg.setdefault("config", {})["Labels"] = labels
    cfg["rootfs"]["diff_ids"] = [*cfg["rootfs"]["diff_ids"], meta["diff_id"]]
    cfg["history"] = [*cfg.get("history", []),
                      {"created": created, "created_by": f"deploy/image/derive.py: {listed}"}]
    cfg_blob = B._blob(json.dumps(cfg, sort_keys=True).encode())
    man = json.loads(json.dumps(plat.manifest))
    man["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json",
                     "digest": cfg_blob[0], "size": len(cfg_blob[1])}
    man["layers"] = [*man["layers"],
                     {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": meta["digest"], "size": meta["size"]}]
    man.setdefault("annotations", {}).update(
        {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.base.")})
    man_blob = B._blob(json.dumps(man, sort_keys=True).encode())
    return plat.arch, man_blob, cfg_blob, [*plat.layers, (str(meta["digest"]), layer)]


def _descriptor(p: _Plat) -> dict[str, object]:
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": p[1][0],
            "size": len(p[1][1]), "platform": {"architecture": p[0], "os": "linux"}}


def _write(out: Path, p: _Plat, ref: str, repo: str, tag: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{repo.rsplit('/', 1)[-1]}-{tag}-{p[0]}.oci.tar"
    top = {**_descriptor(p), "annotations": B._ref_annotations(ref, tag)}
    B._write_layout(archive, top, [p[1], p[2]], p[3], 0)
    return archive


def _write_index(out: Path, plats: list[_Plat], ref: str, repo: str, tag: str
                 ) -> tuple[Path, str]:
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [_descriptor(p) for p in plats]}
    idx = B._blob(json.dumps(index, sort_keys=True).encode())
    top = {"mediaType": index["mediaType"], "digest": idx[0], "size": len(idx[1]),
           "annotations": B._ref_annotations(ref, tag)}
    archive = out / f"{repo.rsplit('/', 1)[-1]}-{tag}.oci.tar"
    B._write_layout(archive, top, [idx] + [b for p in plats for b in (p[1], p[2])],
                    [layer for p in plats for layer in p[3]], 0)
    return archive, idx[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy/image/derive.py",
                                description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--extra-wheel", type=Path, action="append", default=[], required=True,
                   metavar="WHEEL", help="a plugin wheel, or a wheel of a dependency the tote "
                                         "image lacks (repeatable)")
    p.add_argument("--from", dest="base", type=Path, default=None, metavar="ARCHIVE",
                   help="an existing tote image archive (default: build.py's image)")
    p.add_argument("--arch", action="append", choices=B.ARCHES, default=None,
                   help="without --from: build the tote image for this architecture too "
                        "(repeatable; the host's is always built)")
    p.add_argument("--name", default=None, metavar="REF",
                   help="the derived image's name (default localhost/tote:<version>-plugins)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"directory for the archives (default {B.CACHE / 'out'})")
    p.add_argument("--no-cache", action="store_true", help="rebuild the tote image's layers")
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    args = p.parse_args(argv)
    if args.base is not None and args.arch:
        p.error("--arch builds the tote image; with --from the archive's platforms are used")
    img = derive(args.extra_wheel, base_archive=args.base, arches=tuple(args.arch or ()),
                 name=args.name, out=args.out, no_cache=args.no_cache)
    B.log(f"{img.name} {img.digest} ({img.arch}) = {img.base} + "
          f"{', '.join(f'{k} {v}' for k, v in img.plugins.items())} in {img.seconds:.1f}s")
    if args.json:
        print(json.dumps({k: (str(v) if isinstance(v, Path) else v)
                          for k, v in img.__dict__.items()}))
    else:
        print(img.archive)
        print(img.name)
        if img.index_archive is not None:
            print(img.index_archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
