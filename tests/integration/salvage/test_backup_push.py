"""Backup push after a salvage (issue 10 item 1), end to end: real API server, the
controller process with its restricted RBAC identity, real containerd nodes and agents, a
real `docker-registry` with htpasswd auth and TLS.

The controller runs with `--backup-registry=<registry>/backup`, `--backup-registry-secret`
(a dockerconfigjson Secret in its own namespace, which it may `get` by name only — the rule
the chart must add) and `--backup-registry-ca`. What is tried:
(1) a digest-only ref is salvaged, then pushed as `backup/<path>:salvaged-<12 hex>`; the
    registry serves the original manifest bytes under the original digest; `ImagePushed`;
(2) the Secret's password is changed to a wrong one (read directly, no restart): the next
    salvage completes, the push fails with `ImagePushFailed`, the record stays Completed;
(3) the registry is down: the salvage completes, one push attempt fails (no retry storm).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.ci import require
from tests.cluster.controller import ControllerProcess
from tests.cluster.controlplane import CONTROLLER_SA
from tests.cluster.images import Image, layered_image
from tests.cluster.objects import set_waiting, tote_events, wait_event
from tests.cluster.pki import make_ca
from tests.cluster.procs import wait_until
from tests.cluster.registry import Registry, available, start_registry
from tests.integration.salvage.conftest import SalvageEnv, records

MiB = 1024 * 1024
USER, PASSWORD = "backup", "tote-backup-pw-7"
SECRET = "tote-backup-registry"
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"

def _secret(senv: SalvageEnv, host: str, password: str) -> None:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = {"auths": {host: {"auth": auth}}}
    senv.cp.apply({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": SECRET, "namespace": senv.cp.namespace},
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    })  # fmt: skip

@pytest.fixture(scope="module")
def registry(senv: SalvageEnv) -> Iterator[tuple[Registry, Path]]:
    require(available(), "docker-registry is needed (.ci/install installs it)")
    base = senv.workdir.parent / "backup-registry"
    ca = make_ca(base / "pki", common_name="tote-backup-test-ca")
    pair = ca.issue("registry", common_name="127.0.0.1", ip_addresses=("127.0.0.1",),
                    server=True)
    reg = start_registry(base / "reg", users={USER: PASSWORD}, tls=pair, ca=ca.cert,
                         access_log=True)
    ns = senv.cp.namespace
    # What the chart grants with backup.secretName: get on that one Secret, nothing else.
    senv.cp.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "tote-backup-secret", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                   "resourceNames": [SECRET]}],
    })  # fmt: skip
    senv.cp.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tote-backup-secret", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "tote-backup-secret"},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": ns}],
    })  # fmt: skip
    _secret(senv, reg.host, PASSWORD)
    try:
        yield reg, ca.cert
    finally:
        if reg.procs is not None:
            reg.procs.stop_all()
        for kind in ("rolebinding", "role"):
            senv.cp.kubectl("delete", kind, "tote-backup-secret", "-n", ns,
                            "--ignore-not-found", check=False)
        senv.cp.kubectl("delete", "secret", SECRET, "-n", ns, "--ignore-not-found",
                        check=False)

@pytest.fixture(scope="module")
def controller(senv: SalvageEnv, registry: tuple[Registry, Path]) -> ControllerProcess:
    reg, ca = registry
    return senv.controller("backupper", f"--backup-registry={reg.host}/backup",
                           f"--backup-registry-secret={SECRET}", f"--backup-registry-ca={ca}")

def _salvage(senv: SalvageEnv, ns: str, name: str, img: Image, tmp: Path) -> str:
    """A pod on n1 asking for `repo@digest`, the image on n2 only; returns the ref."""
    archive = img.write_archive(tmp / f"{name}.tar")
    senv.preload("n2", img, archive, keep_tag=False)
    ref = f"{img.name.rsplit(':', 1)[0]}@{img.digest}"
    senv.cp.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "annotations": {"tote.dev/auto-salvage": "true"}},
        "spec": {"nodeName": "n1",
                 "containers": [{"name": "app", "image": ref,
                                 "imagePullPolicy": "IfNotPresent"}]},
    })  # fmt: skip
    set_waiting(senv.cp, ns, name, reason="ErrImagePull", message=REFUSED)
    wait_until(lambda: any(r.get("status", {}).get("phase") == "Completed"  # type: ignore[union-attr]
                           for r in records(senv.cp, ns)), timeout=120, what="record Completed")
    return ref

def _phases(senv: SalvageEnv, ns: str) -> list[str]:
    return [r["status"]["phase"] for r in records(senv.cp, ns)]  # type: ignore[index]

def test_1_digest_only_ref_pushed_as_salvaged_tag_digest_preserved(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess,
    test_namespace: str, tmp_path: Path,
) -> None:
    reg, _ = registry
    ns = test_namespace
    img = layered_image("docker.io/shop/backed:v1", [2 * MiB, 1 * MiB], seed=61)
    ok0 = controller.metric("tote_push_successes_total")
    _salvage(senv, ns, "backed", img, tmp_path)
    ev = wait_event(senv.cp, ns, "backed", "ImagePushed", timeout=120)
    tag = "salvaged-" + img.digest.split(":", 1)[1][:12]
    dest = f"{reg.host}/backup/shop/backed:{tag}"
    assert ev["type"] == "Normal" and dest in ev["note"] and img.digest in ev["note"]
    assert "3 blobs uploaded" in ev["note"], ev["note"]
    assert reg.manifest_digest("backup/shop/backed", tag) == img.digest
    assert reg.manifest_digest("backup/shop/backed", "latest") is None

    req = urllib.request.Request(f"{reg.url}/v2/backup/shop/backed/manifests/{img.digest}",
                                 headers={"Accept": img.top.media_type})
    with reg._open(req) as resp:
        assert resp.read() == img.top.data
    assert controller.metric("tote_push_successes_total") == ok0 + 1
    assert controller.metric("tote_push_duration_seconds_count") >= 1
    assert _phases(senv, ns) == ["Completed"]
    for text in controller.logs().values():
        assert PASSWORD not in text

def test_2_wrong_credentials_push_fails_salvage_completed(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess,
    test_namespace: str, tmp_path: Path,
) -> None:
    reg, _ = registry
    ns = test_namespace
    _secret(senv, reg.host, "wrong-password")  # read per push: no restart needed
    try:
        img = layered_image("docker.io/shop/denied:v1", [1 * MiB], seed=63)
        failed0 = controller.metric("tote_push_failures_total")
        _salvage(senv, ns, "denied", img, tmp_path)
        ev = wait_event(senv.cp, ns, "denied", "ImagePushFailed", timeout=120)
        assert ev["type"] == "Warning" and "refused the credentials" in ev["note"]
        assert "salvage itself succeeded" in ev["note"]
        assert controller.metric("tote_push_failures_total") == failed0 + 1
        assert _phases(senv, ns) == ["Completed"]
        assert not [e for e in tote_events(senv.cp, ns, "denied")
                    if e["reason"] == "ImagePushed"]
        assert reg.catalog().count("backup/shop/denied") == 0
        for text in controller.logs().values():
            assert "wrong-password" not in text
    finally:
        _secret(senv, reg.host, PASSWORD)

def test_3_registry_down_one_failed_attempt_salvage_unaffected(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess,
    test_namespace: str, tmp_path: Path,
) -> None:
    reg, _ = registry
    ns = test_namespace
    img = layered_image("docker.io/shop/offline:v1", [1 * MiB], seed=65)
    attempts0 = controller.metric("tote_push_attempts_total")
    reg.stop()
    try:
        _salvage(senv, ns, "offline", img, tmp_path)
        ev = wait_event(senv.cp, ns, "offline", "ImagePushFailed", timeout=120)
        assert "cannot reach" in ev["note"] and "not retried" in ev["note"]
        assert _phases(senv, ns) == ["Completed"]
        # No retry storm: exactly one attempt, and it stays one.
        assert controller.metric("tote_push_attempts_total") == attempts0 + 1
        time.sleep(5)  # a window in which a retry loop would have shown up
        assert controller.metric("tote_push_attempts_total") == attempts0 + 1
        assert _phases(senv, ns) == ["Completed"]
    finally:
        reg.start()
