"""Every Prometheus metric the controller exports (their names are part of tote's interface).

Labels only from bounded sets: failure reasons are short fixed words, never image names,
node names or error strings.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (10e6, 50e6, 100e6, 500e6, 1e9, 2e9)

DETECTED_FAILURES = Counter(
    "tote_detected_failures_total", "Image failures detected (one per incident)."
)
SALVAGEABLE_IMAGES = Counter(
    "tote_salvageable_images_total", "Incidents whose image digest exists on another node."
)
NOT_ACTIONABLE = Counter(
    "tote_not_actionable_total", "Incidents tote cannot act on (reported as ImageNotActionable)."
)
CORRUPT_IMAGES = Counter(
    "tote_corrupt_images_total", "Image records found with missing content (ImageCorrupt)."
)
SALVAGE_ATTEMPTS = Counter("tote_salvage_attempts_total", "Transfers started.")
SALVAGE_SUCCESSES = Counter("tote_salvage_successes_total", "Transfers completed.")
SALVAGE_FAILURES = Counter(
    "tote_salvage_failures_total", "Transfers failed, by reason.", ["reason"]
)
PUSH_ATTEMPTS = Counter("tote_push_attempts_total", "Backup registry pushes started.")
PUSH_SUCCESSES = Counter("tote_push_successes_total", "Backup registry pushes completed.")
PUSH_FAILURES = Counter("tote_push_failures_total", "Backup registry pushes failed.")
WEBHOOK_FAILURES = Counter(
    "tote_webhook_failures_total",
    "Notifications the webhook never accepted (after the bounded retry).",
)
REGISTRY_RESOLVE = Counter(
    "tote_registry_resolve_total", "Registry tag lookups, by result.", ["result"]
)
SALVAGE_DURATION = Histogram(
    "tote_salvage_duration_seconds", "Time to transfer one image.", buckets=DURATION_BUCKETS
)
SALVAGE_IMAGE_BYTES = Histogram(
    "tote_salvage_image_bytes", "Bytes moved per salvage.", buckets=SIZE_BUCKETS
)
PUSH_DURATION = Histogram(
    "tote_push_duration_seconds", "Time to push one image.", buckets=DURATION_BUCKETS
)
REGISTRY_RESOLVE_DURATION = Histogram(
    "tote_registry_resolve_duration_seconds", "Time of one registry tag lookup."
)
SALVAGERECORDS = Gauge("tote_salvagerecords_total", "SalvageRecords by phase.", ["phase"])
PINNED_IMAGES = Gauge(
    "tote_pinned_images",
    "Completed SalvageRecords whose image is pinned on the target node (status.pinned), as "
    "of the reaper's last cycle.",
)

# Operational metrics beyond the documented core set (bounded labels).
WEBHOOK_DROPPED = Counter(
    "tote_webhook_dropped_total",
    "Notifications dropped because the webhook queue was full (receiver slow or down).",
)
PLUGIN_FAILURES = Counter(
    "tote_plugin_failures_total", "Plugin hook implementations that raised.", ["plugin", "hook"]
)
RECONCILE_ERRORS = Counter(
    "tote_reconcile_errors_total", "Reconciles that failed, by queue and kind.", ["queue", "kind"]
)
IS_LEADER = Gauge("tote_leader", "1 while this replica holds the leader lease.")
ENABLED = Gauge("tote_enabled", "1 while salvage is enabled (flag and runtime kill switch).")
