"""Notifications from a real controller against the real API server: once per incident.

The controller runs as its own process with the restricted RBAC identity and
`--webhook-url` pointing at a receiver started by the test. A salvageable pod whose salvage
cannot succeed (no agents run here: every attempt fails and is retried with back-off) must
produce exactly one `detected` and one `failed` notification however often kubelet's state
flips and however often the salvage is retried; the requests are signed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controller import Controllers
from tests.cluster.controlplane import ControlPlane
from tests.cluster.objects import create_node, create_pod, get, set_waiting, wait_event
from tests.cluster.procs import wait_until
from tests.cluster.webhook import Receiver
from tests.integration.test_detection import BACKOFF, REFUSED
from tote_core.salvage import planner

D5 = "sha256:" + "5" * 64


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def test_once_per_incident_signed(
    control_plane: ControlPlane, receiver: Receiver, tmp_path: Path, test_namespace: str,
    controllers: Controllers,
) -> None:
    cp, ns = control_plane, test_namespace
    secret = tmp_path / "webhook-secret"
    secret.write_text("k3y")
    ctl = controllers.start(
        "notify-1", f"--webhook-url={receiver.url}",
        f"--webhook-secret-file={secret}", "--webhook-events=detected,failed,salvaged",
    )  # fmt: skip
    try:
        wait_until(ctl.leading, timeout=30, what="leads", proc=ctl.proc)
        holder, target = uniq("holder"), uniq("target")
        image = f"127.0.0.1:5999/app@{D5}"
        create_node(cp, holder, [[image]])
        create_node(cp, target)
        create_pod(cp, ns, "web", image, node=target,
                   annotations={"tote.dev/auto-salvage": "true"})
        set_waiting(cp, ns, "web", reason="ErrImagePull", message=REFUSED)
        wait_event(cp, ns, "web", "ImageSalvageFailed", timeout=60)
        # kubelet flips between the two reasons; every flip is a reconcile of the same
        # incident. The salvage retries after 30 s: wait for that second attempt.
        for reason, message in [("ImagePullBackOff", BACKOFF.format(image)),
                                ("ErrImagePull", REFUSED)] * 2:
            set_waiting(cp, ns, "web", reason=reason, message=message)
            time.sleep(0.5)
        record = planner.record_name(D5, target)
        wait_until(lambda: get(cp, "salvagerecord", record, ns).get("status", {})
                   .get("retryCount", 0) >= 2, timeout=90, what="the salvage retried")
        time.sleep(2)
        mine = [r for r in receiver.requests if r.json()["pod_name"] == "web"
                and r.json()["namespace"] == ns]
        assert sorted(r.json()["type"] for r in mine) == ["detected", "failed"], [
            r.json() for r in mine]
        fail = next(r.json() for r in mine if r.json()["type"] == "failed")
        assert fail["digest"] == D5 and fail["target_node"] == target
        assert fail["source_node"] == holder and "agent" in fail["error"]
        for r in mine:
            want = "sha256=" + hmac.new(b"k3y", r.body, hashlib.sha256).hexdigest()
            assert r.headers["X-Tote-Signature-256"] == want
        assert ctl.metric("tote_webhook_failures_total") == 0
    finally:
        ctl.stop()
