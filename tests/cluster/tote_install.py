"""tote installed the way users install it: the image built here, `helm install` of the chart.

`install_tote(cluster, workdir)` builds the tote image offline (deploy/image/build.py, cached),
imports it into every kubelet node's containerd (what a registry pull would leave), and runs
`helm install` of deploy/helm/tote with the chart's defaults — tote's pods on the pod
network, the API server through the `kubernetes` Service, the chart's ports and its own mTLS
certificates — and the one thing this cluster dictates: `agent.containerdSocket` /
`agent.contentRoot` with `$(NODE_NAME)`, because the nodes share one machine's filesystem,
each with its containerd under `<cluster>/nodes/<node name>/containerd`.

It waits for `helm --wait` (controller and both agents Ready), then for the controller to hold
its Lease. Used by tests/e2e/test_helm_install.py and the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.cluster import KubeCluster
from tests.cluster.procs import step_seconds, wait_until
from tests.images import tote_image

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "tote"
NAMESPACE = "tote-system"
RELEASE = "tote"


def harness_values(cluster: KubeCluster) -> dict[str, Any]:
    """The only values this cluster dictates: where each node's containerd is (see the
    module docstring). Everything else is the chart's default."""
    nodes_dir = cluster.workdir / "nodes"
    return {
        "agent": {
            "containerdSocket": f"{nodes_dir}/$(NODE_NAME)/containerd/containerd.sock",
            "contentRoot": f"{nodes_dir}/$(NODE_NAME)/containerd/root/"
                           "io.containerd.content.v1.content",
        },
    }  # fmt: skip


@dataclass
class Helm:
    """The built helm binary against the cluster's admin kubeconfig."""

    binary: Path
    kubeconfig: Path
    home: Path

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        res = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                             env=env, timeout=timeout)  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed ({res.returncode}):\n"
                               f"{res.stdout}\n{res.stderr}")  # fmt: skip
        return res.stdout + res.stderr


@dataclass
class Install:
    cluster: KubeCluster
    helm: Helm
    workdir: Path
    image: Any  # deploy/image/build.py BuiltImage
    values: dict[str, Any]
    release: str = RELEASE
    namespace: str = NAMESPACE
    startup_seconds: dict[str, float] = field(default_factory=dict)
    notes: str = ""  # what `helm install` printed (the chart's NOTES)

    def notes_command(self, program: str) -> list[str]:
        """The `tote <program> ...` line of the NOTES, as printed, split into words."""
        for line in self.notes.splitlines():
            words = line.split()
            if words[:2] == ["tote", program]:
                return words
        raise LookupError(f"no `tote {program}` line in the NOTES:\n{self.notes}")

    def values_file(self, values: dict[str, Any], name: str = "values.yaml") -> Path:
        p = self.workdir / name
        p.write_text(yaml.safe_dump(values))
        return p

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cluster.kubectl(*args, "-o", "json").stdout)

    def pods(self, component: str) -> list[dict[str, Any]]:
        sel = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={component}"
        items: list[dict[str, Any]] = self.kubectl_json(
            "get", "pods", "-n", self.namespace, "-l", sel
        )["items"]
        return items

    def lease_holder(self) -> str:
        for lease in self.kubectl_json("get", "leases", "-n", self.namespace)["items"]:
            holder = lease.get("spec", {}).get("holderIdentity") or ""
            if holder:
                return str(holder)
        return ""

    def agents_ready(self) -> bool:
        ds = self.kubectl_json("get", "daemonset", f"{self.release}-agent", "-n", self.namespace)
        st = ds.get("status", {})
        want = len(self.cluster.nodes)
        return bool(
            st.get("desiredNumberScheduled") == want
            and st.get("numberReady") == want
            and st.get("updatedNumberScheduled") == want
        )

    def wait_agents_ready(self, timeout: float = 180) -> None:
        wait_until(self.agents_ready, timeout=timeout, interval=1,
                   what=f"an agent Ready on each of the {len(self.cluster.nodes)} nodes")

    def wait_leading(self, timeout: float = 120) -> str:
        wait_until(lambda: bool(self.lease_holder()), timeout=timeout, interval=1,
                   what=f"a tote controller holds its Lease in {self.namespace}")  # fmt: skip
        return self.lease_holder()

    def secret_data(self) -> dict[str, dict[str, str]]:
        """The release's Secrets (its CA and certificates): name → data (base64 values), for
        upgrade checks. Helm's own release records are skipped."""
        return {
            s["metadata"]["name"]: dict(s.get("data") or {})
            for s in self.kubectl_json("get", "secrets", "-n", self.namespace)["items"]
            if s["metadata"]["name"].startswith(f"{self.release}-")
            and s["metadata"].get("labels", {}).get("owner") != "helm"
        }

    def logs(self, *, previous: bool = False) -> dict[str, str]:
        """Logs of every tote pod (attached to failing tests); with `previous`, also of the
        last terminated container of each (what a crash-looping pod said)."""
        out = {}
        for comp in ("controller", "agent"):
            for p in self.pods(comp):
                name = p["metadata"]["name"]
                for prev in (False, True) if previous else (False,):
                    res = self.cluster.kubectl(
                        "logs", name, "-n", self.namespace, "--tail=200",
                        *(["--previous"] if prev else []), check=False,
                    )  # fmt: skip
                    key = f"{name} ({p['spec'].get('nodeName')}){' previous' if prev else ''}"
                    out[key] = res.stdout + res.stderr
        return out

    def uninstall(self) -> None:
        self.helm("uninstall", self.release, "-n", self.namespace, "--wait", "--timeout", "120s",
                  check=False)  # fmt: skip


