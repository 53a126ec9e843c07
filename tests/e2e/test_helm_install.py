"""tote as users meet it: `helm install` on the three-node kubelet cluster, then a real salvage.

The image is built here (no engine, no registry) and imported into every node's containerd;
`helm install` uses the chart's defaults except where each node's containerd is
(tests/cluster/tote_install.py). Then, in order:

1. controller (Ready, leading) and one agent per node (Ready), as pods on the pod network;
1b. `helm test` (tote doctor in a pod) passes and leaves nothing; `view` users list records;
2. the salvage story in-cluster: registry down, an opted-in Deployment scheduled to the node
   without the image, tote's pods salvage it from node B (agent → agent over mTLS), the
   replacement pod is Running and its log proves it runs the image;
3. `helm upgrade` changing a value: no certificate regenerated, the SalvageRecord kept, the
   new controller leads again;
3b. the kill switch: `tote disable`, `helm upgrade` (unchanged values) and `helm rollback`
   leave it off (no salvage of a failing opted-in pod); `tote enable` and it is salvaged;
3c. re-keying (the CA Secret deleted): the controller issues new certificates, the agents
   serve them without a restart, the next salvage uses them, the old identity is refused;
4. a second release in another namespace: no cluster-scoped name collides, both deployed;
5. `helm uninstall`: nothing of the release is left but the CRD and the SalvageRecords (the
   documented behaviour: records are user data, the CRD is shared by releases).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import tote_install
from tests.cluster.cluster import KubeCluster
from tests.cluster.procs import wait_until
from tests.cluster.tote_install import Install

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tote_helm(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Install]:  # fmt: skip
    inst = tote_install.install_tote(kube_cluster, tmp_path_factory.mktemp("helm"))
    print(f"tote installed by helm in {inst.startup_seconds}")
    try:
        yield inst
    finally:
        inst.uninstall()


def test_1_controller_and_one_agent_per_node_ready(
    tote_helm: Install, kube_cluster: KubeCluster
) -> None:
    def all_ready() -> bool:
        pods = tote_helm.pods("controller") + tote_helm.pods("agent")
        return bool(pods) and all(
            {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready")
            == "True" for p in pods
        )

    # Readiness is a probe: on a loaded machine a pod may still be between probes here.
    wait_until(all_ready, timeout=120, interval=1, what="every tote pod Ready")
    ctl = tote_helm.pods("controller")
    agents = tote_helm.pods("agent")
    assert len(ctl) == 1, [p["metadata"]["name"] for p in ctl]
    assert sorted(p["spec"]["nodeName"] for p in agents) == sorted(
        n.name for n in kube_cluster.nodes
    )
    for p in ctl + agents:
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        assert conds.get("Ready") == "True", (p["metadata"]["name"], p["status"])
        image = p["status"]["containerStatuses"][0]["image"]
        assert image.endswith(f"tote:{tote_helm.image.version}"), image
    holder = tote_helm.lease_holder()
    assert holder.startswith(ctl[0]["metadata"]["name"]), (holder, ctl[0]["metadata"]["name"])
    # the chart's defaults: every tote pod on the pod network, in its node's pod CIDR
    cidrs = {n.name: ipaddress.ip_network(n.net.pod_cidr) for n in kube_cluster.nodes if n.net}
    for p in ctl + agents:
        assert not p["spec"].get("hostNetwork"), p["metadata"]["name"]
        assert ipaddress.ip_address(p["status"]["podIP"]) in cidrs[p["spec"]["nodeName"]], (
            p["metadata"]["name"], p["status"]["podIP"])


def test_1b_helm_test_passes_and_viewers_read_records(
    tote_helm: Install, kube_cluster: KubeCluster
) -> None:
    """`helm test`: tote doctor in a pod, with the arguments NOTES prints, as the hook's own
    ServiceAccount, finds nothing wrong with a healthy install and leaves no object behind.
    A user bound only to the built-in `view` role may list SalvageRecords in every namespace
    (the chart's role, aggregated by kube-controller-manager), and may not delete them."""
    inst = tote_helm
    try:
        out = inst.helm("test", inst.release, "-n", inst.namespace, "--timeout", "300s")
    except RuntimeError as exc:
        logs = kube_cluster.kubectl("logs", f"{inst.release}-test", "-n", inst.namespace,
                                    check=False)
        raise AssertionError(f"{exc}\ndoctor in the test pod said:\n{logs.stdout}"
                             f"{logs.stderr}") from None
    assert "Phase:          Succeeded" in out, out
    left = [(kind, name) for kind, name, ns in (
        ("pod", f"{inst.release}-test", inst.namespace),
        ("serviceaccount", f"{inst.release}-test", inst.namespace),
        ("role", f"{inst.release}-test", inst.namespace),
        ("rolebinding", f"{inst.release}-test", inst.namespace),
        ("clusterrole", f"{inst.namespace}.{inst.release}-test", ""),
        ("clusterrolebinding", f"{inst.namespace}.{inst.release}-test", ""))
        if kube_cluster.kubectl("get", kind, name, *(["-n", ns] if ns else []),
                                check=False).returncode == 0]  # fmt: skip
    assert not left, f"helm test left {left}"

    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "e2e-viewer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "view"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": "e2e-viewer"}]}  # fmt: skip
    kube_cluster.apply(binding)
    try:
        def can(*args: str) -> bool:
            res = kube_cluster.kubectl("auth", "can-i", *args, "--as=e2e-viewer", check=False)
            return res.stdout.strip() == "yes"

        wait_until(lambda: can("list", "salvagerecords.tote.dev", "-A"), timeout=60,
                   interval=1, what="view aggregates the chart's salvagerecords role")
        listed = kube_cluster.kubectl("get", "salvagerecords", "-A", "--as=e2e-viewer",
                                      check=False)
        assert listed.returncode == 0, listed.stderr
        assert not can("delete", "salvagerecords.tote.dev", "-A")
    finally:
        kube_cluster.kubectl("delete", "clusterrolebinding", "e2e-viewer", "--ignore-not-found")


