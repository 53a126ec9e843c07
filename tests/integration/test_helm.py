"""The chart lints, renders, rejects bad values, and what it renders is accepted by a real
apiserver (value matrix: minimal, full, TLS-only, dashboard-only, plus the test harness's set).

What the pods would do with the rendered arguments is checked in test_helm_pods.py.

Over 400 lines on purpose: one module for the chart's rendering, so every values case sits
beside the matrix it belongs to.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import versions
from tests.cluster.controlplane import CHART_DIR, ControlPlane, write_kubeconfig
from tests.cluster.procs import wait_until

KUBE_VERSION = versions.pin("K8S_VERSION")

FULL_VALUES: dict[str, Any] = {
    "enabled": True,
    "apiServer": {"host": "10.0.0.1", "port": 6443},
    "controller": {
        "replicas": 2, "logFormat": "json", "logLevel": "debug",
        "denyNamespaces": ["legacy", "payments"], "salvageOnAuthFailure": True,
        "maxImageSize": "0", "extraArgs": ["--workers=8"], "pinSalvagedImages": False,
        "podAnnotations": {"example.com/team": "platform"},
    },
    "agent": {"logFormat": "json", "probes": {"enabled": False}, "hostNetwork": True,
              "containerdSocket": "/run/k3s/containerd/containerd.sock",
              "contentRoot": "/var/lib/rancher/k3s/agent/containerd/"
                             "io.containerd.content.v1.content"},
    "registryResolve": {"enabled": True, "timeout": "3s", "caConfigMap": "registry-ca"},
    "snapshotSalvage": {"enabled": True, "strict": True},
    "plugins": {"disabled": ["inheritance"]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "prometheusRule": {"enabled": True}},
    "dashboard": {"enabled": True},
    "pdb": {"enabled": True},
    "networkPolicy": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"],
                      "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "monitoring"}}}]},
    "webhook": {"enabled": True, "port": 9555, "timeoutSeconds": 10},
    "statusViewers": [
        {"kind": "Group", "name": "sre", "apiGroup": "rbac.authorization.k8s.io"},
        {"kind": "ServiceAccount", "name": "dashboard", "namespace": "monitoring"}],
    "backup": {"registry": "10.0.0.5:5000/salvaged", "secretName": "backup-creds",
               "caConfigMap": "backup-ca", "caKey": "bundle.pem"},
    "notifications": {"webhookUrl": "https://hooks.example.com:8443/tote?team=platform&x=1",
                      "events": ["failed", "pushed"], "format": "slack",
                      "signingSecret": {"name": "tote-webhook-signing", "key": "hmac"}},
}  # fmt: skip

WEBHOOK_VALUES: dict[str, Any] = {"webhook": {"enabled": True}}

# What tote's own test cluster passes (several kubelets on one machine, no kube-proxy).
HARNESS_VALUES: dict[str, Any] = {
    "apiServer": {"host": "127.0.0.1", "port": 6443},
    "controller": {"hostNetwork": True},
    "agent": {"hostNetwork": True,
              "containerdSocket": "/tmp/cluster/nodes/$(NODE_NAME)/containerd/containerd.sock",
              "contentRoot": "/tmp/cluster/nodes/$(NODE_NAME)/containerd/root/"
                             "io.containerd.content.v1.content"},
}

# Scheduling, labels, environment and image pinning on both pods.
POD_EXTRAS_VALUES: dict[str, Any] = {
    "image": {"tag": "0.1.0", "digest": "sha256:" + "ab" * 32},
    "controller": {
        "replicas": 2, "priorityClassName": "system-cluster-critical",
        "podLabels": {"example.com/team": "platform"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"},
                     {"name": "NO_PROXY", "value": "10.96.0.1,.svc"},
                     {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {
                         "fieldPath": "status.podIP"}}}],
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                         "effect": "NoSchedule"},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 30}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": {
                                                    "app.kubernetes.io/component":
                                                        "controller"}}}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule",
                                       "topologyKey": "topology.kubernetes.io/zone"}],
        "resources": {"requests": {"cpu": "0.1", "memory": "128Mi"},
                      "limits": {"cpu": 1, "memory": "1Gi"}},
    },
    "agent": {"priorityClassName": "", "podLabels": {"example.com/team": "platform"},
              "nodeSelector": {"example.com/pool": "general"},
              "extraEnv": [{"name": "TZ", "value": "UTC"}]},
}  # fmt: skip

VALUE_SETS: dict[str, dict[str, Any] | None] = {
    "minimal": None,
    "full": FULL_VALUES,
    "tls-existing-secret": {"tls": {"existingSecret": "my-tote-tls"}},
    "tls-cert-manager": {"tls": {"certManager": {"enabled": True}}},
    "tls-cert-manager-issuer": {"tls": {"certManager": {"enabled": True, "issuerRef": {
        "name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}},
    "tls-off": {"tls": {"enabled": False}},
    "dashboard-only": {"dashboard": {"enabled": True}},
    "webhook-only": WEBHOOK_VALUES,
    "webhook-cert-manager": {"webhook": {"enabled": True}, "tls": {"certManager": {
        "enabled": True}}},
    "backup-insecure": {"backup": {"registry": "registry.local", "insecure": True}},
    # Unsigned, every event, plain HTTP: only --webhook-url and --webhook-format.
    "notifications-plain": {"notifications": {"webhookUrl": "http://receiver.monitoring/hook"}},
    "harness": HARNESS_VALUES,
    "pod-extras": POD_EXTRAS_VALUES,
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

    def template(self, release: str, *args: str, values: dict[str, Any] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """`helm template` as for the pinned Kubernetes: without a cluster helm assumes
        v1.20, which the chart's kubeVersion (>=1.34) refuses."""
        return self.run("template", release, str(CHART_DIR), "--kube-version", KUBE_VERSION,
                        *args, values=values, check=check)

    def render(self, values: dict[str, Any] | None = None, *, release: str = "tote",
               namespace: str = "tote-system", extra: tuple[str, ...] = (),
               hooks: bool = False) -> list[dict[str, Any]]:
        """The release's objects; with `hooks` also the `helm test` hook's."""
        out = self.template(release, "--namespace", namespace, "--include-crds", *extra,
                            values=values).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        return docs if hooks else [d for d in docs if not is_hook(d)]


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


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
    kinds = sorted(d["kind"] for d in docs if d["kind"] != "Secret")  # TLS: checked below
    assert kinds == sorted([
        "ClusterRole", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
        "DaemonSet", "Deployment", "Role", "RoleBinding",
        "Service", "Service", "Service", "ServiceAccount", "ServiceAccount",
    ]), kinds  # fmt: skip
    crd = one(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "salvagerecords.tote.dev"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert set(schema["spec"]["properties"]) == {
        "podName", "podUID", "digest", "imageRef", "sourceNode", "targetNode",
    }  # fmt: skip
    names = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    assert names == {"tote-controller", "tote-agent"}
    # The kill switch's ConfigMap is runtime state (`tote disable`/`tote enable`): never
    # rendered, so no upgrade or rollback can write it back; `enabled` is the --enabled default.
    assert not by_kind(docs, "ConfigMap")
    ctl_args = pod_spec(docs, "Deployment")["containers"][0]["args"]
    assert {"--enabled=true", "--config-map=tote-config"} <= set(ctl_args)
    assert "--enabled=false" in pod_spec(helm.render({"enabled": False}), "Deployment")[
        "containers"][0]["args"]
    # mTLS out of the box, issued by the controller (test_helm_tls.py): no key material in
    # the render; the agents mount the Secret the controller keeps, the controller writes its
    # own files into memory.
    assert not by_kind(docs, "Secret")
    (tls,) = [v for v in pod_spec(docs, "DaemonSet")["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "tote-agent-tls"
    (tls,) = [v for v in pod_spec(docs, "Deployment")["volumes"] if v["name"] == "tls"]
    assert tls["emptyDir"]["medium"] == "Memory"
    # Default image: what the offline build names the image, found with IfNotPresent.
    ctr = pod_spec(docs, "Deployment")["containers"][0]
    assert ctr["image"] == "ghcr.io/tote-dev/tote:0.1.0"
    assert ctr["imagePullPolicy"] == "IfNotPresent"
    assert "--pin-salvaged-images=true" in ctr["args"]  # salvaged images pinned by default
    # discarding nodes (EKS) are sources by default, their layers verified as they can be
    assert {"--snapshot-salvage=true", "--snapshot-salvage-strict=false"} <= set(ctr["args"])
    assert not by_kind(docs, "PodDisruptionBudget"), "one replica: no PDB that blocks drains"


def _rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in by_kind(docs, kind) for r in d.get("rules", [])]


def test_rbac_least_privilege(helm: Helm) -> None:
    docs = helm.render()
    rules = _rules(docs, "ClusterRole") + _rules(docs, "Role")
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"], r
        assert "*" not in r.get("apiGroups", []), r
    # Secrets: only the release's own certificates, read and renewed by name (create
    # cannot be limited to names).
    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    assert {tuple(r["verbs"]) for r in secret_rules} == {("create",), ("get", "update")}
    assert next(r for r in secret_rules if r["verbs"] != ["create"])["resourceNames"] == [
        "tote-ca", "tote-controller-tls", "tote-agent-tls"]
    cluster = {(g, res): set(r["verbs"]) for r in _rules(docs, "ClusterRole")
               for g in r["apiGroups"] for res in r["resources"]}  # fmt: skip
    assert cluster[("", "pods")] == {"list", "watch", "patch"}  # no delete: annotated
    assert cluster[("", "nodes")] == {"list", "watch"}
    assert cluster[("events.k8s.io", "events")] == {"create", "get", "patch"}
    assert cluster[("", "events")] == {"list", "watch"}  # kubelet's, read only
    assert cluster[("tote.dev", "salvagerecords/status")] == {"patch"}
    for owner in ("replicasets", "deployments", "statefulsets", "daemonsets"):
        assert cluster[("apps", owner)] == {"get"}
    (cm_rule,) = [r for r in _rules(docs, "Role") if "configmaps" in r["resources"]]
    assert cm_rule["resourceNames"] == ["tote-config"]
    full = helm.render({"registryResolve": {"enabled": True}})
    (sec,) = [r for r in _rules(full, "ClusterRole") if "secrets" in r["resources"]]
    assert "resourceNames" not in sec  # any pod's imagePullSecrets
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
        "--status-address=0.0.0.0:8082", "--admission-address=0.0.0.0:9555",
        "--admission-tls-cert=/etc/tote/tls/webhook.crt",
        "--admission-tls-key=/etc/tote/tls/webhook.key",
        "--admission-webhook-name=tote-system.tote",
        "--backup-registry=10.0.0.5:5000/salvaged", "--backup-registry-secret=backup-creds",
        "--backup-registry-insecure=false",
        "--backup-registry-ca=/etc/tote/backup-ca/bundle.pem", "--pin-salvaged-images=false",
        "--snapshot-salvage=true", "--snapshot-salvage-strict=true",
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
                      "ToteSalvageHappened", "ToteBackupPushFailures"}
    plain = helm.render({"metrics": {"prometheusRule": {"enabled": True}}})
    assert "ToteBackupPushFailures" not in json.dumps(one(plain, "PrometheusRule")["spec"])


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
    assert panels == ["Overview", "Detection", "Salvage", "Backup push", "Notifications",
                      "Latency", "Size"]


def test_network_policies_allow_tote_flows(helm: Helm) -> None:
    docs = helm.render({"networkPolicy": {"enabled": True}})
    pols = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    ctl, agent = pols["tote-controller"], pols["tote-agent"]

    def ports(rules: list[dict[str, Any]]) -> set[int]:
        return {p["port"] for r in rules for p in r.get("ports", [])}

    assert {443, 6443, 9090, 53} <= ports(ctl["egress"])
    assert ports(ctl["ingress"]) == {8080, 8081, 8082}
    assert ports(agent["ingress"]) == {9090, 9091, 9092}
    assert ports(agent["egress"]) == {9090, 9092, 53}
    grpc_in = next(r for r in agent["ingress"] if ports([r]) == {9090})
    comps = {f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
             for f in grpc_in["from"]}
    assert comps == {"controller", "agent"}
    data_in = next(r for r in agent["ingress"] if ports([r]) == {9092})
    assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for f in data_in["from"]] == ["agent"]


