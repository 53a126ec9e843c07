"""The chart's certificates and RBAC: reproducible renders (no key material: the controller
issues it), TLS values that contradict each other refused, and the controller's rules equal
to what the code needs (the list `tote doctor` checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_helm import FULL_VALUES, Helm, by_kind, pod_spec
from tote_core.kube import rbac


@pytest.fixture(scope="module")
def helm(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(k8s_bin_dir / "helm", tmp_path_factory.mktemp("helm-home"))


RENDERINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "webhook": {"webhook": {"enabled": True}},
    "cert-manager": {"tls": {"certManager": {"enabled": True}}, "webhook": {"enabled": True}},
    "existing-secret": {"tls": {"existingSecret": "mine"}},
    "full": FULL_VALUES,
}


@pytest.mark.parametrize("name", list(RENDERINGS))
def test_two_renders_are_identical(helm: Helm, name: str) -> None:
    """GitOps tools compare renders: nothing in them may change from one to the next."""
    values = RENDERINGS[name]
    first = helm.template("tote", "--namespace", "tote-system", values=values).stdout
    second = helm.template("tote", "--namespace", "tote-system", values=values).stdout
    assert first == second
    assert "PRIVATE KEY" not in first and "BEGIN CERTIFICATE" not in first


def test_by_default_the_controller_issues_the_certificates(helm: Helm) -> None:
    docs = helm.render({"webhook": {"enabled": True}})
    assert not by_kind(docs, "Secret"), "no key material rendered"
    ctl = pod_spec(docs, "Deployment")
    args = ctl["containers"][0]["args"]
    assert "--tls-issue-secrets=tote" in args and "--tls-issue-validity=2160h" in args
    assert "--admission-tls-cert=/etc/tote/tls/webhook.crt" in args
    (vwc,) = by_kind(docs, "ValidatingWebhookConfiguration")
    assert f"--admission-webhook-name={vwc['metadata']['name']}" in args
    assert all("caBundle" not in h["clientConfig"] for h in vwc["webhooks"])
    (vol,) = [v for v in ctl["volumes"] if v["name"] == "tls"]
    assert vol["emptyDir"]["medium"] == "Memory"
    (agent_vol,) = [v for v in pod_spec(docs, "DaemonSet")["volumes"] if v["name"] == "tls"]
    assert agent_vol["secret"]["secretName"] == "tote-agent-tls"
    # cert-manager: Certificates, no issuing by the controller
    cm = helm.render({"tls": {"certManager": {"enabled": True}}})
    assert by_kind(cm, "Certificate")
    assert not [a for a in pod_spec(cm, "Deployment")["containers"][0]["args"]
                if a.startswith("--tls-issue")]


@pytest.mark.parametrize(("values", "reason"), [
    ({"tls": {"enabled": False, "existingSecret": "x"}}, "tls.enabled=false turns mTLS off"),
    ({"tls": {"enabled": False, "certManager": {"enabled": True}}},
     "tls.enabled=false turns mTLS off"),
    ({"tls": {"enabled": False, "selfSigned": {"validityDays": 30}}},
     "tls.selfSigned.validityDays would be ignored"),
    ({"tls": {"certManager": {"issuerRef": {"name": "ca"}}}},
     "tls.certManager.issuerRef needs tls.certManager.enabled=true"),
    ({"webhook": {"enabled": True}, "tls": {"existingSecret": "x"}},
     "webhook.enabled needs a serving certificate"),
    ({"tls": {"selfSigned": {"validityDays": 0}}}, "validityDays"),
])  # fmt: skip
def test_contradicting_tls_values_are_refused(helm: Helm, values: dict[str, Any],
                                              reason: str) -> None:
    out = helm.template("tote", "--namespace", "tote-system", values=values, check=False)
    assert out.returncode != 0
    assert reason in out.stderr, out.stderr


def _granted(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, bool, str]]:
    out: set[tuple[str, str, str, bool, str]] = set()
    for kind, in_ns in (("ClusterRole", False), ("Role", True)):
        for role in by_kind(docs, kind):
            if not role["metadata"]["name"].endswith("-controller"):
                continue
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            for name in rule.get("resourceNames") or [""]:
                                out.add((group, resource, verb, in_ns, name))
    return out


def test_the_controller_gets_exactly_what_the_code_needs(helm: Helm) -> None:
    """The rules equal tote_core/kube/rbac.py (what `tote doctor` checks against the live
    ServiceAccount): RBAC_NEEDS plus the rules of the options in use. That declaration is
    derived from the requests a controller makes against a real API server
    (tests/integration/salvage/test_rbac_calls.py: nothing refused, nothing unused)."""
    needs = {*rbac.RBAC_NEEDS, *rbac.kill_switch("tote-config")}
    assert _granted(helm.render()) == needs | set(rbac.issuer("tote", webhook=False))
    assert _granted(helm.render({"tls": {"certManager": {"enabled": True}}})) == needs
    hook = helm.render({"webhook": {"enabled": True}})
    (vwc,) = by_kind(hook, "ValidatingWebhookConfiguration")
    assert _granted(hook) == needs | set(rbac.issuer("tote", webhook=True)) | set(
        rbac.webhook_ca_bundle(vwc["metadata"]["name"]))
    options = {"registryResolve": {"enabled": True},
               "backup": {"registry": "10.0.0.5:5000", "secretName": "backup-creds"}}
    assert _granted(helm.render(options)) == needs | set(rbac.issuer("tote", webhook=False)) \
        | set(rbac.REGISTRY_RESOLVE) | set(rbac.backup_secret("backup-creds"))
