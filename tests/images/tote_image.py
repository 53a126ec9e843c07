"""The tote image for tests and the e2e cluster: built offline by deploy/image/build.py.

    python -m tests.images.tote_image [--out DIR] [--arch A]...   # deploy/image/build.py's CLI

`build()` returns the host architecture's archive (cached under ~/.cache/tote/image; a rebuild
happens only when the wheel's contents, the Debian package set or the build script change),
and with `arches=` also the other architectures and the multi-architecture archive;
`import_into()` loads an archive into a containerd namespace the way kubelet will look it up.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "image" / "build.py"


def _script() -> ModuleType:
    mod = sys.modules.get("tote_image_build")
    if mod is None:
        spec = importlib.util.spec_from_file_location("tote_image_build", BUILD_SCRIPT)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["tote_image_build"] = mod  # dataclasses resolve their module by name
        spec.loader.exec_module(mod)
    return mod


def build(out: Path | None = None, *, arches: tuple[str, ...] | None = None,
          wheel: Path | None = None) -> Any:
    """Build (or reuse) the image; returns a `BuiltImage` (archive, name, digest, sizes).

    Only the host's architecture unless `arches` names more (the e2e cluster imports the
    host's archive alone, so it never waits for an emulated build); `wheel`: this tote wheel
    instead of one built from the work tree."""
    return _script().build(out, arches=arches, wheel=wheel)


def all_arches() -> tuple[str, ...]:
    """Every architecture the image is published for."""
    return tuple(_script().ARCHES)


def host_arch() -> str:
    return str(_script().deb_arch())


def foreign_unusable(arch: str) -> str | None:
    """Why `arch` cannot be built or run here (None when it can: native, or qemu via binfmt)."""
    why: str | None = _script().foreign_unusable(arch)
    return why


def missing_tools() -> list[str]:
    import shutil

    return [t for t in ("mmdebstrap",) if shutil.which(t) is None]


def import_into(archive: Path, address: str, *, namespace: str = "k8s.io",
                ctr: str = "ctr", timeout: float = 300) -> None:
    """`ctr images import` of the archive into one containerd (all of the image's names)."""
    res = subprocess.run(
        [ctr, "--address", address, "--namespace", namespace, "images", "import",
         str(archive)], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"ctr images import {archive} into {address} failed:\n"
                           f"{res.stdout}{res.stderr}")


if __name__ == "__main__":
    sys.exit(_script().main(sys.argv[1:]))
