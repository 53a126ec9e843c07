"""A registry as private registries are: TLS from a CA of its own (handed to the controller
with `--registry-resolve-ca`) and htpasswd auth, plus what the tests that talk to it share —
pods that pull from it with a pull secret, the controller allowed to read those secrets (the
chart's `secrets get` rule, granted by hand), and pushes that keep the digest."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.cluster.ci import require
from tests.cluster.controlplane import CONTROLLER_SA
from tests.cluster.images import Image
from tests.cluster.objects import get, set_waiting
from tests.cluster.pki import make_ca
from tests.cluster.registry import Registry, available, start_registry
from tests.integration.salvage.conftest import SalvageEnv

USER, PASSWORD = "puller", "correct-horse-1"
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"


@contextlib.contextmanager
def auth_registry(senv: SalvageEnv, name: str, *, secrets_role: str,
                  access_log: bool = False) -> Iterator[tuple[Registry, Path]]:
    """The registry (user USER) and its CA file; ClusterRole `secrets_role` may `get`
    Secrets (bind it per namespace with `grant_pull_secrets`). Both go on exit."""
    require(available() and shutil.which("skopeo") is not None,
            "docker-registry and skopeo are needed (.ci/install installs them)")
    base = senv.workdir.parent / name
    ca = make_ca(base / "pki", common_name=f"tote-{name}-ca")
    pair = ca.issue("registry", common_name="127.0.0.1", ip_addresses=("127.0.0.1",),
                    server=True)
    reg = start_registry(base / "reg", users={USER: PASSWORD}, tls=pair, ca=ca.cert,
                         access_log=access_log)
    senv.cp.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": secrets_role},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    })  # fmt: skip
    try:
        yield reg, ca.cert
    finally:
        if reg.procs is not None:
            reg.procs.stop_all()
        senv.cp.kubectl("delete", "clusterrole", secrets_role, "--ignore-not-found",
                        check=False)


def grant_pull_secrets(senv: SalvageEnv, ns: str, secrets_role: str) -> None:
    """The controller may read the pull secrets of namespace `ns`."""
    senv.cp.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tote-read-pull-secrets", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": secrets_role},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA,
                      "namespace": senv.cp.namespace}],
    })  # fmt: skip


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

