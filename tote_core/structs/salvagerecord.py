"""The SalvageRecord custom resource (tote.dev/v1alpha1)."""

from __future__ import annotations

from typing import Literal

import msgspec

from tote_core.structs.kube import ObjectMeta

GROUP_VERSION = "tote.dev/v1alpha1"
PLURAL = "salvagerecords"
Phase = Literal["Pending", "Transferring", "Completed", "Failed"]
PHASES: tuple[Phase, ...] = ("Pending", "Transferring", "Completed", "Failed")


class _K(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    pass


class SalvageRecordSpec(_K):
    pod_name: str = msgspec.field(default="", name="podName")
    pod_uid: str = msgspec.field(default="", name="podUID")
    digest: str = ""
    image_ref: str = ""
    source_node: str = ""
    target_node: str = ""


class Condition(_K):
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


class SalvageRecordStatus(_K):
    phase: Phase | None = None
    bytes_total: int = 0
    bytes_transferred: int = 0
    blobs_skipped: int = 0
    progress: str = ""  # printer column text, e.g. "41.9MiB/120.0MiB (35%)"
    started_at: str | None = None
    completed_at: str | None = None
    retry_count: int = 0
    last_attempt_at: str | None = None
    error: str = ""
    conditions: list[Condition] = msgspec.field(default_factory=list)
    mode: str = ""  # blobs | snapshots | mixed (how the layers moved)
    layers_regenerated: int = 0
    layers_verified: int = 0
    pinned: bool = False


class SalvageRecord(_K):
    api_version: str = GROUP_VERSION
    kind: str = "SalvageRecord"
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: SalvageRecordSpec = msgspec.field(default_factory=SalvageRecordSpec)
    status: SalvageRecordStatus = msgspec.field(default_factory=SalvageRecordStatus)
