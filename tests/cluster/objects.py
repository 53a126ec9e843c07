"""Create the Kubernetes objects tests need, and read back what tote did, through kubectl.

Without kubelet on the plain control plane, tests play kubelet's part: they create Node
objects and write pod status (waiting reasons) through the status subresource, exactly the
fields kubelet writes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.cluster.controlplane import ControlPlane

D_PREFIX = "sha256:"


def create_node(
    cp: ControlPlane, name: str, images: list[list[str]] | None = None, *,
    zone: str | None = None, ready: bool = True,
) -> None:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    cp.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
    set_node_images(cp, name, images or [], ready=ready)


def set_node_images(
    cp: ControlPlane, name: str, images: list[list[str]], *, ready: bool = True
) -> None:
    status = {
        "status": {
            "images": [{"names": names, "sizeBytes": 1000} for names in images],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady" if ready else "KubeletNotReady",
                    "message": "test node",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    cp.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
               "-p", json.dumps(status))


def create_pod(
    cp: ControlPlane, namespace: str, name: str, image: str, *, node: str,
    annotations: dict[str, str] | None = None, owner: dict[str, Any] | None = None,
    init_image: str | None = None, pull_policy: str = "IfNotPresent",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [{"name": "app", "image": image, "imagePullPolicy": pull_policy}],
    }
    if init_image:
        spec["initContainers"] = [
            {"name": "init", "image": init_image, "imagePullPolicy": pull_policy}
        ]
    cp.apply({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    return get(cp, "pod", name, namespace)


def get(cp: ControlPlane, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"]
    if namespace:
        args += ["-n", namespace]
    return json.loads(cp.kubectl(*args).stdout)  # type: ignore[no-any-return]


def set_waiting(
    cp: ControlPlane, namespace: str, name: str, *, reason: str, message: str,
    container: str = "app", init: bool = False, image: str | None = None,
) -> None:
    """Write a waiting state the way kubelet does after a failed pull."""
    pod = get(cp, "pod", name, namespace)
    specs = pod["spec"]["initContainers" if init else "containers"]
    spec = next(c for c in specs if c["name"] == container)
    status = {
        "name": container,
        "image": image or spec["image"],
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": message}},
    }
    key = "initContainerStatuses" if init else "containerStatuses"
    body = {"status": {"phase": "Pending", key: [status]}}
    cp.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status",
               "--type=merge", "-p", json.dumps(body))


def events(cp: ControlPlane, namespace: str, pod: str | None = None) -> list[dict[str, Any]]:
    out = json.loads(
        cp.kubectl("get", "events.events.k8s.io", "-n", namespace, "-o", "json").stdout
    )["items"]
    return [e for e in out if pod is None or e.get("regarding", {}).get("name") == pod]


def wait_event(
    cp: ControlPlane, namespace: str, pod: str, reason: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events(cp, namespace, pod):
            if e.get("reason") == reason:
                return e
        time.sleep(0.3)
    got = [(e.get("reason"), e.get("note")) for e in events(cp, namespace, pod)]
    raise AssertionError(f"no {reason} event for {namespace}/{pod} in {timeout}s; got {got}")


def tote_events(cp: ControlPlane, namespace: str, pod: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in events(cp, namespace, pod)
        if e.get("reportingController") == "tote.dev/controller"
    ]


def force_delete_namespace(cp: ControlPlane, name: str) -> None:
    """Delete a namespace for real, without kube-controller-manager.

    There is no namespace controller on the test control plane: empty the namespace of the
    kinds tests create, then clear the `kubernetes` finalizer ourselves (what the namespace
    controller does last), so the namespace is gone instead of stuck in Terminating.
    """
    kinds = (
        "pods,replicasets.apps,deployments.apps,statefulsets.apps,daemonsets.apps,"
        "jobs.batch,cronjobs.batch,events,events.events.k8s.io,configmaps,secrets,"
        "serviceaccounts,leases.coordination.k8s.io,salvagerecords.tote.dev"
    )
    cp.kubectl(
        "delete", kinds, "--all", "-n", name, "--force", "--grace-period=0", "--wait=false",
        "--ignore-not-found", check=False,
    )  # fmt: skip
    cp.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
    got = cp.kubectl("get", "namespace", name, "-o", "json", check=False)
    if got.returncode != 0:
        return
    ns = json.loads(got.stdout)
    ns.setdefault("spec", {})["finalizers"] = []
    cp.kubectl(
        "replace", "--raw", f"/api/v1/namespaces/{name}/finalize", "-f", "-",
        input=json.dumps(ns), check=False,
    )  # fmt: skip


def pod_running(pod: dict[str, Any]) -> bool:
    """The one "pod Running" predicate of the harness: phase Running, every container
    started, and not being deleted (a pod on its way out is not the workload running)."""
    st = pod.get("status", {})
    cs = st.get("containerStatuses", [])
    return bool(
        st.get("phase") == "Running" and cs
        and all("running" in (c.get("state") or {}) for c in cs)
        and not pod["metadata"].get("deletionTimestamp")
    )  # fmt: skip
