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

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controller import ControllerProcess
from tests.cluster.images import Image, layered_image
from tests.cluster.objects import wait_event
from tests.cluster.procs import wait_until
from tests.cluster.registry import Registry
from tests.integration.salvage.auth_registry import (
    PASSWORD,
    USER,
    auth_registry,
    failing_pod,
    grant_pull_secrets,
    pull_secret,
    push,
)
from tests.integration.salvage.conftest import SalvageEnv, records

MiB = 1024 * 1024
SECRETS_ROLE = "tote-controller-registry-resolve-test"
RESOLVE = 'tote_registry_resolve_total{result="%s"}'


@pytest.fixture(scope="module")
def registry(senv: SalvageEnv) -> Iterator[tuple[Registry, Path]]:
    with auth_registry(senv, "registry", secrets_role=SECRETS_ROLE) as got:
        yield got


@pytest.fixture(scope="module")
def controller(senv: SalvageEnv, registry: tuple[Registry, Path]) -> ControllerProcess:
    _, ca = registry
    return senv.controller("registrar", "--registry-resolve", f"--registry-resolve-ca={ca}",
                           "--registry-resolve-timeout=5s")


@pytest.fixture
def ns(senv: SalvageEnv, test_namespace: str) -> str:
    """The test namespace, with the controller allowed to read its pull secrets."""
    grant_pull_secrets(senv, test_namespace, SECRETS_ROLE)
    return test_namespace


def preload_digest_only(senv: SalvageEnv, node: str, img: Image, archive: Path) -> None:
    """The image on `node` as `repo@digest` and config ID only: nothing names the tag."""
    senv.preload(node, img, archive, keep_tag=False)
    n, repo = senv.ctd.nodes[node], img.name.rsplit(":", 1)[0]
    assert img.name not in n.image_names() and f"{repo}@{img.digest}" in n.image_names()


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
