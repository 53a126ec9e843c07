"""Every branch of a salvage job (tote_core/salvage), over the fake cluster with scripted
transfers: Completed, already there, final Failed, configuration failures retried after a
restart, back-off, no source, no ready source, source order, source-specific errors,
permanent errors, no transfer plugin, timeout, corrupt image records, and the kill switch
flipped while a transfer runs.

A job is submitted the way detection submits it (the real reconciler, `engine.submit`) and
run with `engine.reconcile(key)`, so each test sees exactly one attempt; the record, the
pods' events, the notifications and the transfer calls are what the test checks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import trio

from tote_core.annotations import DELIVERED_AT
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import NodeInfo, TransferProgress
from tote_core.reconcile.engine import Result
from tote_core.salvage import planner
from tote_core.salvage.jobs import RemoveCorrupt, SalvageWork
from tote_core.salvage.salvager import SalvageEngine
from tote_core.structs.salvagerecord import SalvageRecord
from tote_core.testing import objects
from tote_core.testing.fakekube import FakeCluster
from tote_core.testing.harness import Harness
from tote_core.testing.pytest_plugin import HarnessFactory
from tote_core.testing.scripted import HookRecorder, ScriptedAgents, result
from tote_core.timefmt import micro_time, utcnow

D = "sha256:" + "d" * 64
WEB = "docker.io/library/web"
IMAGE = f"{WEB}@{D}"
NAME = planner.record_name(D, "n1")


def world(cluster: FakeCluster, *, holders: tuple[str, ...] = ("n2", "n3"),
          not_ready: tuple[str, ...] = ()) -> None:
    cluster.add(objects.namespace("shop"))
    for name in ("n1", "n2", "n3"):
        cluster.add(objects.node(name, images=[IMAGE] if name in holders else [],
                                 ready=name not in not_ready))


def existing_record(phase: str, **status: Any) -> dict[str, Any]:
    """A SalvageRecord for (D, n1) as an earlier attempt (or another leader) left it."""
    return {
        "apiVersion": "tote.dev/v1alpha1", "kind": "SalvageRecord",
        "metadata": {"name": NAME, "namespace": "shop",
                     "labels": planner.record_labels(D, "n1")},
        "spec": {"podName": "web-1", "digest": D, "imageRef": IMAGE, "targetNode": "n1",
                 "sourceNode": "n2"},
        "status": {"phase": phase, **status},
    }


def the_record(cluster: FakeCluster) -> SalvageRecord:
    [record] = cluster.salvage_records("shop")
    return record


class Setup:
    """One opted-in failing pod (owned by a ReplicaSet unless `owner=None`), detected and
    submitted to a salvage engine that is not running: the test runs its attempts."""

    def __init__(self, harness: Harness, engine: SalvageEngine, agents: ScriptedAgents,
                 seen: HookRecorder) -> None:
        self.h, self.engine, self.agents, self.seen = harness, engine, agents, seen
        self.cluster = harness.cluster

    async def attempt(self) -> Result | None:
        return await self.engine.reconcile(SalvageWork(NAME))


async def submitted(cluster: FakeCluster, make: HarnessFactory, *,
                    agents: ScriptedAgents | None = None,
                    plugins: dict[str, object] | None = None,
                    settings: dict[str, Any] | None = None,
                    owner: tuple[str, str] | None = ("ReplicaSet", "web-5d4f"),
                    **world_args: Any) -> Setup:
    world(cluster, **world_args)
    agents = agents if agents is not None else ScriptedAgents()
    seen = HookRecorder()
    registered: dict[str, object] = {"agents": agents, "seen": seen, **(plugins or {})}
    h = await make(plugins=registered, settings=settings)
    engine = h.salvage_engine()
    cluster.add(objects.failing_pod("web-1", namespace="shop", image=IMAGE, node="n1",
                                    owner=owner))
    await h.settle()
    await h.reconciler(salvage=engine.submit)("shop/web-1")
    assert list(engine.jobs) == [SalvageWork(NAME)]
    return Setup(h, engine, agents, seen)


async def test_completed(tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    s.agents.script(s.agents.succeed(
        result(5000, bytes_transferred=3000, blobs_skipped=2),
        progress=[TransferProgress(bytes_total=5000, bytes_transferred=1000)]))
    assert await s.attempt() is None
    record = the_record(tote_cluster)
    assert record.status.phase == "Completed" and record.spec.source_node == "n2"
    assert (record.status.bytes_total, record.status.bytes_transferred) == (5000, 5000)
    assert record.status.progress.endswith("(100%)") and record.status.completed_at
    assert [(c.source_node, c.target_node, c.digest) for c in s.agents.calls] == [
        ("n2", "n1", D)]
    [event] = tote_cluster.events(reason="ImageSalvaged")
    assert "from node n2 to node n1" in event["note"] and "2 blobs already present" in event[
        "note"]
    assert s.seen.notified_types() == ["detected", "salvaged"]
    assert [r.bytes_transferred for _, _, r in s.seen.salvaged] == [3000]
    assert_resumed_in_place(tote_cluster)
    assert s.engine.jobs == {}


def pod_patches(cluster: FakeCluster) -> list[dict[str, Any]]:
    return [r.body for r in cluster.requests
            if r.method == "PATCH" and "/pods/web-1" in r.path]


def assert_resumed_in_place(cluster: FakeCluster) -> None:
    """The pod is neither deleted nor replaced: it carries the delivered-at annotation
    (kubelet syncs the pod on that update and starts the container), set with its UID."""
    pod = cluster.get("Pod", "web-1", "shop")
    assert pod is not None
    assert DELIVERED_AT in pod["metadata"]["annotations"]
    assert [b["metadata"]["uid"] for b in pod_patches(cluster)] == [pod["metadata"]["uid"]]
    assert not [r for r in cluster.requests if r.method == "DELETE"]


async def test_completed_standalone_pod_is_resumed_in_place_too(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness, owner=None)
    await s.attempt()
    assert the_record(tote_cluster).status.phase == "Completed"
    assert_resumed_in_place(tote_cluster)


async def test_a_pod_is_annotated_once_per_image(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    """The annotation brings the pod back through detection; while kubelet has not started
    it yet, the Completed record's path (already delivered) does not annotate it again."""
    s = await submitted(tote_cluster, tote_harness)
    await s.attempt()
    await s.h.reconciler(salvage=s.engine.submit)("shop/web-1")
    assert await s.engine.reconcile(SalvageWork(NAME)) is None  # already completed
    assert len(pod_patches(tote_cluster)) == 1


