"""Fixtures: several real containerd daemons (one per "node") and tote agents with mTLS.

Every process is started through `ProcessGroup` and stopped by PID at the end of the module.
Skipped (a failure under CI) when containerd/ctr are not installed or not running as root.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.cluster.agent_pki import make_pki  # noqa: E402
from tests.cluster.ci import require  # noqa: E402
from tests.cluster.containerd_env import Env, containerd_unusable, start_node  # noqa: E402
from tests.cluster.procs import ProcessGroup  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    why = containerd_unusable()
    require(why is None, why)
    base = Path(tempfile.mkdtemp(prefix="tote-ctd-"))
    group = ProcessGroup(base / "logs")
    e = Env(base=base, group=group, pki=make_pki(base / "pki"))
    try:
        for name in ("a", "b", "c", "d"):
            e.nodes[name] = start_node(group, base / "nodes", name)
        # a, b, c: API path; d: fast path (direct content directory access).
        for name in ("a", "b", "c"):
            e.agents[name] = e.agent(name, "--no-fast-path")
        e.agents["d"] = e.agent("d")
        for name in ("a", "c"):
            e.extra[f"{name}-fast"] = e.agent(name, name=f"agent-{name}-fast")
        yield e
    except BaseException:
        for n, log in group.logs().items():
            print(f"===== {n}\n{log}")
        raise
    finally:
        group.stop_all()
        keep = os.environ.get("TOTE_KEEP_LOGS")
        if keep:  # as in the salvage suite: process logs survive the run
            shutil.copytree(base / "logs", Path(keep) / base.name, dirs_exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)
