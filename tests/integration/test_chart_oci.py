"""The chart as an OCI artefact, the way the release workflow publishes it and users install it.

`helm package` of deploy/helm/tote, `helm registry login` + `helm push` to a real registry
(Debian's docker-registry on loopback, htpasswd auth as a hosted registry has, plain HTTP),
then `helm install oci://…/charts/tote --version X` into a real kube-apiserver: the release's
objects existing in the API server is the proof (no kubelet needed, nothing has to run).
`helm pull` brings the same bytes back: the manifest digest helm reports on push and pull is
the registry's, and the pulled .tgz is the packaged one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster import registry as registry_mod
from tests.cluster.ci import require
from tests.cluster.controlplane import CHART_DIR, ControlPlane
from tests.cluster.registry import Registry, start_registry

pytestmark = pytest.mark.integration

# A release and namespace of their own: the session's control plane already holds the harness's
# `tote` release objects (CRD, RBAC in tote-system), which this install must not touch.
RELEASE = "tote-oci"
NAMESPACE = "tote-oci-test"
USER, PASSWORD = "release-bot", "s3cret-chart-push"


def _chart_version() -> str:
    return str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"])


class Helm:
    """The built helm with a private home (registry credentials stay in the test's tmp dir)."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                             env=self.env, input=stdin, timeout=180, cwd=cwd)
        if check:
            assert res.returncode == 0, f"helm {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    require(registry_mod.available(),
            f"{registry_mod.REGISTRY_BINARY} not installed (.ci/install installs it)")
    reg = start_registry(tmp_path_factory.mktemp("chart-registry"), users={USER: PASSWORD})
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def helm(k8s_bin_dir: Path, control_plane: ControlPlane,
         tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(k8s_bin_dir / "helm", tmp_path_factory.mktemp("helm-oci-home"),
                control_plane.admin_kubeconfig)


def _digest(output: str) -> str:
    m = re.search(r"^Digest: (sha256:[0-9a-f]{64})$", output, re.M)
    assert m, f"helm printed no digest:\n{output}"
    return m.group(1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_package_push_install_pull(helm: Helm, registry: Registry,
                                   control_plane: ControlPlane, tmp_path: Path) -> None:
    version = _chart_version()
    pkg_dir, pull_dir = tmp_path / "pkg", tmp_path / "pulled"
    pull_dir.mkdir()
    helm("package", str(CHART_DIR), "--destination", str(pkg_dir))
    pkg = pkg_dir / f"tote-{version}.tgz"
    assert pkg.is_file(), sorted(p.name for p in pkg_dir.iterdir())

    # Without credentials the registry refuses the push: the login below is what lets it in.
    anon = helm("push", str(pkg), f"oci://{registry.host}/charts", "--plain-http", check=False)
    assert anon.returncode != 0 and registry.manifest_digest("charts/tote", version) is None
    helm("registry", "login", registry.host, "--username", USER, "--password-stdin",
         "--plain-http", stdin=PASSWORD)
    pushed = helm("push", str(pkg), f"oci://{registry.host}/charts", "--plain-http")
    digest = _digest(pushed.stdout + pushed.stderr)
    assert registry.manifest_digest("charts/tote", version) == digest

    ref = f"oci://{registry.host}/charts/tote"
    try:
        helm("install", RELEASE, ref, "--version", version, "--plain-http",
             "--namespace", NAMESPACE, "--create-namespace")
        (listed,) = json.loads(helm("list", "--namespace", NAMESPACE, "-o", "json").stdout)
        assert (listed["name"], listed["status"], listed["chart"]) == \
            (RELEASE, "deployed", f"tote-{version}")
        # Every object the release rendered exists in the API server.
        manifest = helm("get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
        objects = [d for d in yaml.safe_load_all(manifest) if d]
        kinds = {d["kind"] for d in objects}
        assert {"Deployment", "DaemonSet", "ServiceAccount", "ClusterRole"} <= kinds, kinds
        for d in objects:
            ns = ["-n", d["metadata"].get("namespace") or NAMESPACE]
            got = control_plane.kubectl("get", d["kind"], d["metadata"]["name"], *ns, "-o",
                                        "name", check=False)
            assert got.returncode == 0, f"{d['kind']}/{d['metadata']['name']}: {got.stderr}"
        # The controller runs the image the chart defaults to, at the chart's appVersion.
        deploy = next(d for d in objects if d["kind"] == "Deployment")
        images = {c["image"] for c in deploy["spec"]["template"]["spec"]["containers"]}
        assert any(i.startswith("ghcr.io/tote-dev/tote") for i in images), images
    finally:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, check=False)
        control_plane.kubectl("delete", "namespace", NAMESPACE, "--wait=false",
                              "--ignore-not-found", check=False)

    pulled = helm("pull", ref, "--version", version, "--plain-http", "--destination",
                  str(pull_dir))
    assert _digest(pulled.stdout + pulled.stderr) == digest
    assert _sha256(pull_dir / pkg.name) == _sha256(pkg)