async def test_a_replaced_pod_is_not_annotated(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    """Tried: the pod was deleted and recreated under the same name (new UID) while the
    transfer ran. The API server refuses the patch (the UID in it is immutable); the new pod
    is left alone and the salvage still completes."""
    s = await submitted(tote_cluster, tote_harness)
    old_uid = tote_cluster.get("Pod", "web-1", "shop")["metadata"]["uid"]  # type: ignore[index]
    tote_cluster.delete("Pod", "web-1", "shop")
    tote_cluster.add(objects.failing_pod("web-1", namespace="shop", image=IMAGE, node="n1",
                                         owner=("ReplicaSet", "web-5d4f")))
    assert await s.attempt() is None
    assert the_record(tote_cluster).status.phase == "Completed"
    pod = tote_cluster.get("Pod", "web-1", "shop")
    assert pod is not None and pod["metadata"]["uid"] != old_uid
    assert DELIVERED_AT not in pod["metadata"].get("annotations", {})


async def test_a_refused_annotation_is_logged_not_raised(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    """Tried: an admission policy (or missing RBAC) refuses pod updates with 403. The salvage
    still completes; the pod starts at kubelet's next pull retry, and the log says so."""
    s = await submitted(tote_cluster, tote_harness)
    tote_cluster.fail(403, method="PATCH", path="/pods/web-1", message="denied by policy")
    assert await s.attempt() is None
    assert the_record(tote_cluster).status.phase == "Completed"
    assert "could not annotate pod shop/web-1 (kubelet starts it at its next pull retry" \
        in caplog.text


async def test_completed_record_and_image_on_target(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    tote_cluster.add(existing_record("Completed"))
    s.agents.holders[D] = ["n1"]  # the agents see it on the target already
    assert await s.attempt() is None
    assert s.agents.calls == []
    [event] = tote_cluster.events(reason="ImageSalvaged")
    assert f"was salvaged to node n1 (SalvageRecord shop/{NAME})" in event["note"]
    assert s.seen.notified_types() == ["detected", "salvaged"]


async def test_image_already_on_target_completes_without_transfer(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    s.agents.holders[D] = ["n1"]
    await s.attempt()
    assert the_record(tote_cluster).status.phase == "Completed"
    assert s.agents.calls == []
    [event] = tote_cluster.events(reason="ImageSalvaged")
    assert "already present on the target node; nothing to move" in event["note"]


async def test_completed_record_whose_image_vanished_is_salvaged_again(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    tote_cluster.add(existing_record("Completed"))
    await s.attempt()
    assert len(s.agents.calls) == 1 and the_record(tote_cluster).status.phase == "Completed"


def failed_condition(reason: str, message: str, when: str) -> dict[str, str]:
    return {"type": "Failed", "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": when}


async def test_final_failure_is_not_retried(tote_cluster: FakeCluster,
                                            tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    tote_cluster.add(existing_record("Failed", conditions=[
        failed_condition(planner.PERMANENT, "too_large: 3GiB", micro_time())]))
    assert await s.attempt() is None
    assert s.agents.calls == [] and s.engine.jobs == {}
    assert tote_cluster.events(reason="ImageSalvageFailed") == []


@pytest.mark.parametrize(("age", "retried"), [(-3600.0, True), (60.0, False)])
async def test_configuration_failure_retried_only_by_a_later_controller(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory, age: float, retried: bool
) -> None:
    """A ConfigurationError from before this controller started is retried (the
    configuration may be fixed now); one from this controller's own run is final."""
    s = await submitted(tote_cluster, tote_harness)
    when = micro_time(s.engine.started + timedelta(seconds=age))
    tote_cluster.add(existing_record("Failed", conditions=[
        failed_condition(planner.CONFIGURATION, "tls_config: bad CA", when)]))
    await s.attempt()
    assert bool(s.agents.calls) is retried
    assert the_record(tote_cluster).status.phase == ("Completed" if retried else "Failed")


@pytest.mark.parametrize(("ago", "waits"), [(5.0, True), (31.0, False)])
async def test_back_off_between_attempts(tote_cluster: FakeCluster,
                                         tote_harness: HarnessFactory, ago: float,
                                         waits: bool) -> None:
    s = await submitted(tote_cluster, tote_harness)
    last = micro_time(utcnow() - timedelta(seconds=ago))
    tote_cluster.add(existing_record("Failed", retryCount=1, lastAttemptAt=last))
    got = await s.attempt()
    if waits:
        assert got is not None and got.requeue_after is not None
        assert 24.0 < got.requeue_after <= 25.0  # planner.backoff(1) = 30 s, 5 s spent
        assert s.agents.calls == [] and list(s.engine.jobs) == [SalvageWork(NAME)]
    else:
        assert got is None and len(s.agents.calls) == 1


async def test_no_source(tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    for name in ("n2", "n3"):  # gone from the holders since detection
        tote_cluster.modify("Node", name, patch={"status": {"images": []}})
    await s.h.settle()
    assert await s.attempt() is None
    record = the_record(tote_cluster)
    assert record.status.phase == "Failed" and record.status.conditions == []  # not sticky
    assert record.status.error == f"no other node holds {D}"
    [event] = tote_cluster.events(reason="ImageSalvageFailed")
    assert "(no_source, will retry)" in event["note"]
    assert s.seen.notified_types() == ["detected", "failed"]
    assert s.agents.calls == [] and s.engine.jobs == {}


async def test_no_ready_source_is_retried(tote_cluster: FakeCluster,
                                          tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness, not_ready=("n2", "n3"))
    got = await s.attempt()
    assert got == Result(requeue_after=planner.backoff(1))
    record = the_record(tote_cluster)
    assert (record.status.phase, record.status.retry_count) == ("Failed", 1)
    assert record.status.error == "no ready source node"
    assert s.agents.calls == []


class PreferN3:
    """A `select_source` plugin: n3 first, and nodes that are no candidates are ignored."""

    @hookimpl
    def select_source(self, candidates: list[NodeInfo]) -> list[str]:
        return ["n3", "elsewhere", "n2"]


async def test_select_source_plugin_orders_the_sources(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness, plugins={"prefer": PreferN3()})
    s.agents.script(s.agents.retry_later("n3 busy"), s.agents.succeed())
    await s.attempt()
    assert [c.source_node for c in s.agents.calls] == ["n3", "n2"]
    assert the_record(tote_cluster).spec.source_node == "n2"


async def test_every_source_unavailable_is_retried_with_back_off(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    s.agents.script(s.agents.retry_later("n2 down"), s.agents.retry_later("n3 down"))
    got = await s.attempt()
    assert got == Result(requeue_after=planner.backoff(1))
    record = the_record(tote_cluster)
    assert (record.status.phase, record.status.retry_count) == ("Failed", 1)
    assert record.status.error == "n2: n2 down; n3: n3 down"
    assert record.spec.source_node == "n3"  # the last one tried
    [event] = tote_cluster.events(reason="ImageSalvageFailed")
    assert "(source_unavailable, will retry)" in event["note"]
    assert list(s.engine.jobs) == [SalvageWork(NAME)]  # the job stays for the requeue


async def test_source_specific_error_tries_the_next_source(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    s.agents.script(s.agents.permanent("layers discarded", reason="layers_discarded"),
                    s.agents.succeed())
    await s.attempt()
    assert [c.source_node for c in s.agents.calls] == ["n2", "n3"]
    record = the_record(tote_cluster)
    assert record.status.phase == "Completed" and record.spec.source_node == "n3"


async def test_source_specific_error_from_every_source_is_permanent(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    s.agents.default = s.agents.permanent("layers discarded", reason="layers_discarded")
    assert await s.attempt() is None
    record = the_record(tote_cluster)
    [condition] = record.status.conditions
    assert condition.reason == planner.PERMANENT
    assert condition.message.startswith("layers_discarded: n2: layers discarded; n3: ")
    assert s.engine.jobs == {}


@pytest.mark.parametrize(("reason", "condition", "verdict"), [
    ("too_large", planner.PERMANENT, "not retried"),
    ("tls_config", planner.CONFIGURATION, "tote's configuration"),
])
async def test_permanent_error(tote_cluster: FakeCluster, tote_harness: HarnessFactory,
                               reason: str, condition: str, verdict: str) -> None:
    s = await submitted(tote_cluster, tote_harness)
    s.agents.script(s.agents.permanent("no way", reason=reason))
    assert await s.attempt() is None
    assert len(s.agents.calls) == 1  # not passed on to n3
    record = the_record(tote_cluster)
    assert record.status.phase == "Failed"
    assert [c.reason for c in record.status.conditions] == [condition]
    [event] = tote_cluster.events(reason="ImageSalvageFailed")
    assert f"({reason}, {verdict}" in event["note"]
    assert s.seen.notified_types() == ["detected", "failed"]
    assert tote_cluster.get("Pod", "web-1", "shop") is not None


async def test_no_transfer_plugin(tote_cluster: FakeCluster,
                                  tote_harness: HarnessFactory) -> None:
    world(tote_cluster)
    h = await tote_harness()
    engine = h.salvage_engine()
    tote_cluster.add(objects.failing_pod("web-1", namespace="shop", image=IMAGE, node="n1"))
    await h.settle()
    await h.reconciler(salvage=engine.submit)("shop/web-1")
    await engine.reconcile(SalvageWork(NAME))
    [condition] = the_record(tote_cluster).status.conditions
    assert condition.reason == planner.CONFIGURATION
    assert condition.message == "no_plugin: no transfer plugin is loaded"


async def test_timeout(tote_cluster: FakeCluster, tote_harness: HarnessFactory,
                       autojump_clock: trio.testing.MockClock) -> None:
    s = await submitted(tote_cluster, tote_harness, settings={"transfer_timeout": 90.0})
    s.agents.default = s.agents.hang()
    start = trio.current_time()
    got = await s.attempt()
    assert trio.current_time() - start == pytest.approx(180.0)  # 90 s per source, virtual
    assert got == Result(requeue_after=planner.backoff(1))
    record = the_record(tote_cluster)
    assert record.status.error == "n2: transfer exceeded 90s; n3: transfer exceeded 90s"
    [event] = tote_cluster.events(reason="ImageSalvageFailed")
    assert "(timeout, will retry)" in event["note"]


async def test_progress_is_written_to_the_record(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory) -> None:
    s = await submitted(tote_cluster, tote_harness)
    seen: list[str] = []

    async def watch_progress(request: Any, report: Any) -> Any:
        await report(TransferProgress(bytes_total=4096, bytes_transferred=1024))
        seen.append(the_record(tote_cluster).status.progress)
        return result(4096)

    s.agents.script(watch_progress)
    await s.attempt()
    assert seen == ["1.0KiB/4.0KiB (25%)"]
    assert the_record(tote_cluster).status.phase == "Completed"


async def test_corrupt_image_record_removed_once_a_minute(
        tote_cluster: FakeCluster, tote_harness: HarnessFactory,
        autojump_clock: trio.testing.MockClock) -> None:
    world(tote_cluster)
    agents = ScriptedAgents()
    h = await tote_harness(plugins={"agents": agents})
    engine = h.salvage_engine()
    corrupt: dict[str, Any] = {"reason": "CreateContainerError", "image_id": IMAGE,
               "message": f"error unpacking image: content digest {D}: not found"}
    for name in ("web-1", "web-2"):
        tote_cluster.add(objects.failing_pod(name, namespace="shop", image=f"{WEB}:1",
                                             node="n1", owner=("ReplicaSet", "web"),
                                             **corrupt))
    await h.settle()
    reconciler = h.reconciler(salvage=engine.submit)
    await reconciler("shop/web-1")
    await reconciler("shop/web-2")
    first, second = list(engine.jobs)
    assert isinstance(first, RemoveCorrupt) and isinstance(second, RemoveCorrupt)
    web1 = tote_cluster.get("Pod", "web-1", "shop")
    assert web1 is not None and first.pod_uid == web1["metadata"]["uid"]
    assert str(first) == f"corrupt/shop/{first.pod_uid}/{first.container}"  # as logs say
    assert await engine.reconcile(first) is None
    assert agents.removed == [("n1", f"{WEB}:1@{D}", D)]
    pod = tote_cluster.get("Pod", "web-1", "shop")  # kubelet syncs it in place: it pulls
    assert pod is not None and DELIVERED_AT in pod["metadata"]["annotations"]
    got = await engine.reconcile(second)  # same node and image, within the minute
    assert got is not None and got.requeue_after == pytest.approx(60.0)
    await trio.sleep(60.0)
    assert await engine.reconcile(second) is None
    assert len(agents.removed) == 2


async def test_kill_switch_flipped_mid_job(tote_cluster: FakeCluster,
                                           tote_harness: HarnessFactory,
                                           autojump_clock: trio.testing.MockClock) -> None:
    """A transfer handed to the pool before `tote disable` carries on and completes; while
    off, a new failing pod gets no event and no record; `tote enable` picks it up."""
    world(tote_cluster)
    agents = ScriptedAgents()
    agents.script(agents.hang())
    h = await tote_harness(plugins={"agents": agents})
    tote_cluster.add(objects.failing_pod("web-1", namespace="shop", image=IMAGE, node="n1"))
    await h.settle()
    await h.run_pipeline()
    await agents.started.wait()
    assert the_record(tote_cluster).status.phase == "Transferring"

    tote_cluster.add(objects.kill_switch(False, reason="registry migration"))
    await h.settle()
    other = "docker.io/library/api@" + "sha256:" + "a" * 64
    tote_cluster.modify("Node", "n3", change=lambda n: n["status"]["images"].append(
        {"names": [other]}))
    tote_cluster.add(objects.failing_pod("api-1", namespace="shop", image=other, node="n1"))
    await h.settle()
    assert tote_cluster.events(regarding="api-1") == []

    agents.release()
    await h.settle()
    assert the_record(tote_cluster).status.phase == "Completed"
    assert tote_cluster.event_reasons("web-1") == ["ImageSalvageable", "ImageSalvaged"]
    assert len(tote_cluster.salvage_records()) == 1

    tote_cluster.modify("ConfigMap", "tote-config", "tote-system",
                        patch={"data": {"enabled": "true"}})
    await h.settle()
    assert tote_cluster.event_reasons("api-1") == ["ImageSalvageable", "ImageSalvaged"]
    assert len(tote_cluster.salvage_records()) == 2
