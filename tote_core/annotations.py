"""The `tote.dev/*` annotations and how their values are read."""

from __future__ import annotations

PREFIX = "tote.dev/"
ALLOW = "tote.dev/allow"  # on Namespaces
AUTO_SALVAGE = "tote.dev/auto-salvage"  # on Pods / pod templates / owners
KNOWN = (ALLOW, AUTO_SALVAGE)
# Written by tote (never read): when a salvaged image reached the pod's node. Changing it makes
# kubelet sync the pod and start the container at once (salvage/pods.py). Outside the
# `tote.dev/` prefix, which the admission webhook reserves for the users' true/false keys.
DELIVERED_AT = "salvage.tote.dev/delivered-at"

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


def flag(annotations: dict[str, str], key: str) -> bool | None:
    """True for exactly "true", False for exactly "false", None when absent.

    Any other value ("yes", "True", "1") counts as not opted in: returned as False so the
    caller stops looking further (the validating webhook rejects such values up front).
    """
    if key not in annotations:
        return None
    return annotations[key] == "true"


# Which object kind each key belongs on: the namespace opt-in and the workload
# opt-in. The validating webhook and the no-webhook warning share `problems`.
_KEYS_BY_KIND = {"Namespace": (ALLOW,), "Pod": (AUTO_SALVAGE,)}
_VALUES = ("true", "false")


def problems(
    annotations: dict[str, str],
    kind: str,
    old: dict[str, str] | None = None,
) -> list[str]:
    """Human-readable reasons why the `tote.dev/*` annotations of a `kind` object are wrong.

    Unknown keys get the closest known key suggested (difflib); values must be exactly
    "true" or "false". With `old` (an update), only keys added or changed are judged, so an
    object created before the webhook existed can still be labelled, scaled or deleted.
    Keys outside `tote.dev/` are never looked at.
    """
    import difflib

    own = _KEYS_BY_KIND.get(kind, ())
    out: list[str] = []
    for key in sorted(annotations):
        if not key.startswith(PREFIX):
            continue
        value = annotations[key]
        if old is not None and old.get(key) == value:
            continue
        where = f"annotation {key}"
        if key not in KNOWN:
            close = difflib.get_close_matches(key, KNOWN, n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            out.append(f"{where}: unknown tote.dev annotation (known: "
                       f"{', '.join(KNOWN)}){hint}")
            continue
        if key not in own:
            home = "Namespace" if key == ALLOW else "Pod (or its pod template)"
            out.append(f"{where}: belongs on the {home}, not on a {kind}")
            continue
        if value not in _VALUES:
            out.append(f'{where}: value "{value}" is not allowed; use "true" or "false"')
    return out
