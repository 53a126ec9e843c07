"""The tote image for tests and the e2e cluster: built offline by deploy/image/build.py.

    python -m tests.images.tote_image [--out DIR]      # prints archive path, then image name

`build()` returns the archive (cached under ~/.cache/tote/image; a rebuild happens only when
the wheel's contents, the Debian package set or the build script change) and
`import_into()` loads it into a containerd namespace the way kubelet will look it up.
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


def build(out: Path | None = None) -> Any:
    """Build (or reuse) the image; returns a `BuiltImage` (archive, name, digest, sizes)."""
    return _script().build(out)


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
