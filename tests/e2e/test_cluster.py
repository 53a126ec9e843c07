"""Smoke tests of the e2e cluster itself: a real kubelet runs real pods, and a real registry
outage produces a real ImagePullBackOff. The salvage scenarios build on exactly this."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster import oci
from tests.cluster.cluster import KubeCluster, start_cluster
from tests.cluster.host_cleanup import cgroup_subsystem_dirs, mounts_under
from tests.cluster.manifests import deployment_manifest, pod_manifest, waiting_reasons
from tests.cluster.probe import probe_until
from tests.cluster.procs import wait_until
from tests.cluster.registry import Registry
from tote_core.detect.detector import is_corrupt_content

pytestmark = pytest.mark.e2e


def test_node_ready(kube_cluster: KubeCluster) -> None:
    node = kube_cluster.get_json("node", kube_cluster.node.name)
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True", conds
    addrs = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert kube_cluster.node.net is not None
    assert addrs["InternalIP"] == kube_cluster.node.net.ip, addrs
    assert node["spec"]["podCIDR"] == kube_cluster.node.net.pod_cidr
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert not [t for t in node["spec"].get("taints") or [] if t["effect"] == "NoSchedule"]
    # the locally built images are what the node has (nothing was pulled)
    names = kube_cluster.node.image_names()
    assert oci.PAUSE_IMAGE in names and oci.HELLO_IMAGE in names, names
    print("startup:", json.dumps(kube_cluster.startup_seconds))


def test_preloaded_image_pod_runs(kube_cluster: KubeCluster, test_namespace: str) -> None:
    marker = f"e2e-hello-{uuid.uuid4().hex[:8]}"
    kube_cluster.apply(pod_manifest("hello", test_namespace, oci.HELLO_IMAGE, args=[marker]))
    pod = kube_cluster.wait_pod_running(test_namespace, "hello", timeout=60)
    assert pod["spec"]["nodeName"] == kube_cluster.node.name
    assert kube_cluster.node.net is not None
    pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert pod_ip in ipaddress.ip_network(kube_cluster.node.net.pod_cidr), pod["status"]
    wait_until(
        lambda: marker in kube_cluster.pod_logs(test_namespace, "hello"),
        timeout=20, what="marker in pod log",
    )  # fmt: skip
    reasons = {e["reason"] for e in kube_cluster.events(test_namespace, "hello")}
    assert "Pulled" in reasons  # "already present on machine"
    assert "Pulling" not in reasons


def test_pod_network_services_and_dns(kube_cluster: KubeCluster, test_namespace: str) -> None:
    """From a pod on the workload node: a pod on another node by its pod IP, the same pod
    through a ClusterIP Service by its DNS name (CoreDNS + kube-proxy), the API server through
    the `kubernetes` Service; and nothing outside the cluster (no route: refused at once)."""
    ns = test_namespace
    marker = f"served-{uuid.uuid4().hex[:8]}"
    server = pod_manifest("server", ns, oci.HELLO_IMAGE, args=[marker],
                          env={"TOTE_LISTEN": ":8080"}, labels={"app": "server"})  # fmt: skip
    server["spec"]["nodeName"] = kube_cluster.node_b.name
    kube_cluster.apply(server)
    kube_cluster.apply({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": ns},
        "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
    })  # fmt: skip
    pod = kube_cluster.wait_pod_running(ns, "server")
    assert kube_cluster.node_b.net is not None
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(
        kube_cluster.node_b.net.pod_cidr)
    svc = f"server.{ns}.svc.cluster.local"
    targets = [
        f"tcp:{pod['status']['podIP']}:8080", f"dns:{svc}", f"tcp:{svc}:80",
        "https://kubernetes.default.svc/version", "tcp:203.0.113.1:80",
    ]  # fmt: skip
    svc_ip = kube_cluster.get_json("service", "server", "-n", ns)["spec"]["clusterIP"]
    got = probe_until(kube_cluster, ns, targets, lambda g: all(
        g[t].startswith("OK") for t in targets[:4]), node=kube_cluster.node.name)
    assert got[targets[0]] == f"OK {marker}", got
    assert got[targets[1]] == f"OK {svc_ip}", got
    assert got[targets[2]] == f"OK {marker}", got
    assert got[targets[3]].startswith("OK "), got  # any HTTP answer from the API server
    assert got[targets[4]].startswith("FAIL") and "unreachable" in got[targets[4]], got


def test_registry_pull_then_outage_gives_image_pull_backoff(
    kube_cluster: KubeCluster, test_namespace: str, local_registry: Registry, tmp_path: Path
) -> None:
    reg = local_registry
    repo = f"{reg.host}/tote/hello"
    v1 = oci.build_hello(tmp_path / "img", f"{repo}:v1", marker=f"registry-v1-{uuid.uuid4()}")
    v1.push(f"{repo}:v1")

    # 1. a real pull from the registry works
    kube_cluster.apply(deployment_manifest("web", test_namespace, f"{repo}:v1"))
    wait_until(lambda: bool(kube_cluster.pods(test_namespace, "app=web")), timeout=30,
               what="deployment pod created")  # fmt: skip
    first = kube_cluster.pods(test_namespace, "app=web")[0]["metadata"]["name"]
    pod = kube_cluster.wait_pod_running(test_namespace, first, timeout=60)
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(v1.digest)
    assert "registry-v1-" in kube_cluster.pod_logs(test_namespace, first)
    msgs = [e["message"] for e in kube_cluster.events(test_namespace, first)]
    assert any("Successfully pulled" in m for m in msgs), msgs

    # 2. a new tag exists in the registry, the registry goes down, the rollout needs it
    v2 = oci.build_hello(tmp_path / "img", f"{repo}:v2", marker=f"registry-v2-{uuid.uuid4()}")
    v2.push(f"{repo}:v2")
    assert v2.digest != v1.digest
    reg.stop()
    assert f"{repo}:v2" not in kube_cluster.node.image_names()
    t0 = time.monotonic()
    kube_cluster.kubectl("set", "image", "deployment/web", f"app={repo}:v2", "-n", test_namespace)

    def new_pod() -> str | None:
        for p in kube_cluster.pods(test_namespace, "app=web"):
            if p["spec"]["containers"][0]["image"].endswith(":v2"):
                return str(p["metadata"]["name"])
        return None

    wait_until(lambda: new_pod() is not None, timeout=30, what="rollout pod")
    name = new_pod()
    assert name is not None
    seen: set[str] = set()

    def backoff() -> bool:
        pod = kube_cluster.pod(test_namespace, name)
        if pod is None:
            return False
        seen.update(waiting_reasons(pod).values())
        reasons = {e["reason"] for e in kube_cluster.events(test_namespace, name)}
        return "ImagePullBackOff" in seen and {"Failed", "BackOff"} <= reasons

    wait_until(backoff, timeout=90, interval=1, what="ImagePullBackOff with Failed+BackOff events")
    print(f"registry down → ImagePullBackOff after {time.monotonic() - t0:.1f}s; seen {seen}")
    assert seen <= {"ErrImagePull", "ImagePullBackOff", "ContainerCreating"}, seen
    failed = [
        e["message"] for e in kube_cluster.events(test_namespace, name) if e["reason"] == "Failed"
    ]
    assert any(f"{repo}:v2" in m for m in failed), failed
    # the old pod keeps serving (rolling update), the new image is still absent
    assert kube_cluster.pod(test_namespace, first) is not None
    assert f"{repo}:v2" not in kube_cluster.node.image_names()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _same_process_alive(pid: int, cmdline: bytes) -> bool:
    """The process we recorded still runs: not gone, not a zombie waiting for init to reap it
    (shims are re-parented to init), and not a new process that got the number (a busy
    machine reuses PIDs)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and _cmdline(pid) == cmdline


