"""The one rule for what this machine may lack: skip here, fail under CI.

A test that needs a tool, a built binary or a machine feature (root, /dev/shm, qemu) calls
`require(ok, why)`; nothing else in the test tree skips for that reason
(tests/unit/test_test_tree.py checks it). Locally a missing prerequisite skips with `why`;
under CI (`CI` set to anything but empty/0/false/no) it fails, because .ci/install installs
everything the suite needs, so a CI machine that silently lost a dependency cannot pass.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require(ok: bool, why: str | None) -> None:
    """Go on when `ok`; otherwise skip with `why` (fail under CI).

    `ok` must be a real bool, so a reason string from a `…_unusable()` helper cannot be
    mistaken for "available": write `why = containerd_unusable(); require(why is None, why)`.
    """
    if not isinstance(ok, bool):
        raise TypeError(f"require() needs a bool, got {type(ok).__name__}: {ok!r}")
    if ok:
        return
    msg = why or "a prerequisite of this test is missing"
    if in_ci():
        pytest.fail(msg + " [CI is set: a missing prerequisite is a failure]", pytrace=False)
    pytest.skip(msg)