def test_webhook_issued_by_the_controller(helm: Helm) -> None:
    """Service and ValidatingWebhookConfiguration as the API server needs them; the serving
    certificate and the caBundle are the controller's to issue and keep current."""
    docs = helm.render(FULL_VALUES)
    (vwc,) = by_kind(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["name"] == "tote-system.tote"  # <namespace>.<fullname>
    (hook,) = vwc["webhooks"]
    assert hook["name"] == "annotations.tote.dev"
    assert hook["admissionReviewVersions"] == ["v1"] and hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Ignore" and hook["matchPolicy"] == "Equivalent"
    assert hook["timeoutSeconds"] == 10
    assert hook["clientConfig"]["service"] == {
        "name": "tote-webhook", "namespace": "tote-system", "path": "/validate", "port": 443}
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                              "operations": ["CREATE", "UPDATE"],
                              "resources": ["pods", "namespaces"]}]
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr == {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [
        "kube-system", "kube-public", "kube-node-lease", "legacy", "payments"]}
    svc = one(docs, "Service", "-webhook")
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "admission"}]
    ctr = pod_spec(docs, "Deployment")["containers"][0]
    assert {"name": "admission", "containerPort": 9555} in ctr["ports"]
    assert "caBundle" not in hook["clientConfig"] and not by_kind(docs, "Secret")
    assert "--admission-webhook-name=tote-system.tote" in ctr["args"]
    # Host network: the admission listener binds the node IP like metrics and health.
    hn = helm.render({**WEBHOOK_VALUES, "controller": {"hostNetwork": True}})
    assert "--admission-address=$(HOST_IP):9443" in pod_spec(hn, "Deployment")[
        "containers"][0]["args"]
    assert not by_kind(helm.render(), "ValidatingWebhookConfiguration"), "off by default"


