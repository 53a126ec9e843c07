"""Plugin distributions for tests of shipping a plugin (each directory is a package's source,
with its own pyproject.toml), and the two steps a plugin author takes to ship one:
`build_wheel` (offline, with the project's own setuptools) and `derive` (a tote image with
the wheel added: deploy/image/derive.py).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
DERIVE_SCRIPT = HERE.parents[2] / "deploy" / "image" / "derive.py"


def build_wheel(name: str, out: Path) -> Path:
    """The wheel of the plugin package `name` (a directory here), built offline into `out`:
    `pip wheel --no-deps --no-build-isolation` from a copy of its source, so setuptools'
    build/ and egg-info land in the copy, not in the repository."""
    src = out / "src" / name
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(HERE / name, src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"pip wheel {name} failed:\n{res.stdout}{res.stderr}")
    dist = name.replace("-", "_")
    (whl,) = out.glob(f"{dist}-*.whl")
    return whl


def derive_module() -> ModuleType:
    """deploy/image/derive.py as a module (loaded by path: deploy/ is no package)."""
    mod = sys.modules.get("tote_image_derive")
    if mod is None:
        spec = importlib.util.spec_from_file_location("tote_image_derive", DERIVE_SCRIPT)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["tote_image_derive"] = mod  # dataclasses resolve their module by name
        spec.loader.exec_module(mod)
    return mod


def derive(wheels: list[Path], **kw: Any) -> Any:
    """A tote image with `wheels` added (derive.py's `derive`; returns its DerivedImage)."""
    return derive_module().derive(wheels, **kw)
