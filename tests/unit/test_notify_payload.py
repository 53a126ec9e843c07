"""Webhook formats as pure functions of a Notification (the real struct)."""

from __future__ import annotations

import json

from tote_notify import payload

from tote_core.hooks.types import Notification

N = Notification(type="salvaged", pod_name="p", namespace="ns", image_ref="r/x:1",
                 digest="sha256:" + "0" * 64, source_node="a", target_node="b",
                 timestamp="2026-01-02T03:04:05Z", pod_uid="not-in-the-payload")


def test_json_has_exactly_the_spec_fields_in_order() -> None:
    body = json.loads(payload.json_body(N))
    assert list(body) == list(payload.JSON_FIELDS)
    assert body["error"] == "" and "pod_uid" not in body


def test_slack_limits_hold_for_a_huge_error() -> None:
    msg = json.loads(payload.slack_body(Notification(**{
        **{f: getattr(N, f) for f in N.__struct_fields__}, "type": "failed",
        "error": "x" * 10000, "image_ref": "r/" + "y" * 3000})))
    assert len(msg["blocks"][0]["text"]["text"]) <= 150
    assert all(len(f["text"]) <= 2000 for f in msg["blocks"][1]["fields"])
    assert len(msg["blocks"][2]["text"]["text"]) <= 3000


def test_signature_is_hmac_sha256_hex() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    assert payload.signature(b"Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
