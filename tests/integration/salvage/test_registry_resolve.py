"""Issue 4 test (3): a tag resolved through a real registry with auth, then salvaged.

A real `docker-registry` on loopback with htpasswd auth and TLS (its CA handed to the
controller through `--registry-resolve-ca`, appended to the system roots). n2's containerd
holds the image only as `repo@digest` (no tag): neither Node.status.images nor any agent can
name the digest for the tag, so only the registry (`--registry-resolve`, the pod's pull
secret) can. Also: no pull secret / a wrong password → `unauthorized` and
`ImageNotActionable`; in the registry but on no node → `ImageResolvedUncached`.

The chart grants `secrets get` only with `registryResolve.enabled`; the harness applies the
chart with default values, so this module grants it to the controller's ServiceAccount in
each test namespace itself, the way the chart's rule would.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controller import ControllerProcess
from tests.cluster.controlplane import CONTROLLER_SA
from tests.cluster.objects import get, set_waiting, wait_event
from tests.cluster.pki import make_ca
from tests.cluster.procs import wait_until
from tests.cluster.registry import Registry, available, start_registry
from tests.images.build import Image, layered_image
from tests.integration.salvage.conftest import SalvageEnv, records

MiB = 1024 * 1024
USER, PASSWORD = "puller", "correct-horse-1"
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"
SECRETS_ROLE = "tote-controller-registry-resolve-test"
RESOLVE = 'tote_registry_resolve_total{result="%s"}'


@pytest.fixture(scope="module")
def registry(senv: SalvageEnv) -> Iterator[tuple[Registry, Path]]:
    if not available() or not subprocess.run(["which", "skopeo"], capture_output=True).stdout:
        pytest.skip("docker-registry and skopeo are needed")
    base = senv.workdir.parent / "registry"
    ca = make_ca(base / "pki", common_name="tote-registry-test-ca")
    pair = ca.issue("registry", common_name="127.0.0.1", ip_addresses=("127.0.0.1",),
                    server=True)
    reg = start_registry(base / "reg", users={USER: PASSWORD}, tls=pair, ca=ca.cert)
    senv.cp.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": SECRETS_ROLE},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    })  # fmt: skip
    try:
        yield reg, ca.cert
    finally:
        if reg.procs is not None:
            reg.procs.stop_all()
        senv.cp.kubectl("delete", "clusterrole", SECRETS_ROLE, "--ignore-not-found",
                        check=False)


@pytest.fixture(scope="module")
def controller(senv: SalvageEnv, registry: tuple[Registry, Path]) -> ControllerProcess:
    _, ca = registry
    return senv.controller("registrar", "--registry-resolve", f"--registry-resolve-ca={ca}",
                           "--registry-resolve-timeout=5s")


@pytest.fixture
def ns(senv: SalvageEnv, test_namespace: str) -> str:
    """The test namespace, with the controller allowed to read its pull secrets."""
    senv.cp.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tote-read-pull-secrets", "namespace": test_namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": SECRETS_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA,
                      "namespace": senv.cp.namespace}],
    })  # fmt: skip
    return test_namespace


def push(reg: Registry, img: Image, archive: Path) -> None:
    """Push with the digest preserved: the registry serves exactly `img.digest`."""
    assert reg.creds is not None
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--preserve-digests", f"oci-archive:{archive}",
         f"docker://{img.name}", "--dest-tls-verify=false", "--dest-creds", reg.creds],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    repo, tag = img.name.split("/", 1)[1].rsplit(":", 1)
    assert reg.manifest_digest(repo, tag) == img.digest


def preload_digest_only(senv: SalvageEnv, node: str, img: Image, archive: Path) -> None:
    """The image on `node` as `repo@digest` and config ID only: nothing names the tag."""
    senv.preload(node, img, archive, keep_tag=False)
    n, repo = senv.ctd.nodes[node], img.name.rsplit(":", 1)[0]
    assert img.name not in n.image_names() and f"{repo}@{img.digest}" in n.image_names()


def pull_secret(senv: SalvageEnv, ns: str, name: str, host: str, user: str, pw: str) -> None:
    auth = base64.b64encode(f"{user}:{pw}".encode()).decode()
    config = {"auths": {host: {"username": user, "password": pw, "auth": auth}}}
    senv.cp.apply({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": ns},
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    })  # fmt: skip


def failing_pod(senv: SalvageEnv, ns: str, name: str, image: str, *, node: str = "n1",
                secrets: tuple[str, ...] = ()) -> None:
    senv.cp.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "annotations": {"tote.dev/auto-salvage": "true"}},
        "spec": {"nodeName": node,
                 "imagePullSecrets": [{"name": s} for s in secrets],
                 "containers": [{"name": "app", "image": image,
                                 "imagePullPolicy": "IfNotPresent"}]},
    })  # fmt: skip
    assert get(senv.cp, "pod", name, ns)["spec"].get("imagePullSecrets", []) == [
        {"name": s} for s in secrets
    ]
    set_waiting(senv.cp, ns, name, reason="ErrImagePull", message=REFUSED)


def test_3_tag_resolved_through_registry_with_auth_then_salvaged(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess, ns: str,
    tmp_path: Path,
) -> None:
    reg, _ = registry
    n1 = senv.ctd.nodes["n1"]
    img = layered_image(f"{reg.host}/shop/reg:v1", [1 * MiB, 1 * MiB], seed=31)
    archive = img.write_archive(tmp_path / "reg.tar")
    push(reg, img, archive)
    preload_digest_only(senv, "n2", img, archive)
    found0 = controller.metric(RESOLVE % "found")
    pull_secret(senv, ns, "regcred", reg.host, USER, PASSWORD)
    failing_pod(senv, ns, "reg", img.name, secrets=("regcred",))

    ev = wait_event(senv.cp, ns, "reg", "ImageSalvageable", timeout=60)
    assert img.digest in ev["note"] and "n2" in ev["note"]
    assert controller.metric(RESOLVE % "found") >= found0 + 1
    assert controller.metric("tote_registry_resolve_duration_seconds_count") >= 1

    def completed() -> bool:
        return any(r.get("status", {}).get("phase") == "Completed"  # type: ignore[union-attr]
                   for r in records(senv.cp, ns))

    wait_until(completed, timeout=90, what="record Completed")
    (rec,) = records(senv.cp, ns)
    assert rec["spec"]["digest"] == img.digest  # type: ignore[index]
    assert rec["spec"]["sourceNode"] == "n2" and rec["spec"]["targetNode"] == "n1"  # type: ignore[index]
    names = n1.image_names()
    assert f"{reg.host}/shop/reg@{img.digest}" in names
    assert img.name in names  # the tag kubelet asks for
    # Credentials never reach the logs.
    for text in controller.logs().values():
        assert PASSWORD not in text


def test_3b_no_secret_or_wrong_password_is_unauthorized_and_not_actionable(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess, ns: str,
    tmp_path: Path,
) -> None:
    reg, _ = registry
    img = layered_image(f"{reg.host}/shop/private:v2", [1 * MiB], seed=32)
    archive = img.write_archive(tmp_path / "private.tar")
    push(reg, img, archive)
    preload_digest_only(senv, "n2", img, archive)
    denied0 = controller.metric(RESOLVE % "unauthorized")
    pull_secret(senv, ns, "badcred", reg.host, USER, "wrong-password")
    failing_pod(senv, ns, "nosecret", img.name)
    failing_pod(senv, ns, "badsecret", img.name, secrets=("badcred",))
    for pod in ("nosecret", "badsecret"):
        ev = wait_event(senv.cp, ns, pod, "ImageNotActionable", timeout=60)
        assert "shop/private:v2" in ev["note"]
    wait_until(lambda: controller.metric(RESOLVE % "unauthorized") >= denied0 + 2,
               timeout=30, what="two unauthorized lookups counted")
    assert records(senv.cp, ns) == []
    for text in controller.logs().values():
        assert "wrong-password" not in text


def test_3c_in_registry_but_on_no_node_is_resolved_uncached(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess, ns: str,
    tmp_path: Path,
) -> None:
    reg, _ = registry
    img = layered_image(f"{reg.host}/shop/lonely:v3", [1 * MiB], seed=33)
    push(reg, img, img.write_archive(tmp_path / "lonely.tar"))
    pull_secret(senv, ns, "regcred", reg.host, USER, PASSWORD)
    failing_pod(senv, ns, "lonely", img.name, secrets=("regcred",))
    ev = wait_event(senv.cp, ns, "lonely", "ImageResolvedUncached", timeout=60)
    assert img.digest in ev["note"]
    assert records(senv.cp, ns) == []
