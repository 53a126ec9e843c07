"""The e2e cluster: control plane, controller-manager, scheduler and three kubelet nodes,
each a host of its own on a bridge, with a pod network, Services and cluster DNS.

`start_cluster(workdir, bin_dir)`:

1. builds the pause and hello images locally;
2. takes a network slot (tests/cluster/netns.py): a bridge, and a network namespace per node;
3. starts a `ControlPlane` (tests/cluster/controlplane.py: etcd + kube-apiserver with tote's
   CRD/RBAC) listening on the host's bridge address, then kube-controller-manager and
   kube-scheduler with client-certificate kubeconfigs from the control plane's CA;
4. starts the nodes (tests/cluster/node.py) — `node-a`, where workloads run, and the source
   nodes `node-b` and `node-c` (tainted `tote.test/source`) — each with containerd and the
   kubelet in its namespace, its pod CIDR recorded on the Node and routed from the host and
   the other nodes, and kube-proxy and kube-router's NetworkPolicy firewall beside them
   (tests/cluster/node_network.py);
5. waits until every node is Ready and schedulable, and installs cluster DNS (CoreDNS,
   tests/cluster/cluster_dns.py).

Every process is tracked by PID; teardown stops them, then removes the namespaces, links and
routes it created. `python -m tests.cluster.cluster` brings it up by hand.

`start_cluster` runs those steps in order, each a function named for what it does
(`_build_cluster_images`, `_start_cluster_control_plane`, `_start_controller_manager`,
`_start_scheduler`, `_start_kubelet_nodes`, `_start_node_networking`, `_report_startup`).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import (
    cluster_dns,
    containerd_node,
    network_images,
    oci,
    pki,
    registry,
    versions,
)
from tests.cluster.controlplane import (
    ControlPlane,
    binaries_dir,
    start_control_plane,
    write_kubeconfig,
)
from tests.cluster.image_node import ImageNodes
from tests.cluster.netns import ClusterNetwork, open_network
from tests.cluster.node import KubeletNode, start_kubelet_node
from tests.cluster.node_network import KUBE_ROUTER_RBAC, start_kube_proxy, start_kube_router
from tests.cluster.objects import pod_running
from tests.cluster.procs import Proc, ProcessGroup, step_seconds, wait_until

CLUSTER_BINARIES = ("kube-controller-manager", "kube-scheduler", "kubelet")
# The workload node (first) and the source nodes: real kubelets, each on its own containerd in
# its own network namespace. Source nodes are tainted so test workloads land on the workload
# node; node agents (a DaemonSet tolerating every taint) run on all.
NODE_NAMES = ("node-a", "node-b", "node-c")
SOURCE_TAINT = "tote.test/source"
# The namespace of the harness's own tote identity (processes started by tests). tote-system
# stays free for `helm install` of the chart, as a user would install it.
HARNESS_NAMESPACE = "tote-harness"


def missing_binaries(bin_dir: Path) -> list[str]:
    missing = [b for b in CLUSTER_BINARIES if not (bin_dir / b).exists()]
    if versions.network_bin_dir() is None:
        missing += [f"{b} (tests/cluster/build-network.sh)" for b in versions.NETWORK_BINARIES]
    return missing


def missing_prerequisites(bin_dir: Path | None) -> list[str]:
    """Everything this machine lacks to run the e2e cluster with tote on it (the e2e suite's
    and the demo's one check): the built binaries, the nodes' packages and root, the image
    tools and the registry. `bin_dir` None: the Kubernetes binaries are not built."""
    if bin_dir is None:
        missing = ["Kubernetes binaries (tests/cluster/build-binaries.sh)"]
    else:
        missing = missing_binaries(bin_dir)
    missing += containerd_node.missing_prerequisites() + oci.missing_tools()
    if not registry.available():
        missing.append(registry.REGISTRY_BINARY)
    return missing


@dataclass
class KubeCluster:
    control_plane: ControlPlane
    workdir: Path
    procs: ProcessGroup  # kube-controller-manager, kube-scheduler
    net: ClusterNetwork
    nodes: list[KubeletNode] = field(default_factory=list)
    pause_image: oci.OciImage | None = None
    hello_image: oci.OciImage | None = None
    startup_seconds: dict[str, float] = field(default_factory=dict)
    owns_control_plane: bool = True
    teardown_report: dict[str, Any] = field(default_factory=dict)
    _image_nodes: ImageNodes | None = field(default=None, repr=False)

    @property
    def node(self) -> KubeletNode:
        """The workload node (untainted): test pods are scheduled here."""
        return self.nodes[0]

    @property
    def node_b(self) -> KubeletNode:
        """The first source node (tainted `tote.test/source`): holds images for salvage
        tests."""
        return self.nodes[1]

    @property
    def node_c(self) -> KubeletNode:
        """The second source node (tainted `tote.test/source`)."""
        return self.nodes[2]

    @property
    def admin_kubeconfig(self) -> Path:
        return self.control_plane.admin_kubeconfig

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return self.control_plane.kubectl(*args, **kw)

    def apply(self, manifest: Any) -> None:
        self.control_plane.apply(manifest)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    # -- readiness ------------------------------------------------------------------

    def node_ready(self, name: str) -> bool:
        res = self.kubectl("get", "node", name, "-o", "json", check=False)
        if res.returncode != 0:
            return False
        node = json.loads(res.stdout)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        tainted = any(
            t.get("key", "").startswith("node.kubernetes.io/not-ready")
            or t.get("key") == "node.kubernetes.io/network-unavailable"
            for t in node.get("spec", {}).get("taints", []) or []
        )
        return ready and not tainted

    def wait_node_ready(self, name: str | None = None, timeout: float = 90) -> None:
        """Ready=True and the not-ready taint removed (i.e. the scheduler may use it)."""
        for node in self.nodes if name is None else [n for n in self.nodes if n.name == name]:
            self._wait_one_ready(node, timeout)
        # the default ServiceAccount exists once the controller-manager is working
        wait_until(
            lambda: self.kubectl("get", "sa", "default", "-n", "default", check=False).returncode
            == 0,
            timeout=timeout, what="default ServiceAccount (controller-manager up)",
        )  # fmt: skip

    def record_pod_cidr(self, node: KubeletNode, timeout: float = 60) -> None:
        """Write the node's pod CIDR into its Node (what node IPAM would have done), once the
        kubelet has registered it."""
        assert node.net is not None
        wait_until(lambda: self.kubectl("get", "node", node.name, check=False).returncode == 0,
                   timeout=timeout, what=f"node {node.name} registered",
                   proc=node.kubelet)  # fmt: skip
        cidr = node.net.pod_cidr
        self.kubectl("patch", "node", node.name, "--type=merge", "-p",
                     json.dumps({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}))  # fmt: skip

    def _wait_one_ready(self, node: KubeletNode, timeout: float) -> None:
        wait_until(
            lambda: self.node_ready(node.name),
            timeout=timeout,
            interval=0.5,
            what=f"node {node.name} Ready and untainted",
            proc=node.kubelet,
        )

    # -- image-only nodes ---------------------------------------------------------------

    @property
    def image_nodes(self) -> ImageNodes:
        """Image-only nodes (containerd + a Node object, no kubelet), started on demand."""
        if self._image_nodes is None:
            assert self.pause_image is not None
            self._image_nodes = ImageNodes(self.control_plane, self.workdir / "image-nodes",
                                           self.pause_image.name, self.node_ready)
        return self._image_nodes

    # -- workloads --------------------------------------------------------------------

    def wait_default_service_account(self, namespace: str, timeout: float = 30) -> None:
        """ServiceAccount admission rejects pods until the controller-manager has created the
        namespace's `default` ServiceAccount (a second or so after the namespace)."""
        wait_until(
            lambda: self.kubectl(
                "get", "sa", "default", "-n", namespace, check=False
            ).returncode == 0,
            timeout=timeout, interval=0.3, what=f"ServiceAccount {namespace}/default",
        )  # fmt: skip

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        res = self.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get_json("pods", "-n", namespace, "-l", selector)[
            "items"
        ]
        return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])

    def wait_pod_running(self, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until the pod is Running with every container started; returns the pod."""
        got: dict[str, Any] = {}

        def running() -> bool:
            pod = self.pod(namespace, name)
            if pod is None:
                return False
            got.update(pod)
            return pod_running(pod)

        try:
            wait_until(
                running, timeout=timeout, interval=0.5, what=f"pod {namespace}/{name} Running"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last status: {json.dumps(got.get('status'))}") from None
        return got

    def pod_logs(self, namespace: str, name: str, container: str | None = None) -> str:
        args = ["logs", name, "-n", namespace]
        if container:
            args += ["-c", container]
        return str(self.kubectl(*args).stdout)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """core/v1 Events whose involvedObject is `name` in `namespace`, oldest first."""
        items = self.get_json("events", "-n", namespace)["items"]
        evs = [e for e in items if e.get("involvedObject", {}).get("name") == name]
        return sorted(evs, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    # -- diagnostics / teardown -------------------------------------------------------

    def logs(self) -> dict[str, str]:
        out = dict(self.control_plane.logs()) if self.owns_control_plane else {}
        out.update(self.procs.logs())
        for n in self.nodes:
            out.update({f"{n.name}/{k}": v for k, v in n.logs().items()})
        for m in self._image_nodes or ():
            out.update({f"{m.name}/{k}": v for k, v in m.logs().items()})
        return out

    def delete_all_pods(self, timeout: float = 30) -> None:
        """Delete workloads and pods in every non-system namespace; let kubelet stop them."""
        nss = [
            n["metadata"]["name"]
            for n in self.get_json("namespaces")["items"]
            if n["metadata"]["name"] not in ("kube-system", "kube-public", "kube-node-lease")
        ]
        for ns in nss:
            self.kubectl(
                "delete",
                "deployments,replicasets,statefulsets,daemonsets,jobs",
                "--all",
                "-n",
                ns,
                "--wait=false",
                check=False,
            )
            self.kubectl(
                "delete", "pods", "--all", "-n", ns, "--grace-period=1", "--wait=false", check=False
            )

        def no_pods() -> bool:
            # kube-system's add-ons (cluster DNS) stay: containerd-level teardown ends them
            res = self.kubectl("get", "pods", "-A", "-o", "json", check=False)
            return res.returncode == 0 and not [
                p for p in json.loads(res.stdout)["items"]
                if p["metadata"]["namespace"] in nss
            ]

        try:
            wait_until(no_pods, timeout=timeout, what="all pods gone")
        except TimeoutError:  # containerd-level teardown still kills whatever is left
            left = self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            print(f"pods left at teardown after {timeout}s:\n{left}", file=sys.stderr)

    def stop(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        try:
            if all(n.kubelet is not None and n.kubelet.alive() for n in self.nodes):
                self.delete_all_pods()
        except Exception as exc:
            report["delete_pods_error"] = repr(exc)
        if self._image_nodes is not None:
            report.update(self._image_nodes.stop())
        for n in self.nodes:
            report[n.name] = n.stop()
        self.procs.stop_all()
        if self.owns_control_plane:
            self.control_plane.stop()
        report["network"] = self.net.down()
        self.teardown_report = report
        return report

    def _all_procs(self) -> list[Proc]:
        procs = list(self.procs.procs)
        groups = [n.procs for n in self.nodes] + [m.procs for m in self._image_nodes or ()]
        for g in groups:
            procs += g.procs
        if self.owns_control_plane and self.control_plane.procs is not None:
            procs += self.control_plane.procs.procs
        return procs

    def all_pids(self) -> list[int]:
        return [p.pid for p in self._all_procs()]

    def alive_pids(self) -> list[int]:
        return [p.pid for p in self._all_procs() if p.alive()]


def _ca_key(cp: ControlPlane) -> Path:
    # controlplane.py keeps its CA under <workdir>/pki (pki.make_ca); the key is not a field.
    key = cp.ca_file.parent / "ca.key"
    if not key.exists():
        raise FileNotFoundError(f"control plane CA key not found at {key}")
    return key


def _sa_key(cp: ControlPlane) -> Path:
    key = cp.ca_file.parent / "sa.key"
    if not key.exists():
        raise FileNotFoundError(f"control plane service-account key not found at {key}")
    return key


@dataclass(frozen=True)
class _ClusterImages:
    """The images every node holds before anything runs (built here, nothing pulled)."""

    pause: oci.OciImage
    hello: oci.OciImage
    coredns: oci.OciImage


def _build_cluster_images(images_dir: Path, network_bins: Path) -> _ClusterImages:
    return _ClusterImages(pause=oci.build_pause(images_dir), hello=oci.build_hello(images_dir),
                          coredns=network_images.build_coredns_image(images_dir, network_bins))


def _start_cluster_control_plane(workdir: Path, bin_dir: Path, net: ClusterNetwork
                                 ) -> ControlPlane:
    """The control plane on the bridge's gateway address; the network goes down with it if
    it fails to start (nothing else holds the network yet)."""
    try:
        return start_control_plane(
            workdir / "controlplane", bin_dir, namespace=HARNESS_NAMESPACE,
            service_account_admission=True, address=net.gateway,
            service_range=net.service_range,
        )  # fmt: skip
    except BaseException:
        net.down()
        raise


def _client_kubeconfig(cluster: KubeCluster, ca: pki.CA, name: str) -> Path:
    """A kubeconfig for the system component `name` (user `system:<name>`), its client
    certificate issued by the control plane's CA."""
    cp = cluster.control_plane
    cert = ca.issue(name, common_name=f"system:{name}", client=True)
    return write_kubeconfig(cluster.workdir / f"{name}.kubeconfig", server=cp.server,
                            ca_file=cp.ca_file, user=f"system:{name}",
                            client_cert=cert.cert, client_key=cert.key)


def _start_controller_manager(cluster: KubeCluster, bin_dir: Path, ca: pki.CA) -> None:
    cp = cluster.control_plane
    cluster.procs.start("kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={_client_kubeconfig(cluster, ca, 'kube-controller-manager')}",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={_sa_key(cp)}",
        f"--root-ca-file={cp.ca_file}",
        # Pod CIDRs are the harness's (netns.py), recorded on each Node; no cloud.
        "--controllers=*,-nodeipam",
        "--allocate-node-cidrs=false",
        f"--service-cluster-ip-range={cluster.net.service_range}",
        "--node-monitor-period=2s",
        "--concurrent-gc-syncs=5",
        "--v=1",
    ])  # fmt: skip


