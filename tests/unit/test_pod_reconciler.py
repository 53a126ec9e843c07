"""Every branch of the pod reconciler (tote_core/reconcile/pods.py), over the fake cluster:
real informers, host, event recorder; plugins scripted (tote_core/testing).

Each test puts the cluster in one state, runs one reconcile of the pod and checks what the
reconciler wrote (events), asked (hooks) and handed to salvage (`harness.submitted`)."""

from __future__ import annotations

from typing import Any

import pytest

from tote_core.hooks.hookspecs import hookimpl
from tote_core.testing import objects
from tote_core.testing.fakekube import FakeCluster
from tote_core.testing.harness import Harness
from tote_core.testing.pytest_plugin import HarnessFactory
from tote_core.testing.scripted import HookRecorder, ScriptedAgents

D = "sha256:" + "d" * 64
OTHER = "sha256:" + "e" * 64
WEB = "docker.io/library/web"
KEY = "shop/web-1"


def world(cluster: FakeCluster, *, holders: tuple[str, ...] = ("n2",)) -> None:
    """Namespace `shop` opted in; n1 is the failing pod's node; `holders` hold web:1 (D)."""
    cluster.add(objects.namespace("shop"))
    for name in ("n1", "n2", "n3"):
        images = [[f"{WEB}@{D}", f"{WEB}:1"]] if name in holders else []
        cluster.add(objects.node(name, images=images))


async def reconcile(h: Harness, pod: dict[str, Any], **kwargs: Any) -> None:
    h.cluster.add(pod)
    await h.settle()
    rec = h.reconciler(**kwargs)
    assert await rec(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}") is None


def pod(**overrides: Any) -> dict[str, Any]:
    name = overrides.pop("name", "web-1")
    args: dict[str, Any] = {"namespace": "shop", "image": f"{WEB}:1", "node": "n1"}
    args.update(overrides)
    return objects.failing_pod(name, **args)


async def test_salvageable_pod_is_evented_hooked_and_submitted(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster, holders=("n2", "n3"))
    seen = HookRecorder()
    h = await tote_harness(plugins={"seen": seen})
    await reconcile(h, pod())
    [event] = tote_cluster.events(regarding="web-1")
    assert event["reason"] == "ImageSalvageable" and event["type"] == "Warning"
    assert D in event["note"] and "n2" in event["note"] and "n3" in event["note"]
    [(incident, submitted_pod)] = h.submitted
    assert incident.digest == D and incident.node_name == "n1" and incident.kind == "pull"
    assert incident.candidate_nodes == ("n2", "n3")
    assert submitted_pod.metadata.name == "web-1"
    assert [i.digest for i in seen.detected] == [D]
    assert [(n.type, n.digest) for n in seen.notified] == [("detected", D)]


