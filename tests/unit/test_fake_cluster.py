"""The fake API server (tote_core/testing/fakekube.py) behaves as the real one does for the
paths tote's client and informers take: list/watch with resourceVersions, 410 after
compaction, watch ends, selectors, merge and JSON patches, the status subresource,
preconditions, conflicts and injected faults. Its own tests, so the unit tests built on it
prove core's logic rather than the fake's mistakes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgspec
import pytest
import trio

from tote_core.errors import Conflict, KubeError, NotFound
from tote_core.kube.client import resource_path
from tote_core.kube.events import EventRecorder
from tote_core.kube.informer import Informer
from tote_core.structs.kube import ConfigMap, Pod
from tote_core.testing import objects
from tote_core.testing.fakekube import JSON_PATCH, FakeCluster, label_selector

PODS = resource_path("v1", "pods")


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": name}},
            "data": data}


async def test_informer_lists_watches_and_relists_after_compaction(
        autojump_clock: trio.testing.MockClock) -> None:
    cluster = FakeCluster()
    cluster.add(objects.running_pod("a", namespace="ns", image="x:1", node="n1"))
    client = cluster.client()
    informer: Informer[Pod] = Informer(client, PODS, Pod, name="pods", watch_timeout=60)
    changes: list[tuple[str, bool]] = []
    informer.add_handler(lambda key, old, new: changes.append((key, new is not None)))
    async with trio.open_nursery() as nursery:
        await nursery.start(informer.run)
        assert set(informer.items) == {"ns/a"}
        cluster.add(objects.running_pod("b", namespace="ns", image="x:1", node="n1"))
        await trio.testing.wait_all_tasks_blocked()
        assert set(informer.items) == {"ns/a", "ns/b"}
        cluster.delete("Pod", "a", "ns")
        await trio.testing.wait_all_tasks_blocked()
        assert set(informer.items) == {"ns/b"}
        # A watch that ends (timeoutSeconds) is reopened from the last resourceVersion;
        # changes made meanwhile are replayed, none twice.
        cluster.close_watches()
        cluster.add(objects.running_pod("c", namespace="ns", image="x:1", node="n1"))
        await trio.testing.wait_all_tasks_blocked()
        assert set(informer.items) == {"ns/b", "ns/c"}
        await trio.sleep(61)  # past the watch's timeoutSeconds: reopened
        # After compaction a watch from an old resourceVersion is 410 Gone: relist.
        cluster.close_watches()
        cluster.add(objects.running_pod("d", namespace="ns", image="x:1", node="n1"))
        cluster.compact()
        lists_before = sum(1 for r in cluster.requests if r.method == "GET")
        await trio.sleep(1)
        assert set(informer.items) == {"ns/b", "ns/c", "ns/d"}
        assert sum(1 for r in cluster.requests if r.method == "GET") == lists_before + 1
        nursery.cancel_scope.cancel()
    assert changes == [("ns/a", True), ("ns/b", True), ("ns/a", False), ("ns/c", True),
                       ("ns/b", True), ("ns/c", True), ("ns/d", True)]
    await client.aclose()


async def test_watch_follows_selectors(autojump_clock: trio.testing.MockClock) -> None:
    """An object leaving a field selector is DELETED for that watch (as the API server
    does), entering it is ADDED."""
    cluster = FakeCluster()
    client = cluster.client()
    informer: Informer[ConfigMap] = Informer(
        client, resource_path("v1", "configmaps", "ns"), ConfigMap, name="cm",
        field_selector="metadata.name=one")
    async with trio.open_nursery() as nursery:
        await nursery.start(informer.run)
        cluster.add(cm("one", enabled="false"))
        cluster.add(cm("two"))
        await trio.testing.wait_all_tasks_blocked()
        assert list(informer.items) == ["ns/one"]
        assert informer.items["ns/one"].data == {"enabled": "false"}
        cluster.modify("ConfigMap", "one", "ns", patch={"data": {"enabled": "true"}})
        await trio.testing.wait_all_tasks_blocked()
        assert informer.items["ns/one"].data == {"enabled": "true"}
        nursery.cancel_scope.cancel()
    await client.aclose()


async def test_an_informer_without_a_store_is_a_stream() -> None:
    """`store=False` (kubelet's Events): handlers see what is listed, added and modified,
    as (key, None, object); deletions not at all; nothing is kept, across a relist too."""
    cluster = FakeCluster()
    cluster.add(cm("one"))
    client = cluster.client()
    informer: Informer[ConfigMap] = Informer(
        client, resource_path("v1", "configmaps", "ns"), ConfigMap, name="cm", store=False)
    seen: list[tuple[str, object, str]] = []
    informer.add_handler(lambda key, old, new: seen.append(
        (key, old, new.data.get("v", "") if new is not None else "deleted")))
    async with trio.open_nursery() as nursery:
        await nursery.start(informer.run)
        cluster.add(cm("two"))
        cluster.modify("ConfigMap", "two", "ns", patch={"data": {"v": "2"}})
        cluster.delete("ConfigMap", "one", "ns")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [("ns/one", None, ""), ("ns/two", None, ""), ("ns/two", None, "2")]
        assert informer.items == {}
        cluster.compact()
        cluster.close_watches()
        await trio.testing.wait_all_tasks_blocked()
        assert seen[-1] == ("ns/two", None, "2") and informer.items == {}  # relisted
        nursery.cancel_scope.cancel()
    await client.aclose()


@pytest.mark.parametrize(("selector", "names"), [
    ("app=one", ["one"]), ("app==one", ["one"]), ("app!=one", ["three", "two"]),
    ("app in (one,two)", ["one", "two"]), ("app notin (one)", ["three", "two"]),
    ("app", ["one", "three", "two"]), ("!app", []), ("app=one,tier", []),
])
def test_label_selectors(selector: str, names: list[str]) -> None:
    match = label_selector(selector)
    found = sorted(n for n in ("one", "two", "three") if match(cm(n)))
    assert found == names


async def test_writes_like_the_api_server() -> None:
    cluster = FakeCluster()
    client = cluster.client()
    path = resource_path("v1", "configmaps", "ns")
    created = await client.create(path, cm("x", a="1"))
    assert created["metadata"]["uid"] and created["metadata"]["resourceVersion"]
    with pytest.raises(Conflict, match="already exists"):
        await client.create(path, cm("x"))
    merged = await client.patch(f"{path}/x", {"data": {"a": None, "b": "2"}})
    assert merged["data"] == {"b": "2"}
    patched = await client.patch(f"{path}/x", [{"op": "add", "path": "/data/c", "value": "3"},
                                               {"op": "remove", "path": "/data/b"}],
                                 content_type=JSON_PATCH)
    assert patched["data"] == {"c": "3"}
    stale = dict(created, data={"d": "4"})
    with pytest.raises(Conflict, match="has been modified"):
        await client.update(f"{path}/x", stale)
    with pytest.raises(Conflict, match="Precondition failed: UID"):
        await client.delete(f"{path}/x", uid="someone-else")
    # A patch naming another UID is refused as the API server does (422, immutable field):
    # tote's pod annotation relies on it to leave a replaced pod alone.
    with pytest.raises(KubeError, match=r"metadata\.uid: Invalid value") as refused:
        await client.patch(f"{path}/x", {"metadata": {"uid": "someone-else"}})
    assert refused.value.status == 422
    same = await client.patch(f"{path}/x", {"metadata": {"uid": created["metadata"]["uid"],
                                                         "labels": {"l": "1"}}})
    assert same["metadata"]["labels"]["l"] == "1"
    await client.delete(f"{path}/x", uid=created["metadata"]["uid"])
    with pytest.raises(NotFound):
        await client.get(f"{path}/x", dict)
    cluster.fail(503, method="GET", path="/configmaps")
    with pytest.raises(KubeError, match="HTTP 503"):
        await client.list(path, ConfigMap)
    assert (await client.list(path, ConfigMap)).items == []  # one fault, used up
    await client.aclose()


async def test_status_subresource() -> None:
    """Status changes only through /status; writes to the object keep the status."""
    cluster = FakeCluster()
    client = cluster.client()
    path = resource_path("tote.dev/v1alpha1", "salvagerecords", "ns")
    body = {"apiVersion": "tote.dev/v1alpha1", "kind": "SalvageRecord",
            "metadata": {"name": "r"}, "spec": {"digest": "d"}, "status": {"phase": "Failed"}}
    created = await client.create(path, body)
    assert "status" not in created  # ignored on create
    await client.patch(f"{path}/r/status", {"status": {"phase": "Pending"}})
    await client.patch(f"{path}/r", {"spec": {"sourceNode": "n2"},
                                     "status": {"phase": "Completed"}})
    record = cluster.get("SalvageRecord", "r", "ns")
    assert record is not None
    assert record["status"] == {"phase": "Pending"}
    assert record["spec"] == {"digest": "d", "sourceNode": "n2"}
    await client.aclose()


async def test_event_recorder_aggregates_across_restarts() -> None:
    """The recorder's 409 → GET → PATCH path (a restarted controller finds its Event)."""
    cluster = FakeCluster()
    cluster.add(objects.namespace("ns"))
    pod = objects.failing_pod("p", namespace="ns", image="x:1", node="n1")
    stored = cluster.add(pod)
    subject = msgspec.convert(stored, Pod)
    client = cluster.client()
    await EventRecorder(client, instance="a").emit(subject, "ImageSalvageable", "note")
    await EventRecorder(client, instance="b").emit(subject, "ImageSalvageable", "note")
    [event] = cluster.events(reason="ImageSalvageable")
    assert event["series"]["count"] == 2 and event["regarding"]["name"] == "p"
    await client.aclose()


def test_the_pytest_plugin_is_cheap_to_import() -> None:
    """pytest loads tote's plugin into every run (pytest11): importing it must not pull in
    trio, httpx, the kubernetes package or tote's engine; its fixtures import those."""
    heavy = ("trio", "httpx", "kubernetes", "msgspec", "tote_core.kube",
             "tote_core.testing.fakekube")
    code = ("import sys, tote_core.testing.pytest_plugin; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert run.stdout.strip() == "[]"
