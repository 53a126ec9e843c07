"""SalvageRecord reads and writes.

Status is written only through the `/status` subresource, by the store's `StatusWriter`
(`status`): with a status subresource the API server ignores `status` in create and update
calls (the Go original's bug that left records Pending forever and broke idempotency and TTL
cleanup). The writer's listeners also see every record `ensure` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from tote_core.errors import Conflict, NotFound
from tote_core.kube.client import KubeClient, resource_path
from tote_core.salvage.planner import record_labels, record_name
from tote_core.salvage.statuswriter import RecordListener, StatusPatch, StatusWriter
from tote_core.structs.kube import ObjectList, ObjectMeta
from tote_core.structs.salvagerecord import (
    GROUP_VERSION,
    PLURAL,
    SalvageRecord,
    SalvageRecordSpec,
)


class RecordStore:
    def __init__(self, kube: KubeClient, *, listeners: Sequence[RecordListener] = ()) -> None:
        self.kube = kube
        self.status = StatusWriter(kube, listeners=listeners)

    def _path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        return resource_path(GROUP_VERSION, PLURAL, namespace, name, sub)

    async def get(self, namespace: str, name: str) -> SalvageRecord | None:
        try:
            return await self.kube.get(self._path(namespace, name), SalvageRecord)
        except NotFound:
            return None

    async def ensure(self, namespace: str, spec: SalvageRecordSpec) -> SalvageRecord:
        """Get the record for (digest, target node), creating it (phase Pending) in
        `namespace` if no namespace has one.

        One record — one transfer — per (digest, target node) cluster-wide: pods of five
        namespaces failing on one image and node share the record of the first of them.
        The usual case is a GET by name in the pod's own namespace (the API floor); only when
        that misses does a label-selector list look in the others."""
        name = record_name(spec.digest, spec.target_node)
        existing = await self.get(namespace, name)
        if existing is not None:
            self.status.tell(existing)
            return existing
        elsewhere = [r for r in await self.find(spec.digest, spec.target_node)
                     if r.metadata.name == name]
        if elsewhere:
            first = min(elsewhere, key=lambda r: (r.metadata.creation_timestamp or "",
                                                  r.metadata.namespace))
            self.status.tell(first)
            return first
        record = SalvageRecord(
            metadata=ObjectMeta(
                name=name, namespace=namespace,
                labels=record_labels(spec.digest, spec.target_node),
            ),
            spec=spec,
        )
        body = msgspec.to_builtins(record)
        # omit_defaults drops them, and custom resources need both on create.
        body.update(apiVersion=GROUP_VERSION, kind="SalvageRecord")
        body.pop("status", None)  # ignored on create anyway: status goes through /status
        try:
            created: SalvageRecord = await self.kube.create(
                self._path(namespace), body, SalvageRecord
            )
        except Conflict:
            again = await self.get(namespace, name)
            if again is None:
                raise
            self.status.tell(again)
            return again
        pending = await self.status.patch(namespace, name, StatusPatch(phase="Pending"))
        if pending is None:
            self.status.tell(created)
        return pending or created

    async def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        try:
            await self.kube.patch(self._path(namespace, name), {"spec": spec})
        except NotFound:
            return

    async def find(self, digest: str, target_node: str) -> list[SalvageRecord]:
        """Records for (digest, target node) in any namespace, by label selector."""
        labels = record_labels(digest, target_node)
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        result: ObjectList[SalvageRecord] = await self.kube.list(
            self._path(None), SalvageRecord, labelSelector=selector
        )
        return result.items

    async def list_all(self) -> list[SalvageRecord]:
        result: ObjectList[SalvageRecord] = await self.kube.list(self._path(None), SalvageRecord)
        return result.items

    async def delete(self, namespace: str, name: str, uid: str) -> bool:
        try:
            await self.kube.delete(self._path(namespace, name), uid=uid)
            return True
        except (NotFound, Conflict):
            return False
