"""Kubernetes timestamps: MicroTime out, RFC3339 (with or without fraction) in."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def micro_time(when: datetime | None = None) -> str:
    """RFC3339 with microseconds, as MicroTime fields (events, leases) require."""
    return (when or utcnow()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> datetime | None:
    """A Time or MicroTime string → aware datetime; None when absent or malformed."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