def test_webhook_cert_manager(helm: Helm) -> None:
    docs = helm.render(VALUE_SETS["webhook-cert-manager"])
    (vwc,) = by_kind(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "tote-system/tote-webhook"}
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    cert = one(docs, "Certificate", "-webhook")
    assert cert["spec"]["secretName"] == "tote-webhook-tls"
    assert "tote-webhook.tote-system.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"]["name"] == "tote-ca"  # the chart's CA issuer
    assert not [d for d in by_kind(docs, "Secret") if "webhook" in d["metadata"]["name"]]


def test_status_service_matches_cli_defaults(helm: Helm) -> None:
    """`tote status` and `tote doctor` reach the default release with their defaults."""
    from tote_core.doctor.command import parse as doctor_parse
    from tote_core.status.command import parse as status_parse

    docs = helm.render(FULL_VALUES)
    st, doc = status_parse([]), doctor_parse([])
    svc = one(docs, "Service", "-controller")
    assert svc["metadata"]["name"] == st.service == doc.service
    assert svc["metadata"]["namespace"] == st.namespace == doc.namespace
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {st.port, doc.health_port} == {"status", "health"}
    assert ports["status"] == {"name": "status", "port": 8082, "targetPort": "status"}
    ctr = pod_spec(docs, "Deployment")["containers"][0]
    assert {"name": "status", "containerPort": 8082} in ctr["ports"]
    assert doc.webhook == one(docs, "ValidatingWebhookConfiguration")["metadata"]["name"]
    assert doc.service_account == "tote-controller" and doc.lease == "tote-controller"
    role = one(docs, "Role", "-status-viewer")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["services/proxy"],
                              "resourceNames": ["tote-controller:status"], "verbs": ["get"]}]
    binding = one(docs, "RoleBinding", "-status-viewer")
    assert binding["roleRef"]["name"] == "tote-status-viewer"
    assert binding["subjects"] == FULL_VALUES["statusViewers"]
    assert not [d for d in helm.render() if "status-viewer" in d["metadata"]["name"]]
    # Another release: the Role names that release's Service.
    other = helm.render(FULL_VALUES, release="edge")
    assert one(other, "Role", "-status-viewer")["rules"][0]["resourceNames"] == [
        "edge-tote-controller:status"]


