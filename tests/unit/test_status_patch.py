"""StatusPatch sends the bytes the untyped status dicts sent.

Each case pairs the dict the salvage code built before status patches were typed (copied
from that code, key order included) with the `StatusPatch` that replaced it, and compares
what `KubeClient.patch` puts on the wire (`{"status": ...}` through msgspec's JSON encoder).
The one case whose key order differs (Transferring: the old dict had lastAttemptAt before
error, the Failed dicts the other way round; one Struct has one order) is compared as a
decoded JSON object: a merge patch means the same whatever its key order.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tote_core.salvage.statuswriter import StatusPatch
from tote_core.structs.salvagerecord import Condition

T = "2026-12-06T16:00:00.000000Z"
ENCODER = msgspec.json.Encoder()  # as tote_core.kube.client encodes request bodies


def wire(status: object) -> bytes:
    return ENCODER.encode({"status": status})


CASES: list[tuple[str, dict[str, Any], StatusPatch]] = [
    ("pending", {"phase": "Pending"}, StatusPatch(phase="Pending")),
    ("progress",
     {"bytesTotal": 5000, "bytesTransferred": 1000, "blobsSkipped": 2,
      "progress": "1000B/4.9KiB (20%)"},
     StatusPatch(bytes_total=5000, bytes_transferred=1000, blobs_skipped=2,
                 progress="1000B/4.9KiB (20%)")),
    ("completed",
     {"phase": "Completed", "completedAt": T, "error": "", "bytesTotal": 5000,
      "bytesTransferred": 5000, "blobsSkipped": 0, "progress": "4.9KiB/4.9KiB (100%)",
      "mode": "blobs", "layersRegenerated": 0, "layersVerified": 0, "pinned": False},
     StatusPatch(phase="Completed", completed_at=T, error="", bytes_total=5000,
                 bytes_transferred=5000, blobs_skipped=0, progress="4.9KiB/4.9KiB (100%)",
                 mode="blobs", layers_regenerated=0, layers_verified=0, pinned=False)),
    ("completed, nothing to move", {"phase": "Completed", "completedAt": T, "error": ""},
     StatusPatch(phase="Completed", completed_at=T, error="")),
    ("completed, progress made whole",
     {"phase": "Completed", "completedAt": T, "error": "", "bytesTransferred": 7,
      "progress": "7B/7B (100%)"},
     StatusPatch(phase="Completed", completed_at=T, error="", bytes_transferred=7,
                 progress="7B/7B (100%)")),
    ("failed with error (permanent)",
     {"phase": "Failed", "error": "n2: too big", "lastAttemptAt": T,
      "conditions": [{"type": "Failed", "status": "True", "reason": "PermanentFailure",
                      "message": "too_large: n2: too big", "lastTransitionTime": T}]},
     StatusPatch(phase="Failed", error="n2: too big", last_attempt_at=T,
                 conditions=[Condition(type="Failed", status="True",
                                       reason="PermanentFailure",
                                       message="too_large: n2: too big",
                                       last_transition_time=T)])),
    ("failed, no source", {"phase": "Failed", "error": "no other node holds sha256:ab",
                           "lastAttemptAt": T},
     StatusPatch(phase="Failed", error="no other node holds sha256:ab", last_attempt_at=T)),
    ("retry", {"phase": "Failed", "error": "n2: refused", "lastAttemptAt": T,
               "retryCount": 3},
     StatusPatch(phase="Failed", error="n2: refused", last_attempt_at=T, retry_count=3)),
    ("unpinned", {"pinned": False}, StatusPatch(pinned=False)),
]


@pytest.mark.parametrize(("old", "new"), [(o, n) for _, o, n in CASES],
                         ids=[c[0] for c in CASES])
def test_same_bytes_on_the_wire(old: dict[str, Any], new: StatusPatch) -> None:
    assert wire(new) == wire(old)


def test_transferring_same_patch_other_key_order() -> None:
    old = {"phase": "Transferring", "startedAt": T, "lastAttemptAt": T, "error": "",
           "conditions": []}
    new = StatusPatch(phase="Transferring", started_at=T, last_attempt_at=T, error="",
                      conditions=[])
    assert msgspec.json.decode(wire(new)) == msgspec.json.decode(wire(old))


def test_unset_fields_are_absent_and_given_empty_values_are_sent() -> None:
    assert wire(StatusPatch()) == b'{"status":{}}'
    assert wire(StatusPatch(error="", conditions=[], retry_count=0)) == (
        b'{"status":{"error":"","retryCount":0,"conditions":[]}}')
