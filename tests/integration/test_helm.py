"""The chart lints, renders, rejects bad values, and what it renders is accepted by a real
apiserver (value matrix: minimal, full, TLS-only, dashboard-only, plus the test harness's set).

What the pods would do with the rendered arguments is checked in test_helm_pods.py.

Over 400 lines on purpose: one module for the chart's rendering, so every values case sits
beside the matrix it belongs to.
"""

from __future__ import annotations

import base64
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
        "--status-address=0.0.0.0:8082", "--admission-address=0.0.0.0:9555",
        "--admission-tls-cert=/etc/tote/webhook-tls/tls.crt",
        "--admission-tls-key=/etc/tote/webhook-tls/tls.key",
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


def test_webhook_self_generated(helm: Helm) -> None:
    """Service, Secret and ValidatingWebhookConfiguration as the API server needs them."""
    from cryptography import x509

    docs = helm.render(FULL_VALUES)
    (vwc,) = by_kind(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["name"] == "tote-tote-system"  # per release and namespace
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
    secret = one(docs, "Secret", "-webhook-tls")
    assert secret["data"]["ca.crt"] == hook["clientConfig"]["caBundle"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "tote-webhook.tote-system.svc" in sans.get_values_for_type(x509.DNSName)
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
    (rule,) = [r for r in _rules(docs, "Role") if "secrets" in r["resources"]]
    assert rule == {"apiGroups": [""], "resources": ["secrets"],
                    "resourceNames": ["backup-creds"], "verbs": ["get"]}
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
    # Without a Secret: no Secret access at all; without backup: no agent registry egress.
    anon = helm.render({"backup": {"registry": "registry.local"}})
    assert not [r for r in _rules(anon, "Role") if "secrets" in r["resources"]]
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
    # No mount (the admission webhook's /etc/tote/webhook-tls among them) shadows another.
    paths = [m["mountPath"] + "/" for m in ctr["volumeMounts"]]
    assert "/etc/tote/webhook-tls/" in paths
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
     "notify plugin"),
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
    (["--set", "backup.registry=r.example", "--set", "plugins.disabled={registry}"],
     "registry plugin"),
    (["--set", "backup.registry=r.example", "--set", "backup.secretName=Bad_Name"],
     "secretName"),
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
