"""The chart lints, renders, rejects bad values, and what it renders is accepted by a real
apiserver (WO-25 matrix: minimal, full, TLS-only, dashboard-only, plus the test harness's set).

What the pods would do with the rendered arguments is checked in test_helm_pods.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import CHART_DIR, ControlPlane

FULL_VALUES: dict[str, Any] = {
    "enabled": True,
    "apiServer": {"host": "10.0.0.1", "port": 6443},
    "controller": {
        "replicas": 2, "logFormat": "json", "logLevel": "debug",
        "denyNamespaces": ["legacy", "payments"], "salvageOnAuthFailure": True,
        "maxImageSize": "0", "extraArgs": ["--workers=8"],
        "podAnnotations": {"example.com/team": "platform"},
    },
    "agent": {"logFormat": "json", "probes": {"enabled": False}, "hostNetwork": True,
              "containerdSocket": "/run/k3s/containerd/containerd.sock",
              "contentRoot": "/var/lib/rancher/k3s/agent/containerd/"
                             "io.containerd.content.v1.content"},
    "registryResolve": {"enabled": True, "timeout": "3s", "caConfigMap": "registry-ca"},
    "plugins": {"disabled": ["inheritance"]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "prometheusRule": {"enabled": True}},
    "dashboard": {"enabled": True},
    "pdb": {"enabled": True},
    "networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"],
                      "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "monitoring"}}}]},
}  # fmt: skip

# What tote's own test cluster passes (several kubelets on one machine, no kube-proxy).
HARNESS_VALUES: dict[str, Any] = {
    "apiServer": {"host": "127.0.0.1", "port": 6443},
    "controller": {"hostNetwork": True},
    "agent": {"hostNetwork": True,
              "containerdSocket": "/tmp/cluster/nodes/$(NODE_NAME)/containerd/containerd.sock",
              "contentRoot": "/tmp/cluster/nodes/$(NODE_NAME)/containerd/root/"
                             "io.containerd.content.v1.content"},
}

VALUE_SETS: dict[str, dict[str, Any] | None] = {
    "minimal": None,
    "full": FULL_VALUES,
    "tls-existing-secret": {"tls": {"existingSecret": "my-tote-tls"}},
    "tls-cert-manager": {"tls": {"certManager": {"enabled": True}}},
    "tls-cert-manager-issuer": {"tls": {"certManager": {"enabled": True, "issuerRef": {
        "name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}},
    "tls-off": {"tls": {"enabled": False}},
    "dashboard-only": {"dashboard": {"enabled": True}},
    "harness": HARNESS_VALUES,
}


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data")}
        self._n = 0

    def run(self, *args: str, values: dict[str, Any] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), *args]
        if values is not None:
            self._n += 1
            vf = self.home / f"values-{self._n}.json"
            vf.write_text(json.dumps(values))
            argv += ["-f", str(vf)]
        res = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=120)
        if check:
            assert res.returncode == 0, f"helm {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res

    def render(self, values: dict[str, Any] | None = None, *, release: str = "tote",
               namespace: str = "tote-system", extra: tuple[str, ...] = ()
               ) -> list[dict[str, Any]]:
        out = self.run("template", release, str(CHART_DIR), "--namespace", namespace,
                       "--include-crds", *extra, values=values).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def helm(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(k8s_bin_dir / "helm", tmp_path_factory.mktemp("helm-home"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    (d,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return d


def pod_spec(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return one(docs, kind)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint(helm: Helm, name: str) -> None:
    helm.run("lint", str(CHART_DIR), "--strict", values=VALUE_SETS[name])


def test_minimal_render(helm: Helm) -> None:
    docs = helm.render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
        "DaemonSet", "Deployment", "Role", "RoleBinding", "Secret", "Secret", "Secret",
        "Service", "Service", "ServiceAccount", "ServiceAccount",
    ]), kinds  # fmt: skip
    crd = one(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "salvagerecords.tote.dev"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert set(schema["spec"]["properties"]) == {
        "podName", "podUID", "digest", "imageRef", "sourceNode", "targetNode",
    }  # fmt: skip
    names = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    assert names == {"tote-controller", "tote-agent"}
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["name"] == "tote-config" and cm["data"] == {"enabled": "true"}
    # mTLS out of the box: a CA and one Secret per identity, each pod mounts only its own.
    assert {d["metadata"]["name"] for d in by_kind(docs, "Secret")} == {
        "tote-ca", "tote-controller-tls", "tote-agent-tls"}
    for kind, secret in (("Deployment", "tote-controller-tls"), ("DaemonSet", "tote-agent-tls")):
        (tls,) = [v for v in pod_spec(docs, kind)["volumes"] if v["name"] == "tls"]
        assert tls["secret"]["secretName"] == secret
    # Default image: what the offline build names the image, found with IfNotPresent.
    ctr = pod_spec(docs, "Deployment")["containers"][0]
    assert ctr["image"] == "tote:0.1.0" and ctr["imagePullPolicy"] == "IfNotPresent"
    assert not by_kind(docs, "PodDisruptionBudget"), "one replica: no PDB that blocks drains"


def _rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in by_kind(docs, kind) for r in d.get("rules", [])]


def test_rbac_least_privilege(helm: Helm) -> None:
    docs = helm.render()
    rules = _rules(docs, "ClusterRole") + _rules(docs, "Role")
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"], r
        assert "*" not in r.get("apiGroups", []), r
    assert not [r for r in rules if "secrets" in r["resources"]], "no Secret access by default"
    cluster = {(g, res): set(r["verbs"]) for r in _rules(docs, "ClusterRole")
               for g in r["apiGroups"] for res in r["resources"]}  # fmt: skip
    assert cluster[("", "pods")] == {"get", "list", "watch", "delete", "patch"}
    assert cluster[("", "nodes")] == {"get", "list", "watch"}
    assert {"create", "patch"} <= cluster[("events.k8s.io", "events")]
    assert cluster[("tote.dev", "salvagerecords/status")] >= {"get", "update", "patch"}
    for owner in ("replicasets", "deployments", "statefulsets", "daemonsets"):
        assert cluster[("apps", owner)] == {"get"}
    (cm_rule,) = [r for r in _rules(docs, "Role") if "configmaps" in r["resources"]]
    assert cm_rule["resourceNames"] == ["tote-config"]
    full = helm.render({"registryResolve": {"enabled": True}})
    (sec,) = [r for r in _rules(full, "ClusterRole") if "secrets" in r["resources"]]
    assert sec["verbs"] == ["get"]


def test_full_render(helm: Helm) -> None:
    docs = helm.render(FULL_VALUES)
    dep = pod_spec(docs, "Deployment")
    args = dep["containers"][0]["args"]
    for want in (
        "--deny-namespaces=legacy,payments", "--log-format=json", "--log-level=debug",
        "--salvage-on-auth-failure=true", "--max-image-size=0", "--registry-resolve=true",
        "--registry-resolve-timeout=3s", "--registry-resolve-ca=/etc/tote/registry-ca/ca.crt",
        "--plugins-disabled=inheritance", "--workers=8", "--tls-ca=/etc/tote/tls/ca.crt",
    ):  # fmt: skip
        assert want in args, (want, args)
    env = {e["name"]: e.get("value") for e in dep["containers"][0]["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": {
            "app.kubernetes.io/name": "tote", "app.kubernetes.io/instance": "tote",
            "app.kubernetes.io/component": "controller"}}}
    ds = pod_spec(docs, "DaemonSet")
    agent = ds["containers"][0]
    assert ds["hostNetwork"] is True and "--listen-address=$(HOST_IP)" in agent["args"]
    assert {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} \
        in agent["env"]
    assert "livenessProbe" not in agent and "readinessProbe" not in agent
    sc = agent["securityContext"]
    assert sc["runAsUser"] == 0 and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    paths = {v["name"]: v["hostPath"]["path"] for v in ds["volumes"] if "hostPath" in v}
    assert paths == {"containerd-socket": "/run/k3s/containerd",
                     "containerd-content": FULL_VALUES["agent"]["contentRoot"]}
    # Agents in the host network: only the controller gets a NetworkPolicy.
    assert [n["metadata"]["name"] for n in by_kind(docs, "NetworkPolicy")] == [
        "tote-controller"]
    dash = one(docs, "ConfigMap", "-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    alerts = {r["alert"] for g in one(docs, "PrometheusRule")["spec"]["groups"]
              for r in g["rules"]}
    assert alerts == {"ToteSalvageFailures", "ToteAgentsMissing", "ToteNoLeader",
                      "ToteSalvageHappened"}


def test_dashboard_and_alerts_use_only_real_metrics(helm: Helm) -> None:
    """Every tote_* name in the dashboard and the alerts is a metric tote exports."""
    import re

    from prometheus_client import REGISTRY
    from tote_containerd.agent.metrics import REGISTRY as AGENT

    import tote_core.metrics  # noqa: F401  (registers the controller's metrics)

    known: set[str] = set()
    for reg in (REGISTRY, AGENT):
        for fam in reg.collect():
            # labelled metrics without children have no samples yet: derive the names
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                        }.get(fam.type, ("",))
            known |= {s.name for s in fam.samples} | {fam.name + sfx for sfx in suffixes}
    docs = helm.render(FULL_VALUES)
    text = one(docs, "ConfigMap", "-dashboard")["data"]["tote.json"]
    text += json.dumps(one(docs, "PrometheusRule")["spec"])
    used = set(re.findall(r"\btote_[a-z_]+", text))
    assert used and used <= known, sorted(used - known)
    panels = [p["title"] for p in json.loads(one(docs, "ConfigMap", "-dashboard")["data"][
        "tote.json"])["panels"] if p["type"] == "row"]
    assert panels == ["Overview", "Detection", "Salvage", "Backup push", "Latency", "Size"]


def test_network_policies_allow_tote_flows(helm: Helm) -> None:
    docs = helm.render({"networkPolicy": {"enabled": True}})
    pols = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    ctl, agent = pols["tote-controller"], pols["tote-agent"]

    def ports(rules: list[dict[str, Any]]) -> set[int]:
        return {p["port"] for r in rules for p in r.get("ports", [])}

    assert {443, 6443, 9090, 53} <= ports(ctl["egress"])
    assert ports(ctl["ingress"]) == {8080}
    assert ports(agent["ingress"]) == {9090, 9091, 9092}
    assert ports(agent["egress"]) == {9090, 9092, 53}
    grpc_in = next(r for r in agent["ingress"] if ports([r]) == {9090})
    comps = {f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
             for f in grpc_in["from"]}
    assert comps == {"controller", "agent"}
    data_in = next(r for r in agent["ingress"] if ports([r]) == {9092})
    assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for f in data_in["from"]] == ["agent"]


@pytest.mark.parametrize(("values", "needle"), [
    (["--set", "controller.replicas=abc"], "replicas"),
    (["--set", "controller.replicas=0"], "replicas"),
    (["--set", "controller.logFormat=xml"], "logFormat"),
    (["--set", "agent.grpcPort=70000"], "grpcPort"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "controller.maxImageSize=lots"], "maxImageSize"),
    (["--set", "controller.salvageRecordTTL=1week"], "salvageRecordTTL"),
    (["--set", "agent.containerdSocket=relative.sock"], "containerdSocket"),
    (["--set", "controller.registryResolve=true"], "registryResolve"),  # old spelling
    (["--set", "backupRegistry.host=b.example"], "backupRegistry"),  # not built yet
    (["--set", "notifications.webhookUrl=https://x"], "notifications"),  # not built yet
    (["--set", "agent.metricsPort=9090"], "three different ports"),
    (["--set", "apiServer.host=10.0.0.1"], "set both or neither"),
    (["--set", "tls.existingSecret=x", "--set", "tls.certManager.enabled=true"], "pick one"),
], ids=lambda v: v[1] if isinstance(v, list) else None)
def test_bad_values_are_rejected(helm: Helm, values: list[str], needle: str) -> None:
    res = helm.run("template", "tote", str(CHART_DIR), *values, check=False)
    assert res.returncode != 0, f"{values} rendered:\n{res.stdout[:500]}"
    assert needle in res.stderr, res.stderr


def _cluster_scoped(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs
            if "namespace" not in d["metadata"] and d["kind"] != "CustomResourceDefinition"}


def test_releases_do_not_collide(helm: Helm) -> None:
    """Two namespaces with a release called "tote", and a second release next to one."""
    full = {**FULL_VALUES, "agent": {"hostNetwork": False}}
    a = helm.render(full, namespace="team-a")
    b = helm.render(full, namespace="team-b")
    c = helm.render(full, release="tote-canary", namespace="team-a")
    sa, sb, sc = _cluster_scoped(a), _cluster_scoped(b), _cluster_scoped(c)
    assert sa and not (sa & sb) and not (sa & sc) and not (sb & sc), (sa, sb, sc)
    ns_a = {(d["kind"], d["metadata"]["name"]) for d in a if "namespace" in d["metadata"]}
    ns_c = {(d["kind"], d["metadata"]["name"]) for d in c if "namespace" in d["metadata"]}
    assert not (ns_a & ns_c), ns_a & ns_c
    # Each controller finds only its own release's agents.
    for docs, release in ((a, "tote"), (c, "tote-canary")):
        args = pod_spec(docs, "Deployment")["containers"][0]["args"]
        assert f"--agent-selector=app.kubernetes.io/name=tote,app.kubernetes.io/instance=" \
               f"{release},app.kubernetes.io/component=agent" in args


# Only the kinds of other projects' CRDs are needed for the dry run to accept the objects;
# these stand-ins accept any fields (the real CRDs validate them when those projects run).
FOREIGN_CRDS = [
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    ("cert-manager.io", "Issuer", "issuers"),
    ("cert-manager.io", "Certificate", "certificates"),
]


@pytest.fixture(scope="module")
def foreign_crds(control_plane: ControlPlane) -> Iterator[None]:
    crds = [{
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "listKind": kind + "List",
                           "singular": kind.lower()},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True}}}]},
    } for group, kind, plural in FOREIGN_CRDS]
    control_plane.apply(crds)
    for group, _, plural in FOREIGN_CRDS:
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                              f"crd/{plural}.{group}")
    yield
    control_plane.kubectl("delete", "crd", "--ignore-not-found", "--wait=false",
                          *[f"{p}.{g}" for g, _, p in FOREIGN_CRDS])


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_apiserver_accepts_rendered_chart(
    helm: Helm, control_plane: ControlPlane, foreign_crds: None, name: str
) -> None:
    """Server-side dry run: every rendered object passes the real apiserver's validation."""
    docs = helm.render(VALUE_SETS[name], namespace=control_plane.namespace)
    res = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "deployment.apps/tote-controller" in res.stdout
    assert "daemonset.apps/tote-agent" in res.stdout
