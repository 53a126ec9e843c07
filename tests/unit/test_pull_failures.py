"""Detection from kubelet's pull-failure Events (tote_core/detect/pull_failures.py and the
reconciler's `kubelet_event`): what is read from an Event, how the pod is overlaid, and that
the reconciler salvages a pod whose status has not caught up yet.

Tried: kubelet's exact wording, for a container and an init container; other `Failed`
Events (a failed create, a mount) and Events about other kinds; a status that already says
ErrImagePull / ImagePullBackOff (the status wins); a started container; a spec whose image
changed since; an Event older than a hint is kept; an Event about a replaced pod (other
UID); a pod deleted (hint forgotten); expiry by the clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from tote_core.detect import pull_failures
from tote_core.detect.detector import Verdict, detect
from tote_core.detect.pull_failures import HINT_TTL, PullFailure, PullFailures, overlay
from tote_core.structs.kube import CoreEvent, Pod
from tote_core.testing import objects
from tote_core.testing.fakekube import FakeCluster
from tote_core.testing.pytest_plugin import HarnessFactory
from tote_core.timefmt import micro_time, utcnow

D = "sha256:" + "d" * 64
WEB = "docker.io/library/web"
REFUSED = ('Failed to pull image "docker.io/library/web:1": failed to pull and unpack image '
           '"docker.io/library/web:1": failed to resolve reference: dial tcp 10.0.0.1:443: '
           'connect: connection refused')


def event(message: str = REFUSED, *, uid: str = "uid-1", field_path: str =
          "spec.containers{app}", reason: str = "Failed", kind: str = "Pod",
          age: float = 0.0) -> CoreEvent:
    return msgspec.convert({
        "metadata": {"name": "web-1.17f", "namespace": "shop"},
        "involvedObject": {"kind": kind, "namespace": "shop", "name": "web-1", "uid": uid,
                           "fieldPath": field_path},
        "reason": reason, "message": message, "source": {"component": "kubelet"},
        "lastTimestamp": micro_time(utcnow() - timedelta(seconds=age)),
    }, CoreEvent)


def creating_pod(**kw: Any) -> Pod:
    obj = objects.failing_pod("web-1", namespace="shop", image=f"{WEB}:1", node="n1",
                              reason="ContainerCreating", message="", **kw)
    obj["metadata"]["uid"] = "uid-1"
    return msgspec.convert(obj, Pod)


def test_kubelets_wording_is_read() -> None:
    f = pull_failures.from_event(event())
    assert f == PullFailure(pod_uid="uid-1", container="app", init_container=False,
                            image=f"{WEB}:1", message=REFUSED)
    init = pull_failures.from_event(event(field_path="spec.initContainers{setup}"))
    assert init is not None and init.init_container and init.container == "setup"


def test_other_events_are_not_pull_failures() -> None:
    for e in (event("Error: ErrImagePull"),  # kubelet's second Event: no detail
              event("Error: failed to create containerd task: ..."),
              event(reason="BackOff"), event(kind="Node"),
              event(field_path=""), event(uid="")):
        assert pull_failures.from_event(e) is None, e


def test_overlay_reads_the_pod_as_its_status_will_say() -> None:
    f = pull_failures.from_event(event())
    assert f is not None
    [failure] = detect(overlay(creating_pod(), [f]))
    assert failure.reason == "ErrImagePull" and failure.verdict is Verdict.SALVAGE
    assert failure.message == REFUSED
    # No status at all yet: one is made from the spec.
    bare = creating_pod()
    bare = msgspec.structs.replace(bare, status=msgspec.structs.replace(
        bare.status, container_statuses=[]))
    [failure] = detect(overlay(bare, [f]))
    assert failure.container == "app" and failure.raw_image == f"{WEB}:1"
    # kubelet's error text classifies as the status message would.
    auth = pull_failures.from_event(event(
        'Failed to pull image "docker.io/library/web:1": 401 Unauthorized'))
    assert auth is not None
    [failure] = detect(overlay(creating_pod(), [auth]))
    assert failure.verdict is Verdict.AUTH


def test_the_status_wins_once_it_says_something() -> None:
    f = pull_failures.from_event(event())
    assert f is not None
    for reason in ("ErrImagePull", "ImagePullBackOff", "CreateContainerError"):
        obj = objects.failing_pod("web-1", namespace="shop", image=f"{WEB}:1", node="n1",
                                  reason=reason, message="kubelet's own")
        pod = msgspec.convert(obj, Pod)
        assert overlay(pod, [f]) == pod
    started = creating_pod()
    started = msgspec.structs.replace(started, status=msgspec.structs.replace(
        started.status, container_statuses=[msgspec.structs.replace(
            started.status.container_statuses[0], state=msgspec.convert({}, type(
                started.status.container_statuses[0].state)))]))
    assert overlay(started, [f]) == started  # running: no waiting state
    changed = msgspec.convert(objects.failing_pod(
        "web-1", namespace="shop", image=f"{WEB}:2", node="n1", reason="ContainerCreating",
        message=""), Pod)
    assert overlay(changed, [f]) == changed  # the spec names another image now


def test_hints_expire_and_are_forgotten() -> None:
    now = [0.0]
    store = PullFailures(lambda: now[0])
    f = pull_failures.from_event(event())
    assert f is not None
    store.add(f)
    assert store.of("uid-1") == [f]
    now[0] = HINT_TTL + 1
    assert store.of("uid-1") == [] and len(store) == 0
    store.add(f)
    store.forget("uid-1")
    assert store.of("uid-1") == []


async def test_the_reconciler_salvages_at_the_event(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    """The pod still says ContainerCreating; kubelet's Event says the pull failed: the pod is
    detected and handed to salvage now. An old Event, or one about a replaced pod, is not
    acted on."""
    tote_cluster.add(objects.namespace("shop"))
    for name in ("n1", "n2"):
        images = [[f"{WEB}@{D}", f"{WEB}:1"]] if name == "n2" else []
        tote_cluster.add(objects.node(name, images=images))
    tote_cluster.add(objects.failing_pod("web-1", namespace="shop", image=f"{WEB}:1",
                                         node="n1", reason="ContainerCreating", message=""))
    h = await tote_harness()
    await h.settle()
    rec = h.reconciler()
    uid = tote_cluster.get("Pod", "web-1", "shop")["metadata"]["uid"]  # type: ignore[index]
    await rec("shop/web-1")
    assert h.submitted == []  # nothing to see in the status yet
    assert rec.kubelet_event(event(uid=uid, age=HINT_TTL + 5)) is None  # stale
    assert rec.kubelet_event(event(uid="someone-else")) is None  # replaced pod
    assert rec.kubelet_event(event(uid=uid)) == "shop/web-1"
    await rec("shop/web-1")
    [(incident, _)] = h.submitted
    assert incident.digest == D and incident.node_name == "n1"
    assert incident.candidate_nodes == ("n2",)
