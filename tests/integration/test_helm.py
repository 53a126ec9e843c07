"""The chart lints, renders, and what it renders is accepted by a real apiserver."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import CHART_DIR, ControlPlane

FULL_VALUES = {
    "enabled": True,
    "controller": {
        "replicas": 2,
        "logFormat": "json",
        "logLevel": "debug",
        "denyNamespaces": ["legacy", "payments"],
        "salvageOnAuthFailure": True,
        "maxImageSize": "0",
        "registryResolve": True,
        "extraArgs": ["--workers=8"],
    },
    "agent": {"logFormat": "json", "probes": {"enabled": False}},
    "backupRegistry": {"host": "backup.example:5000/salvaged", "secret": "backup-creds",
                       "insecure": True},
    "notifications": {"webhookUrl": "https://hooks.example/x", "events": ["salvaged", "failed"],
                      "format": "slack"},
    "plugins": {"disabled": ["inheritance"]},
}  # fmt: skip


@pytest.fixture(scope="module")
def helm(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, values: dict[str, Any] | None = None) -> str:
        argv = [str(k8s_bin_dir / "helm"), *args]
        if values is not None:
            vf = home / "values.json"
            vf.write_text(json.dumps(values))
            argv += ["-f", str(vf)]
        res = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert res.returncode == 0, f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    return run


def render(helm: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = helm(
        "template", "tote", str(CHART_DIR), "--namespace", "tote-system", "--include-crds",
        values=values,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["minimal", "full"])
def test_lint(helm: Any, values: dict[str, Any] | None) -> None:
    helm("lint", str(CHART_DIR), "--strict", values=values)


def test_minimal_render(helm: Any) -> None:
    docs = render(helm)
    kinds = sorted(d["kind"] for d in docs)
    for want in (
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
        "DaemonSet", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount",
    ):  # fmt: skip
        assert want in kinds
    (crd,) = by_kind(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "salvagerecords.tote.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert set(schema["spec"]["properties"]) == {
        "podName", "podUID", "digest", "imageRef", "sourceNode", "targetNode",
    }  # fmt: skip
    status = schema["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Transferring", "Completed", "Failed"]
    for f in ("bytesTotal", "bytesTransferred"):
        assert status[f] == {"type": "integer", "format": "int64", "minimum": 0}
    for f in ("startedAt", "completedAt", "lastAttemptAt"):
        assert status[f]["format"] == "date-time"
    assert status["conditions"]["type"] == "array"
    names = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    assert names == {"tote-controller", "tote-agent"}
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["name"] == "tote-config" and cm["data"] == {"enabled": "true"}


def _rules(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for d in by_kind(docs, kind) for r in d.get("rules", [])]


def test_rbac_least_privilege(helm: Any) -> None:
    docs = render(helm)
    rules = _rules(docs, "ClusterRole") + _rules(docs, "Role")
    for r in rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"], r
        assert "*" not in r.get("apiGroups", []), r
    assert not [r for r in rules if "secrets" in r["resources"]], "no Secret access by default"
    cluster = {(g, res): set(r["verbs"]) for r in _rules(docs, "ClusterRole")
               for g in r["apiGroups"] for res in r["resources"]}  # fmt: skip
    assert cluster[("", "pods")] == {"get", "list", "watch", "delete", "patch"}
    assert cluster[("", "nodes")] == {"get", "list", "watch"}
    assert cluster[("", "namespaces")] == {"get", "list", "watch"}
    assert {"create", "patch"} <= cluster[("", "events")]
    assert {"create", "patch"} <= cluster[("events.k8s.io", "events")]
    assert cluster[("tote.dev", "salvagerecords/status")] >= {"get", "update", "patch"}
    for owner in ("replicasets", "deployments", "statefulsets", "daemonsets"):
        assert cluster[("apps", owner)] == {"get"}
    for owner in ("jobs", "cronjobs"):
        assert cluster[("batch", owner)] == {"get"}
    (cm_rule,) = [r for r in _rules(docs, "Role") if "configmaps" in r["resources"]]
    assert cm_rule["resourceNames"] == ["tote-config"]


def test_backup_secret_is_one_named_secret(helm: Any) -> None:
    docs = render(helm, {"backupRegistry": {"host": "b.example", "secret": "backup-creds"}})
    secret_rules = [r for r in _rules(docs, "Role") if "secrets" in r["resources"]]
    assert secret_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["backup-creds"],
         "verbs": ["get"]}
    ]  # fmt: skip
    assert not [r for r in _rules(docs, "ClusterRole") if "secrets" in r["resources"]]


def test_full_values_reach_the_controller_args(helm: Any) -> None:
    docs = render(helm, FULL_VALUES)
    (dep,) = by_kind(docs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "controller"
    for want in (
        "--deny-namespaces=legacy,payments", "--log-format=json", "--log-level=debug",
        "--salvage-on-auth-failure=true", "--max-image-size=0", "--registry-resolve=true",
        "--backup-registry=backup.example:5000/salvaged", "--backup-registry-secret=backup-creds",
        "--backup-registry-insecure=true", "--webhook-url=https://hooks.example/x",
        "--webhook-events=salvaged,failed", "--webhook-format=slack",
        "--plugins-disabled=inheritance", "--workers=8",
    ):  # fmt: skip
        assert want in args, (want, args)
    assert dep["spec"]["replicas"] == 2
    (ds,) = by_kind(docs, "DaemonSet")
    agent = ds["spec"]["template"]["spec"]["containers"][0]
    assert agent["args"][0] == "agent" and "--log-format=json" in agent["args"]
    assert "livenessProbe" not in agent
    sc = agent["securityContext"]
    assert sc["runAsUser"] == 0 and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["minimal", "full"])
def test_apiserver_accepts_rendered_chart(
    helm: Any, control_plane: ControlPlane, values: dict[str, Any] | None
) -> None:
    """Server-side dry run: every rendered object passes the real apiserver's validation."""
    docs = render(helm, values)
    res = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "deployment.apps/tote-controller" in res.stdout