def test_backup_secret_rule_and_egress(helm: Helm) -> None:
    values = {**FULL_VALUES, "agent": {"hostNetwork": False}}
    docs = helm.render(values)
    rules = [r for r in _rules(docs, "Role") if "secrets" in r["resources"]]
    assert {"apiGroups": [""], "resources": ["secrets"],
            "resourceNames": ["backup-creds"], "verbs": ["get"]} in rules
    assert one(docs, "Role", "-controller")["metadata"]["namespace"] == "tote-system"
    dep = pod_spec(docs, "Deployment")
    (vol,) = [v for v in dep["volumes"] if v["name"] == "backup-ca"]
    assert vol["configMap"]["name"] == "backup-ca"
    pols = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    for name in ("tote-controller", "tote-agent"):
        egress_ports = [{p["port"] for p in r["ports"]} for r in pols[name]["egress"]]
        assert {443, 80, 5000} in egress_ports, (name, egress_ports)
    # The API server (apiServerCIDRs) may reach status, health and admission, nobody else.
    (api_in,) = [r for r in pols["tote-controller"]["ingress"]
                 if {p["port"] for p in r["ports"]} == {8081, 8082, 9555}]
    assert api_in["from"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    # Without a Secret: no backup Secret access; without backup: no agent registry egress.
    anon = helm.render({"backup": {"registry": "registry.local"}})
    assert not [r for r in _rules(anon, "Role") if "backup-creds" in r.get("resourceNames", [])]
    plain = helm.render({"networkPolicy": {"enabled": True}})
    agent_pol = one(plain, "NetworkPolicy", "-agent")["spec"]
    assert {p["port"] for r in agent_pol["egress"] for p in r["ports"]} == {9090, 9092, 53}


def test_notifications(helm: Helm) -> None:
    """Flags only with a URL; the signing key is the one Secret key, mounted read-only where no
    other volume is; the controller may reach the URL's port (written, else by scheme)."""
    docs = helm.render({**FULL_VALUES, "agent": {"hostNetwork": False}})
    dep = pod_spec(docs, "Deployment")
    ctr = dep["containers"][0]
    ours = [a for a in ctr["args"] if a.startswith("--webhook-")]
    assert ours == ["--webhook-url=https://hooks.example.com:8443/tote?team=platform&x=1",
                    "--webhook-events=failed,pushed", "--webhook-format=slack",
                    "--webhook-secret-file=/etc/tote/webhook-signing/signing-key"]
    (vol,) = [v for v in dep["volumes"] if v["name"] == "webhook-signing"]
    assert vol["secret"]["secretName"] == "tote-webhook-signing"
    assert vol["secret"]["items"] == [{"key": "hmac", "path": "signing-key"}]
    (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "webhook-signing"]
    assert mount == {"name": "webhook-signing", "mountPath": "/etc/tote/webhook-signing",
                     "readOnly": True}
    # No mount shadows another (the issued webhook certificate lives in /etc/tote/tls).
    paths = [m["mountPath"] + "/" for m in ctr["volumeMounts"]]
    assert "/etc/tote/tls/" in paths and "/etc/tote/webhook-tls/" not in paths
    assert not [(a, b) for a in paths for b in paths if a != b and b.startswith(a)], paths
    pols = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    ctl_egress = [{p["port"] for p in r["ports"]} for r in pols["tote-controller"]["egress"]]
    assert {8443} in ctl_egress, ctl_egress
    agent_egress = {p["port"] for r in pols["tote-agent"]["egress"] for p in r["ports"]}
    assert 8443 not in agent_egress, "only the controller sends notifications"
    # No port in the URL: the scheme's; every event and no key: only URL and format.
    for url, port in (("https://hooks.slack.com/services/T/B/X", 443),
                      ("http://receiver.monitoring/hook", 80),
                      ("http://[fd00::5]:9000/hook", 9000)):
        plain = helm.render({"notifications": {"webhookUrl": url},
                             "networkPolicy": {"enabled": True}})
        dep = pod_spec(plain, "Deployment")
        assert [a for a in dep["containers"][0]["args"] if a.startswith("--webhook-")] == [
            f"--webhook-url={url}", "--webhook-format=json"]
        assert "webhook-signing" not in {v["name"] for v in dep["volumes"]}
        egress = [{p["port"] for p in r["ports"]}
                  for r in one(plain, "NetworkPolicy", "-controller")["spec"]["egress"]]
        assert {port} in egress, (url, egress)
    # Off by default: no flag, no volume, no egress beyond tote's own flows.
    off = helm.render({"networkPolicy": {"enabled": True}})
    dep = pod_spec(off, "Deployment")
    assert not [a for a in dep["containers"][0]["args"] if a.startswith("--webhook-")]
    assert "webhook-signing" not in {v["name"] for v in dep["volumes"]}
    egress = {p["port"] for r in one(off, "NetworkPolicy", "-controller")["spec"]["egress"]
              for p in r["ports"]}
    assert egress == {443, 6443, 9090, 53}


@pytest.mark.parametrize(("values", "needle"), [
    (["--set", "controller.replicas=abc"], "replicas"),
    (["--set", "controller.replicas=0"], "replicas"),
    (["--set", "controller.logFormat=xml"], "logFormat"),
    (["--set", "agent.grpcPort=70000"], "grpcPort"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "controller.maxImageSize=lots"], "maxImageSize"),
    (["--set", "controller.salvageRecordTTL=1week"], "salvageRecordTTL"),
    (["--set", "controller.pinSalvagedImages=sometimes"], "pinSalvagedImages"),
    (["--set", "snapshotSalvage.enabled=maybe"], "snapshotSalvage"),
    (["--set", "snapshotSalvage.enabled=false", "--set", "snapshotSalvage.strict=true"],
     "snapshotSalvage"),  # strict narrows snapshot salvage: it needs it on
    (["--set", "agent.containerdSocket=relative.sock"], "containerdSocket"),
    (["--set", "controller.registryResolve=true"], "registryResolve"),  # old spelling
    (["--set", "backupRegistry.host=b.example"], "backupRegistry"),  # the spelling is backup.*
    (["--set", "notifications.webhookUrl=ftp://hooks.example"], "/notifications/webhookUrl"),
    (["--set", "notifications.webhookUrl=hooks.example/x"], "/notifications/webhookUrl"),
    (["--set", "notifications.webhookUrl=https://x", "--set",
      "notifications.events={detected,salvage}"], "/notifications/events/1"),
    (["--set", "notifications.webhookUrl=https://x", "--set", "notifications.format=teams"],
     "/notifications/format"),
    (["--set", "notifications.webhookUrl=https://x", "--set",
      "notifications.signingSecret.name=sig"], "/notifications/signingSecret/key"),
    (["--set", "notifications.webhookUrl=https://x", "--set",
      "notifications.signingSecret.key=hmac"], "/notifications/signingSecret/name"),
    (["--set", "notifications.webhookUrl=https://x", "--set",
      "notifications.signingSecret.name=Bad_Name", "--set", "notifications.signingSecret.key=k"],
     "/notifications/signingSecret/name"),
    (["--set", "notifications.webhookUrl=https://x", "--set", "notifications.secret=s"],
     "secret"),  # not a value
    (["--set", "notifications.events={failed}"], "need notifications.webhookUrl"),
    (["--set", "notifications.format=slack"], "need notifications.webhookUrl"),
    (["--set", "notifications.signingSecret.name=sig", "--set",
      "notifications.signingSecret.key=k"], "need notifications.webhookUrl"),
    (["--set", "notifications.webhookUrl=https://x", "--set", "plugins.disabled={notify}"],
     "the built-in plugin notify is now called webhook"),
    (["--set", "agent.metricsPort=9090"], "three different ports"),
    (["--set", "webhook.timeoutSeconds=31"], "timeoutSeconds"),
    (["--set", "webhook.timeoutSeconds=0"], "timeoutSeconds"),
    (["--set", "webhook.port=70000"], "/webhook/port"),
    (["--set", "webhook.failurePolicy=Fail"], "failurePolicy"),  # fixed: Ignore
    (["--set", "webhook.enabled=true", "--set", "webhook.port=8081"], "must all differ"),
    (["--set", "controller.statusPort=8080"], "must all differ"),
    (["--set", "controller.hostNetwork=true", "--set", "agent.hostNetwork=true",
      "--set", "controller.statusPort=9091"], "must differ from the agent's ports"),
    (["--set", "statusViewers[0].kind=Robot", "--set", "statusViewers[0].name=x"],
     "statusViewers"),
    (["--set", "statusViewers[0].kind=ServiceAccount", "--set", "statusViewers[0].name=x"],
     "namespace"),
    (["--set", "backup.registry=https://registry.example"], "registry"),
    (["--set", "backup.registry=Registry.example/UPPER"], "registry"),
    (["--set", "backup.secretName=creds"], "need backup.registry"),
    (["--set", "backup.insecure=true"], "need backup.registry"),
    (["--set", "backup.registry=r.example", "--set", "plugins.disabled={backup}"],
     "backup.registry needs the backup plugin"),
    (["--set", "registryResolve.enabled=true", "--set", "plugins.disabled={registry}"],
     "registryResolve.enabled needs the registry plugin"),
    (["--set", "notifications.webhookUrl=https://h.example/x", "--set",
      "plugins.disabled={webhook}"], "notifications.webhookUrl needs the webhook plugin"),
    (["--set", "plugins.disabled={containerd}"], "the built-in plugin containerd is now "
                                                 "called agent"),
    (["--set", "backup.registry=r.example", "--set", "backup.secretName=Bad_Name"],
     "secretName"),
    (["--set", "apiServer.host=10.0.0.1"], "set both or neither"),
    (["--set", "tls.existingSecret=x", "--set", "tls.certManager.enabled=true"], "pick one"),
    # nested blocks: typos and impossible shapes fail where they are
    (["--set", "agent.tolerations[0].operator=Exists", "--set",
      "agent.tolerations[0].effects=NoSchedule"], "/agent/tolerations/0"),  # typo
    (["--set", "controller.tolerations[0].key=a", "--set",
      "controller.tolerations[0].operator=Matches"], "/controller/tolerations/0/operator"),
    (["--set", "controller.tolerations[0].key=a", "--set",
      "controller.tolerations[0].effect=NoScheduled"], "/controller/tolerations/0/effect"),
    (["--set", "controller.tolerations[0].key=a", "--set",
      "controller.tolerations[0].operator=Exists", "--set",
      "controller.tolerations[0].value=x"], "/controller/tolerations/0/value"),
    (["--set", "controller.tolerations[0].operator=Equal", "--set",
      "controller.tolerations[0].value=x"], "/controller/tolerations/0"),  # no key: Exists
    (["--set", "controller.tolerations[0].key=a", "--set",
      "controller.tolerations[0].tolerationSeconds=5"], "/controller/tolerations/0"),
    (["--set", "controller.resources.requests.cpu=lots"], "/controller/resources/requests/cpu"),
    (["--set", "agent.resources.limits.memory=1 GB"], "/agent/resources/limits/memory"),
    (["--set", "agent.resources.limit.memory=1Gi"], "/agent/resources"),  # typo
    (["--set", "controller.resources.requests.gpu=1"], "invalid propertyName 'gpu'"),
    (["--set", "controller.affinity.nodeAfinity.x=y"], "/controller/affinity"),  # typo
    (["--set", "agent.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
      ".nodeSelectorTerms[0].matchExpressions[0].operator=Within"], "/agent/affinity"),
    (["--set", "controller.nodeSelector.Bad Key=x"], "invalid propertyName 'Bad Key'"),
    (["--set", "controller.topologySpreadConstraints[0].maxSkew=1", "--set",
      "controller.topologySpreadConstraints[0].topologyKey=zone", "--set",
      "controller.topologySpreadConstraints[0].whenUnsatisfiable=Never"],
     "/controller/topologySpreadConstraints/0/whenUnsatisfiable"),
    (["--set", "controller.priorityClassName=High_Priority"], "/controller/priorityClassName"),
    (["--set", "agent.podLabels.app\\.kubernetes\\.io/component=x"],
     "agent.podLabels.app.kubernetes.io/component"),  # would break the DaemonSet's selector
    (["--set", "controller.podLabels.team=not a value"], "/controller/podLabels"),
    (["--set", "controller.extraEnv[0].value=x"], "/controller/extraEnv/0"),  # no name
    (["--set", "agent.extraEnv[0].name=NODE_NAME", "--set", "agent.extraEnv[0].value=x"],
     "NODE_NAME is set by the chart"),
    (["--set", "agent.extraEnv[0].name=A", "--set", "agent.extraEnv[1].name=A"],
     "A is listed twice"),
    (["--set", "controller.extraEnv[0].name=A", "--set", "controller.extraEnv[0].value=x",
      "--set", "controller.extraEnv[0].valueFrom.fieldRef.fieldPath=status.podIP"],
     "/controller/extraEnv/0"),  # value and valueFrom
    (["--set", "image.digest=sha256:abc"], "/image/digest"),
    (["--set", "image.digest=" + "a" * 64], "/image/digest"),  # algorithm missing
    (["--set", "fullnameOverride=" + "t" * 50], "/fullnameOverride"),
    (["--set", "fullnameOverride=1tote"], "/fullnameOverride"),
    (["--set", "podSecurity.check=false"], "/podSecurity"),
    (["--set", "networkPolicy.enabled=true", "--set",
      "networkPolicy.metricsFrom[0].podSelectr.x=y"], "/networkPolicy/metricsFrom/0"),
], ids=lambda v: v[1] if isinstance(v, list) else None)
def test_bad_values_are_rejected(helm: Helm, values: list[str], needle: str) -> None:
    res = helm.template("tote", *values, check=False)
    assert res.returncode != 0, f"{values} rendered:\n{res.stdout[:500]}"
    assert needle in res.stderr, res.stderr


