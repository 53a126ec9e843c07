"""The chart's network-facing features on a cluster with a real pod network, Services and a
NetworkPolicy engine (kube-router): what a loopback cluster could not test.

One release with `networkPolicy.enabled`, `webhook.enabled` and a `statusViewers` user;
otherwise the chart's defaults (tests/cluster/tote_install.py). In order:

1. the policies are in force on every node, and tote's own flows still pass: a real
   salvage across nodes (controller ↔ API server through the `kubernetes` Service,
   controller → agents, agent → agent over the data channel);
2. a pod outside tote is refused by the agents' gRPC and data ports, and may scrape
   metrics (`metricsFrom` empty: anyone);
3. `tote status --follow`, run as the NOTES print it, through the API server's service
   proxy to the controller's pod: a statusViewers user gets the feed, another user 403;
4. `tote doctor`, as the NOTES print it: every row OK;
5. the admission webhook through its Service: a typo'd annotation is rejected, and with
   the controller scaled to zero the same request is admitted (failurePolicy Ignore).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import pki, tote_install
from tests.cluster.cluster import KubeCluster
from tests.cluster.controlplane import write_kubeconfig
from tests.cluster.probe import probe_until
from tests.cluster.procs import wait_until
from tests.cluster.salvage_env import namespace
from tests.cluster.tote_install import Install

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VIEWER, STRANGER = "tote-viewer", "someone-else"
EXTRA_VALUES: dict[str, Any] = {
    "networkPolicy": {"enabled": True},
    "webhook": {"enabled": True},
    "statusViewers": [{"kind": "User", "name": VIEWER, "apiGroup": "rbac.authorization.k8s.io"}],
}


@pytest.fixture(scope="module")
def tote_np(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Install]:  # fmt: skip
    inst = tote_install.install_tote(kube_cluster, tmp_path_factory.mktemp("helm-np"),
                                     extra_values=EXTRA_VALUES)  # fmt: skip
    print(f"tote installed by helm (policies, webhook) in {inst.startup_seconds}")
    try:
        yield inst
    finally:
        inst.uninstall()


def user_kubeconfig(cluster: KubeCluster, user: str, workdir: Path) -> Path:
    """A client-certificate kubeconfig for `user`, signed by the cluster's CA."""
    cp = cluster.control_plane
    ca = pki.CA(cert=cp.ca_file, key=cp.ca_file.parent / "ca.key", dir=workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cert = ca.issue(user, common_name=user, client=True)
    return write_kubeconfig(workdir / f"{user}.kubeconfig", server=cp.server, ca_file=cp.ca_file,
                            user=user, client_cert=cert.cert, client_key=cert.key)  # fmt: skip


def tote_cli(words: list[str], kubeconfig: Path, **kw: Any) -> subprocess.Popen[str]:
    """A NOTES line (`tote ...`) run as printed, with $KUBECONFIG pointing at `kubeconfig`."""
    assert words[0] == "tote"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "tote_core.cli", *words[1:]], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)  # fmt: skip


def agent_pods(inst: Install) -> dict[str, dict[str, Any]]:
    return {p["spec"]["nodeName"]: p for p in inst.pods("agent")}


