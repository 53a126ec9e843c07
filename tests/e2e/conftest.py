"""e2e fixtures: a real one-machine cluster (control plane, controller-manager, scheduler,
three kubelets on containerd, each node in its own network namespace) shared by the
session, and a registry per test on the host's bridge address.

Skips with the reason when the machine cannot run it (binaries not built, packages missing,
not root); under CI=true those are failures instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import registry as registry_mod
from tests.cluster.ci import require
from tests.cluster.cluster import KubeCluster, missing_prerequisites, start_cluster
from tests.cluster.controlplane import ControlPlane
from tests.cluster.registry import Registry


@pytest.fixture(scope="session")
def e2e_bin_dir(k8s_bin_dir: Path) -> Path:
    missing = missing_prerequisites(k8s_bin_dir)
    require(not missing, f"the e2e cluster cannot run on this machine, missing: {missing}")
    return k8s_bin_dir


@pytest.fixture(scope="session")
def kube_cluster(
    e2e_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and three kubelet nodes
    with kube-proxy, kube-router and cluster DNS (Ready, tote.test/pause and tote.test/hello
    preloaded); torn down at session end (tests/cluster/cluster.py)."""
    workdir = tmp_path_factory.mktemp("e2e-cluster")
    cluster = start_cluster(workdir, e2e_bin_dir)
    try:
        yield cluster
    finally:
        report = cluster.stop()
        if os.environ.get("TOTE_KEEP_E2E_WORKDIR") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
        leftovers = {
            k: v for k, v in report.items()
            if isinstance(v, dict) and (v.get("leftover_pids") or v.get("still_mounted"))
        }  # fmt: skip
        if leftovers:
            raise RuntimeError(f"e2e cluster teardown left things behind: {leftovers}")


@pytest.fixture(scope="session")
def control_plane(kube_cluster: KubeCluster) -> ControlPlane:
    """In tests/e2e the shared `control_plane` (and so `test_namespace`) is the cluster's."""
    return kube_cluster.control_plane


@pytest.fixture
def test_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace opted in with `tote.dev/allow: "true"`.

    Overrides the root fixture: this cluster has a namespace controller and a kubelet, so the
    namespace is deleted the real way (workloads first, pods terminated by the kubelet)
    instead of being force-finalized, which would leave recreated pods behind.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "annotations": {"tote.dev/allow": "true"}},
        }
    )
    kube_cluster.wait_default_service_account(name)
    try:
        yield name
    finally:
        kube_cluster.kubectl(
            "delete", "deployments,replicasets,statefulsets,daemonsets,jobs,cronjobs", "--all",
            "-n", name, "--wait=false", check=False,
        )  # fmt: skip
        kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def local_registry(kube_cluster: KubeCluster, tmp_path: Path) -> Iterator[Registry]:
    """A fresh plain-HTTP registry on the cluster's bridge address (the host's side, which
    every node reaches) that every kubelet node trusts."""
    reg = registry_mod.start_registry(tmp_path / "registry", address=kube_cluster.net.gateway)
    for n in kube_cluster.nodes:
        n.trust_registry(reg.host)
    try:
        yield reg
    finally:
        reg.stop()