def test_good_values_still_pass_the_schema(helm: Helm) -> None:
    """Every shape the values.yaml comments show, and the API's own forms, still render."""
    ok = {"controller": {
        "tolerations": [{"operator": "Exists"}, {"key": "a", "operator": "Exists"},
                        {"key": "a", "value": "b"}, {"key": "a", "effect": "NoExecute",
                                                     "tolerationSeconds": 0}],
        "resources": {"requests": {"cpu": "100m", "memory": "1.5Gi",
                                   "ephemeral-storage": "1e9", "example.com/gpu": 1},
                      "limits": {"cpu": 2, "memory": 268435456, "hugepages-2Mi": "8Mi"}},
        "nodeSelector": {"kubernetes.io/os": None, "node-role.kubernetes.io/infra": ""},
    }}  # fmt: skip
    docs = helm.render(ok)
    spec = pod_spec(docs, "Deployment")
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/infra": ""}  # null removes
    assert spec["containers"][0]["resources"]["limits"]["cpu"] == 2


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


# --------------------------------------------------------------------------- names

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Helm's own limit on release names (and a namespace name is a DNS label: 63).
LONG_RELEASE = "r" + "e" * 51 + "a"
LONG_NAMESPACE = "n" + "s" * 61 + "z"


def _labels_ok(labels: dict[str, str], where: str) -> None:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        assert len(name) <= 63 and LABEL_NAME.match(name), (where, key)
        assert not prefix or (len(prefix) <= 253 and DNS1123_SUBDOMAIN.match(prefix)), key
        assert len(value) <= 63 and LABEL_VALUE.match(value), (where, key, value)


