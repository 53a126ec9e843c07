"""Fixtures: several real containerd daemons (one per "node") and tote agents with mTLS.

Every process is started through `ProcessGroup` and stopped by PID at the end of the module.
Skipped (a failure under CI) when containerd/ctr are not installed or not running as root.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.cluster.containerd_env import Env, containerd_env  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    # a, b, c: API path; d: fast path (direct content directory access); a-fast, c-fast:
    # second agents on a and c with the fast path.
    api = ("--no-fast-path",)
    with containerd_env(
        "tote-ctd-", ("a", "b", "c", "d"), agents={"a": api, "b": api, "c": api, "d": ()},
        extra_agents={"a-fast": ("a", ()), "c-fast": ("c", ())}, dump_logs_on_error=True,
    ) as e:
        yield e
