"""The `tote.dev/*` annotations (SPEC §1) and how their values are read."""

from __future__ import annotations

PREFIX = "tote.dev/"
ALLOW = "tote.dev/allow"  # on Namespaces
AUTO_SALVAGE = "tote.dev/auto-salvage"  # on Pods / pod templates / owners
KNOWN = (ALLOW, AUTO_SALVAGE)

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


def flag(annotations: dict[str, str], key: str) -> bool | None:
    """True for exactly "true", False for exactly "false", None when absent.

    Any other value ("yes", "True", "1") counts as not opted in: returned as False so the
    caller stops looking further (the validating webhook rejects such values up front).
    """
    if key not in annotations:
        return None
    return annotations[key] == "true"