def test_2_registry_down_salvaged_by_tote_pods(
    tote_helm: Install, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    got = tote_install.registry_outage_salvage(kube_cluster, tmp_path, "shop/helm")
    print(f"in-cluster salvage: {got.summary}")
    assert got.pod["spec"]["nodeName"] == kube_cluster.node.name
    assert got.pod["status"]["containerStatuses"][0]["imageID"].endswith(got.image_digest)
    logs = kube_cluster.pod_logs(got.namespace, got.pod["metadata"]["name"])
    assert got.marker in logs, logs
    assert len(got.records) == 1, got.records
    rec = got.records[0]
    assert rec["status"]["phase"] == "Completed", rec["status"]
    assert rec["spec"]["sourceNode"] == kube_cluster.node_b.name
    assert rec["spec"]["targetNode"] == kube_cluster.node.name
    reasons = {e.get("reason") for e in kube_cluster.events(got.namespace, got.first_pod)}
    assert {"ImageSalvageable", "ImageSalvaged"} <= reasons, reasons


def test_3_upgrade_keeps_certificates_and_records(
    tote_helm: Install, kube_cluster: KubeCluster
) -> None:
    before = tote_helm.secret_data()
    assert {"tote-ca", "tote-controller-tls", "tote-agent-tls"} <= set(before), sorted(before)
    records_before = kube_cluster.kubectl("get", "salvagerecords", "-A", "-o", "name").stdout
    old_ctl = tote_helm.pods("controller")[0]["metadata"]["uid"]
    tote_helm.helm("upgrade", tote_helm.release, str(tote_install.CHART), "-n",
                   tote_helm.namespace, "--reuse-values", "--set", "controller.logLevel=debug",
                   "--wait", "--timeout", "300s")  # fmt: skip
    after = tote_helm.secret_data()
    for name in ("tote-ca", "tote-controller-tls", "tote-agent-tls"):
        assert after[name] == before[name], f"{name} was regenerated by helm upgrade"
    assert kube_cluster.kubectl("get", "salvagerecords", "-A", "-o", "name").stdout == (
        records_before
    )
    wait_until(
        lambda: any(p["metadata"]["uid"] != old_ctl for p in tote_helm.pods("controller")),
        timeout=120, what="the upgraded controller pod",
    )  # fmt: skip
    ctl = next(p for p in tote_helm.pods("controller") if p["metadata"]["uid"] != old_ctl)
    args = ctl["spec"]["containers"][0]["args"]
    assert "--log-level=debug" in args, args
    wait_until(
        lambda: tote_helm.lease_holder().startswith(ctl["metadata"]["name"]),
        timeout=120, interval=1, what="the upgraded controller leads",
    )  # fmt: skip


def _tote(*words: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    """The `tote` CLI as a user runs it, with $KUBECONFIG set."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PYTHONPATH": os.pathsep.join([str(tote_install.REPO),
                                          str(tote_install.REPO / "plugins")])}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "tote_core.cli", *words], env=env,
                          cwd=tote_install.REPO, capture_output=True, text=True, timeout=120)


def _switch_data(inst: Install, name: str) -> dict[str, str]:
    cm = inst.kubectl_json("get", "configmap", name, "-n", inst.namespace)
    return dict(cm.get("data") or {})


def _wait_new_controller_leading(inst: Install, old_uid: str) -> dict[str, Any]:
    wait_until(lambda: any(p["metadata"]["uid"] != old_uid for p in inst.pods("controller")),
               timeout=180, what="a new controller pod")  # fmt: skip
    ctl = next(p for p in inst.pods("controller") if p["metadata"]["uid"] != old_uid)
    wait_until(lambda: inst.lease_holder().startswith(ctl["metadata"]["name"]),
               timeout=180, interval=1, what="the new controller leads")  # fmt: skip
    return ctl


def test_3b_kill_switch_survives_helm_upgrade_and_rollback(
    tote_helm: Install, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    """`tote disable`, then `helm upgrade` with unchanged values and `helm rollback` to the
    install-time revision (a new controller process, started with the chart's `enabled`
    true): tote stays off — a failing opted-in pod gets no salvage, `tote status` and the
    ConfigMap say disabled. `tote enable`, and the pod is salvaged."""
    inst, admin = tote_helm, kube_cluster.admin_kubeconfig
    cm = f"{inst.release}-config"  # the chart's <fullname>-config for release `tote`
    reason = "e2e: no helm upgrade or rollback undoes this"
    got = _tote("disable", "--reason", reason, "-n", inst.namespace, "--config-map", cm,
                kubeconfig=admin)
    assert got.returncode == 0, got.stderr
    print(got.stdout.strip())
    assert got.stdout.startswith(f"salvage DISABLED in {inst.namespace} (ConfigMap {cm}; ")
    written = _switch_data(inst, cm)

    def evented() -> bool:
        evs = inst.kubectl_json("get", "events.events.k8s.io", "-n", inst.namespace)["items"]
        return any(e.get("reason") == "SalvageDisabled"
                   and e.get("regarding", {}).get("name") == cm
                   and reason in e.get("note", "") for e in evs)

    wait_until(evented, timeout=60, what="SalvageDisabled on the ConfigMap (the controller "
               "saw it)")  # fmt: skip

    old_ctl = inst.pods("controller")[0]["metadata"]["uid"]
    inst.helm("upgrade", inst.release, str(tote_install.CHART), "-n", inst.namespace,
              "--reuse-values", "--wait", "--timeout", "300s")  # fmt: skip
    assert _switch_data(inst, cm) == written, "helm upgrade touched the kill switch"
    # revision 1 is the install (test 3 upgraded once): its pod template differs, so the
    # rollback starts a new controller that reads the switch from scratch
    inst.helm("rollback", inst.release, "1", "-n", inst.namespace, "--wait",
              "--timeout", "300s")  # fmt: skip
    assert _switch_data(inst, cm) == written, "helm rollback touched the kill switch"
    ctl = _wait_new_controller_leading(inst, old_ctl)
    assert "--enabled=true" in ctl["spec"]["containers"][0]["args"]

    status = _tote("status", "--json", "-n", inst.namespace, kubeconfig=admin)
    assert status.returncode == 0, status.stderr
    (sw,) = [m for m in map(json.loads, status.stdout.splitlines()) if m["type"] == "switch"]
    assert (sw["enabled"], sw["source"], sw["reason"]) == (False, "configmap", reason), sw

    # a failing opted-in pod: the registry is down, node-b holds the image; tote stays off
    with tote_install.registry_outage(kube_cluster, tmp_path, "shop/switch",
                                      marker_prefix="kill-switch") as out:
        tl, ns = out.timeline, out.namespace
        assert not tl.watch(40), tl.describe()
        assert tl.first_failure() is not None, tl.describe()  # it did fail to pull
        by_tote = [e["reason"] for e in inst.kubectl_json(
            "get", "events.events.k8s.io", "-n", ns)["items"]
            if e.get("reportingController") == "tote.dev/controller"]  # fmt: skip
        assert by_tote == [], by_tote
        recs = inst.kubectl_json("get", "salvagerecords", "-n", ns)["items"]
        assert recs == [], recs

        got = _tote("enable", "--reason", "e2e: back on", "-n", inst.namespace,
                    "--config-map", cm, kubeconfig=admin)
        assert got.returncode == 0, got.stderr
        assert "was: DISABLED by " in got.stdout, got.stdout
        pod = tl.wait_running(timeout=180)
        print(f"salvaged after tote enable: {tl.summary()}")
        assert pod["status"]["containerStatuses"][0]["imageID"].endswith(out.image_digest)
        assert out.marker in kube_cluster.pod_logs(ns, pod["metadata"]["name"])


def test_3c_replaced_certificates_used_without_restarts(
    tote_helm: Install, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    """Re-key: delete the CA Secret. The controller issues a new CA and new certificates
    into the Secrets; kubelet refreshes the agents' mounted Secret and they serve the new
    chain without a restart; the next salvage goes through with it; a client holding the
    old controller certificate is refused (its CA is no longer trusted)."""
    import base64

    from tests.cluster.tlsprobe import der, handshake_with, served_cert

    inst = tote_helm
    ns = inst.namespace
    old = {k: base64.b64decode(v) for k, v in inst.secret_data()["tote-controller-tls"].items()}
    for key, data in old.items():
        (tmp_path / f"old-{key}").write_bytes(data)
    before_agent = inst.secret_data()["tote-agent-tls"]["tls.crt"]
    pods = {p["metadata"]["uid"]: p for p in inst.pods("agent") + inst.pods("controller")}
    restarts = {uid: [c.get("restartCount", 0) for c in p["status"]["containerStatuses"]]
                for uid, p in pods.items()}

    t0 = time.monotonic()
    kube_cluster.kubectl("delete", "secret", "tote-ca", "-n", ns)
    wait_until(lambda: inst.secret_data().get("tote-agent-tls", {}).get("tls.crt")
               not in (None, before_agent), timeout=120, interval=2,
               what="the controller re-issued the agent certificate")  # fmt: skip
    issued = time.monotonic() - t0
    new_agent = base64.b64decode(inst.secret_data()["tote-agent-tls"]["tls.crt"])
    agents = [(p["status"]["podIP"], p["spec"]["nodeName"]) for p in inst.pods("agent")]
    for ip, node in agents:
        wait_until(lambda ip=ip: served_cert(ip, 9090) == der(new_agent), timeout=240,
                   interval=2, what=f"the agent on {node} serves the new certificate")
    served = time.monotonic() - t0
    print(f"re-key: new certificates issued after {issued:.0f}s, served by every agent "
          f"after {served:.0f}s (kubelet refreshes Secret volumes on its sync period)")

    got = tote_install.registry_outage_salvage(kube_cluster, tmp_path, "shop/rekey")
    assert got.records and got.records[0]["status"]["phase"] == "Completed", got.records

    for ip, node in agents:
        refused = handshake_with(ip, 9092, tmp_path / "old-tls.crt", tmp_path / "old-tls.key",
                                 tmp_path / "old-ca.crt")
        assert refused, f"the agent on {node} still accepts the old controller certificate"
    now = {p["metadata"]["uid"]: p for p in inst.pods("agent") + inst.pods("controller")}
    assert set(now) == set(pods), "a tote pod was replaced"
    assert {uid: [c.get("restartCount", 0) for c in p["status"]["containerStatuses"]]
            for uid, p in now.items()} == restarts, "a tote container restarted"


def test_4_second_release_in_another_namespace_no_collisions(
    tote_helm: Install, kube_cluster: KubeCluster
) -> None:
    other = tote_install.harness_values(kube_cluster)
    path = tote_helm.values_file(other, "values-other.yaml")
    tote_helm.helm("install", "tote", str(tote_install.CHART), "-n", "tote-other",
                   "--create-namespace", "-f", str(path), "--wait", "--timeout", "300s")
    try:
        status = tote_helm.helm("status", "tote", "-n", "tote-other")
        assert "STATUS: deployed" in status, status
        first = tote_helm.helm("get", "manifest", "tote", "-n", tote_helm.namespace)
        second = tote_helm.helm("get", "manifest", "tote", "-n", "tote-other")

        def cluster_scoped(manifest: str) -> set[tuple[str, str]]:
            return {
                (d["kind"], d["metadata"]["name"])
                for d in yaml.safe_load_all(manifest)
                if d and d["kind"] in ("ClusterRole", "ClusterRoleBinding",
                                       "ValidatingWebhookConfiguration")
            }  # fmt: skip

        a, b = cluster_scoped(first), cluster_scoped(second)
        assert a and b and not (a & b), (a, b)
    finally:
        tote_helm.helm("uninstall", "tote", "-n", "tote-other", "--wait", check=False)


def test_5_uninstall_leaves_only_crd_and_records(
    tote_helm: Install, kube_cluster: KubeCluster
) -> None:
    records = kube_cluster.kubectl("get", "salvagerecords", "-A", "-o", "name").stdout.split()
    manifest = tote_helm.helm("get", "manifest", tote_helm.release, "-n", tote_helm.namespace)
    cluster_scoped = sorted(
        f"{d['kind'].lower()}/{d['metadata']['name']}"
        for d in yaml.safe_load_all(manifest)
        if d and d["kind"] in ("ClusterRole", "ClusterRoleBinding",
                               "ValidatingWebhookConfiguration")
    )  # fmt: skip
    assert cluster_scoped, "the release rendered no cluster-scoped object"
    tote_helm.uninstall()
    sel = f"app.kubernetes.io/instance={tote_helm.release}"
    wait_until(
        lambda: not kube_cluster.kubectl(
            "get", "all,secrets,configmaps,serviceaccounts,roles,rolebindings,leases",
            "-n", tote_helm.namespace, "-l", sel, "-o", "name", check=False,
        ).stdout.strip(),
        timeout=120, what="every namespaced object of the release gone",
    )  # fmt: skip
    # (the label alone would also match the harness's own RBAC: same release name "tote",
    # rendered for another namespace — names carry the namespace, so compare names)
    for obj in cluster_scoped:
        kind, name = obj.split("/", 1)
        res = kube_cluster.kubectl("get", kind, name, check=False)
        assert res.returncode != 0, f"{obj} left after helm uninstall"
    assert kube_cluster.kubectl("get", "crd", "salvagerecords.tote.dev", check=False
                                ).returncode == 0  # fmt: skip
    assert kube_cluster.kubectl("get", "salvagerecords", "-A", "-o", "name").stdout.split() == (
        records
    )


def test_6_uninstall_leaves_the_kill_switch_someone_wrote(
    tote_helm: Install, kube_cluster: KubeCluster
) -> None:
    """The kill-switch ConfigMap belongs to no release (the chart does not render it), so
    `helm uninstall` leaves the one `tote disable`/`tote enable` wrote (test 3b); a later
    install into the namespace starts with what it says (docs/operations.md)."""
    cm = f"{tote_helm.release}-config"
    assert "STATUS: deployed" not in tote_helm.helm("status", tote_helm.release, "-n",
                                                    tote_helm.namespace, check=False)
    data = _switch_data(tote_helm, cm)
    assert data["enabled"] == "true" and data["reason"] == "e2e: back on", data
    kube_cluster.kubectl("delete", "configmap", cm, "-n", tote_helm.namespace)