def _names_valid(docs: list[dict[str, Any]]) -> None:
    """What the API server checks of names: Services are DNS-1035 labels (63), everything
    else here a DNS-1123 subdomain (253); label keys and values (63) on objects and pod
    templates; the Service a webhook or a proxy rule names is a Service name too."""
    for d in docs:
        name, kind = d["metadata"]["name"], d["kind"]
        if kind == "Service":
            assert len(name) <= 63 and DNS1035.match(name), (kind, name, len(name))
        else:
            assert len(name) <= 253 and DNS1123_SUBDOMAIN.match(name), (kind, name)
        _labels_ok(d["metadata"].get("labels") or {}, f"{kind}/{name}")
        template = d.get("spec", {}).get("template", {}).get("metadata", {})
        _labels_ok(template.get("labels") or {}, f"{kind}/{name} pod template")
        for hook in d.get("webhooks", []):
            svc = hook["clientConfig"]["service"]["name"]
            assert len(svc) <= 63 and DNS1035.match(svc), svc


def test_cluster_scoped_names_are_injective(helm: Helm) -> None:
    """Release tote in a-b and release tote-a in b once both got ClusterRole
    tote-a-b-controller. Now <namespace>.<fullname>: the first dot splits them again."""
    full = {**FULL_VALUES, "agent": {"hostNetwork": False}}
    a = helm.render(full, release="tote", namespace="a-b", hooks=True)
    b = helm.render(full, release="tote-a", namespace="b", hooks=True)
    sa, sb = _cluster_scoped(a), _cluster_scoped(b)
    assert ("ClusterRole", "a-b.tote-controller") in sa
    assert ("ClusterRole", "b.tote-a-controller") in sb
    assert len(sa) == len(sb) >= 6 and not (sa & sb), (sa, sb)  # roles, bindings, webhook
    # In one namespace: release "a" and release "a-tote" no longer share <fullname> "a-tote".
    one_ns = [helm.render(full, release=r, namespace="x", hooks=True) for r in ("a", "a-tote")]
    names = [{(d["kind"], d["metadata"]["name"]) for d in docs
              if d["kind"] != "CustomResourceDefinition"} for docs in one_ns]
    assert not (names[0] & names[1]), names[0] & names[1]
    assert ("Deployment", "a-tote-controller") in names[0]
    assert ("Deployment", "a-tote-tote-controller") in names[1]
    # The default release keeps its names (the CLI defaults and docs use them).
    assert {d["metadata"]["name"] for d in by_kind(helm.render(), "Deployment")} == {
        "tote-controller"}


def test_long_release_names_are_valid(helm: Helm) -> None:
    """A 53-character release (Helm's maximum) in a 63-character namespace: every name is
    one the API server takes, and two such releases differing in the last character stay
    apart (the cut name carries a hash of the whole)."""
    full = {**FULL_VALUES, "agent": {"hostNetwork": False}}
    assert len(LONG_RELEASE) == 53 and len(LONG_NAMESPACE) == 63
    docs = helm.render(full, release=LONG_RELEASE, namespace=LONG_NAMESPACE, hooks=True)
    _names_valid(docs)
    services = {d["metadata"]["name"] for d in by_kind(docs, "Service")}
    assert max(map(len, services)) == 63, services  # <fullname: 49>-agent-metrics
    other = helm.render(full, release=LONG_RELEASE[:-1] + "b", namespace=LONG_NAMESPACE,
                        hooks=True)
    ours = {(d["kind"], d["metadata"]["name"]) for d in docs
            if d["kind"] != "CustomResourceDefinition"}
    assert not (ours & {(d["kind"], d["metadata"]["name"]) for d in other})
    # Every other value set with the default release stays valid too.
    for values in VALUE_SETS.values():
        _names_valid(helm.render(values, hooks=True))
    # The controller still finds its agents: the selector's instance label is the release.
    args = pod_spec(docs, "Deployment")["containers"][0]["args"]
    assert f"--agent-selector=app.kubernetes.io/name=tote,app.kubernetes.io/instance=" \
           f"{LONG_RELEASE},app.kubernetes.io/component=agent" in args


@pytest.mark.parametrize("release", ["tote.prod", "1tote"])
def test_release_names_that_cannot_name_services_are_refused(helm: Helm, release: str) -> None:
    res = helm.template(release, check=False)
    assert res.returncode != 0 and "DNS-1035" in res.stderr, res.stderr


