"""Whether this run is CI's: there a missing tool or machine feature fails the test instead
of skipping it, so a CI machine that silently lost a dependency cannot pass."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(msg: str) -> None:
    """Skip here; fail under CI."""
    if in_ci():
        pytest.fail(msg + " [CI is set: this is a failure]", pytrace=False)
    pytest.skip(msg)
