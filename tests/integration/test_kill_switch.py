"""`tote disable` / `tote enable` against the real API server and real controller processes.

- disable (as a user whose only right is a Role on the one ConfigMap): detection stops (a
  failing opted-in pod gets no tote event), the controller logs the change, the leader posts
  `SalvageDisabled` on the ConfigMap, `tote status` and `tote doctor` show who/when/why;
  enable: `SalvageEnabled`, and the still-failing pod is detected;
- two replicas: one Event per change, also after the leader dies and the other takes over;
- refusals in one line with nothing written: a user without rights (the verbs named), a user
  who may only read, no reason, an unknown namespace, an unreachable API server;
- an unparseable value still keeps salvage off (and doctor fails the row).

Users are client certificates signed by the control plane's CA (tests/cluster/pki.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import pki
from tests.cluster.controller import ControllerProcess, Controllers
from tests.cluster.controlplane import REPO_ROOT, ControlPlane, write_kubeconfig
from tests.cluster.objects import create_node, create_pod, events, set_waiting, tote_events
from tests.cluster.procs import wait_until

CM = "tote-config"  # the controller's RBAC (from the chart) grants this one name
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"
FAST_LEASE = ["--lease-duration=6s", "--renew-deadline=4s", "--retry-period=1s"]


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def tote(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tote_core.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def user(cp: ControlPlane, name: str, workdir: Path) -> Path:
    """A kubeconfig for user `name` (client certificate, no group, no rights of its own)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca = pki.CA(cert=cp.ca_file, key=cp.ca_file.parent / "ca.key", dir=workdir)
    cert = ca.issue(name, common_name=name, client=True)
    return write_kubeconfig(workdir / f"{name}.kubeconfig", server=cp.server,
                            ca_file=cp.ca_file, user=name, client_cert=cert.cert,
                            client_key=cert.key)


def grant(cp: ControlPlane, name: str, verbs: list[str]) -> None:
    """The Role docs/operations.md documents for people who may flip the switch."""
    role = f"kill-switch-{name}"
    cp.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": role, "namespace": cp.namespace},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CM],
                    "verbs": verbs}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": role, "namespace": cp.namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                       "name": name}]},
    ])


def configmap(cp: ControlPlane) -> dict[str, Any] | None:
    got = cp.kubectl("get", "configmap", CM, "-n", cp.namespace, "-o", "json", check=False)
    return json.loads(got.stdout) if got.returncode == 0 else None


@pytest.fixture
def no_switch(control_plane: ControlPlane) -> Iterator[None]:
    """Start with no kill-switch ConfigMap (what the chart installs now); put back whatever
    was there for the other tests of the session."""
    cp = control_plane
    before = configmap(cp)
    cp.kubectl("delete", "configmap", CM, "-n", cp.namespace, "--ignore-not-found")
    try:
        yield
    finally:
        cp.kubectl("delete", "configmap", CM, "-n", cp.namespace, "--ignore-not-found")
        if before is not None:
            cp.apply({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": CM, "namespace": cp.namespace},
                      "data": before.get("data", {})})


def switch_events(cp: ControlPlane) -> list[dict[str, Any]]:
    """The switch's Events about the ConfigMap as it is now (an earlier test's ConfigMap of
    the same name had its own)."""
    uid = (configmap(cp) or {}).get("metadata", {}).get("uid")
    return [e for e in events(cp, cp.namespace, CM)
            if e.get("reason") in ("SalvageDisabled", "SalvageEnabled")
            and e.get("regarding", {}).get("uid") == uid
            and e.get("reportingController") == "tote.dev/controller"]


FAKE_NODES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _remove_fake_nodes(control_plane: ControlPlane) -> Iterator[None]:
    """The session's control plane is shared: a fake node left behind would be a node
    without an agent for every later test that asks `tote doctor` about all nodes."""
    yield
    for node in FAKE_NODES:
        control_plane.kubectl("delete", "node", node, "--ignore-not-found", check=False)


def failing_pod(cp: ControlPlane, ns: str, name: str) -> None:
    """An opted-in pod failing to pull an image another (fake) node holds: tote's first
    word on it is ImageSalvageable, whenever salvage is on."""
    digest = "sha256:" + uuid.uuid4().hex * 2
    holder, target = uniq("holder"), uniq("target")
    FAKE_NODES.extend((holder, target))
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{digest}"]])
    create_node(cp, target)
    create_pod(cp, ns, name, f"127.0.0.1:5999/app@{digest}", node=target,
               annotations={"tote.dev/auto-salvage": "true"})
    set_waiting(cp, ns, name, reason="ErrImagePull", message=REFUSED)


def switch_message(ctl: ControllerProcess) -> dict[str, Any]:
    got = tote("status", "--json", f"--url={ctl.status_url}")
    assert got.returncode == 0, got.stderr
    (msg,) = [m for m in map(json.loads, got.stdout.splitlines()) if m["type"] == "switch"]
    return msg  # type: ignore[no-any-return]


