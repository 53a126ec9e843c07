"""Pure decisions of the salvage path: names, labels, back-off, source order, progress text,
and which failures are final."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime

from tote_core.hooks.types import NodeInfo, TransferResult
from tote_core.structs.salvagerecord import Condition
from tote_core.timefmt import parse_time

BACKOFF_STEPS = (30.0, 60.0, 120.0, 300.0)  # 30s, 1m, 2m, 5m (capped)
LABEL_DIGEST = "tote.dev/digest"
LABEL_TARGET = "tote.dev/target-node"
LABEL_MANAGED = "app.kubernetes.io/managed-by"

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


def backoff(retry_count: int) -> float:
    """Delay before attempt number `retry_count + 1` (retry_count failures so far)."""
    if retry_count <= 0:
        return 0.0
    return BACKOFF_STEPS[min(retry_count, len(BACKOFF_STEPS)) - 1]


def digest_hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def label_value(text: str) -> str:
    """A valid label value (≤ 63 chars, alnum ends); long values keep a hash suffix."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if len(clean) <= 63:
        return clean
    h = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{clean[:52].rstrip('-._')}-{h}"


def record_name(digest: str, target_node: str) -> str:
    """Deterministic per (digest, target node): lookups are a GET, never a list scan.

    The whole digest is kept: a prefix would let two images share one record.
    """
    node = _DNS_LABEL.sub("-", target_node.lower()).strip("-")
    name = f"{digest_hex(digest)}-{node}"
    if len(name) > 253:
        name = f"{name[:240]}-{hashlib.sha256(target_node.encode()).hexdigest()[:12]}"
    return name


def record_labels(digest: str, target_node: str) -> dict[str, str]:
    return {
        LABEL_DIGEST: digest_hex(digest)[:63],
        LABEL_TARGET: label_value(target_node),
        LABEL_MANAGED: "tote",
    }


def fallback_source_order(candidates: Sequence[NodeInfo]) -> list[str]:
    """The order used when no `select_source` plugin answers: ready candidates, by name.

    Kept in core so that salvage works with every plugin disabled; the real policy (zone,
    load) is the built-in `source-policy` plugin.
    """
    return sorted(c.name for c in candidates if c.ready)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{value:.1f}GiB"


def progress_text(done: int, total: int) -> str:
    if total <= 0:
        return human_bytes(done)
    pct = min(100, int(done * 100 / total))
    return f"{human_bytes(done)}/{human_bytes(total)} ({pct}%)"


def mode_text(result: TransferResult) -> str:
    """What the salvage event says about how the layers moved and were verified (empty for
    the blob path, where every byte is checked against the manifest's digests)."""
    if result.mode == "blobs" or not result.layers_regenerated:
        return ""
    n, ok = result.layers_regenerated, result.layers_verified
    text = (f" {n} layer{'s' * (n != 1)} regenerated from the source's unpacked snapshots "
            "(it had discarded the layer blobs): ")
    if ok == n:
        return text + "every one matches the image's diff IDs."
    return text + (f"{ok} match the image's diff IDs, {n - ok} verified end to end only "
                   "(the digest the source computed over what it sent).")


PERMANENT = "Permanent"
# Permanent for one source, not for the salvage: try the next candidate.
SOURCE_SPECIFIC = frozenset({"layers_discarded", "platform_missing",
                             "snapshot_salvage_disabled", "layer_unverified"})
# Failures caused by tote's own configuration, never a property of the image:
# recorded with the condition reason CONFIGURATION, not retried by the process that hit them
# (same configuration, same result), retried by any controller started after them — so a
# restart with fixed configuration carries on without anyone deleting records. Records an
# older version marked Permanent for these reasons are retried too.
CONFIGURATION = "ConfigurationError"
CONFIG_REASONS = frozenset({"tls_config", "no_plugin", "snapshot_salvage_disabled",
                            "layer_unverified"})


def failure_is_final(conditions: list[Condition], started: datetime) -> bool:
    """Whether a Failed record's conditions forbid this controller process to retry it."""
    for c in conditions:
        if c.reason == PERMANENT and c.message.split(":", 1)[0] not in CONFIG_REASONS:
            return True
        if c.reason == CONFIGURATION:
            failed_at = parse_time(c.last_transition_time)
            if failed_at is None or failed_at >= started:
                return True
    return False
