"""`tote status` and `tote doctor` against the salvage harness (real apiserver, containerd,
agents, controller process).

Status: a `tote status --follow --json` subscriber watches a real salvage; the snapshot mode
and the people view read the result. The API server's service proxy cannot reach the
controller here: Endpoints may not point at loopback (apiserver validation: "may not be in
the loopback range"), and every daemon of this harness binds 127.0.0.x. So the feed is read
directly (`--url`), and the proxy path is tested as far as the API server goes: RBAC
refuses a viewer without `services/proxy` and one whose rule names only the Service, and
lets one whose rule names `tote-controller:status` through to the Service: the proxy then
answers 503, no ready endpoint for `tote-controller:status`.

Doctor: healthy install → exit 0 (the harness certificates live one day: a warn row, as a
short-lived certificate must); an agent stopped → its row fails, exit 1; CRD missing →
exit 1 (last: the CRD is put back afterwards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.containerd_env import REPO
from tests.cluster.controller import ControllerProcess
from tests.cluster.controlplane import _render_chart, write_kubeconfig
from tests.cluster.images import runnable_image
from tests.cluster.objects import create_pod, set_waiting
from tests.cluster.procs import wait_until
from tests.integration.salvage.conftest import SalvageEnv

MiB = 1024 * 1024
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"


def tote_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"),
                                         env.get("PYTHONPATH", "")])
    return env


def tote(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tote_core.cli", *args], cwd=REPO,
                          env=tote_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def controller(senv: SalvageEnv) -> ControllerProcess:
    return senv.controller("status-doctor")


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_status_follows_a_real_salvage(senv: SalvageEnv, controller: ControllerProcess,
                                       test_namespace: str, tmp_path: Path) -> None:
    ns = test_namespace
    img = runnable_image("127.0.0.1:5999/shop/feed:v1", [24 * MiB, 8 * MiB], seed=31)
    senv.preload("n2", img, img.write_archive(tmp_path / "feed.tar"))
    follower = senv.ctd.group.start(
        f"status-follow-{ns}",
        [sys.executable, "-m", "tote_core.cli", "status", "--follow", "--json",
         f"--url={controller.status_url}"], env=tote_env(), cwd=REPO)
    wait_until(lambda: '"type":"synced"' in follower.log_path.read_text(), timeout=60,
               what="subscriber synced", proc=follower)
    ref = f"127.0.0.1:5999/shop/feed@{img.digest}"
    create_pod(senv.cp, ns, "feed", ref, node="n1",
               annotations={"tote.dev/auto-salvage": "true"})
    set_waiting(senv.cp, ns, "feed", reason="ErrImagePull", message=REFUSED)

    def transfer_done() -> bool:
        return any(m.get("kind") == "transfer" and m.get("namespace") == ns
                   and m.get("phase") == "Completed"
                   for m in json_lines(follower.log_path.read_text()))

    wait_until(transfer_done, timeout=120, what="Completed transfer on the feed",
               proc=follower)
    msgs = [m for m in json_lines(follower.log_path.read_text()) if m.get("namespace") == ns]
    transfers = [m for m in msgs if m["kind"] == "transfer"]
    done = transfers[-1]
    assert done["digest"] == img.digest and done["source"] == "n2" and done["target"] == "n1"
    assert done["bytesTotal"] > 30 * MiB and done["bytesTransferred"] == done["bytesTotal"]
    assert transfers[0]["phase"] in ("Pending", "Transferring")
    incidents = [m for m in msgs if m["kind"] == "incident"]
    # Empty fields are left out of a message (omit_defaults): the first ImageSalvageable
    # item precedes the hand-off that tells the board the digest; a later one carries it.
    assert any(i["phase"] == "ImageSalvageable" and i.get("digest") == img.digest
               for i in incidents), incidents
    follower.stop()

    snap = tote("status", "--json", f"--url={controller.status_url}")
    assert snap.returncode == 0, snap.stderr
    lines = json_lines(snap.stdout)
    assert lines[0]["type"] == "hello" and lines[0]["leader"] is True
    assert lines[-1]["type"] == "synced"
    assert any(m.get("key") == done["key"] and m["phase"] == "Completed" for m in lines)

    people = tote("status", f"--url={controller.status_url}")
    assert people.returncode == 0, people.stderr
    assert "Completed" in people.stdout and "100%" in people.stdout
    assert "n2 → n1" in people.stdout


def test_status_through_the_service_proxy_is_decided_by_rbac(
        senv: SalvageEnv, controller: ControllerProcess, tmp_path: Path) -> None:
    cp, ns = senv.cp, senv.cp.namespace
    cp.kubectl("create", "serviceaccount", "viewer", "-n", ns, check=False)
    token = cp.kubectl("create", "token", "viewer", "-n", ns).stdout.strip()
    kubeconfig = write_kubeconfig(tmp_path / "viewer.kubeconfig", server=cp.server,
                                  ca_file=cp.ca_file, user="viewer", token=token)
    denied = tote("status", f"--kubeconfig={kubeconfig}", f"--namespace={ns}")
    assert denied.returncode == 1
    assert "403" in denied.stderr and "services/proxy" in denied.stderr, denied.stderr

    def role(names: list[str]) -> dict[str, Any]:
        # `get services` too: `kubectl auth can-i` on it tells when RBAC's cache has the Role.
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "tote-status-viewer", "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["services/proxy"],
                           "resourceNames": names, "verbs": ["get"]},
                          {"apiGroups": [""], "resources": ["services"],
                           "resourceNames": names, "verbs": ["get"]}]}

    def role_seen(name: str) -> bool:
        got = cp.kubectl("auth", "can-i", "get", f"services/{name}", "-n", ns,
                         f"--as=system:serviceaccount:{ns}:viewer", check=False)
        return got.stdout.strip() == "yes"

    cp.apply([
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "tote-controller", "namespace": ns},
         "spec": {"ports": [{"name": "status", "port": 8082}]}},
        role(["tote-controller"]),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "tote-status-viewer", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "tote-status-viewer"},
         "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}]},
    ])
    # RBAC matches the resourceName as it appears in the proxy URL, SERVICE:PORT: a rule
    # naming only the Service is in force and still refused.
    wait_until(lambda: role_seen("tote-controller"), timeout=60, what="Role in force")
    wrong = tote("status", f"--kubeconfig={kubeconfig}", f"--namespace={ns}")
    assert wrong.returncode == 1 and "403" in wrong.stderr, wrong.stderr
    assert '"tote-controller:status"' in wrong.stderr, wrong.stderr

    # The rule watchers need (docs/operations.md).
    cp.apply([role(["tote-controller:status"])])
    wait_until(lambda: role_seen("tote-controller:status"), timeout=60, what="Role updated")
    # What blocks the last hop on this harness: the controller listens on loopback.
    refused = cp.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "tote-controller", "namespace": ns},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                     "ports": [{"name": "status", "port": controller.status_port}]}]}))
    assert refused.returncode != 0 and "loopback" in refused.stderr
    # So the Endpoints hold one address that is not ready (TEST-NET, never dialled). Without
    # any Endpoints object the proxy answers 404 `services "…" not found`; with this one it
    # resolves the Service and its `status` port and stops at the last hop: 503 "no endpoints
    # available" naming `tote-controller:status` (Kubernetes 1.34) or `tote-controller`
    # (1.37 leaves the port name out of the message).
    cp.apply({"apiVersion": "v1", "kind": "Endpoints",
              "metadata": {"name": "tote-controller", "namespace": ns},
              "subsets": [{"notReadyAddresses": [{"ip": "192.0.2.1"}],
                           "ports": [{"name": "status", "port": controller.status_port}]}]})
    last: list[str] = []

    def past_rbac() -> bool:
        got = tote("status", f"--kubeconfig={kubeconfig}", f"--namespace={ns}")
        last[:] = [f"exit {got.returncode}; stderr {got.stderr!r}; stdout {got.stdout!r}"]
        return (got.returncode == 1 and "403" not in got.stderr and "HTTP 503" in got.stderr
                and any(f'no endpoints available for service "{name}"' in got.stderr
                        for name in ("tote-controller:status", "tote-controller")))

    try:
        wait_until(past_rbac, timeout=30, what="RBAC lets the viewer through to the Service")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last answer: {last}") from exc
    cp.kubectl("delete", "service,endpoints", "tote-controller", "-n", ns, check=False)


def doctor(senv: SalvageEnv, controller: ControllerProcess, *extra: str
           ) -> tuple[int, list[dict[str, Any]]]:
    c = senv.ctd.pki.controller
    endpoints = ",".join(f"{n}={a.endpoint}" for n, a in senv.ctd.agents.items())
    got = tote("doctor", "--json", f"--kubeconfig={senv.cp.admin_kubeconfig}",
               f"--namespace={senv.cp.namespace}", f"--lease=salvage-{controller.identity}",
               f"--controller-url={controller.url}", f"--agent-endpoints={endpoints}",
               f"--tls-cert={c.cert}", f"--tls-key={c.key}", f"--tls-ca={c.ca}", *extra)
    assert got.stdout.strip(), got.stderr
    return got.returncode, json.loads(got.stdout)


def rows(result: list[dict[str, Any]], check: str) -> list[dict[str, Any]]:
    return [r for r in result if r["check"] == check]


def test_doctor_healthy_then_agent_stopped(senv: SalvageEnv,
                                          controller: ControllerProcess) -> None:
    code, result = doctor(senv, controller)
    assert code == 0, result
    assert all(r["status"] == "ok" for r in rows(result, "crd") + rows(result, "leader")
               + rows(result, "ready") + rows(result, "rbac")), result
    agents = rows(result, "agent")
    assert [r["subject"] for r in agents] == ["n1", "n2", "n3"]
    assert all(r["status"] == "ok" and "containerd" in r["detail"] for r in agents), agents
    # The harness certificates live one day: a short-lived certificate is a warning.
    certs = rows(result, "certificate")
    assert certs and all(r["status"] == "warn" and "expires in 0d" in r["detail"]
                         for r in certs), certs

    senv.stop_agent("n3")
    try:
        code, result = doctor(senv, controller)
        assert code == 1
        bad = {r["subject"]: r for r in rows(result, "agent")}
        assert bad["n3"]["status"] == "fail" and bad["n1"]["status"] == "ok", bad
    finally:
        senv.restart_agent("n3")

    people = tote("doctor", f"--kubeconfig={senv.cp.admin_kubeconfig}",
                  f"--namespace={senv.cp.namespace}", "--insecure",
                  f"--lease=salvage-{controller.identity}", "--controller-url=http://127.0.0.1:1")
    assert people.returncode == 1 and "FAIL" in people.stdout and "ready" in people.stdout


def test_doctor_crd_missing(senv: SalvageEnv, controller: ControllerProcess) -> None:
    cp = senv.cp
    crds = [d for d in _render_chart(cp.bin_dir, cp.namespace)
            if d["kind"] == "CustomResourceDefinition"]
    cp.kubectl("delete", "crd", "salvagerecords.tote.dev", "--wait=true")
    try:
        code, result = doctor(senv, controller)
        assert code == 1
        (row,) = rows(result, "crd")
        assert row["status"] == "fail" and "not installed" in row["detail"]
    finally:
        cp.apply(crds)
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   "crd/salvagerecords.tote.dev")