async def test_repeat_reconciles_hook_once_and_aggregate_the_event(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    seen = HookRecorder()
    h = await tote_harness(plugins={"seen": seen})
    tote_cluster.add(pod())
    await h.settle()
    rec = h.reconciler()
    for _ in range(3):
        await rec(KEY)
    assert len(seen.detected) == 1 and len(seen.notified) == 1
    assert len(h.submitted) == 3  # salvage dedupes by record, detection resubmits
    assert len(tote_cluster.events(regarding="web-1")) == 1  # one Event, a series


async def test_deleted_pod_is_forgotten(tote_cluster: FakeCluster,
                                        tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness()
    rec = h.reconciler()
    rec.waiting_on_nodes.add(KEY)
    assert await rec(KEY) is None
    assert KEY not in rec.waiting_on_nodes and not h.submitted


@pytest.mark.parametrize("switch", [
    {"settings": {"enabled": False}},
    {"config_map": False},
    {"config_map": "maybe"},  # unparseable: fail closed
])
async def test_kill_switch_off_does_nothing(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory, switch: dict[str, Any]
) -> None:
    world(tote_cluster)
    if "config_map" in switch:
        tote_cluster.add(objects.kill_switch(switch["config_map"]))
    h = await tote_harness(settings=switch.get("settings"))
    await reconcile(h, pod())
    assert tote_cluster.events() == [] and h.submitted == []


async def test_runtime_switch_overrides_the_flag(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    tote_cluster.add(objects.kill_switch(True))
    h = await tote_harness(settings={"enabled": False})
    await reconcile(h, pod())
    assert len(h.submitted) == 1


@pytest.mark.parametrize(("namespace", "denied"), [
    ("unlabelled", ()),
    ("kube-system", ()),
    ("shop", ("shop",)),
])
async def test_namespace_not_allowed(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory, namespace: str,
        denied: tuple[str, ...]) -> None:
    world(tote_cluster)
    if namespace != "shop":
        tote_cluster.add(objects.namespace(namespace, allow=namespace == "kube-system"))
    h = await tote_harness(settings={"deny_namespaces": list(denied)})
    await reconcile(h, pod(namespace=namespace))
    assert tote_cluster.events() == [] and h.submitted == []


async def test_pod_without_failures_is_left_alone(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness()
    running = objects.running_pod("web-1", namespace="shop", image=f"{WEB}:1", node="n1")
    running["metadata"]["annotations"] = {objects.AUTO_SALVAGE: "true"}
    rec = h.reconciler()
    rec.waiting_on_nodes.add(KEY)
    tote_cluster.add(running)
    await h.settle()
    assert await rec(KEY) is None
    assert KEY not in rec.waiting_on_nodes and tote_cluster.events() == []


@pytest.mark.parametrize(("own", "answer", "acted"), [
    (False, True, False),  # the pod's own annotation decides, no plugin asked
    (None, None, False),  # owners but no plugin answers: not opted in
    (None, True, True),  # an opt_in plugin opts the owned pod in
    (None, False, False),
])
async def test_opt_in(tote_cluster: FakeCluster, tote_harness: HarnessFactory,
                      own: bool | None, answer: bool | None, acted: bool) -> None:
    world(tote_cluster)
    seen = HookRecorder(opt_in_answer=answer)
    h = await tote_harness(plugins={"seen": seen})
    await reconcile(h, pod(opt_in=own, owner=("ReplicaSet", "web-5d4f")))
    assert bool(h.submitted) is acted
    if own is None:
        [query] = seen.asked
        assert query.owner_references == (("apps/v1", "ReplicaSet", "web-5d4f"),)
    else:
        assert seen.asked == []


async def test_standalone_pod_without_annotation_is_not_opted_in(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    seen = HookRecorder(opt_in_answer=True)
    h = await tote_harness(plugins={"seen": seen})
    await reconcile(h, pod(opt_in=None))
    assert h.submitted == [] and seen.asked == []


@pytest.mark.parametrize(("overrides", "why"), [
    ({"image": "Not A Reference!"}, "Not A Reference!"),
    ({"pull_policy": "Always"}, "imagePullPolicy is Always"),
    ({"message": "pull access denied: 401 Unauthorized"}, "refused authorisation"),
])
async def test_not_actionable(tote_cluster: FakeCluster, tote_harness: HarnessFactory,
                              overrides: dict[str, Any], why: str) -> None:
    world(tote_cluster)
    h = await tote_harness()
    await reconcile(h, pod(**overrides))
    [event] = tote_cluster.events(regarding="web-1")
    assert event["reason"] == "ImageNotActionable" and why in event["note"]
    assert h.submitted == []


async def test_auth_failure_salvaged_when_allowed(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness(settings={"salvage_on_auth_failure": True})
    await reconcile(h, pod(message="pull access denied: 401 Unauthorized"))
    assert tote_cluster.event_reasons("web-1") == ["ImageSalvageable"]
    assert len(h.submitted) == 1


async def test_corrupt_image_is_reported_and_submitted(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness()
    await reconcile(h, pod(
        reason="CreateContainerError", image_id=f"{WEB}@{D}",
        message=f"failed to create containerd container: error unpacking image: "
                f"failed to extract layer: content digest {OTHER}: not found"))
    [event] = tote_cluster.events(regarding="web-1")
    assert event["reason"] == "ImageCorrupt" and event["action"] == "Salvage"
    [(incident, _)] = h.submitted
    assert incident.kind == "corrupt" and incident.digest == D and incident.candidate_nodes == ()


async def test_unknown_tag_waits_for_nodes(tote_cluster: FakeCluster,
                                           tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness()
    rec = h.reconciler()
    tote_cluster.add(pod(image=f"{WEB}:2"))
    await h.settle()
    await rec(KEY)
    [event] = tote_cluster.events(regarding="web-1")
    assert event["reason"] == "ImageNotActionable"
    assert f"no node reports a digest for tag {WEB}:2" in event["note"]
    assert KEY in rec.waiting_on_nodes and h.submitted == []


async def test_tag_resolved_by_the_agents(tote_cluster: FakeCluster,
                                          tote_harness: HarnessFactory,
                                          tote_agents: ScriptedAgents) -> None:
    world(tote_cluster)
    tote_agents.tags[f"{WEB}:2"] = D  # kubelet does not list it; an agent knows it
    h = await tote_harness(plugins={"agents": tote_agents})
    await reconcile(h, pod(image=f"{WEB}:2"))
    [(incident, _)] = h.submitted
    assert incident.digest == D and incident.candidate_nodes == ("n2",)


class Registry:
    """A `registry_resolve` plugin answering one digest."""

    def __init__(self, digest: str) -> None:
        self.digest = digest

    @hookimpl
    def registry_resolve(self, image_ref: str) -> str:
        return self.digest


async def test_registry_digest_held_by_no_node(tote_cluster: FakeCluster,
                                               tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness(plugins={"registry": Registry(OTHER)})
    rec = h.reconciler()
    tote_cluster.add(pod(image=f"{WEB}:2"))
    await h.settle()
    await rec(KEY)
    [event] = tote_cluster.events(regarding="web-1")
    assert event["reason"] == "ImageResolvedUncached" and OTHER in event["note"]
    assert KEY in rec.waiting_on_nodes and h.submitted == []


async def test_registry_digest_held_by_a_node_is_salvageable(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness(plugins={"registry": Registry(D)})
    await reconcile(h, pod(image=f"{WEB}:2"))
    assert tote_cluster.event_reasons("web-1") == ["ImageSalvageable"]


async def test_target_already_holds_the_digest(tote_cluster: FakeCluster,
                                               tote_harness: HarnessFactory) -> None:
    world(tote_cluster, holders=("n1", "n2"))
    h = await tote_harness()
    await reconcile(h, pod(image=f"{WEB}@{D}"))
    assert tote_cluster.events() == [] and h.submitted == []  # kubelet's retry will find it


async def test_no_other_node_holds_the_digest(tote_cluster: FakeCluster,
                                              tote_harness: HarnessFactory) -> None:
    world(tote_cluster, holders=())
    h = await tote_harness()
    rec = h.reconciler()
    tote_cluster.add(pod(image=f"{WEB}@{D}"))
    await h.settle()
    await rec(KEY)
    [event] = tote_cluster.events(regarding="web-1")
    assert event["reason"] == "ImageNotActionable"
    assert f"no other node holds digest {D}" in event["note"]
    assert KEY in rec.waiting_on_nodes


async def test_agents_find_a_holder_kubelet_does_not_list(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory,
        tote_agents: ScriptedAgents) -> None:
    world(tote_cluster, holders=())
    tote_agents.holders[D] = ["n3"]  # beyond kubelet's 50-image list
    h = await tote_harness(plugins={"agents": tote_agents})
    rec = h.reconciler()
    rec.waiting_on_nodes.add(KEY)
    tote_cluster.add(pod(image=f"{WEB}@{D}"))
    await h.settle()
    await rec(KEY)
    [(incident, _)] = h.submitted
    assert incident.candidate_nodes == ("n3",) and KEY not in rec.waiting_on_nodes


async def test_a_waiting_pod_is_salvaged_once_a_node_reports_the_image(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory,
        tote_agents: ScriptedAgents) -> None:
    """The pipeline as the controller wires it: a pod with no source waits; the node
    informer's change (kubelet lists the image on n2) requeues it and the salvage runs."""
    world(tote_cluster, holders=())
    h = await tote_harness(plugins={"agents": tote_agents})
    tote_cluster.add(pod(image=f"{WEB}@{D}"))
    reconciler, _ = await h.run_pipeline()
    await h.settle()
    assert KEY in reconciler.waiting_on_nodes and tote_agents.calls == []
    tote_cluster.modify("Node", "n2", patch={"status": {"images": [{"names": [f"{WEB}@{D}"]}]}})
    await h.settle()
    assert [c.source_node for c in tote_agents.calls] == ["n2"]
    assert tote_cluster.event_reasons("web-1") == [
        "ImageNotActionable", "ImageSalvageable", "ImageSalvaged"]