def doctor_row(cp: ControlPlane, ctl: ControllerProcess) -> dict[str, Any]:
    got = tote("doctor", "--json", f"--kubeconfig={cp.admin_kubeconfig}",
               f"--namespace={cp.namespace}", f"--controller-url={ctl.url}")
    (row,) = [r for r in json.loads(got.stdout) if r["check"] == "kill-switch"]
    return row  # type: ignore[no-any-return]


def test_disable_stops_detection_is_evented_and_shown_enable_resumes(
    control_plane: ControlPlane, tmp_path: Path, test_namespace: str, no_switch: None,
    controllers: Controllers,
) -> None:
    cp, ns = control_plane, test_namespace
    alice = user(cp, "alice", tmp_path / "alice")
    grant(cp, "alice", ["get", "patch", "create"])
    ctl = controllers.start(uniq("ks"))
    try:
        wait_until(ctl.leading, timeout=30, what="controller leads")
        assert ctl.readyz()["enabled"] is True  # no ConfigMap: --enabled (true) decides
        assert switch_message(ctl)["source"] == "flag"

        got = tote("disable", "--reason", "registry migration, INC-7", f"--kubeconfig={alice}",
                   "-n", cp.namespace)
        assert got.returncode == 0, got.stderr
        line = got.stdout.strip()
        assert "\n" not in line
        assert line.startswith(f"salvage DISABLED in {cp.namespace} (ConfigMap {CM}; was: no "
                               "ConfigMap, the controller's --enabled decided) by alice at ")
        assert line.endswith(": registry migration, INC-7"), line
        data = configmap(cp)["data"]  # type: ignore[index]
        assert data["enabled"] == "false" and data["changedBy"] == "alice"
        assert data["reason"] == "registry migration, INC-7"
        when = data["changedAt"]
        assert when.endswith("Z") and when in line

        wait_until(lambda: ctl.readyz().get("enabled") is False, timeout=20,
                   what="the controller sees the switch off")
        wait_until(lambda: bool(switch_events(cp)), timeout=30,
                   what="SalvageDisabled on the ConfigMap")
        (ev,) = switch_events(cp)
        assert (ev["reason"], ev["type"], ev["regarding"]["kind"]) == (
            "SalvageDisabled", "Normal", "ConfigMap")
        assert ev["note"] == f"by alice at {when}: registry migration, INC-7"
        log = "\n".join(ctl.logs().values())
        assert (f"runtime kill switch: salvage disabled by alice since {when}: "
                "registry migration, INC-7") in log
        sw = switch_message(ctl)
        assert (sw["enabled"], sw["source"], sw["changedBy"], sw["changedAt"], sw["reason"]) \
            == (False, "configmap", "alice", when, "registry migration, INC-7")
        row = doctor_row(cp, ctl)
        assert row["status"] == "warn", row
        assert row["detail"].startswith(
            f"salvage DISABLED by alice since {when}: registry migration, INC-7")

        # detection stops: a failing opted-in pod gets nothing from tote while it is off
        failing_pod(cp, ns, "while-off")
        time.sleep(4)
        assert tote_events(cp, ns, "while-off") == []

        got = tote("enable", f"--kubeconfig={alice}", "-n", cp.namespace)
        assert got.returncode == 0, got.stderr
        assert f"was: DISABLED by alice since {when}: registry migration, INC-7" in got.stdout
        wait_until(lambda: any(e["reason"] == "ImageSalvageable"
                               for e in tote_events(cp, ns, "while-off")),
                   timeout=30, what="the still-failing pod is detected once enabled")
        wait_until(lambda: len(switch_events(cp)) == 2, timeout=30, what="SalvageEnabled")
        assert "reason" not in configmap(cp)["data"]  # type: ignore[index]
        assert doctor_row(cp, ctl)["status"] == "ok"
        assert switch_message(ctl)["enabled"] is True
    finally:
        ctl.stop()


def test_two_replicas_post_one_event_per_change_also_across_a_failover(
    control_plane: ControlPlane, no_switch: None, controllers: Controllers
) -> None:
    cp = control_plane
    lease = uniq("lease")
    a = controllers.start(uniq("ra"), *FAST_LEASE, lease=lease)
    b = controllers.start(uniq("rb"), *FAST_LEASE, lease=lease)
    try:
        wait_until(lambda: a.leading() or b.leading(), timeout=30, what="a leader")
        got = tote("disable", "--reason", "two replicas", f"--kubeconfig={cp.admin_kubeconfig}",
                   "-n", cp.namespace)
        assert got.returncode == 0, got.stderr
        wait_until(lambda: bool(switch_events(cp)), timeout=30, what="SalvageDisabled")
        for ctl in (a, b):  # every replica decides (and logs) for itself
            wait_until(lambda ctl=ctl: ctl.readyz().get("enabled") is False,  # type: ignore[misc]
                       timeout=20, what=f"{ctl.identity} sees the switch off")
        time.sleep(2)
        (ev,) = switch_events(cp)
        assert not ev.get("series"), ev
        leader, standby = (a, b) if a.leading() else (b, a)
        leader.kill()  # the new leader re-reports the switch, create-only: still one
        wait_until(standby.leading, timeout=20, what="the standby takes over")
        time.sleep(3)
        (again,) = switch_events(cp)
        assert again["metadata"]["name"] == ev["metadata"]["name"]
        assert not again.get("series"), again
    finally:
        a.stop()
        b.stop()