def _start_scheduler(cluster: KubeCluster, bin_dir: Path, ca: pki.CA) -> None:
    cluster.procs.start("kube-scheduler", [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={_client_kubeconfig(cluster, ca, 'kube-scheduler')}",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
        "--leader-elect=false",
        "--v=1",
    ])  # fmt: skip


def _start_kubelet_nodes(cluster: KubeCluster, bin_dir: Path, ca: pki.CA,
                         node_names: tuple[str, ...], images: _ClusterImages) -> None:
    """One kubelet node per name (the first the workload node, the others tainted source
    nodes), each holding the hello and CoreDNS images; then the pod network between them."""
    cp, net = cluster.control_plane, cluster.net
    kubelet_dir = versions.kubelet_bin_dir(bin_dir)
    # Node dirs are named after the node, so one path with `$(NODE_NAME)` in it (the chart's
    # agent.containerdSocket / agent.contentRoot) finds each node's own containerd.
    for i, name in enumerate(node_names):
        taints = () if i == 0 else (f"{SOURCE_TAINT}=true:NoSchedule",)
        node = start_kubelet_node(
            cluster.workdir / "nodes" / name, bin_dir=kubelet_dir, server=cp.server,
            ca_file=cp.ca_file, ca_key=ca.key, pause=images.pause, name=name,
            net=net.add_node(), cluster_dns=net.dns_service_ip, taints=taints,
        )  # fmt: skip
        cluster.nodes.append(node)
        node.import_image(images.hello)
        node.import_image(images.coredns)
    net.connect_pods()


