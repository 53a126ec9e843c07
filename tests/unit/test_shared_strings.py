"""Cached pods and nodes share their repeated strings and stay equal to what was decoded.

Tried: two pods of one namespace, node, image and owner decoded from separate JSON bodies
(every string its own object after decoding) — after `share_pod_strings` the repeated
fields are one object, the unique ones (name, uid, IP) are untouched, and each pod still
equals a fresh decode of its body (nothing lost or altered, waiting states and init
containers included); the same for two nodes reporting the same images; and a cached struct
is not tracked by the cyclic garbage collector (`gc=False`).
"""

from __future__ import annotations

import gc
import json
from typing import Any

import msgspec

from tote_core.structs.kube import Node, Pod, share_node_strings, share_pod_strings

IMAGE = "registry.example/team/app@sha256:" + "a" * 64


def _pod_json(name: str, uid: str, ip: str) -> bytes:
    body: dict[str, Any] = {
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "resourceVersion": "17",
            "creationTimestamp": "2026-12-06T10:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "5d8f"},
            "annotations": {"tote.dev/auto-salvage": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "web-5d8f", "uid": "rs-uid", "controller": True}],
        },
        "spec": {
            "nodeName": "node-7",
            "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}],
            "initContainers": [{"name": "init", "image": IMAGE}],
        },
        "status": {
            "phase": "Pending", "podIP": ip,
            "containerStatuses": [{"name": "app", "image": IMAGE, "imageID": "",
                                   "state": {"waiting": {"reason": "ErrImagePull",
                                                         "message": "refused"}}}],
            "initContainerStatuses": [{"name": "init", "image": IMAGE, "imageID": ""}],
        },
    }
    # A fresh bytes object per pod, so no string can be shared by the decoder itself.
    return json.dumps(body).encode()


def test_pods_share_repeated_strings_and_stay_equal() -> None:
    raw_a, raw_b = _pod_json("web-1", "uid-1", "10.0.0.1"), _pod_json("web-2", "uid-2",
                                                                       "10.0.0.2")
    a = share_pod_strings(msgspec.json.decode(raw_a, type=Pod))
    b = share_pod_strings(msgspec.json.decode(raw_b, type=Pod))
    assert a == msgspec.json.decode(raw_a, type=Pod)
    assert b == msgspec.json.decode(raw_b, type=Pod)
    shared = [
        lambda p: p.metadata.namespace,
        lambda p: p.metadata.creation_timestamp,
        lambda p: p.spec.node_name,
        lambda p: p.spec.containers[0].image,
        lambda p: p.spec.containers[0].name,
        lambda p: p.spec.init_containers[0].image,
        lambda p: p.status.phase,
        lambda p: p.status.container_statuses[0].image,
        lambda p: p.status.container_statuses[0].state.waiting.reason,
        lambda p: p.status.init_container_statuses[0].name,
        lambda p: p.metadata.owner_references[0].uid,
        lambda p: p.metadata.labels["pod-template-hash"],
        lambda p: next(iter(p.metadata.annotations)),
    ]
    for field in shared:
        assert field(a) is field(b)
    assert a.metadata.name != b.metadata.name and a.status.pod_ip == "10.0.0.1"


def _node_json(name: str) -> bytes:
    return json.dumps({
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {"images": [{"names": [IMAGE, "registry.example/team/app:v1"]}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }).encode()


def test_nodes_share_image_names_and_stay_equal() -> None:
    a = share_node_strings(msgspec.json.decode(_node_json("n1"), type=Node))
    b = share_node_strings(msgspec.json.decode(_node_json("n2"), type=Node))
    assert a == msgspec.json.decode(_node_json("n1"), type=Node)
    assert a.ready and b.zone == "z1"
    assert a.status.images[0].names[0] is b.status.images[0].names[0]
    assert a.status.images[0].names[1] is b.status.images[0].names[1]
    assert a.metadata.labels["topology.kubernetes.io/zone"] is b.zone


def test_cached_structs_are_not_tracked_by_the_cycle_collector() -> None:
    pod = msgspec.json.decode(_pod_json("web-1", "uid-1", "10.0.0.1"), type=Pod)
    assert not gc.is_tracked(pod)
    assert not gc.is_tracked(pod.metadata)
    assert not gc.is_tracked(pod.spec.containers[0])