def test_refusals_are_one_line_and_write_nothing(
    control_plane: ControlPlane, tmp_path: Path, no_switch: None
) -> None:
    cp = control_plane
    mallory = user(cp, "mallory", tmp_path / "mallory")
    got = tote("disable", "--reason", "x", f"--kubeconfig={mallory}", "-n", cp.namespace)
    assert got.returncode == 1 and got.stdout == ""
    assert got.stderr == (
        f"tote disable: mallory may not get, patch, create configmaps/{CM} in namespace "
        f"{cp.namespace}; nothing was written. Needed: get and patch on configmaps/{CM} in "
        f"namespace {cp.namespace} (and create while it does not exist), e.g. a Role with "
        f"resources [configmaps], resourceNames [{CM}], verbs [get, patch, create]\n")
    assert configmap(cp) is None

    # a reader may look but not flip: the ConfigMap exists, so only patch is missing
    reader = user(cp, "reader", tmp_path / "reader")
    grant(cp, "reader", ["get"])
    cp.apply({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": CM, "namespace": cp.namespace}, "data": {"enabled": "true"}})
    rv = configmap(cp)["metadata"]["resourceVersion"]  # type: ignore[index]
    got = tote("enable", f"--kubeconfig={reader}", "-n", cp.namespace)
    assert got.returncode == 1
    assert got.stderr.startswith(f"tote enable: reader may not patch configmaps/{CM} in "
                                 f"namespace {cp.namespace}; nothing was written.")
    assert len(got.stderr.splitlines()) == 1
    assert configmap(cp)["metadata"]["resourceVersion"] == rv  # type: ignore[index]

    for argv, says in [
        (["disable", f"--kubeconfig={cp.admin_kubeconfig}"],
         "tote disable: --reason is required and must not be empty"),
        (["disable", "--reason", "x", f"--kubeconfig={cp.admin_kubeconfig}", "-n", "no-such-ns"],
         "tote disable: namespace 'no-such-ns' does not exist"),
    ]:
        got = tote(*argv)
        assert got.returncode in (1, 2) and got.stderr.startswith(says), got.stderr
        assert len(got.stderr.splitlines()) == 1, got.stderr
    assert configmap(cp)["metadata"]["resourceVersion"] == rv  # type: ignore[index]

    nowhere = write_kubeconfig(tmp_path / "nowhere.kubeconfig", server="https://127.0.0.1:1",
                               ca_file=cp.ca_file, user="x", token="t")
    got = tote("disable", "--reason", "x", f"--kubeconfig={nowhere}")
    assert got.returncode == 1
    assert got.stderr.startswith("tote disable: cannot reach the API server at "
                                 "https://127.0.0.1:1: "), got.stderr
    assert len(got.stderr.splitlines()) == 1


def test_an_unparseable_value_keeps_salvage_off_until_tote_enable(
    control_plane: ControlPlane, test_namespace: str, no_switch: None,
    controllers: Controllers,
) -> None:
    cp, ns = control_plane, test_namespace
    cp.apply({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": CM, "namespace": cp.namespace}, "data": {"enabled": "maybe"}})
    ctl = controllers.start(uniq("bad"))
    try:
        wait_until(ctl.leading, timeout=30, what="controller leads")
        assert ctl.readyz()["enabled"] is False
        failing_pod(cp, ns, "while-invalid")
        time.sleep(4)
        assert tote_events(cp, ns, "while-invalid") == []
        sw = switch_message(ctl)
        assert (sw["enabled"], sw["source"]) == (False, "invalid") and "'maybe'" in sw["problem"]
        row = doctor_row(cp, ctl)
        assert row["status"] == "fail" and "salvage stays OFF" in row["detail"], row
        got = tote("enable", "--reason", "fix the typo", f"--kubeconfig={cp.admin_kubeconfig}",
                   "-n", cp.namespace)
        assert got.returncode == 0, got.stderr
        assert "was: 'maybe', not a boolean (OFF)" in got.stdout
        wait_until(lambda: any(e["reason"] == "ImageSalvageable"
                               for e in tote_events(cp, ns, "while-invalid")),
                   timeout=30, what="detected once a valid value is written")
    finally:
        ctl.stop()
