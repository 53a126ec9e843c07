"""SalvageRecord reaper against the real apiserver (issue 4 test 9)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from tests.cluster.controller import Controllers
from tests.cluster.controlplane import ControlPlane
from tests.cluster.procs import wait_until


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(cp: ControlPlane, ns: str, name: str, status: dict[str, object]) -> None:
    cp.apply({
        "apiVersion": "tote.dev/v1alpha1", "kind": "SalvageRecord",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podName": "p", "podUID": "u", "digest": "sha256:" + "0" * 64,
                 "imageRef": "x", "sourceNode": "a", "targetNode": "b"},
    })
    cp.kubectl("patch", "salvagerecord", name, "-n", ns, "--subresource=status",
               "--type=merge", "-p", json.dumps({"status": status}))


def test_reaper_deletes_expired_and_keeps_fresh(
    control_plane: ControlPlane, test_namespace: str, controllers: Controllers
) -> None:
    cp, ns = control_plane, test_namespace
    now = datetime.now(UTC)
    make_record(cp, ns, "old-completed",
                {"phase": "Completed", "completedAt": _ts(now - timedelta(hours=3))})
    make_record(cp, ns, "fresh-completed",
                {"phase": "Completed", "completedAt": _ts(now - timedelta(minutes=5))})
    make_record(cp, ns, "never-completed", {"phase": "Failed", "retryCount": 2})
    ctl = controllers.start("reaper", "--salvagerecord-ttl=1h", "--reap-interval=2s")
    try:
        def names() -> set[str]:
            out = cp.kubectl("get", "salvagerecords", "-n", ns, "-o", "json").stdout
            return {i["metadata"]["name"] for i in json.loads(out)["items"]}

        wait_until(lambda: "old-completed" not in names(), timeout=30, what="reaped",
                   proc=ctl.proc)
        time.sleep(3)
        # The never-completed record was created seconds ago: its age is below the TTL.
        assert names() == {"fresh-completed", "never-completed"}
        assert ctl.metric('tote_salvagerecords_total{phase="Completed"}') >= 1
        assert "reaped SalvageRecord" in ctl.logs()["controller-reaper"]  # debug level
        # Printer columns are what `kubectl get` shows.
        table = cp.kubectl("get", "salvagerecords", "-n", ns).stdout
        assert "DIGEST" in table and "PHASE" in table and "PROGRESS" in table
    finally:
        ctl.stop()