def test_apiserver_accepts_long_release(helm: Helm, control_plane: ControlPlane,
                                        foreign_crds: None) -> None:
    docs = helm.render({**FULL_VALUES, "agent": {"hostNetwork": False}},
                       release=LONG_RELEASE, namespace=control_plane.namespace, hooks=True)
    res = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), check=False)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- pods


def test_pod_scheduling_defaults(helm: Helm) -> None:
    """Both pods run on Linux nodes of the image's architectures; the agent is a
    node-critical daemon; controller replicas prefer different nodes."""
    docs = helm.render()
    arch = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{
            "key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]}}}
    for kind in ("Deployment", "DaemonSet"):
        spec = pod_spec(docs, kind)
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}, kind
        assert spec["affinity"] == arch, kind
    assert pod_spec(docs, "DaemonSet")["priorityClassName"] == "system-node-critical"
    assert "priorityClassName" not in pod_spec(docs, "Deployment")
    assert pod_spec(docs, "DaemonSet")["tolerations"] == [{"operator": "Exists"}]
    (spread,) = pod_spec(docs, "Deployment")["topologySpreadConstraints"]
    assert spread == {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                      "whenUnsatisfiable": "ScheduleAnyway",
                      "matchLabelKeys": ["pod-template-hash"],
                      "labelSelector": {"matchLabels": {
                          "app.kubernetes.io/name": "tote", "app.kubernetes.io/instance": "tote",
                          "app.kubernetes.io/component": "controller"}}}
    assert "topologySpreadConstraints" not in pod_spec(docs, "DaemonSet")
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.34.0-0"
    old = helm.run("template", "tote", str(CHART_DIR), "--kube-version", "1.33.0",
                   check=False)
    assert old.returncode != 0 and ">=1.34.0-0" in old.stderr


