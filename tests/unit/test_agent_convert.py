"""The agent API's structs and their proto messages: the same field names, and every value
(nested, repeated, map, 64-bit) survives struct → message → struct."""

from __future__ import annotations

import msgspec
import pytest
from tote_containerd._gen.tote.agent.v1 import agent_pb2 as pb
from tote_containerd.agent import api, convert

PAIRS: list[tuple[type[msgspec.Struct], object]] = [
    (api.BlobInfo, pb.BlobInfo),
    (api.InspectResult, pb.InspectResponse),
    (api.ImportProgress, pb.ImportProgress),
    (api.ImportRequest, pb.ImportFromRequest),
    (api.ImageRecord, pb.ImageRecord),
    (api.Resolved, pb.ResolveTagResponse),
    (api.Health, pb.HealthResponse),
    (api.Session, pb.OpenSessionResponse),
    (api.PushRequest, pb.PushRequest),
    (api.PushResult, pb.PushResponse),
]


@pytest.mark.parametrize("struct,message", PAIRS, ids=lambda p: getattr(p, "__name__", ""))
def test_struct_fields_are_the_messages(struct: type[msgspec.Struct], message: object) -> None:
    names = {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]
    assert set(struct.__struct_fields__) == names


def test_round_trip_keeps_every_value() -> None:
    big = 5 * 1024**4  # above 2**32: int64 fields stay ints
    inspect = api.InspectResult(
        digest="sha256:" + "a" * 64, media_type="application/vnd.oci.image.index.v1+json",
        blobs=[api.BlobInfo(digest="sha256:" + "b" * 64, media_type="m", size=big,
                            present=True, role="layer")],
        total_bytes=big, present_bytes=big - 1, complete=False, layers_discarded=True,
        reason="r", names=["docker.io/x/y:1", "docker.io/x/y:2"], platform="linux/arm64",
        config_digest="sha256:" + "c" * 64)
    assert convert.from_pb(convert.to_pb(inspect, pb.InspectResponse),
                           api.InspectResult) == inspect
    record = api.ImageRecord(name="n", digest="d", media_type="m", size=big,
                             labels={"containerd.io/gc.ref.content.0": "sha256:x", "k": ""})
    assert convert.from_pb(convert.to_pb(record, pb.ImageRecord), api.ImageRecord) == record
    push = api.PushResult(pushed_digest="d", index_pushed=True, manifests=["a", "b"],
                          blobs_total=3, blobs_uploaded=1, blobs_skipped=1, blobs_mounted=1,
                          bytes_uploaded=big, note="n", platform="linux/amd64")
    assert convert.from_pb(convert.to_pb(push, pb.PushResponse), api.PushResult) == push

