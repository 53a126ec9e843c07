"""Pod status → classified failures."""

from __future__ import annotations

from typing import Any

import msgspec

from tote_core.detect.detector import Verdict, detect
from tote_core.detect.inventory import nodes_with_digest, resolve_tag
from tote_core.structs.kube import Node, Pod

D = "sha256:" + "b" * 64


def pod(
    image: str = "nginx:1.25",
    reason: str = "ImagePullBackOff",
    message: str = "Back-off pulling image",
    policy: str = "IfNotPresent",
    init: bool = False,
    image_id: str = "",
    deleted: bool = False,
) -> Pod:
    container = {"name": "c", "image": image, "imagePullPolicy": policy}
    status = {"name": "c", "image": image, "imageID": image_id,
              "state": {"waiting": {"reason": reason, "message": message}}}
    spec: dict[str, Any] = {"nodeName": "n1", "containers": [{"name": "main", "image": "x"}]}
    st: dict[str, Any] = {"containerStatuses": [{"name": "main", "state": {"running": {}}}]}
    if init:
        spec["initContainers"] = [container]
        st["initContainerStatuses"] = [status]
    else:
        spec["containers"] = [container]
        st["containerStatuses"] = [status]
    meta: dict[str, Any] = {"name": "p", "namespace": "ns", "uid": "u1"}
    if deleted:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return msgspec.convert({"metadata": meta, "spec": spec, "status": st}, Pod)


def test_pull_backoff_is_salvage() -> None:
    (f,) = detect(pod())
    assert f.verdict is Verdict.SALVAGE
    assert f.reference is not None and f.reference.name == "docker.io/library/nginx:1.25"
    assert not f.init_container


def test_err_image_pull_and_init_containers() -> None:
    (f,) = detect(pod(reason="ErrImagePull", init=True))
    assert f.verdict is Verdict.SALVAGE and f.init_container and f.container == "c"


def test_other_waiting_reasons_ignored() -> None:
    assert detect(pod(reason="ContainerCreating")) == []
    assert detect(pod(reason="CrashLoopBackOff")) == []
    assert detect(pod(reason="CreateContainerError", message="some other error")) == []


def test_deleted_pods_ignored() -> None:
    assert detect(pod(deleted=True)) == []


def test_always_policy_not_actionable() -> None:
    (f,) = detect(pod(policy="Always"))
    assert f.verdict is Verdict.ALWAYS and "Always" in f.detail


def test_auth_failures_classified() -> None:
    for msg in [
        'failed to pull: unexpected status from HEAD request: 401 Unauthorized',
        "pull access denied, repository does not exist or may require authorization",
        "403 Forbidden",
        "failed to authorize: failed to fetch anonymous token: unauthorized",
    ]:
        (f,) = detect(pod(reason="ErrImagePull", message=msg))
        assert f.verdict is Verdict.AUTH, msg
    (f,) = detect(pod(reason="ErrImagePull", message="dial tcp 127.0.0.1:5000: connect: refused"))
    assert f.verdict is Verdict.SALVAGE


def test_invalid_reference_reported_not_raised() -> None:
    (f,) = detect(pod(image="Bad Image!"))
    assert f.verdict is Verdict.INVALID and "invalid reference" in f.detail


def test_corrupt_content_detected_with_status_digest() -> None:
    msg = (
        'failed to create containerd container: error unpacking image: failed to resolve '
        f'rootfs: content digest {D}: not found'
    )
    (f,) = detect(pod(reason="CreateContainerError", message=msg,
                      image_id=f"docker.io/library/nginx@{D}"))
    assert f.verdict is Verdict.CORRUPT and f.digest == D


def test_corrupt_layer_blob_message_of_containerd_16() -> None:
    msg = (
        "failed to create containerd container: error unpacking image: failed to extract "
        f"layer {D}: failed to get reader from content store: content digest {D}: not found"
    )
    (f,) = detect(pod(reason="CreateContainerError", message=msg))
    assert f.verdict is Verdict.CORRUPT


def _node(name: str, *names: str) -> Node:
    return msgspec.convert(
        {"metadata": {"name": name}, "status": {"images": [{"names": list(names)}]}}, Node
    )


def test_inventory_by_digest_and_tag() -> None:
    nodes = [
        _node("a", f"docker.io/library/nginx@{D}", "docker.io/library/nginx:1.25"),
        _node("b", f"docker.io/library/nginx@{D}"),
        _node("c", "docker.io/library/redis:7"),
    ]
    assert nodes_with_digest(nodes, D) == ["a", "b"]
    from tote_core.detect.reference import parse

    assert resolve_tag(nodes, parse("nginx:1.25")) == D
    assert resolve_tag(nodes, parse("nginx:1.26")) is None
    assert resolve_tag(nodes, parse("redis:7")) is None  # no digest name listed