def test_pod_extras_rendered(helm: Helm) -> None:
    docs = helm.render(POD_EXTRAS_VALUES)
    ctl, agent = pod_spec(docs, "Deployment"), pod_spec(docs, "DaemonSet")
    repo = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["image"]["repository"]
    image = f"{repo}:0.1.0@sha256:" + "ab" * 32
    assert ctl["containers"][0]["image"] == agent["containers"][0]["image"] == image
    digest_only = helm.render({"image": {"digest": "sha256:" + "cd" * 32}})
    assert pod_spec(digest_only, "DaemonSet")["containers"][0]["image"] == \
        f"{repo}@sha256:" + "cd" * 32
    assert ctl["priorityClassName"] == "system-cluster-critical"
    assert "priorityClassName" not in agent  # "" turns the default off
    for kind, spec in (("Deployment", ctl), ("DaemonSet", agent)):
        dep = one(docs, kind)
        labels = spec and dep["spec"]["template"]["metadata"]["labels"]
        assert labels["example.com/team"] == "platform"
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    env = ctl["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names[:2] == ["POD_NAME", "POD_NAMESPACE"]  # the chart's own first
    assert names[-3:] == ["HTTPS_PROXY", "NO_PROXY", "MY_POD_IP"]
    assert {"name": "TZ", "value": "UTC"} in agent["containers"][0]["env"]
    assert agent["nodeSelector"] == {"kubernetes.io/os": "linux",
                                     "example.com/pool": "general"}  # merged with the default
    assert ctl["tolerations"] == POD_EXTRAS_VALUES["controller"]["tolerations"]
    # a user's affinity keeps the default arch rule beside it (maps merge)
    assert set(ctl["affinity"]) == {"nodeAffinity", "podAntiAffinity"}
    (spread,) = ctl["topologySpreadConstraints"]  # the user's list replaces the default
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "controller"


# --------------------------------------------------------------------------- RBAC for people


def test_view_role_aggregates_salvagerecords(helm: Helm) -> None:
    """`kubectl get salvagerecords -A` (NOTES) works for view, edit and admin: a read-only
    ClusterRole aggregated into view (which edit and admin aggregate in turn)."""
    docs = helm.render()
    view = one(docs, "ClusterRole", "-view")
    assert view["metadata"]["name"] == "tote-system.tote-view"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert view["rules"] == [{"apiGroups": ["tote.dev"], "resources": ["salvagerecords"],
                              "verbs": ["get", "list", "watch"]}]
    assert not [d for d in helm.render({"rbac": {"aggregateToView": False}})
                if d["metadata"]["name"].endswith("-view")]
    assert not by_kind(helm.render({"rbac": {"create": False}}), "ClusterRole")


# --------------------------------------------------------------------------- helm test


def _hooks(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs if is_hook(d)}


@pytest.mark.parametrize("name", ["minimal", "full", "tls-off", "tls-existing-secret"])
def test_helm_test_hook_runs_doctor(helm: Helm, name: str) -> None:
    """`helm test` runs `tote doctor` with the arguments NOTES prints, as a ServiceAccount
    of its own, restricted Pod Security, and deletes everything once it passed."""
    from tote_core.doctor.command import parse as doctor_parse

    values = VALUE_SETS[name]
    docs = helm.render(values, hooks=True)
    hooks = _hooks(docs)
    assert set(hooks) == {"ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                          "ClusterRoleBinding", "Pod"}
    for d in hooks.values():
        ann = d["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "test"
        assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    pod = hooks["Pod"]
    spec = pod["spec"]
    (ctr,) = spec["containers"]
    assert ctr["args"][0] == "doctor"
    doc = doctor_parse(ctr["args"][1:])
    tls = (values or {}).get("tls", {})
    assert doc.namespace == "tote-system" and doc.service == "tote-controller"
    assert doc.lease == "tote-controller" and doc.service_account == "tote-controller"
    assert doc.webhook == "tote-system.tote" and doc.settings.config_map == "tote-config"
    assert doc.tls_secret == ("" if tls.get("enabled") is False else
                              tls.get("existingSecret", "tote-controller-tls"))
    # No identity: the agent rows come from the controller, as NOTES's command does.
    assert not (doc.settings.insecure or doc.settings.tls_cert
                or doc.loaded.plugin_settings["agent"].endpoints)
    assert spec["serviceAccountName"] == hooks["ServiceAccount"]["metadata"]["name"]
    assert spec["restartPolicy"] == "Never"
    # Pod Security "restricted"
    psc, csc = spec["securityContext"], ctr["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
    assert not [v for v in spec.get("volumes", []) if "hostPath" in v]
    # What doctor reads, by name, and nothing it does not.
    role = {(r["apiGroups"][0], r["resources"][0]): (r["verbs"], r.get("resourceNames"))
            for r in hooks["Role"]["rules"]}
    want = {("coordination.k8s.io", "leases"): (["get"], ["tote-controller"]),
            ("", "services/proxy"): (["get"], ["tote-controller:health"]),
            ("", "configmaps"): (["get"], ["tote-config"])}
    if doc.tls_secret:
        want[("", "secrets")] = (["get"], [doc.tls_secret])
    if (values or {}).get("webhook", {}).get("enabled"):
        want[("", "services")] = (["get"], ["tote-webhook"])
    assert role == want
    cluster = {(r["apiGroups"][0], r["resources"][0]): (r["verbs"], r.get("resourceNames"))
               for r in hooks["ClusterRole"]["rules"]}
    assert cluster == {
        ("apiextensions.k8s.io", "customresourcedefinitions"):
            (["get"], ["salvagerecords.tote.dev"]),
        ("authorization.k8s.io", "subjectaccessreviews"): (["create"], None),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"):
            (["get"], ["tote-system.tote"])}  # fmt: skip


def test_notes_print_the_hook_command(helm: Helm, control_plane: ControlPlane,
                                      tmp_path: Path) -> None:
    """NOTES (rendered by `helm install --dry-run=server` against a real API server) print
    exactly the doctor arguments the test Pod runs, the kill-switch commands, the view role,
    and the Pod Security hint; a namespace that enforces baseline is refused up front."""
    cp = control_plane
    env = {**helm.env, "KUBECONFIG": str(cp.admin_kubeconfig)}

    def dry_run(namespace: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(helm.binary), "install", "tote", str(CHART_DIR), "-n",
                               namespace, "--dry-run=server", *extra],
                              capture_output=True, text=True, env=env, timeout=120)

    # (not the harness's namespace: it holds the chart's RBAC objects outside any release)
    free = "tote-notes"
    cp.kubectl("create", "namespace", free, check=False)
    res = dry_run(free, "--set", "enabled=false")
    assert res.returncode == 0, res.stderr
    notes = res.stdout.split("NOTES:", 1)[1]
    docs = [d for d in yaml.safe_load_all(res.stdout.split("NOTES:", 1)[0]
                                          .split("HOOKS:", 1)[1]) if d]
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    args = pod["spec"]["containers"][0]["args"]
    assert f"tote {' '.join(args)}" in notes, notes
    assert f"helm test tote -n {free}" in notes
    assert f"tote enable -n {free} --config-map tote-config" in notes
    assert "tote disable" in notes and "patch configmap" not in notes
    assert f"ClusterRole {free}.tote-view" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    # A namespace enforcing baseline: the agent could never start, so nothing is installed.
    ns = "tote-psa-baseline"
    cp.kubectl("create", "namespace", ns, check=False)
    cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=baseline",
               "--overwrite")
    try:
        refused = dry_run(ns)
        assert refused.returncode != 0
        assert f'namespace {ns} enforces Pod Security "baseline"' in refused.stderr
        assert f"kubectl label namespace {ns} pod-security.kubernetes.io/enforce=privileged" \
            in refused.stderr
        assert dry_run(ns, "--set", "podSecurity.checkNamespace=false").returncode == 0
    finally:
        cp.kubectl("delete", "namespace", ns, free, "--wait=false", check=False)


def test_hook_rbac_lets_doctor_read_everything(helm: Helm, control_plane: ControlPlane,
                                               tmp_path: Path) -> None:
    """Run the real `tote doctor` with the hook Pod's arguments as the hook's ServiceAccount
    against a real API server: no row is refused by RBAC. (No controller runs here, so the
    lease, /readyz and agent rows fail for that reason, never for "forbidden".)"""
    cp = control_plane
    docs = helm.render({"webhook": {"enabled": True}}, namespace=cp.namespace, hooks=True)
    hooks = _hooks(docs)
    rbac = [hooks[k] for k in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                               "ClusterRoleBinding")]
    cp.apply(rbac)
    try:
        sa = hooks["ServiceAccount"]["metadata"]["name"]
        token = cp.kubectl("create", "token", sa, "-n", cp.namespace).stdout.strip()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server=cp.server,
                                      ca_file=cp.ca_file, user=f"system:serviceaccount:"
                                      f"{cp.namespace}:{sa}", token=token)
        args = hooks["Pod"]["spec"]["containers"][0]["args"]

        def doctor() -> list[dict[str, Any]]:
            res = subprocess.run([sys.executable, "-m", "tote_core.cli", *args, "--json",
                                  f"--kubeconfig={kubeconfig}"], capture_output=True,
                                 text=True, timeout=120, cwd=CHART_DIR.parents[2])
            assert res.stdout.strip(), res.stderr
            return json.loads(res.stdout)  # type: ignore[no-any-return]

        def forbidden(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in rows if "forbidden" in r["detail"].lower()]

        wait_until(lambda: not forbidden(doctor()), timeout=30, what="hook RBAC in force")
        rows = doctor()
        checks = {r["check"] for r in rows}
        assert {"crd", "rbac", "webhook", "certificate"} <= checks, rows
        assert [r["status"] for r in rows if r["check"] == "crd"] == ["ok"]
        # the rbac row itself ran (SubjectAccessReviews were allowed)
        (rbac_row,) = [r for r in rows if r["check"] == "rbac"]
        assert "cannot review access" not in rbac_row["detail"], rbac_row
    finally:
        for d in reversed(rbac):
            cp.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "-n",
                       cp.namespace, "--ignore-not-found")