def _start_node_networking(cluster: KubeCluster, bin_dir: Path, network_bins: Path,
                           ca: pki.CA) -> None:
    """Each node's pod CIDR on its Node, kube-proxy (Services) and kube-router (the
    NetworkPolicy firewall) beside its kubelet."""
    cp, net = cluster.control_plane, cluster.net
    cluster.apply(KUBE_ROUTER_RBAC)
    for node in cluster.nodes:
        cluster.record_pod_cidr(node)
        start_kube_proxy(node, bin_dir=bin_dir, ca=ca, server=cp.server,
                         ca_file=cp.ca_file, cluster_cidr=net.pod_range)  # fmt: skip
        start_kube_router(node, bin_dir=network_bins, ca=ca, server=cp.server,
                          ca_file=cp.ca_file, service_range=net.service_range)  # fmt: skip


def _check_processes_alive(procs: ProcessGroup) -> None:
    for p in procs.procs:
        if not p.alive():
            raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n{p.log_tail()}")


def _report_startup(cluster: KubeCluster, marks: list[float]) -> None:
    """Keep and print how long each step took (start, images, control plane, components,
    nodes, end), and each node's own steps."""
    cluster.startup_seconds = step_seconds((
        "images", "control-plane", "controller-manager+scheduler",
        "nodes (containerd, kubelet, kube-proxy, kube-router)", "nodes Ready + cluster DNS",
    ), marks)  # fmt: skip
    print(
        "e2e cluster up in {total}s: ".format(**cluster.startup_seconds)
        + ", ".join(f"{k} {v}s" for k, v in cluster.startup_seconds.items() if k != "total")
        + "".join(
            f"; node {n.name}: " + ", ".join(f"{k} {v}s" for k, v in n.startup_seconds.items())
            for n in cluster.nodes
        ),
        file=sys.stderr,
    )


