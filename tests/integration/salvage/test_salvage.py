"""Salvage end to end: real apiserver, real containerd instances, real agents (issue 4).

(1) digest-pinned pod on n1, image on n2 → record Completed, all CRI names on n1, both pods
(owned and standalone) annotated `salvage.tote.dev/delivered-at` with their UID, neither
deleted (kubelet syncs them in place); (2) tag-only ref resolved through an agent (node
status does not list it: kubelet's 50-image cap); (7) corrupt image record → removed, the
pod annotated (kubelet pulls again), its next failure salvaged; (8) many pods of one image
on two target nodes → one transfer per target node; (8b) … and one per (digest, node)
across namespaces.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.controller import ControllerProcess
from tests.cluster.images import layered_image, runnable_image
from tests.cluster.objects import create_pod, get, set_waiting, tote_events, wait_event
from tests.cluster.procs import wait_until
from tests.integration.salvage.conftest import SalvageEnv, records
from tote_core.annotations import DELIVERED_AT

MiB = 1024 * 1024
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"


@pytest.fixture(scope="module")
def controller(senv: SalvageEnv) -> ControllerProcess:
    return senv.controller("salvager")


def owner_rs(senv: SalvageEnv, ns: str, name: str = "web-rs") -> dict[str, object]:
    senv.cp.apply({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": "x"}]}}},
    })
    rs = get(senv.cp, "replicaset", name, ns)
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
            "uid": rs["metadata"]["uid"], "controller": True}


def pod_exists(senv: SalvageEnv, ns: str, name: str, uid: str) -> bool:
    """The pod with this UID exists and is not being deleted.

    There is no kubelet here to finish a graceful deletion, so a deleted pod stays with a
    deletionTimestamp; that is what "deleted" means in this harness.
    """
    got = senv.cp.kubectl("get", "pod", name, "-n", ns, "-o", "json", check=False)
    if got.returncode != 0:
        return False
    meta = json.loads(got.stdout)["metadata"]
    return bool(meta["uid"] == uid and not meta.get("deletionTimestamp"))


def annotations(senv: SalvageEnv, ns: str, name: str) -> dict[str, str]:
    got = senv.cp.kubectl("get", "pod", name, "-n", ns, "-o", "json", check=False)
    if got.returncode != 0:
        return {}
    return dict(json.loads(got.stdout)["metadata"].get("annotations") or {})


def wait_record(senv: SalvageEnv, ns: str, phase: str, *, timeout: float = 90,
                count: int = 1) -> list[dict[str, object]]:
    def done() -> bool:
        rs = records(senv.cp, ns)
        return len([r for r in rs if r.get("status", {}).get("phase") == phase]) >= count

    wait_until(done, timeout=timeout, what=f"{count} record(s) {phase} in {ns}")
    return records(senv.cp, ns)


def test_1_digest_pinned_pod_salvaged_owned_pod_restarted_standalone_kept(
    senv: SalvageEnv, controller: ControllerProcess, test_namespace: str, tmp_path: Path
) -> None:
    ns, cp = test_namespace, senv.cp
    n1 = senv.ctd.nodes["n1"]
    img = runnable_image("127.0.0.1:5999/shop/web:v1", [2 * MiB, 1 * MiB], seed=11)
    senv.preload("n2", img, img.write_archive(tmp_path / "web.tar"))
    ref = f"127.0.0.1:5999/shop/web@{img.digest}"
    attempts0 = controller.metric("tote_salvage_attempts_total")
    owned = create_pod(cp, ns, "web-owned", ref, node="n1", owner=owner_rs(senv, ns),
                       annotations={"tote.dev/auto-salvage": "true"})
    alone = create_pod(cp, ns, "web-alone", ref, node="n1",
                       annotations={"tote.dev/auto-salvage": "true"})
    for name in ("web-owned", "web-alone"):
        set_waiting(cp, ns, name, reason="ErrImagePull", message=REFUSED)

    (rec,) = wait_record(senv, ns, "Completed")
    st, spec = rec["status"], rec["spec"]
    assert spec["digest"] == img.digest and spec["targetNode"] == "n1"  # type: ignore[index]
    assert spec["sourceNode"] == "n2"  # type: ignore[index]
    assert st["bytesTransferred"] > 0 and st["bytesTotal"] >= st["bytesTransferred"]  # type: ignore[index,operator]
    assert st["startedAt"] and st["completedAt"] and "100%" in st["progress"]  # type: ignore[index]
    labels = rec["metadata"]["labels"]  # type: ignore[index]
    assert labels["tote.dev/target-node"] == "n1"
    # The image is on n1 under the CRI names kubelet looks up, managed by CRI.
    names = n1.image_names()
    config_digest = img.configs["linux/amd64"].digest
    assert ref in names and config_digest in names
    listing = n1.ctr("images", "ls").stdout
    assert "io.cri-containerd.image=managed" in listing
    # One transfer for the two pods (same digest, same target).
    assert controller.metric("tote_salvage_attempts_total") == attempts0 + 1
    wait_event(cp, ns, "web-owned", "ImageSalvaged")
    wait_event(cp, ns, "web-alone", "ImageSalvaged")
    for name, pod in (("web-owned", owned), ("web-alone", alone)):
        wait_until(lambda name=name: DELIVERED_AT in annotations(senv, ns, name), timeout=20,
                   what=f"{name} annotated so kubelet starts it in place")
        assert pod_exists(senv, ns, name, pod["metadata"]["uid"])  # never deleted
    # `kubectl get salvagerecords` shows the printer columns.
    table = cp.kubectl("get", "salvagerecords", "-n", ns).stdout
    assert "Completed" in table and "n2" in table and "n1" in table


def test_2_tag_only_ref_resolved_through_an_agent(
    senv: SalvageEnv, controller: ControllerProcess, test_namespace: str, tmp_path: Path
) -> None:
    ns, cp = test_namespace, senv.cp
    n1, n3 = senv.ctd.nodes["n1"], senv.ctd.nodes["n3"]
    img = layered_image("127.0.0.1:5999/shop/api:v2", [1 * MiB], seed=12)
    n3.import_archive(img.write_archive(tmp_path / "api.tar"))
    # n3's status does NOT list the image (kubelet shows at most 50): only its agent knows.
    senv.node_status_from_containerd("n3", hide={img.digest})
    create_pod(cp, ns, "api", "127.0.0.1:5999/shop/api:v2", node="n1",
               annotations={"tote.dev/auto-salvage": "true"})
    set_waiting(cp, ns, "api", reason="ErrImagePull", message=REFUSED)
    ev = wait_event(cp, ns, "api", "ImageSalvageable")
    assert img.digest in ev["note"] and "n3" in ev["note"]
    (rec,) = wait_record(senv, ns, "Completed")
    assert rec["spec"]["sourceNode"] == "n3"  # type: ignore[index]
    assert "127.0.0.1:5999/shop/api:v2" in n1.image_names()


def test_7_corrupt_record_removed_then_salvaged(
    senv: SalvageEnv, controller: ControllerProcess, test_namespace: str, tmp_path: Path
) -> None:
    ns, cp = test_namespace, senv.cp
    n1 = senv.ctd.nodes["n1"]
    img = layered_image("127.0.0.1:5999/shop/cart:v3", [1 * MiB, 1 * MiB], seed=13)
    archive = img.write_archive(tmp_path / "cart.tar")
    senv.preload("n2", img, archive)
    n1.import_archive(archive)
    layer = img.layers["linux/amd64"][0].digest
    n1.ctr("content", "rm", layer)  # the record stays, its content is gone
    ref = f"127.0.0.1:5999/shop/cart@{img.digest}"
    before = controller.metric("tote_corrupt_images_total")
    pod = create_pod(cp, ns, "cart", ref, node="n1", owner=owner_rs(senv, ns, "cart-rs"),
                     annotations={"tote.dev/auto-salvage": "true"})
    set_waiting(cp, ns, "cart", reason="CreateContainerError", message=(
        "failed to create containerd container: error unpacking image: failed to extract "
        f"layer {layer}: failed to get reader from content store: content digest {layer}: "
        "not found"))
    ev = wait_event(cp, ns, "cart", "ImageCorrupt")
    assert "cart" in ev["note"]
    wait_until(lambda: not any(img.digest in n for n in n1.image_names()), timeout=20,
               what="stale record removed on n1")
    wait_until(lambda: DELIVERED_AT in annotations(senv, ns, "cart"), timeout=20,
               what="the pod annotated so kubelet syncs it (and pulls) in place")
    assert pod_exists(senv, ns, "cart", pod["metadata"]["uid"])  # not deleted
    assert controller.metric("tote_corrupt_images_total") == before + 1
    # kubelet's pull of the same pod fails (registry down) → normal salvage.
    set_waiting(cp, ns, "cart", reason="ErrImagePull", message=REFUSED)
    wait_record(senv, ns, "Completed")
    assert n1.blob_present(layer) and ref in n1.image_names()


def test_8_many_pods_one_transfer_per_target_node(
    senv: SalvageEnv, controller: ControllerProcess, test_namespace: str, tmp_path: Path
) -> None:
    ns, cp = test_namespace, senv.cp
    img = layered_image("127.0.0.1:5999/shop/batch:v4", [1 * MiB], seed=14)
    senv.preload("n2", img, img.write_archive(tmp_path / "batch.tar"))
    ref = f"127.0.0.1:5999/shop/batch@{img.digest}"
    attempts0 = controller.metric("tote_salvage_attempts_total")
    pods = [f"batch-{i}" for i in range(20)]
    for i, name in enumerate(pods):
        create_pod(cp, ns, name, ref, node=("n1", "n3")[i % 2],
                   annotations={"tote.dev/auto-salvage": "true"})
    for name in pods:
        set_waiting(cp, ns, name, reason="ErrImagePull", message=REFUSED)
    recs = wait_record(senv, ns, "Completed", count=2)
    assert len(recs) == 2
    assert sorted(r["spec"]["targetNode"] for r in recs) == ["n1", "n3"]  # type: ignore[index]
    assert controller.metric("tote_salvage_attempts_total") == attempts0 + 2
    salvaged = [e for e in tote_events(cp, ns) if e["reason"] == "ImageSalvaged"]
    assert len({e["regarding"]["name"] for e in salvaged}) == 20


def test_8b_one_transfer_per_digest_and_node_across_namespaces(
    senv: SalvageEnv, controller: ControllerProcess, test_namespace: str,
    other_namespace: str, tmp_path: Path,
) -> None:
    """Issue 12: pods of two namespaces failing together on one image and node make one
    transfer and one SalvageRecord (in the first pod's namespace), and every pod is told.
    Tried: three pods in each namespace, all failing within a moment, with two salvage
    workers free (before the fix each namespace got its own record, and the two transfers
    ran side by side)."""
    cp = senv.cp
    img = layered_image("127.0.0.1:5999/shared/base:v1", [8 * MiB, 8 * MiB], seed=15)
    senv.preload("n2", img, img.write_archive(tmp_path / "base.tar"))
    ref = f"127.0.0.1:5999/shared/base@{img.digest}"
    attempts0 = controller.metric("tote_salvage_attempts_total")
    pods = [(ns, f"app-{i}") for i in range(3) for ns in (test_namespace, other_namespace)]
    for ns, name in pods:
        create_pod(cp, ns, name, ref, node="n1", annotations={"tote.dev/auto-salvage": "true"})
    for ns, name in pods:
        set_waiting(cp, ns, name, reason="ErrImagePull", message=REFUSED)
    for ns, name in pods:
        wait_event(cp, ns, name, "ImageSalvaged", timeout=90)
    everywhere = json.loads(cp.kubectl("get", "salvagerecords", "-A", "-o", "json").stdout)
    mine = [r for r in everywhere["items"] if r["spec"]["digest"] == img.digest]
    assert len(mine) == 1, [r["metadata"] for r in mine]
    (rec,) = mine
    assert rec["status"]["phase"] == "Completed"
    assert rec["metadata"]["namespace"] in (test_namespace, other_namespace)
    assert controller.metric("tote_salvage_attempts_total") == attempts0 + 1
    assert ref in senv.ctd.nodes["n1"].image_names()


def test_9_the_controller_keeps_one_connection_per_agent(
    senv: SalvageEnv, controller: ControllerProcess
) -> None:
    """After the salvages above (inventory fan-outs, tag resolution, record removal,
    transfers), the controller has dialled each agent once: its hook calls share the
    pooled connections of the containerd plugin's service instead of a handshake each."""
    assert controller.proc is not None
    log = controller.proc.log_path.read_text()
    dialled = [line.rsplit(" ", 1)[-1] for line in log.splitlines()
               if "new connection to agent" in line]
    assert dialled, "the controller logged no agent connection"
    assert len(dialled) == len(set(dialled)) <= len(senv.ctd.agents), dialled
