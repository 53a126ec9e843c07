"""Controller operations against the real apiserver: leader election, plugin disable list,
health/readiness endpoints, JSON logs (issue 2 §5 (e, second half), (f))."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.cluster.controller import Controllers
from tests.cluster.controlplane import ControlPlane
from tests.cluster.objects import create_node, create_pod, get, set_waiting, tote_events, wait_event
from tests.cluster.procs import wait_until
from tests.integration.test_detection import REFUSED, make_deployment_chain

D3 = "sha256:" + "3" * 64
FAST_LEASE = ["--lease-duration=6s", "--renew-deadline=4s", "--retry-period=1s"]


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_f_two_replicas_one_leader_failover(
    control_plane: ControlPlane, test_namespace: str, controllers: Controllers
) -> None:
    cp, ns = control_plane, test_namespace
    lease = uniq("lease")
    a = controllers.start("replica-a", *FAST_LEASE, lease=lease)
    b = controllers.start("replica-b", *FAST_LEASE, lease=lease)
    try:
        wait_until(lambda: a.leading() or b.leading(), timeout=20, what="a leader")
        time.sleep(3)
        assert a.leading() != b.leading(), "exactly one replica leads"
        leader, standby = (a, b) if a.leading() else (b, a)
        holder = get(cp, "lease", lease, cp.namespace)["spec"]["holderIdentity"]
        assert holder == leader.identity
        assert standby.ready()  # the standby is ready (caches synced) but not leading
        assert standby.readyz()["leader"] is False

        leader.kill()  # SIGKILL: no graceful release; the lease must expire
        t0 = time.monotonic()
        wait_until(standby.leading, timeout=6 + 10, what="standby takes over")
        took = time.monotonic() - t0
        print(f"failover after SIGKILL took {took:.1f}s (lease duration 6s)")
        assert took <= 6 + 4

        node_h, node_t = uniq("holder"), uniq("target")
        create_node(cp, node_h, [[f"127.0.0.1:5999/app@{D3}"]])
        create_node(cp, node_t)
        create_pod(cp, ns, "failover", f"127.0.0.1:5999/app@{D3}", node=node_t,
                   annotations={"tote.dev/auto-salvage": "true"})
        set_waiting(cp, ns, "failover", reason="ErrImagePull", message=REFUSED)
        ev = wait_event(cp, ns, "failover", "ImageSalvageable")
        assert ev["reportingInstance"] == standby.identity
    finally:
        a.stop()
        b.stop()


def test_graceful_stop_releases_the_lease(control_plane: ControlPlane,
                                          controllers: Controllers) -> None:
    cp = control_plane
    lease = uniq("lease")
    a = controllers.start("rel-a", *FAST_LEASE, lease=lease)
    try:
        wait_until(a.leading, timeout=20, what="a leads")
        a.stop()  # SIGTERM
        spec = get(cp, "lease", lease, cp.namespace)["spec"]
        assert not spec.get("holderIdentity")
    finally:
        a.stop()


def test_e_inheritance_plugin_disabled_means_no_detection(
    control_plane: ControlPlane, test_namespace: str, controllers: Controllers
) -> None:
    cp, ns = control_plane, test_namespace
    ctl = controllers.start("noinherit", "--plugins-disabled=inheritance")
    try:
        wait_until(ctl.leading, timeout=20, what="leads")
        holder, target = uniq("holder"), uniq("target")
        create_node(cp, holder, [[f"127.0.0.1:5999/app@{D3}"]])
        create_node(cp, target)
        _dep, rs = make_deployment_chain(cp, ns, annotate="deployment")
        owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
                 "uid": rs["metadata"]["uid"], "controller": True}
        create_pod(cp, ns, "child", f"127.0.0.1:5999/app@{D3}", node=target, owner=owner)
        # An explicitly opted-in sibling proves the controller is working meanwhile.
        create_pod(cp, ns, "own", f"127.0.0.1:5999/app@{D3}", node=target,
                   annotations={"tote.dev/auto-salvage": "true"})
        for name in ("child", "own"):
            set_waiting(cp, ns, name, reason="ErrImagePull", message=REFUSED)
        wait_event(cp, ns, "own", "ImageSalvageable")
        time.sleep(2)
        assert tote_events(cp, ns, "child") == []
        logs = ctl.logs()["controller-noinherit"]
        assert "plugin inheritance (tote_inheritance.plugin:InheritancePlugin) disabled" in logs
    finally:
        ctl.stop()


def test_endpoints_and_json_logs(controllers: Controllers) -> None:
    ctl = controllers.start("jsonlog", "--log-format=json")
    try:
        wait_until(ctl.leading, timeout=20, what="leads")
        assert ctl._get("/healthz")[0] == 200
        ready = ctl.readyz()
        assert ready["synced"] is True and ready["leader"] is True
        metrics = ctl.metrics()
        assert "tote_detected_failures_total" in metrics
        assert metrics["tote_leader"] == 1.0
        lines = [ln for ln in ctl.logs()["controller-jsonlog"].splitlines() if ln.startswith("{")]
        assert lines and all(json.loads(ln)["level"] for ln in lines)
    finally:
        ctl.stop()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-image-size=huge"], "--max-image-size"),
        (["--log-format=xml"], "invalid value for --log-format"),
        (["--max-concurrent-salvages=0"], "max_concurrent_salvages"),
    ],
)
def test_bad_flags_fail_fast_with_a_clear_error(
    controllers: Controllers, args: list[str], needle: str
) -> None:
    ctl = controllers.start("bad", *args, wait_ready=False)
    assert ctl.proc is not None
    assert ctl.proc.popen.wait(timeout=30) == 2
    assert needle in ctl.logs()["controller-bad"]