def start_cluster(
    workdir: Path,
    bin_dir: Path,
    *,
    node_names: tuple[str, ...] = NODE_NAMES,
    wait_ready: bool = True,
) -> KubeCluster:
    """Start the cluster (see the module docstring); `node_names[0]` is the workload node,
    the others are source nodes (tainted `tote.test/source:NoSchedule`). The kubelets come
    from `TOTE_KUBELET_BIN_DIR` when set (version skew), else from `bin_dir`."""
    missing = missing_binaries(bin_dir)
    if missing:
        raise FileNotFoundError(f"missing binaries in {bin_dir}: {missing}")
    marks = [time.monotonic()]
    workdir.mkdir(parents=True, exist_ok=True)
    network_bins = versions.network_bin_dir()
    assert network_bins is not None  # missing_binaries said so
    images = _build_cluster_images(workdir / "images", network_bins)
    marks.append(time.monotonic())

    net = open_network()
    cp = _start_cluster_control_plane(workdir, bin_dir, net)
    marks.append(time.monotonic())

    cluster = KubeCluster(
        control_plane=cp,
        workdir=workdir,
        procs=ProcessGroup(log_dir=workdir / "logs"),
        net=net,
        pause_image=images.pause,
        hello_image=images.hello,
    )
    try:
        (workdir / "pki").mkdir(exist_ok=True)
        ca = pki.CA(cert=cp.ca_file, key=_ca_key(cp), dir=workdir / "pki")
        _start_controller_manager(cluster, bin_dir, ca)
        _start_scheduler(cluster, bin_dir, ca)
        marks.append(time.monotonic())
        _start_kubelet_nodes(cluster, bin_dir, ca, node_names, images)
        _start_node_networking(cluster, bin_dir, network_bins, ca)
        marks.append(time.monotonic())
        _check_processes_alive(cluster.procs)
        if wait_ready:
            cluster.wait_node_ready()
            cluster_dns.install(cluster, images.coredns.name, net.dns_service_ip)
        marks.append(time.monotonic())
        _report_startup(cluster, marks)
        return cluster
    except BaseException as exc:
        tails = "\n".join(f"--- {k} ---\n{v[-3000:]}" for k, v in cluster.logs().items())
        cluster.stop()
        if isinstance(exc, Exception):
            raise RuntimeError(f"e2e cluster failed to start: {exc}\n{tails}") from exc
        raise


def _main() -> None:
    """`python -m tests.cluster.cluster [WORKDIR]`: bring the cluster up, wait for Ctrl-C."""
    bin_dir = binaries_dir(build=True)
    versions.use_containerd(build=True)
    if bin_dir is None:
        raise SystemExit("binaries not built: run tests/cluster/build-binaries.sh")
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/tote-e2e-cluster")
    if workdir.exists():
        shutil.rmtree(workdir)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # background jobs of a non-interactive shell ignore SIGINT: SIGTERM tears down as well
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    cluster = start_cluster(workdir, bin_dir)
    print(f"export KUBECONFIG={cluster.admin_kubeconfig}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print(json.dumps(cluster.stop(), indent=2))


if __name__ == "__main__":
    _main()
