"""SalvageRecord status writes: the typed patch and the one object that sends it.

controller-runtime's split: the event recorder posts Events, this writes status. Every status
change — Pending on create, Transferring, progress, Completed, Failed, unpinned — is a
`StatusPatch` sent as a JSON merge patch to the record's `/status` subresource (with a status
subresource the API server ignores `status` anywhere else).

A field left `UNSET` is absent from the patch, so the record keeps its value; a field given
(even `""`, `0`, `[]` or `False`) is written: `error=""` clears an old error,
`conditions=[]` drops a retried configuration failure. The wire names are the record's own
(`SalvageRecordStatus`'s camelCase), and the field order is fixed so the bytes sent are the
ones the untyped dicts used to send (tests/unit/test_status_patch.py).

Whoever wants to see the records written (the status board) registers a `RecordListener`:
it is called, synchronously, with every record the API server returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
from msgspec import UNSET, UnsetType

from tote_core.errors import NotFound
from tote_core.kube.client import KubeClient, resource_path
from tote_core.structs.salvagerecord import (
    GROUP_VERSION,
    PLURAL,
    Condition,
    Phase,
    SalvageRecord,
)

RecordListener = Callable[[SalvageRecord], None]


class StatusPatch(msgspec.Struct, rename="camel", kw_only=True):
    """A change to a SalvageRecord's status: only the fields given are sent."""

    phase: Phase | UnsetType = UNSET
    started_at: str | UnsetType = UNSET
    completed_at: str | UnsetType = UNSET
    error: str | UnsetType = UNSET
    last_attempt_at: str | UnsetType = UNSET
    retry_count: int | UnsetType = UNSET
    bytes_total: int | UnsetType = UNSET
    bytes_transferred: int | UnsetType = UNSET
    blobs_skipped: int | UnsetType = UNSET
    progress: str | UnsetType = UNSET
    mode: str | UnsetType = UNSET
    layers_regenerated: int | UnsetType = UNSET
    layers_verified: int | UnsetType = UNSET
    pinned: bool | UnsetType = UNSET
    conditions: list[Condition] | UnsetType = UNSET


class StatusWriter:
    """Writes SalvageRecord status through `/status`; tells its listeners what came back."""

    def __init__(self, kube: KubeClient, *, listeners: Sequence[RecordListener] = ()) -> None:
        self.kube = kube
        self.listeners = list(listeners)

    async def patch(self, namespace: str, name: str, patch: StatusPatch
                    ) -> SalvageRecord | None:
        """The record as the API server returned it, or None when it no longer exists."""
        path = resource_path(GROUP_VERSION, PLURAL, namespace, name, "status")
        try:
            record: SalvageRecord = await self.kube.patch(path, {"status": patch},
                                                          type_=SalvageRecord)
        except NotFound:
            return None
        self.tell(record)
        return record

    def tell(self, record: SalvageRecord) -> None:
        """Pass `record` (read or written elsewhere, e.g. found by `ensure`) to the
        listeners."""
        for listener in self.listeners:
            listener(record)
