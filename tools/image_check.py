"""Checks of the release image archive: the version it is labelled with and the version it runs.

The label is read straight from the OCI image-layout tar (index → manifest → config). The
running version is what `tote --version` prints inside a container started by `ctr run` on a
throwaway containerd (the harness' pinned version; own root, state and socket under a
temporary directory; stopped by PID through the harness' ProcessGroup).
"""

from __future__ import annotations

import json
import platform
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

VERSION_LABEL = "org.opencontainers.image.version"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class ImageCheckError(Exception):
    """The archive cannot be read, or it carries or runs a different version."""


def _blob(tar: tarfile.TarFile, digest: str) -> dict[str, Any]:
    algo, _, hexdigest = digest.partition(":")
    member = tar.extractfile(f"blobs/{algo}/{hexdigest}")
    if member is None:
        raise ImageCheckError(f"blob {digest} is missing from the archive")
    data: dict[str, Any] = json.loads(member.read())
    return data


def _manifest(tar: tarfile.TarFile, desc: dict[str, Any]) -> dict[str, Any]:
    """The manifest for this machine's architecture (an index is resolved one level)."""
    doc = _blob(tar, desc["digest"])
    if "manifests" not in doc:  # an image manifest, not an index
        return doc
    arch = GOARCH.get(platform.machine(), platform.machine())
    for child in doc.get("manifests", []):
        if child.get("platform", {}).get("architecture") == arch:
            return _blob(tar, child["digest"])
    raise ImageCheckError(f"the image index has no manifest for linux/{arch}")


def image_labels(archive: Path) -> dict[str, str]:
    """The config labels of the (first) image in an OCI image-layout tar."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            if member is None:
                raise ImageCheckError(f"{archive} has no index.json")
            index = json.loads(member.read())
            manifests = index.get("manifests") or []
            if not manifests:
                raise ImageCheckError(f"{archive}: index.json lists no image")
            manifest = _manifest(tar, manifests[0])
            config = _blob(tar, manifest["config"]["digest"])
    except (OSError, KeyError, ValueError, tarfile.TarError) as exc:
        raise ImageCheckError(f"{archive} is not a readable OCI image archive: {exc}") from exc
    labels = (config.get("config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def check_label(archive: Path, version: str) -> None:
    got = image_labels(archive).get(VERSION_LABEL)
    if got is None:
        raise ImageCheckError(f"the image has no {VERSION_LABEL} label (want {version!r})")
    if got != version:
        raise ImageCheckError(f"the image's {VERSION_LABEL} label is {got!r}, want {version!r}")


def containerd_unusable() -> str | None:
    """Why the image cannot be run here (None when it can).

    Uses the containerd the test harness pins (tests/cluster/versions.env), put first on PATH
    for this process as the test suite does.
    """
    from tests.cluster import versions
    from tests.cluster.containerd_env import containerd_unusable as why

    versions.use_containerd()
    return why() or (None if shutil.which("runc") else "runc is not installed")


def run_version(archive: Path) -> str:
    """What `tote --version` prints inside the image, run on a throwaway containerd."""
    from tests.cluster.containerd_node import start_containerd
    from tests.cluster.procs import ProcessGroup

    base = Path(tempfile.mkdtemp(prefix="tote-release-ctd-"))
    group = ProcessGroup(base / "logs")
    try:
        node = start_containerd(group, base / "release", name="release", cri=False)
        node.ctr("images", "import", str(archive), timeout=300)
        names = node.image_names()
        if len(names) != 1:
            raise ImageCheckError(f"expected one image in {archive}, containerd lists {names}")
        res = node.ctr("run", "--rm", names[0], "tote-release-version", "tote", "--version",
                       check=False, timeout=120)
        if res.returncode != 0:
            raise ImageCheckError(
                f"`tote --version` in {names[0]} exited {res.returncode}: "
                f"{(res.stderr or res.stdout).strip()}")
        return res.stdout.strip()
    except BaseException:
        for name, tail in group.logs().items():
            print(f"===== {name}\n{tail}")
        raise
    finally:
        group.stop_all()
        shutil.rmtree(base, ignore_errors=True)
