"""Builders for the objects a tote test puts into the fake cluster: opted-in namespaces,
nodes that hold images, pods kubelet reports as failing to pull, the kill-switch ConfigMap.

Plain dicts in the API's own shape (camelCase), so a test can edit any field the builder
does not cover before adding it; what tote reads of them is decoded by the real informers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

ALLOW = "tote.dev/allow"
AUTO_SALVAGE = "tote.dev/auto-salvage"

Obj = dict[str, Any]


def namespace(name: str, *, allow: bool = True, annotations: dict[str, str] | None = None
              ) -> Obj:
    """A Namespace, opted in (`tote.dev/allow: "true"`) unless `allow=False`."""
    notes = dict(annotations or {})
    if allow:
        notes[ALLOW] = "true"
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": notes}}


def node(name: str, *, images: Iterable[str | Sequence[str]] = (), ready: bool = True,
         zone: str | None = None, labels: dict[str, str] | None = None) -> Obj:
    """A Node whose status lists `images` as kubelet does: each item one image, a string
    for one name (`repo@sha256:…` or `repo:tag`) or a sequence of names of the same image
    (`["docker.io/library/web@sha256:…", "docker.io/library/web:1.0"]`)."""
    all_labels = dict(labels or {})
    if zone:
        all_labels["topology.kubernetes.io/zone"] = zone
    entries = [{"names": [item] if isinstance(item, str) else list(item)} for item in images]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "status": {
            "images": entries,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def failing_pod(
    name: str, *, namespace: str, image: str, node: str, opt_in: bool | None = True,
    reason: str = "ImagePullBackOff",
    message: str = "Back-off pulling image: failed to resolve reference: "
                   "dial tcp: connection refused",
    container: str = "app", init: bool = False, pull_policy: str = "IfNotPresent",
    owner: tuple[str, str] | None = None, image_id: str = "",
) -> Obj:
    """A scheduled Pod whose container kubelet reports waiting on `reason` (a pull failure
    by default, `CreateContainerError` with a missing-content message for a corrupt image).

    `opt_in`: the pod's own `tote.dev/auto-salvage` annotation (None: no annotation, so
    owners and `opt_in` plugins decide). `owner`: (kind, name) of a controlling owner, e.g.
    `("ReplicaSet", "web-5d4f")` — owned pods are the ones salvage restarts."""
    notes = {} if opt_in is None else {AUTO_SALVAGE: "true" if opt_in else "false"}
    meta: Obj = {"name": name, "namespace": namespace, "annotations": notes}
    if owner is not None:
        meta["ownerReferences"] = [{
            "apiVersion": "batch/v1" if owner[0] == "Job" else "apps/v1", "kind": owner[0],
            "name": owner[1], "uid": f"owner-{owner[1]}", "controller": True,
        }]
    spec_container = {"name": container, "image": image, "imagePullPolicy": pull_policy}
    status_container = {"name": container, "image": image, "imageID": image_id,
                        "state": {"waiting": {"reason": reason, "message": message}}}
    containers, statuses = "containers", "containerStatuses"
    spec: Obj = {"nodeName": node, "containers": []}
    status: Obj = {"phase": "Pending"}
    if init:
        containers, statuses = "initContainers", "initContainerStatuses"
        spec["containers"] = [{"name": "main", "image": "docker.io/library/busybox:1"}]
    spec[containers] = [spec_container]
    status[statuses] = [status_container]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": status}


def running_pod(name: str, *, namespace: str, image: str, node: str, **labels: str) -> Obj:
    """A Pod whose container runs (nothing for tote to do), e.g. an agent pod with labels."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "main", "image": image, "state": {"running": {}}}]},
    }


def kill_switch(enabled: bool | str, *, namespace: str = "tote-system",
                name: str = "tote-config", reason: str = "") -> Obj:
    """The kill-switch ConfigMap as `tote disable`/`tote enable` leave it (`enabled` may
    be any string, to test the fail-closed reading of a bad value)."""
    value = enabled if isinstance(enabled, str) else ("true" if enabled else "false")
    data = {"enabled": value}
    if reason:
        data["reason"] = reason
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data}
