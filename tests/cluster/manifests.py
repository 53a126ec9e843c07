"""The e2e workloads' manifests — pods on the cluster's pod network, quick to stop — and how
a pod's waiting reasons read back."""

from __future__ import annotations

from typing import Any


def waiting_reasons(pod: dict[str, Any]) -> dict[str, str]:
    """container name → waiting reason (init containers included)."""
    st = pod.get("status", {})
    out = {}
    for c in st.get("initContainerStatuses", []) + st.get("containerStatuses", []):
        waiting = (c.get("state") or {}).get("waiting")
        if waiting:
            out[c["name"]] = waiting.get("reason", "")
    return out


def pod_spec(
    image: str, *, pull_policy: str = "IfNotPresent", args: list[str] | None = None,
    env: dict[str, str] | None = None, restart_policy: str | None = None,
) -> dict[str, Any]:
    """A pod spec for the test images (quick to stop); `env` e.g. the hello program's
    TOTE_LISTEN / TOTE_IGNORE_SIGTERM (tests/cluster/hello)."""
    container: dict[str, Any] = {"name": "app", "image": image, "imagePullPolicy": pull_policy}
    if args is not None:
        container["args"] = args
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        **({"restartPolicy": restart_policy} if restart_policy else {}),
    }


def pod_manifest(
    name: str,
    namespace: str,
    image: str,
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec_kw: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {},
                     "labels": labels or {}},
        "spec": pod_spec(image, **spec_kw),
    }


def deployment_manifest(name: str, namespace: str, image: str, **pod_kw: Any
                        ) -> dict[str, Any]:
    """One replica of `pod_manifest(name, namespace, image, **pod_kw)`'s pod; pods labelled
    app=<name>; the pod's annotations go on the template."""
    pod = pod_manifest(name, namespace, image, **pod_kw)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": pod["metadata"]["annotations"]},
                "spec": pod["spec"],
            },
        },
    }
