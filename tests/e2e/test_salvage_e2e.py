"""Salvage end to end on the real kubelet (issue 5): registry down → tote → pod Running.

The cluster (tests/e2e/conftest.py) has three real kubelet nodes, each on its own containerd
in its own network namespace: the workload node `node-a` and the source nodes `node-b`
("node B") and `node-c`, tainted so workloads never land there; this module adds a `tote
agent` process per node with mTLS and the `tote controller` process with the restricted
RBAC identity (tests/cluster/salvage_env.py). Every failure below is real: kubelet/containerd
fail to pull from a stopped registry, or fail to create a container from an image whose
layer blob is gone.

1. Deployment, image X only on node B, registry stopped → ErrImagePull/BackOff → salvaged
   from node B → the same pod Running (tote annotates it, kubelet syncs it and starts the
   container in place: no replacement); its log proves it runs X. Prints the timings.
2. Tag-only image no node has → ImageNotActionable, no SalvageRecord.
3. Kill switch (ConfigMap <harness namespace>/tote-config `enabled: "false"`) → the same real
   failure produces no tote event and no record; switched back on, the pod is salvaged.
4. (scenario 1's incident) SalvageRecord Completed with its progress fields, and
   `kubectl events` tells the story (ImageSalvageable, ImageSalvaged).
5. Standalone pod → salvaged, annotated, started in place (same UID), not left to kubelet's
   back-off.
6. Corrupt image record on the kubelet node (layer blob deleted) → CreateContainerError →
   ImageCorrupt, record removed through the node's agent, the pod annotated → kubelet pulls
   again and fails (registry down) → salvaged → the same pod Running.
7. imagePullPolicy Always → ImageNotActionable once (no loop), no SalvageRecord.
8. Node B holds the image as a node that discards its layer blobs (EKS): the layers are
   regenerated from its snapshots → Running; the record says mode snapshots, pinned.
9. kubelet's image GC (forced) deletes an ordinary unused image but keeps the pinned
   salvaged one; the registry back → tote unpins it → the next GC deletes it.

With `TOTE_DISCARD_UNPACKED_LAYERS=1` (matrix cells `*-discard`) both nodes' containerd
discard layer blobs after unpack: scenario 1 is then a discarding target fed by a blob source.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import oci
from tests.cluster import registry as registry_mod
from tests.cluster.cluster import KubeCluster
from tests.cluster.procs import free_port, wait_until
from tests.cluster.registry import Registry
from tests.cluster.salvage_env import (
    SalvageEnv,
    Timeline,
    deployment,
    image_only_on_node_b,
    namespace,
    standalone_pod,
    start_salvage_env,
    workload_image,
)
from tote_core.annotations import DELIVERED_AT

pytestmark = pytest.mark.e2e

NODE_B = "node-b"  # the first source node (tests/cluster/cluster.py NODE_NAMES)


@pytest.fixture(scope="module")
def tote(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[SalvageEnv]:  # fmt: skip
    """Agents on both kubelet nodes + the controller, for this module (reaping every few
    seconds, so scenario 9 sees an unpin soon after the registry is back; the loopback
    registries speak plain HTTP)."""
    env = start_salvage_env(kube_cluster, tmp_path_factory.mktemp("tote-e2e"),
                            controller_args=("--reap-interval=3s", "--registry-insecure"))
    print(f"tote on the e2e cluster up in {env.startup_seconds}")
    try:
        yield env
    finally:
        env.stop()


def _no_records(tote: SalvageEnv, ns: str) -> None:
    recs = tote.records(ns)
    assert recs == [], [r["metadata"]["name"] for r in recs]


def _reasons(tote: SalvageEnv, ns: str, pod: str | None = None) -> list[str]:
    return [str(e.get("reason")) for e in tote.tote_events(ns, pod)]


# --------------------------------------------------------------------------- scenario 1 (+4)


@dataclass
class Salvaged:
    ns: str
    image: oci.OciImage
    ref: str
    timeline: Timeline
    first_pod: tuple[str, str]
    pod: dict[str, Any]
    marker: str


@pytest.fixture(scope="module")
def scenario1(tote: SalvageEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Salvaged]:
    cluster = tote.cluster
    tmp = tmp_path_factory.mktemp("s1")
    reg = registry_mod.start_registry(tmp / "registry", address=cluster.net.gateway)
    cluster.node.trust_registry(reg.host)
    ns = namespace(cluster)
    try:
        marker = f"image-X-{uuid.uuid4().hex[:8]}"
        img = image_only_on_node_b(tote.cluster, reg, tmp / "img", "shop/web", marker=marker)
        ref = img.name
        tl = Timeline(cluster, ns, selector="app=web")
        cluster.apply(deployment("web", ns, ref))
        pod = tl.wait_running(timeout=150)
        yield Salvaged(
            ns=ns, image=img, ref=ref, timeline=tl, first_pod=tl.pods[0], pod=pod, marker=marker
        )
    finally:
        reg.stop()
        cluster.kubectl("delete", "deployments", "--all", "-n", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_1_registry_down_deployment_salvaged_from_node_b(
    tote: SalvageEnv, scenario1: Salvaged
) -> None:
    s, cluster = scenario1, tote.cluster
    tl = s.timeline
    print(f"scenario 1 timeline (s since the Deployment was applied): {tl.summary()}")
    # a real pull failure happened on the kubelet node first
    assert tl.first_failure() is not None, tl.first
    assert "ImageSalvageable" in tl.first and "ImageSalvaged" in tl.first, tl.first
    # the pod that failed is the one running: annotated, started in place, never replaced
    _, first_uid = s.first_pod
    assert s.pod["metadata"]["uid"] == first_uid, tl.pods
    assert len({uid for _, uid in tl.pods}) == 1, tl.pods
    assert DELIVERED_AT in s.pod["metadata"]["annotations"], s.pod["metadata"]
    # … and it runs image X, from the kubelet node's own containerd
    assert s.pod["spec"]["nodeName"] == cluster.node.name
    status = s.pod["status"]["containerStatuses"][0]
    assert status["imageID"].endswith(s.image.digest), status
    name = s.pod["metadata"]["name"]
    wait_until(lambda: s.marker in cluster.pod_logs(s.ns, name), timeout=20,
               what=f"image X's marker {s.marker!r} in the pod log")  # fmt: skip
    assert s.ref in cluster.node.image_names()
    # The image arrived unpacked (issue 15): the agent put its layers into CRI's snapshotter
    # while they arrived, so kubelet's CreateContainer found the snapshots in place.
    assert tote.agent_metric(cluster.node.name, 'tote_agent_unpacks_total{result="ok"}') >= 1
    fail = tl.first_failure()
    backoff = tl.first_backoff()
    print(
        f"scenario 1: first pull failure ({fail}) → Running {tl.since(fail or '')}s; "
        f"first BackOff ({backoff}) → Running {tl.since(backoff) if backoff else 'n/a'}s; "
        f"ImageSalvageable → ImageSalvaged {tl.since('ImageSalvageable', 'ImageSalvaged')}s"
    )


def test_4_record_completed_and_kubectl_events_tell_the_story(
    tote: SalvageEnv, scenario1: Salvaged
) -> None:
    s, cluster = scenario1, tote.cluster
    recs = tote.records(s.ns)
    assert len(recs) == 1, recs
    rec = recs[0]
    spec, st = rec["spec"], rec.get("status", {})
    assert st.get("phase") == "Completed", st
    assert spec["digest"] == s.image.digest
    assert spec["sourceNode"] == NODE_B and spec["targetNode"] == cluster.node.name, spec
    assert spec["podName"] == s.first_pod[0] and spec["podUID"] == s.first_pod[1], spec
    assert s.ref.split(":v1")[0] in spec["imageRef"], spec
    assert st.get("bytesTotal", 0) > 0, st
    assert st.get("bytesTransferred", 0) > 0, st
    assert st["bytesTransferred"] <= st["bytesTotal"], st
    assert "blobsSkipped" in st, st
    assert st.get("startedAt") and st.get("completedAt"), st
    assert not st.get("error"), st
    table = cluster.kubectl("get", "salvagerecords", "-n", s.ns).stdout
    print(table)
    assert "Completed" in table and NODE_B in table
    out = cluster.kubectl("events", "-n", s.ns).stdout
    print(out)
    for reason in ("ImageSalvageable", "ImageSalvaged"):
        assert reason in out, out
    assert "BackOff" in out or "ErrImagePull" in out or "Failed" in out, out
    salvageable = tote.tote_events(s.ns, s.first_pod[0])
    notes = {e["reason"]: e.get("note", "") for e in salvageable}
    assert NODE_B in notes["ImageSalvageable"] and s.image.digest in notes["ImageSalvageable"]
    assert "technical debt" in notes["ImageSalvageable"]
    assert notes.get("ImageSalvaged"), notes


# --------------------------------------------------------------------------- scenario 2


def test_2_tag_only_image_no_node_has_is_not_actionable(
    tote: SalvageEnv, test_namespace: str
) -> None:
    ns, cluster = test_namespace, tote.cluster
    gw = cluster.net.gateway
    ref = f"{gw}:{free_port(gw)}/tote/ghost-{uuid.uuid4().hex[:6]}:v1"  # nothing listens
    tl = Timeline(cluster, ns, selector="app=ghost")
    cluster.apply(deployment("ghost", ns, ref))
    ev = tote.wait_tote_event(ns, "ImageNotActionable", timeout=60)
    assert "no node reports a digest" in ev.get("note", ""), ev
    wait_until(lambda: tl.poll() or "BackOff" in tl.first, timeout=60,
               what="kubelet back-off")  # fmt: skip
    time.sleep(3)
    _no_records(tote, ns)
    assert set(_reasons(tote, ns)) == {"ImageNotActionable"}, _reasons(tote, ns)
    print(f"scenario 2 timeline: {tl.summary()}")


# --------------------------------------------------------------------------- scenario 3


def test_3_kill_switch_off_real_failure_no_tote_events(
    tote: SalvageEnv, test_namespace: str, local_registry: Registry, tmp_path: Path
) -> None:
    ns, cluster = test_namespace, tote.cluster
    tote.set_enabled(False)
    try:
        img = image_only_on_node_b(tote.cluster, local_registry, tmp_path, "shop/off",
                                   marker=f"off-{uuid.uuid4().hex[:8]}")  # fmt: skip
        tl = Timeline(cluster, ns, selector="app=off")
        cluster.apply(deployment("off", ns, img.name))
        wait_until(lambda: tl.poll() or "BackOff" in tl.first, timeout=60, interval=0.5,
                   what="real pull failure and BackOff")  # fmt: skip
        tl.watch(5)
        print(f"scenario 3 (switched off) timeline: {tl.summary()}")
        assert "Running" not in tl.first and tl.first_failure() is not None, tl.first
        assert tote.tote_events(ns) == [], _reasons(tote, ns)
        _no_records(tote, ns)
    finally:
        tote.set_enabled(True)
    # switched back on without a restart: the pod still failing is picked up and salvaged
    tl.wait_running(timeout=90)
    assert "ImageSalvaged" in _reasons(tote, ns), _reasons(tote, ns)
    print(f"scenario 3 (switched back on) timeline: {tl.summary()}")


# --------------------------------------------------------------------------- scenario 5


def test_5_standalone_pod_recovers_without_being_deleted(
    tote: SalvageEnv, test_namespace: str, local_registry: Registry, tmp_path: Path
) -> None:
    ns, cluster = test_namespace, tote.cluster
    marker = f"alone-{uuid.uuid4().hex[:8]}"
    img = image_only_on_node_b(tote.cluster, local_registry, tmp_path, "shop/alone", marker=marker)
    tl = Timeline(cluster, ns, pod_name="alone")
    cluster.apply(standalone_pod("alone", ns, img.name))
    pod = tl.wait_running(timeout=300, interval=1)
    print(f"scenario 5 timeline: {tl.summary()}; pull failure → Running "
          f"{tl.since(tl.first_failure() or '')}s")  # fmt: skip
    assert len({uid for _, uid in tl.pods}) == 1, tl.pods  # never deleted
    assert DELIVERED_AT in pod["metadata"]["annotations"], pod["metadata"]
    assert tl.first_failure() is not None, tl.first
    assert "ImageSalvaged" in _reasons(tote, ns, "alone"), _reasons(tote, ns)
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(img.digest)
    wait_until(lambda: marker in cluster.pod_logs(ns, "alone"), timeout=20,
               what="marker in the pod log")  # fmt: skip
    (rec,) = tote.records(ns)
    assert rec["status"]["phase"] == "Completed", rec["status"]


# --------------------------------------------------------------------------- scenario 6


def test_6_corrupt_image_record_removed_pod_pulls_again_then_salvaged(
    tote: SalvageEnv, test_namespace: str, local_registry: Registry, tmp_path: Path
) -> None:
    ns, cluster = test_namespace, tote.cluster
    node = cluster.node
    marker = f"corrupt-{uuid.uuid4().hex[:8]}"
    img = image_only_on_node_b(tote.cluster, local_registry, tmp_path, "shop/corrupt",
                               marker=marker)  # fmt: skip
    # the kubelet node has a record of X whose layer blob is gone (never unpacked)
    node.import_image(img, unpack=False)
    node.delete_blob(img.layer_digests[0])
    assert img.name in node.image_names()
    tl = Timeline(cluster, ns, selector="app=corrupt")
    cluster.apply(deployment("corrupt", ns, img.name))
    pod = tl.wait_running(timeout=180)
    print(f"scenario 6 timeline: {tl.summary()}")
    assert "CreateContainerError" in tl.first, tl.first
    reasons = _reasons(tote, ns)
    assert "ImageCorrupt" in reasons and "ImageSalvaged" in reasons, reasons
    assert len({uid for _, uid in tl.pods}) == 1, tl.pods  # one pod throughout
    # it really failed to pull (the stale record was gone) before the salvage
    assert tl.first_failure() is not None, tl.first
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(img.digest)
    wait_until(lambda: marker in cluster.pod_logs(ns, pod["metadata"]["name"]), timeout=20,
               what="marker in the pod log")  # fmt: skip
    assert any(r["status"].get("phase") == "Completed" for r in tote.records(ns))


# --------------------------------------------------------------------------- scenario 7


def test_7_pull_policy_always_not_actionable_no_loop(
    tote: SalvageEnv, test_namespace: str, local_registry: Registry, tmp_path: Path
) -> None:
    ns, cluster = test_namespace, tote.cluster
    img = image_only_on_node_b(tote.cluster, local_registry, tmp_path, "shop/always",
                               marker=f"always-{uuid.uuid4().hex[:8]}")  # fmt: skip
    before = tote.ctl.metric("tote_not_actionable_total")
    tl = Timeline(cluster, ns, selector="app=always")
    cluster.apply(deployment("always", ns, img.name, pull_policy="Always"))
    ev = tote.wait_tote_event(ns, "ImageNotActionable", timeout=60)
    assert "Always" in ev.get("note", ""), ev
    # let kubelet go round its back-off loop at least once more
    wait_until(lambda: tl.poll() or "BackOff" in tl.first, timeout=60, what="kubelet back-off")
    # … and at least once more (no loop on tote's side meanwhile)
    wait_until(lambda: tl.poll() or tl.counts.get("Pulling", 0) >= 2, timeout=45,
               what="a second pull attempt")  # fmt: skip
    print(f"scenario 7 timeline: {tl.summary()}")
    assert "Running" not in tl.first
    _no_records(tote, ns)
    evs = tote.tote_events(ns)
    assert [e["reason"] for e in evs] == ["ImageNotActionable"], [
        (e["reason"], e.get("note")) for e in evs
    ]
    # one incident, however often kubelet retried: counted once, detected (logged) once
    assert tote.ctl.metric("tote_not_actionable_total") - before >= 1
    assert tote.ctl.proc is not None
    log = tote.ctl.proc.log_path.read_text(errors="replace")
    assert (
        log.count(f"detected ErrImagePull for {ns}/")
        + log.count(f"detected ImagePullBackOff for {ns}/")
        == 1
    ), [ln for ln in log.splitlines() if f" {ns}/" in ln]
    assert len(tl.pods) == 1, tl.pods  # nothing deleted or recreated


# --------------------------------------------------------------------------- scenario 8


def test_8_source_that_discarded_its_layers_salvages_from_snapshots(
    tote: SalvageEnv, test_namespace: str, local_registry: Registry, tmp_path: Path
) -> None:
    """Node B holds image Z as a node with `discard_unpacked_layers = true` (EKS) does:
    unpacked, no compressed layer blob left. Registry down → the layers are regenerated
    from node B's snapshots and applied on the workload node → the pod runs Z; the record
    says how the layers moved and were verified, and the image is pinned against kubelet's
    image GC."""
    ns, cluster = test_namespace, tote.cluster
    marker = f"image-Z-{uuid.uuid4().hex[:8]}"
    img = image_only_on_node_b(cluster, local_registry, tmp_path, "shop/discarded",
                               marker=marker, discard_layers=True)
    assert not any(cluster.node_b.blob_present(d) for d in img.layer_digests)
    tl = Timeline(cluster, ns, selector="app=discarded")
    cluster.apply(deployment("discarded", ns, img.name))
    pod = tl.wait_running(timeout=150)
    print(f"scenario 8 timeline: {tl.summary()}")
    assert "ImageSalvaged" in tl.first, tl.first
    name = pod["metadata"]["name"]
    wait_until(lambda: marker in cluster.pod_logs(ns, name), timeout=20,
               what=f"image Z's marker {marker!r} in the pod log")  # fmt: skip
    [rec] = tote.records(ns)
    st = rec["status"]
    assert st["phase"] == "Completed" and st["mode"] == "snapshots", st
    assert st["layersRegenerated"] == len(img.layer_digests), st
    print(f"scenario 8: {st['layersVerified']} of {st['layersRegenerated']} harness-built layers "
          "regenerated byte for byte (hash to their diff IDs)")
    assert 0 <= st["layersVerified"] <= st["layersRegenerated"], st
    assert st["pinned"] is True, st
    note = next(e.get("note", "") for e in tote.tote_events(ns) if e["reason"] == "ImageSalvaged")
    assert "regenerated from the source's unpacked snapshots" in note, note
    pinned = cluster.node.ctr("images", "ls").stdout
    row = next(ln for ln in pinned.splitlines() if ln.startswith(img.name))
    assert "io.cri-containerd.pinned=pinned" in row, row


# --------------------------------------------------------------------------- scenario 9


def test_9_pinned_salvaged_image_survives_kubelet_image_gc(
    tote: SalvageEnv, test_namespace: str, local_registry: Registry, tmp_path: Path
) -> None:
    """The workload node's kubelet runs its image GC (forced: `forced_image_gc` restarts it
    with an eviction threshold it can never meet) after the salvaged pod's Deployment is
    scaled to zero: an ordinary unused image goes, the salvaged one stays — it is pinned,
    and the registry is still down. The registry comes back with the digest → tote unpins
    the image (record `pinned: false`, `ImageUnpinned`) → the next GC pass removes it."""
    ns, cluster = test_namespace, tote.cluster
    node = cluster.node
    img = image_only_on_node_b(cluster, local_registry, tmp_path / "p", "shop/pinned",
                               marker=f"pinned-{uuid.uuid4().hex[:8]}")  # fmt: skip
    tl = Timeline(cluster, ns, selector="app=pinned")
    cluster.apply(deployment("pinned", ns, img.name))
    tl.wait_running(timeout=150)
    wait_until(lambda: any(r.get("status", {}).get("pinned") for r in tote.records(ns)),
               timeout=30, what="the SalvageRecord says pinned")  # fmt: skip
    ordinary = workload_image(tmp_path / "o", "tote.test/ordinary:v1",
                              marker=f"ordinary-{uuid.uuid4().hex[:8]}")  # fmt: skip
    node.import_image(ordinary)
    cluster.kubectl("scale", "deployment", "pinned", "--replicas=0", "-n", ns)
    wait_until(lambda: not cluster.pods(ns, "app=pinned"), timeout=60, what="pods gone")
    with node.forced_image_gc():
        wait_until(lambda: ordinary.name not in node.image_names(), timeout=90, interval=1,
                   what="kubelet's image GC deletes the ordinary unused image")  # fmt: skip
        time.sleep(12)  # another eviction-manager pass (10 s): still there
        assert img.name in node.image_names(), "the pinned salvaged image was collected"
        local_registry.start()  # its storage still holds the pushed image
        wait_until(lambda: not any(r["status"].get("pinned") for r in tote.records(ns)),
                   timeout=150, interval=1, what="tote unpins once the registry serves it")
        tote.wait_tote_event(ns, "ImageUnpinned", timeout=10)
        wait_until(lambda: img.name not in node.image_names(), timeout=90, interval=1,
                   what="the next GC pass deletes the unpinned image")  # fmt: skip