def _host_network_state() -> dict[str, list[str]]:
    """What the host's network namespace holds: namespaces, links, routes, iptables rules."""
    def lines(*argv: str) -> list[str]:
        res = subprocess.run(list(argv), capture_output=True, text=True)
        return sorted(line.split(" (id:")[0] for line in res.stdout.splitlines()
                      if line.strip() and not line.startswith("#"))  # fmt: skip

    links = [line.split(":")[1].strip().split("@")[0] for line in lines("ip", "-o", "link")]
    return {"netns": lines("ip", "netns", "list"), "links": sorted(links),
            "routes": lines("ip", "route", "show"),
            "iptables": [r for r in lines("iptables-save") if not r.startswith(":")]}  # fmt: skip


def test_teardown_leaves_nothing_behind(
    e2e_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second, private cluster: run a pod whose container ignores SIGTERM (so teardown
    meets a pod still terminating: a shim, a container, a pod network namespace), tear down,
    and check every PID, shim, mount and cgroup is gone, and the host's network namespaces,
    links, routes and iptables rules are as before. (A short tmp dir: unix socket paths
    under it are limited to 104 bytes.)"""
    before = _host_network_state()
    workdir = tmp_path_factory.mktemp("td")
    cluster = start_cluster(workdir, e2e_bin_dir)
    stopped = False
    try:
        ns = "teardown"
        cluster.kubectl("create", "namespace", ns)
        cluster.wait_default_service_account(ns)
        stubborn = pod_manifest("stubborn", ns, oci.HELLO_IMAGE, args=["teardown-marker"],
                                env={"TOTE_IGNORE_SIGTERM": "1"})  # fmt: skip
        stubborn["spec"]["terminationGracePeriodSeconds"] = 300
        cluster.apply(stubborn)
        cluster.wait_pod_running(ns, "stubborn", timeout=60)
        during = _host_network_state()
        assert set(during["netns"]) - set(before["netns"]), "no node network namespace?"
        node = cluster.node
        shims = node.leftover_pids()  # while running: the shim(s) and the pod's processes
        assert shims, "expected containerd shims for the running pod"
        pids = cluster.all_pids()
        cmdlines = {pid: _cmdline(pid) for pid in pids + shims}
        cgroup_root = node.cgroup_root
        report = cluster.stop()
        stopped = True
    finally:
        if not stopped:
            cluster.stop()
    assert not cluster.alive_pids()
    for pid in pids + shims:
        assert not _same_process_alive(pid, cmdlines[pid]), f"pid {pid} still exists"
    node_report = report[node.name]
    assert node.leftover_pids() == []
    assert node_report["still_mounted"] == [] and mounts_under(workdir) == []
    assert node_report["cgroups_left"] == []
    for base in cgroup_subsystem_dirs():
        assert not (base / cgroup_root.lstrip("/")).exists()
    assert report["network"]["left"] == [], report["network"]
    assert report["network"]["killed_in_netns"] == [], report["network"]
    assert _host_network_state() == before


def test_image_only_node_holds_images_and_stays_ready(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    """An extra "node": containerd + a Node object kept Ready by Lease heartbeats, reporting
    its images in Node.status.images like kubelet; pods are never scheduled there."""
    name = f"img-{uuid.uuid4().hex[:6]}"
    node = kube_cluster.image_nodes.add(name)
    try:
        img = oci.build_hello(tmp_path / "img", "registry.invalid/tote/held:v1", marker="held")
        node.import_image(img)
        assert "registry.invalid/tote/held:v1" in node.image_names()
        kube_cluster.image_nodes.sync()
        obj = kube_cluster.get_json("node", name)
        names = [n for i in obj["status"]["images"] for n in i["names"]]
        assert f"registry.invalid/tote/held@{img.digest}" in names, names
        assert "registry.invalid/tote/held:v1" in names, names
        assert any(t["key"] == "tote.test/image-only" for t in obj["spec"]["taints"])
        lease = kube_cluster.get_json("lease", name, "-n", "kube-node-lease")
        first_renew = lease["spec"]["renewTime"]
        wait_until(
            lambda: kube_cluster.get_json("lease", name, "-n", "kube-node-lease")["spec"][
                "renewTime"
            ]
            != first_renew,
            timeout=3 * kube_cluster.image_nodes.interval + 5, what="lease renewed",
        )  # fmt: skip
        assert kube_cluster.node_ready(name)
        assert not kube_cluster.image_nodes.errors
    finally:
        kube_cluster.image_nodes.remove(name)
    assert not node.procs.procs[0].alive()
    assert kube_cluster.kubectl("get", "node", name, check=False).returncode != 0


def test_missing_blobs_give_create_container_error(
    kube_cluster: KubeCluster, test_namespace: str, tmp_path: Path
) -> None:
    """Corrupt image records on the kubelet node (what scenario 6 starts from): a missing
    config blob and a missing layer blob. Each containerd words it its own way (1.6: "failed to
    resolve rootfs" / "failed to extract layer"; 2.x: "error unpacking image"), so the test
    asserts behaviour: CreateContainerError naming the missing digest, kubelet still thinks the
    image is present, and tote's detector classifies the message as a corrupt record."""
    node = kube_cluster.node
    cases = {}
    for kind in ("config", "layer"):
        ref = f"registry.invalid/tote/corrupt-{kind}-{uuid.uuid4().hex[:6]}:v1"
        img = oci.build_hello(tmp_path / "img", ref, marker=f"corrupt-{kind}")
        node.import_image(img, unpack=False)  # a record + blobs, no snapshot yet
        gone = img.config_digest if kind == "config" else img.layer_digests[0]
        node.delete_blob(gone)
        kube_cluster.apply(pod_manifest(f"corrupt-{kind}", test_namespace, ref))
        cases[kind] = gone
    messages: dict[str, str] = {}

    def failed() -> bool:
        for kind in cases:
            pod = kube_cluster.pod(test_namespace, f"corrupt-{kind}") or {}
            for c in pod.get("status", {}).get("containerStatuses", []):
                w = (c.get("state") or {}).get("waiting") or {}
                if w.get("reason") == "CreateContainerError":
                    messages[kind] = w.get("message", "")
        return len(messages) == len(cases)

    wait_until(failed, timeout=60, interval=1, what="CreateContainerError on both pods")
    print(json.dumps(messages, indent=1))
    for kind, gone in cases.items():
        assert gone in messages[kind] and "not found" in messages[kind], messages[kind]
        reasons = [e["reason"] for e in kube_cluster.events(test_namespace, f"corrupt-{kind}")]
        assert "Pulled" in reasons and "Pulling" not in reasons, reasons  # "already present"
    for kind, message in messages.items():
        assert is_corrupt_content(message), (kind, message)
