"""Detection end to end against the real kube-apiserver (issue 2 §5).

The controller runs as its own process with the restricted `tote-controller` identity
(RBAC rendered from the chart), so every API call it needs must be allowed by the chart.
Tests play kubelet: they create Nodes with status.images and write pod waiting states
through the status subresource.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controller import ControllerProcess, Controllers
from tests.cluster.controlplane import ControlPlane
from tests.cluster.objects import (
    create_node,
    create_pod,
    set_waiting,
    tote_events,
    wait_event,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
BACKOFF = 'Back-off pulling image "{}"'
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def controller(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControllerProcess]:
    # One replica for the whole module (the controllers fixture is per test).
    factory = Controllers(control_plane, tmp_path_factory.mktemp("ctl"))
    try:
        yield factory.start("detect-1", lease="tote-detect", wait_lead=True)
    finally:
        factory.stop_all()


def opted_in(**extra: str) -> dict[str, str]:
    return {"tote.dev/auto-salvage": "true", **extra}


def test_a_digest_ref_salvageable_names_the_node(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{D1}", "127.0.0.1:5999/app:v1"]])
    create_node(cp, target)
    image = f"127.0.0.1:5999/app@{D1}"
    detected0 = controller.metric("tote_detected_failures_total")
    salv0 = controller.metric("tote_salvageable_images_total")
    create_pod(cp, ns, "web", image, node=target, annotations=opted_in())
    set_waiting(cp, ns, "web", reason="ErrImagePull", message=REFUSED)
    ev = wait_event(cp, ns, "web", "ImageSalvageable")
    assert ev["type"] == "Warning"
    assert holder in ev["note"] and D1 in ev["note"] and "technical debt" in ev["note"]
    assert ev["regarding"]["kind"] == "Pod" and ev["regarding"]["name"] == "web"
    assert ev["reportingController"] == "tote.dev/controller"
    # kubelet moves on to ImagePullBackOff: same incident, no new count, event aggregated.
    set_waiting(cp, ns, "web", reason="ImagePullBackOff", message=BACKOFF.format(image))
    time.sleep(3)
    assert controller.metric("tote_detected_failures_total") == detected0 + 1
    assert controller.metric("tote_salvageable_images_total") == salv0 + 1
    salvageable = [e for e in tote_events(cp, ns, "web") if e["reason"] == "ImageSalvageable"]
    assert len(salvageable) == 1
    # `kubectl events` (core/v1 view of the same objects) shows the story.
    out = cp.kubectl("events", "-n", ns, "--for", "pod/web").stdout
    assert "ImageSalvageable" in out


def test_b_tag_without_known_digest_not_actionable(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    target = uniq("target")
    create_node(cp, target)
    create_pod(cp, ns, "tagged", "127.0.0.1:5999/unknown:v9", node=target,
               annotations=opted_in())
    set_waiting(cp, ns, "tagged", reason="ErrImagePull", message=REFUSED)
    ev = wait_event(cp, ns, "tagged", "ImageNotActionable")
    assert "127.0.0.1:5999/unknown:v9" in ev["note"] and "digest" in ev["note"]


def test_b2_tag_resolved_from_node_status(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [["docker.io/library/nginx:1.25", f"docker.io/library/nginx@{D2}"]])
    create_node(cp, target)
    create_pod(cp, ns, "nginx", "nginx:1.25", node=target, annotations=opted_in())
    set_waiting(cp, ns, "nginx", reason="ImagePullBackOff", message=BACKOFF.format("nginx:1.25"))
    ev = wait_event(cp, ns, "nginx", "ImageSalvageable")
    assert D2 in ev["note"] and holder in ev["note"]


def test_c_kill_switch_at_runtime(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{D1}"]])
    create_node(cp, target)
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "tote-config", "namespace": cp.namespace}}
    try:
        cp.apply({**cm, "data": {"enabled": "false"}})
        time.sleep(2)  # "within seconds"
        assert controller.readyz()["enabled"] is False
        create_pod(cp, ns, "off", f"127.0.0.1:5999/app@{D1}", node=target,
                   annotations=opted_in())
        set_waiting(cp, ns, "off", reason="ErrImagePull", message=REFUSED)
        time.sleep(4)
        assert tote_events(cp, ns, "off") == []
    finally:
        cp.apply({**cm, "data": {"enabled": "true"}})
    # Turned back on: the still-failing pod is picked up without any change to it.
    wait_event(cp, ns, "off", "ImageSalvageable")


def test_d_namespace_not_opted_in_and_system_namespaces(
    control_plane: ControlPlane, controller: ControllerProcess
) -> None:
    cp = control_plane
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{D1}"]])
    create_node(cp, target)
    plain = uniq("plain")
    cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": plain}})
    wrong = uniq("wrong")
    cp.apply({"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": wrong, "annotations": {"tote.dev/allow": "yes"}}})
    pods = [(plain, uniq("p")), (wrong, uniq("p")), ("kube-system", uniq("sys"))]
    for ns, name in pods:
        create_pod(cp, ns, name, f"127.0.0.1:5999/app@{D1}", node=target,
                   annotations=opted_in())
        set_waiting(cp, ns, name, reason="ErrImagePull", message=REFUSED)
    time.sleep(4)
    for ns, name in pods:
        assert tote_events(cp, ns, name) == [], (ns, name)
    for ns, name in pods:
        cp.kubectl("delete", "pod", name, "-n", ns, "--grace-period=0", "--force", check=False)


def test_d2_pod_not_opted_in_or_wrong_value(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{D1}"]])
    create_node(cp, target)
    create_pod(cp, ns, "none", f"127.0.0.1:5999/app@{D1}", node=target)
    create_pod(cp, ns, "yes", f"127.0.0.1:5999/app@{D1}", node=target,
               annotations={"tote.dev/auto-salvage": "yes"})
    for name in ("none", "yes"):
        set_waiting(cp, ns, name, reason="ErrImagePull", message=REFUSED)
    time.sleep(4)
    # Not opted in: nothing is salvaged. The wrong value is not silent, though: one
    # InvalidAnnotation warning on that pod (issue 11), no Image* event on either.
    got = [(e["regarding"]["name"], e["reason"]) for e in tote_events(cp, ns)]
    assert got == [("yes", "InvalidAnnotation")], got


def test_e_opt_in_inherited_from_deployment(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{D1}"]])
    create_node(cp, target)
    _dep, rs = make_deployment_chain(cp, ns, annotate="deployment")
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
             "uid": rs["metadata"]["uid"], "controller": True}
    create_pod(cp, ns, "child", f"127.0.0.1:5999/app@{D1}", node=target, owner=owner)
    set_waiting(cp, ns, "child", reason="ErrImagePull", message=REFUSED)
    ev = wait_event(cp, ns, "child", "ImageSalvageable")
    assert holder in ev["note"]


def make_deployment_chain(
    cp: ControlPlane, ns: str, *, annotate: str
) -> tuple[dict[str, object], dict[str, object]]:
    """A Deployment and its ReplicaSet as real objects (no controller-manager needed)."""
    from tests.cluster.objects import get

    ann = {"tote.dev/auto-salvage": "true"}
    labels = {"app": "web"}
    template = {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "x"}]}}
    cp.apply({"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "web", "namespace": ns,
                           "annotations": ann if annotate == "deployment" else {}},
              "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                       "template": template}})
    dep = get(cp, "deployment", "web", ns)
    cp.apply({"apiVersion": "apps/v1", "kind": "ReplicaSet",
              "metadata": {"name": "web-abc", "namespace": ns,
                           "annotations": ann if annotate == "replicaset" else {},
                           "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": "web", "uid": dep["metadata"]["uid"],
                                                "controller": True}]},
              "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                       "template": template}})
    return dep, get(cp, "replicaset", "web-abc", ns)


def test_i_init_container_failure_detected_with_its_image(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    holder, target = uniq("holder"), uniq("target")
    init_image = f"127.0.0.1:5999/init@{D2}"
    create_node(cp, holder, [[init_image]])
    create_node(cp, target)
    create_pod(cp, ns, "withinit", "127.0.0.1:5999/main:v1", node=target,
               annotations=opted_in(), init_image=init_image)
    set_waiting(cp, ns, "withinit", reason="ImagePullBackOff", message=BACKOFF.format(init_image),
                container="init", init=True)
    ev = wait_event(cp, ns, "withinit", "ImageSalvageable")
    assert "127.0.0.1:5999/init" in ev["note"] and D2 in ev["note"]


@pytest.mark.parametrize(
    ("case", "image", "policy", "message", "needle"),
    [
        ("always", f"127.0.0.1:5999/app@{D1}", "Always", REFUSED, "imagePullPolicy is Always"),
        ("auth", f"127.0.0.1:5999/app@{D1}", "IfNotPresent",
         "failed to pull: 401 Unauthorized", "authorisation"),
        ("invalid", "127.0.0.1:5999/UPPER:case", "IfNotPresent", REFUSED, "lowercase"),
        ("nowhere", f"127.0.0.1:5999/gone@sha256:{uuid.uuid4().hex * 2}", "IfNotPresent", REFUSED,
         "no other node holds"),
    ],
)
def test_not_actionable_cases(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str,
    case: str, image: str, policy: str, message: str, needle: str,
) -> None:
    cp, ns = control_plane, test_namespace
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{D1}"]])
    create_node(cp, target)
    create_pod(cp, ns, case, image, node=target, annotations=opted_in(), pull_policy=policy)
    set_waiting(cp, ns, case, reason="ErrImagePull", message=message)
    ev = wait_event(cp, ns, case, "ImageNotActionable")
    assert needle in ev["note"], ev["note"]
    assert not [e for e in tote_events(cp, ns, case) if e["reason"] == "ImageSalvageable"]


def test_g_apiserver_restart_mid_watch(
    control_plane: ControlPlane, controller: ControllerProcess, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    cp.restart_apiserver()
    holder, target = uniq("holder"), uniq("target")
    create_node(cp, holder, [[f"127.0.0.1:5999/app@{D1}"]])
    create_node(cp, target)
    create_pod(cp, ns, "after", f"127.0.0.1:5999/app@{D1}", node=target, annotations=opted_in())
    set_waiting(cp, ns, "after", reason="ErrImagePull", message=REFUSED)
    ev = wait_event(cp, ns, "after", "ImageSalvageable", timeout=60)
    assert holder in ev["note"]
    assert controller.proc is not None and controller.proc.alive()


def test_h_restricted_identity_is_what_the_controller_uses(
    control_plane: ControlPlane, controller: ControllerProcess
) -> None:
    kubeconfig = Path(control_plane.controller_kubeconfig).read_text()
    assert controller.proc is not None
    assert f"--kubeconfig={control_plane.controller_kubeconfig}" in controller.proc.argv
    assert "client-certificate" not in kubeconfig  # a ServiceAccount token, not admin
    denied = control_plane.kubectl("auth", "can-i", "create", "pods", "-A",
                                   kubeconfig=control_plane.controller_kubeconfig, check=False)
    assert denied.stdout.strip() == "no"