def test_1_policies_in_force_and_a_salvage_crosses_them(
    tote_np: Install, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    policies = tote_np.kubectl_json("get", "networkpolicies", "-n", tote_np.namespace)["items"]
    assert {p["metadata"]["name"] for p in policies} == {"tote-controller", "tote-agent"}
    agents = agent_pods(tote_np)
    for node in kube_cluster.nodes:
        rules = subprocess.run([*node.exec_prefix, "iptables-save"], capture_output=True,
                               text=True).stdout  # fmt: skip
        ip = agents[node.name]["status"]["podIP"]
        assert f"-d {ip}/32" in rules and "KUBE-NWPLCY-" in rules, f"no policy on {node.name}"

    got = tote_install.registry_outage_salvage(kube_cluster, tmp_path, "shop/np")
    print(f"salvage through NetworkPolicies: {got.summary}")
    assert got.pod["spec"]["nodeName"] == kube_cluster.node.name
    assert got.pod["status"]["containerStatuses"][0]["imageID"].endswith(got.image_digest)
    (rec,) = got.records
    assert rec["status"]["phase"] == "Completed", rec["status"]
    assert rec["spec"]["sourceNode"] == kube_cluster.node_b.name


def test_2_a_pod_outside_tote_is_refused_by_the_agent_ports(
    tote_np: Install, kube_cluster: KubeCluster
) -> None:
    values = tote_np.helm("get", "values", tote_np.release, "-n", tote_np.namespace, "--all",
                          "-o", "json")  # fmt: skip
    agent = json.loads(values[values.index("{"):])["agent"]
    ns = namespace(kube_cluster)
    targets: dict[str, str] = {}
    for pod in agent_pods(tote_np).values():
        ip = pod["status"]["podIP"]
        targets |= {f"tcp:{ip}:{agent['grpcPort']}": "refused",
                    f"tcp:{ip}:{agent['dataPort']}": "refused",
                    f"tcp:{ip}:{agent['metricsPort']}": "OK"}  # fmt: skip
    want = list(targets)
    got = probe_until(kube_cluster, ns, want, lambda g: all(
        g[t].startswith("OK") == (v == "OK") for t, v in targets.items()),
        node=kube_cluster.node.name)  # fmt: skip
    for target, verdict in targets.items():
        if verdict == "OK":
            assert got[target].startswith("OK"), (target, got)
        else:
            # kube-router rejects (ICMP port unreachable): refused at once, not a timeout
            assert got[target].startswith("FAIL") and "refused" in got[target], (target, got)


def test_3_status_follow_through_the_service_proxy(
    tote_np: Install, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    words = tote_np.notes_command("status")
    assert "--follow" in words, words
    viewer = user_kubeconfig(kube_cluster, VIEWER, tmp_path / "viewer")
    stranger = user_kubeconfig(kube_cluster, STRANGER, tmp_path / "stranger")

    refused = tote_cli(words, stranger)
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "403" in err, (refused.returncode, out, err)

    follower = tote_cli([*words, "--json"], viewer)
    lines: list[str] = []
    try:
        assert follower.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not lines:
            line = follower.stdout.readline()
            if not line:
                break
            if line.strip():
                lines.append(line)
        assert lines, follower.stderr.read() if follower.stderr else "no output"
        first = json.loads(lines[0])
        assert isinstance(first, dict), first
        assert follower.poll() is None, "the feed ended instead of following"
    finally:
        follower.kill()
        follower.communicate(timeout=10)


def test_4_doctor_as_the_notes_print_it_is_all_ok(
    tote_np: Install, kube_cluster: KubeCluster
) -> None:
    words = tote_np.notes_command("doctor")
    proc = tote_cli([*words, "--json"], kube_cluster.admin_kubeconfig)
    out, err = proc.communicate(timeout=120)
    rows = json.loads(out)
    bad = [r for r in rows if r["status"] != "ok"]
    assert proc.returncode == 0 and not bad, (proc.returncode, bad, err)
    checks = {r["check"] for r in rows}
    assert {"crd", "leader", "ready", "agent", "webhook"} <= checks, checks
    assert sum(r["check"] == "agent" for r in rows) == len(kube_cluster.nodes), rows


def test_5_webhook_rejects_a_typo_and_admits_when_the_controller_is_down(
    tote_np: Install, kube_cluster: KubeCluster
) -> None:
    ns = namespace(kube_cluster)
    typo = ("annotate", "--dry-run=server", "namespace", ns, "tote.dev/allow=yes", "--overwrite")

    def rejected() -> bool:
        res = kube_cluster.kubectl(*typo, check=False)
        return res.returncode != 0 and 'value "yes" is not allowed' in res.stderr

    wait_until(rejected, timeout=60, interval=1, what="the webhook rejects tote.dev/allow=yes")
    deploy = f"deployment/{tote_np.release}-controller"
    kube_cluster.kubectl("scale", deploy, "-n", tote_np.namespace, "--replicas=0")
    try:
        wait_until(lambda: not tote_np.pods("controller"), timeout=120,
                   what="controller pods gone")  # fmt: skip
        res = kube_cluster.kubectl(*typo, check=False)
        assert res.returncode == 0, res.stderr  # failurePolicy Ignore: admitted
    finally:
        kube_cluster.kubectl("scale", deploy, "-n", tote_np.namespace, "--replicas=1")
        tote_np.wait_leading()
