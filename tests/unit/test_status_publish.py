"""The status board is fed by composition: `BoardPublisher` listens to the real event
recorder and the real record store (status writer) over the fake API server; neither knows
the board."""

from __future__ import annotations

import msgspec
import trio

from tote_core.kube.events import EventRecorder
from tote_core.salvage.records import RecordStore
from tote_core.salvage.statuswriter import StatusPatch
from tote_core.status.board import StatusBoard
from tote_core.status.publish import BoardPublisher, incident_key
from tote_core.structs.kube import Namespace, Pod
from tote_core.structs.salvagerecord import SalvageRecordSpec
from tote_core.testing import objects
from tote_core.testing.fakekube import FakeCluster

D = "sha256:" + "ab" * 32


async def test_events_and_status_writes_reach_the_board(
        autojump_clock: trio.testing.MockClock) -> None:
    cluster = FakeCluster()
    ns = msgspec.convert(cluster.add(objects.namespace("shop")), Namespace)
    pod = msgspec.convert(cluster.add(objects.failing_pod(
        "web-1", namespace="shop", image="reg/web:1", node="n1")), Pod)
    client = cluster.client()
    board = StatusBoard()
    publisher = BoardPublisher(board)
    recorder = EventRecorder(client, instance="t", listeners=[publisher.event])
    records = RecordStore(client, listeners=[publisher.record])

    await recorder.emit(pod, "ImageSalvageable", "the registry is down")
    item = board.get(incident_key(pod))
    assert item is not None and (item.phase, item.message) == (
        "ImageSalvageable", "the registry is down")
    assert item.image == "reg/web:1" and item.target == "n1"
    assert cluster.events(reason="ImageSalvageable")  # still posted
    await recorder.emit(ns, "InvalidAnnotation", "typo")  # no incident: not on the board
    assert len(board.items) == 1

    record = await records.ensure("shop", SalvageRecordSpec(
        pod_name="web-1", digest=D, image_ref="reg/web:1", target_node="n1"))
    key = f"shop/{record.metadata.name}"
    assert board.items[key].phase == "Pending"
    await records.status.patch("shop", record.metadata.name, StatusPatch(
        phase="Transferring", bytes_total=10, bytes_transferred=4, progress="4B/10B (40%)"))
    moved = board.items[key]
    assert (moved.phase, moved.bytes_transferred, moved.message) == (
        "Transferring", 4, "4B/10B (40%)")
    assert await records.status.patch("shop", "gone", StatusPatch(pinned=False)) is None
    await client.aclose()
