"""Smoke test of the control-plane harness: the apiserver, the CRD and the restricted identity.

The controller under test always runs as `tote-system/tote-controller` bound to the chart's
RBAC; these checks make sure that identity can do exactly what tote needs and no more.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.cluster.controlplane import ControlPlane
from tote_core.errors import KubeError
from tote_core.kube import config as kube_config
from tote_core.kube.client import KubeClient, resource_path


def can_i(cp: ControlPlane, verb: str, resource: str, *extra: str) -> bool:
    res = cp.kubectl(
        "auth", "can-i", verb, resource, *extra, kubeconfig=cp.controller_kubeconfig, check=False
    )
    return res.stdout.strip() == "yes"


def test_apiserver_ready_and_rbac_on(control_plane: ControlPlane) -> None:
    cp = control_plane
    assert cp.server.startswith("https://127.0.0.1:")
    assert cp.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert set(cp.startup_seconds) >= {"kube-apiserver", "total"}
    whoami = json.loads(cp.kubectl("auth", "whoami", "-o", "json").stdout)
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]


def test_crd_established(control_plane: ControlPlane) -> None:
    crd = json.loads(
        control_plane.kubectl("get", "crd", "salvagerecords.tote.dev", "-o", "json").stdout
    )
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert crd["spec"]["names"]["shortNames"] == ["sr"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Digest", "Source", "Target", "Phase", "Progress", "Age"]
    wide = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert wide == ["Bytes", "Retries", "Mode", "Pinned"]  # kubectl get -o wide


def test_controller_identity(control_plane: ControlPlane) -> None:
    cp = control_plane
    whoami = json.loads(
        cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=cp.controller_kubeconfig).stdout
    )
    assert whoami["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{cp.namespace}:tote-controller"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("get", "pods", "-A"),
        ("get", "nodes"),
        ("get", "namespaces"),
        ("get", "salvagerecords.tote.dev", "-A"),
        ("get", "configmaps", "--field-selector=metadata.name=tote-config"),
        ("get", "pods", "-A", "--watch-only", "--request-timeout=1s"),
    ],
)
def test_controller_can_read_what_it_needs(
    control_plane: ControlPlane, args: tuple[str, ...]
) -> None:
    res = control_plane.kubectl(*args, kubeconfig=control_plane.controller_kubeconfig, check=False)
    # A watch that times out exits non-zero without a Forbidden error.
    assert "Forbidden" not in res.stderr and "forbidden" not in res.stderr, res.stderr


def test_controller_rbac_matrix(control_plane: ControlPlane) -> None:
    cp = control_plane
    ns = ["-n", cp.namespace]
    allowed = [
        ("watch", "pods", "-A"),
        ("patch", "pods", "-n", "default"),  # the delivered-at annotation
        ("watch", "events", "-A"),  # kubelet's pull failures
        ("watch", "nodes"),
        ("watch", "namespaces"),
        ("create", "events.events.k8s.io", "-n", "default"),
        ("get", "events.events.k8s.io", "-n", "default"),
        ("patch", "events.events.k8s.io", "-n", "default"),
        ("create", "salvagerecords.tote.dev", "-n", "default"),
        ("patch", "salvagerecords.tote.dev", "--subresource=status", "-n", "default"),
        ("delete", "salvagerecords.tote.dev", "-n", "default"),
        ("get", "replicasets.apps", "-n", "default"),
        ("get", "deployments.apps", "-n", "default"),
        ("get", "statefulsets.apps", "-n", "default"),
        ("get", "daemonsets.apps", "-n", "default"),
        ("get", "jobs.batch", "-n", "default"),
        ("get", "cronjobs.batch", "-n", "default"),
        ("create", "leases.coordination.k8s.io", *ns),
        ("update", "leases.coordination.k8s.io", *ns),
        ("list", "configmaps/tote-config", *ns),
        ("watch", "configmaps/tote-config", *ns),
        # the certificates it issues (--tls-issue-secrets, the chart's default)
        ("create", "secrets", *ns),
        ("get", "secrets/tote-ca", *ns),
        ("update", "secrets/tote-agent-tls", *ns),
    ]
    denied = [
        ("list", "secrets", "-A"),
        ("get", "secrets", *ns),
        ("create", "pods", "-n", "default"),
        ("update", "pods", "-n", "default"),
        ("get", "pods", "-n", "default"),
        ("delete", "pods", "-n", "default"),  # tote never deletes a pod
        ("create", "events", "-n", "default"),
        ("get", "configmaps/tote-config", *ns),
        ("update", "salvagerecords.tote.dev", "-n", "default"),
        ("watch", "salvagerecords.tote.dev", "-A"),
        ("get", "salvagerecords.tote.dev", "--subresource=status", "-n", "default"),
        ("update", "secrets/other", *ns),
        ("create", "pods/exec", "-n", "default"),
        ("delete", "nodes"),
        ("patch", "nodes"),
        ("patch", "namespaces"),
        ("list", "configmaps", *ns),
        ("get", "configmaps/other", *ns),
        ("get", "configmaps/tote-config", "-n", "default"),
        ("create", "leases.coordination.k8s.io", "-n", "default"),
        ("list", "deployments.apps", "-n", "default"),
        ("delete", "deployments.apps", "-n", "default"),
        ("create", "clusterrolebindings"),
        ("impersonate", "serviceaccounts"),
    ]
    wrong_allow = [a for a in allowed if not can_i(cp, *a)]
    wrong_deny = [d for d in denied if can_i(cp, *d)]
    assert not wrong_allow, f"controller identity lacks: {wrong_allow}"
    assert not wrong_deny, f"controller identity must not have: {wrong_deny}"


def test_controller_denied_for_real(control_plane: ControlPlane, test_namespace: str) -> None:
    cp = control_plane
    res = cp.kubectl("get", "secrets", "-A", kubeconfig=cp.controller_kubeconfig, check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr.lower()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nope", "namespace": test_namespace},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1"}]},
    }
    res = cp.kubectl(
        "create", "-f", "-", input=json.dumps(pod), kubeconfig=cp.controller_kubeconfig,
        check=False,
    )  # fmt: skip
    assert res.returncode != 0 and "forbidden" in res.stderr.lower()
    # The admin can, and pods need no ServiceAccount controller on this control plane.
    cp.kubectl("create", "-f", "-", input=json.dumps(pod))


def patch_status_as_controller(cp: ControlPlane, ns: str, name: str,
                               body: dict[str, Any]) -> None:
    """A merge patch of the status subresource the way the controller sends it (its
    KubeClient, its identity): no GET first, which `kubectl patch` would need and the
    controller is not granted."""
    async def patch() -> None:
        kube = KubeClient(kube_config.load(str(cp.controller_kubeconfig)))
        try:
            await kube.patch(resource_path("tote.dev/v1alpha1", "salvagerecords", ns, name,
                                           "status"), body)
        finally:
            await kube.aclose()

    trio.run(patch)


def test_salvagerecord_lifecycle_as_controller(
    control_plane: ControlPlane, test_namespace: str
) -> None:
    cp = control_plane
    kc = cp.controller_kubeconfig
    digest = "sha256:" + "ab" * 32
    record = {
        "apiVersion": "tote.dev/v1alpha1",
        "kind": "SalvageRecord",
        "metadata": {
            "name": "rec-1",
            "namespace": test_namespace,
            "labels": {"tote.dev/digest": "ab" * 20, "tote.dev/target-node": "node-b"},
        },
        "spec": {
            "podName": "web-0",
            "podUID": "0b3e7a8c-1111-2222-3333-444455556666",
            "digest": digest,
            "imageRef": "docker.io/library/nginx:1.25",
            "sourceNode": "node-a",
            "targetNode": "node-b",
        },
        # Ignored on create: status goes through the subresource.
        "status": {"phase": "Completed"},
    }
    cp.kubectl("create", "-f", "-", input=json.dumps(record), kubeconfig=kc)
    got = json.loads(
        cp.kubectl("get", "sr", "rec-1", "-n", test_namespace, "-o", "json", kubeconfig=kc).stdout
    )
    assert "status" not in got or "phase" not in got["status"]

    status = {
        "status": {
            "phase": "Transferring",
            "progress": "1.0MiB/4.0MiB (25%)",
            "bytesTotal": 4 * 1024 * 1024,
            "bytesTransferred": 1024 * 1024,
            "blobsSkipped": 2,
            "retryCount": 0,
            "startedAt": "2025-01-01T00:00:00Z",
            "lastAttemptAt": "2025-01-01T00:00:00Z",
            "conditions": [
                {
                    "type": "Transferred",
                    "status": "False",
                    "reason": "InProgress",
                    "message": "copying blobs",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
        }
    }
    patch_status_as_controller(cp, test_namespace, "rec-1", status)
    got = json.loads(
        cp.kubectl("get", "sr", "rec-1", "-n", test_namespace, "-o", "json", kubeconfig=kc).stdout
    )
    assert got["status"]["phase"] == "Transferring"
    assert got["status"]["bytesTransferred"] == 1024 * 1024

    table = cp.kubectl("get", "sr", "-n", test_namespace, kubeconfig=kc).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "DIGEST", "SOURCE", "TARGET", "PHASE", "PROGRESS", "AGE"]
    assert "1.0MiB/4.0MiB" in table and "Transferring" in table

    # Label-selector lookup (what the controller does instead of a full scan).
    names = cp.kubectl(
        "get", "sr", "-n", test_namespace, "-l", "tote.dev/target-node=node-b", "-o", "name",
        kubeconfig=kc,
    ).stdout.split()  # fmt: skip
    assert names == ["salvagerecord.tote.dev/rec-1"]

    # Schema is enforced: an unknown phase is rejected.
    with pytest.raises(KubeError, match="Unsupported value"):
        patch_status_as_controller(cp, test_namespace, "rec-1", {"status": {"phase": "Exploded"}})

    cp.kubectl("delete", "sr", "rec-1", "-n", test_namespace, kubeconfig=kc)


def test_test_namespace_is_opted_in(control_plane: ControlPlane, test_namespace: str) -> None:
    ns = json.loads(control_plane.kubectl("get", "ns", test_namespace, "-o", "json").stdout)
    assert ns["metadata"]["annotations"]["tote.dev/allow"] == "true"


def test_restart_apiserver_keeps_state_and_tokens(control_plane: ControlPlane) -> None:
    """Last on purpose: it bounces the shared apiserver."""
    cp = control_plane
    cp.restart_apiserver()
    assert cp.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    cp.kubectl("get", "crd", "salvagerecords.tote.dev")
    cp.kubectl("get", "nodes", kubeconfig=cp.controller_kubeconfig)