def install_tote(
    cluster: KubeCluster, workdir: Path, *, extra_values: dict[str, Any] | None = None
) -> Install:
    """Build + import the image, `helm install`, wait until tote is Ready and leading."""
    marks = [time.monotonic()]
    workdir.mkdir(parents=True, exist_ok=True)
    image = tote_image.build()
    marks.append(time.monotonic())
    for node in cluster.nodes:
        tote_image.import_into(image.archive, node.socket)
    marks.append(time.monotonic())
    helm = Helm(cluster.control_plane.bin_dir / "helm", cluster.admin_kubeconfig,
                workdir / "helm-home")  # fmt: skip
    values = harness_values(cluster)
    for key, sub in (extra_values or {}).items():
        values[key] = {**values.get(key, {}), **sub} if isinstance(sub, dict) else sub
    inst = Install(cluster=cluster, helm=helm, workdir=workdir, image=image, values=values)
    try:
        inst.notes = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
                          "-f", str(inst.values_file(values)), "--wait",
                          "--timeout", "300s")  # fmt: skip
    except RuntimeError as exc:
        logs = "\n".join(f"--- {k} ---\n{v[-3000:]}" for k, v in inst.logs(previous=True).items())
        raise RuntimeError(f"{exc}\ntote pods:\n{logs}") from None
    # helm's --wait counts a DaemonSet ready with maxUnavailable (1) pods still unready: wait
    # for every agent, as a user checking `kubectl get pods` would.
    inst.wait_agents_ready()
    marks.append(time.monotonic())
    inst.wait_leading()
    marks.append(time.monotonic())
    inst.startup_seconds = step_seconds(
        ("image build", "image import (all nodes)", "helm install --wait", "leading"), marks)
    return inst


@dataclass
class Outcome:
    """What one registry-outage salvage left: the Running replacement pod, the image it
    needed, the pod's marker line and the SalvageRecords of its namespace."""

    namespace: str
    pod: dict[str, Any]
    first_pod: str
    image_digest: str
    marker: str
    records: list[dict[str, Any]]
    summary: str


@dataclass
class Outage:
    """A registry outage in progress: the image only node-b holds, the opted-in Deployment
    `web` applied, its pods followed by `timeline`."""

    namespace: str
    ref: str
    image_digest: str
    marker: str
    timeline: Any  # tests.cluster.salvage_env.Timeline


@contextlib.contextmanager
def registry_outage(cluster: KubeCluster, workdir: Path, repo: str,
                    marker_prefix: str = "in-cluster") -> Iterator[Outage]:
    """An image only the source node `node-b` still has (it pulled it earlier), the registry
    down, an opted-in Deployment scheduled to the workload node. On exit the registry is
    stopped and the namespace's Deployments deleted."""
    from tests.cluster import registry as registry_mod
    from tests.cluster.salvage_env import Timeline, deployment, namespace, workload_image

    reg = registry_mod.start_registry(workdir / "registry", address=cluster.net.gateway)
    ns = namespace(cluster)
    try:
        for n in cluster.nodes:
            n.trust_registry(reg.host)
        marker = f"{marker_prefix}-{os.urandom(4).hex()}"
        ref = f"{reg.host}/{repo}:v1"
        img = workload_image(workdir / "img", ref, marker=marker)
        img.push(ref)
        cluster.node_b.import_image(img)  # node B pulled it earlier
        reg.stop()  # the outage
        assert ref not in cluster.node.image_names()
        tl = Timeline(cluster, ns, selector="app=web")
        cluster.apply(deployment("web", ns, ref))
        yield Outage(namespace=ns, ref=ref, image_digest=img.digest, marker=marker, timeline=tl)
    finally:
        reg.stop()
        cluster.kubectl("delete", "deployments", "--all", "-n", ns, "--wait=false", check=False)


def registry_outage_salvage(cluster: KubeCluster, workdir: Path, repo: str) -> Outcome:
    """The story tote exists for, on the helm-installed tote (`registry_outage`): waits
    until the Deployment's pod is Running."""
    with registry_outage(cluster, workdir, repo) as out:
        tl = out.timeline
        pod = tl.wait_running(timeout=180)
        recs = json.loads(cluster.kubectl("get", "salvagerecords", "-n", out.namespace, "-o",
                                          "json").stdout)["items"]  # fmt: skip
        return Outcome(namespace=out.namespace, pod=pod, first_pod=tl.pods[0][0],
                       image_digest=out.image_digest, marker=out.marker, records=recs,
                       summary=tl.summary())  # fmt: skip
