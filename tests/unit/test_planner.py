"""Salvage planner: names, labels, back-off, source order, progress text; reaper TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from tote_core.hooks.types import NodeInfo
from tote_core.salvage import planner
from tote_core.salvage.reaper import expired
from tote_core.structs.salvagerecord import SalvageRecord

D = "sha256:" + "ab" * 32


def test_backoff_schedule_is_30s_1m_2m_5m_capped() -> None:
    assert [planner.backoff(n) for n in range(7)] == [0, 30, 60, 120, 300, 300, 300]


def test_record_name_is_deterministic_and_valid() -> None:
    a = planner.record_name(D, "Node_1.example.com")
    assert a == planner.record_name(D, "Node_1.example.com")
    assert a.startswith("ab" * 32) and a == a.lower() and len(a) <= 253
    # Digests sharing a long prefix still get distinct records.
    assert planner.record_name("sha256:" + "0" * 63 + "1", "n") != planner.record_name(
        "sha256:" + "0" * 64, "n")
    assert planner.record_name(D, "n1") != planner.record_name(D, "n2")
    long = planner.record_name(D, "x" * 400)
    assert len(long) <= 253


def test_labels_fit_kubernetes_limits() -> None:
    labels = planner.record_labels(D, "n" * 100)
    assert all(len(v) <= 63 for v in labels.values())
    assert labels[planner.LABEL_DIGEST] == ("ab" * 32)[:63]


def test_fallback_order_is_ready_nodes_by_name() -> None:
    candidates = [
        NodeInfo(name="c", ready=True, zone="z1", active_transfers=3),
        NodeInfo(name="a", ready=True, zone="z2"),
        NodeInfo(name="b", ready=False),
    ]
    assert planner.fallback_source_order(candidates) == ["a", "c"]


def test_progress_text() -> None:
    assert planner.progress_text(44 * 2**20, 120 * 2**20) == "44.0MiB/120.0MiB (36%)"
    assert planner.progress_text(0, 0) == "0B"


def test_reaper_ttl_by_completed_at_or_creation() -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    ttl = 168 * 3600.0

    def rec(created: datetime, completed: datetime | None) -> SalvageRecord:
        status = {"completedAt": completed.isoformat().replace("+00:00", "Z")} if completed else {}
        return msgspec.convert({
            "metadata": {"name": "r", "creationTimestamp":
                         created.isoformat().replace("+00:00", "Z")},
            "status": status,
        }, SalvageRecord)

    old = now - timedelta(days=8)
    fresh = now - timedelta(days=1)
    assert expired(rec(old, old), ttl, now)
    assert not expired(rec(old, fresh), ttl, now)  # completedAt wins over creation
    assert expired(rec(old, None), ttl, now)  # never completed: creation time
    assert not expired(rec(fresh, None), ttl, now)
