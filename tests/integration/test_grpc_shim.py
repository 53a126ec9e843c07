"""The grpclib shim against every grpclib version tote supports (`grpc_shim.SUPPORTED`).

Each version is installed on its own (`pip install --no-deps --target`, cached under
`bin_cache()/grpclib-<version>`; the wheels come from the package index CI installs from) and
the bridge and agent-error unit tests run in a subprocess with that grpclib first on the
path: real gRPC calls over loopback (status after a reset, trailing metadata, the large
frame size, a server that ends) through every private attribute the shim reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tote_containerd.agent import grpc_shim

from tests.cluster.ci import require
from tests.cluster.versions import bin_cache

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/unit/test_containerd_bridge.py", "tests/unit/test_agent_errors.py"]


def _installed(version: str) -> Path | None:
    target = bin_cache() / f"grpclib-{version}"
    if (target / "grpclib" / "__init__.py").is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--target", str(partial), f"grpclib=={version}"],
        capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        return None
    partial.rename(target)
    return target


@pytest.mark.parametrize("version", grpc_shim.SUPPORTED)
def test_shim_and_bridge_on_each_supported_grpclib(version: str) -> None:
    target = _installed(version)
    require(target is not None, f"cannot install grpclib {version} from the package index")
    assert target is not None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])])}
    probe = subprocess.run(
        [sys.executable, "-c", "import grpclib, importlib.metadata as m; "
         "print(grpclib.__file__, m.version('grpclib'))"],
        env=env, capture_output=True, text=True, timeout=60, check=True)
    assert probe.stdout.startswith(str(target)) and probe.stdout.split()[-1] == version, \
        probe.stdout
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
