"""A real kubelet node for the e2e cluster: its own containerd (CRI plugin) + a kubelet.

Everything lives under one tmp dir (`workdir`): containerd root/state/sockets, the CNI conf
dir and IPAM state, the kubelet root dir, pod logs, certificates and config files. Processes
are started through `procs.ProcessGroup` (tracked by PID, stopped by PID).

Choices forced by this kind of machine (see docs/e2e-cluster.md):

- Node name / address. On the e2e cluster (`net` given) the node has a name (`node-a`…)
  and its own address in its own network namespace (tests/cluster/netns.py): kubelet binds
  it on the usual ports and registers it as InternalIP (`--node-ip`), and containerd's CNI
  bridge is the pods' gateway there. Without `net` (a node sharing the host's namespace)
  the node is named after a loopback address: kubelet refuses a loopback `--node-ip`
  ("nodeIP can't be loopback address"), but when `--hostname-override` is an IP and no
  `--node-ip` is given it uses that IP for InternalIP and Hostname without the check.
- cgroup v1, no systemd: `cgroupDriver: cgroupfs` in kubelet and `SystemdCgroup = false` in
  containerd; `failCgroupV1: false` (1.35+ would refuse v1). Pods go under a cgroup root of
  their own (`/tote-<node>-<id>`), created before and removed after, so two test sessions
  never share `/kubepods` and nothing is left behind.
- kubelet authenticates to the apiserver with a client certificate `system:node:<name>` in
  group `system:nodes` signed by the control plane's CA (the Node authorizer then applies,
  as in a real cluster). The apiserver has no kubelet client certificate, so the kubelet's
  own API (bound to loopback only) allows anonymous requests with `AlwaysAllow` — that is
  what makes `kubectl logs` work.
- `makeIPTablesUtilChains: false`; CNI bridge without ipMasq/portmap: no host iptables
  changes. Eviction thresholds and image GC thresholds are set so the kubelet never evicts
  nor garbage-collects images during tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import oci, pki
from tests.cluster.containerd_node import (
    Containerd,
    ContainerdBacked,
    missing_prerequisites,
    start_containerd,
)
from tests.cluster.controlplane import write_kubeconfig
from tests.cluster.host_cleanup import (
    cgroup_subsystem_dirs,
    descendants,
    describe_pid,
    make_cgroup_root,
    pids_referencing,
    remove_cgroup_tree,
    remove_links_into,
    unmount_all_under,
)
from tests.cluster.netns import NodeNet
from tests.cluster.procs import Proc, ProcessGroup, free_port, port_open, step_seconds, wait_until

KUBELET_READY_TIMEOUT = 90.0



# --------------------------------------------------------------------------- kubelet


@dataclass
class KubeletNode(ContainerdBacked):
    """One kubelet + its containerd. `name` is also its loopback address (see module doc)."""

    name: str
    workdir: Path
    containerd: Containerd
    procs: ProcessGroup
    # The node's network namespace (tests/cluster/netns.py); None: the host's, on loopback.
    net: NodeNet | None = None
    kubelet_port: int = 0
    kubelet: Proc | None = None
    kubelet_config_path: Path | None = None
    kubelet_healthz_port: int = 0
    cgroup_root: str = ""
    startup_seconds: dict[str, float] = field(default_factory=dict)
    # What teardown found and had to clean up (tests assert on it).
    teardown_report: dict[str, list[str]] = field(default_factory=dict)
    _stopped: bool = False

    @property
    def node_ip(self) -> str:
        return self.net.ip if self.net is not None else self.name

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix for an argv that must run on this node (its network namespace)."""
        return self.net.exec_prefix if self.net is not None else []


    def restart_kubelet(self, **overrides: Any) -> None:
        """Stop the kubelet and start it again, same flags, with these KubeletConfiguration
        fields replaced (none: the harness's own configuration back)."""
        assert self.kubelet is not None and self.kubelet_config_path is not None
        self.kubelet.stop(grace=15)
        config = yaml.safe_load(self.kubelet_config_path.with_suffix(".base.yaml").read_text())
        config.update(overrides)
        self.kubelet_config_path.write_text(yaml.safe_dump(config))
        self.kubelet = self.procs.start("kubelet", self.kubelet.argv)
        wait_until(lambda: _healthz(self.healthz_host, self.kubelet_healthz_port),
                   timeout=KUBELET_READY_TIMEOUT, what="kubelet /healthz",
                   proc=self.kubelet)  # fmt: skip

    @contextlib.contextmanager
    def forced_image_gc(self) -> Iterator[None]:
        """kubelet deleting every unused image it may, within seconds: restarted with an
        eviction threshold on the image filesystem it can never meet, so its eviction
        manager (every 10 s) runs the image GC — which skips images CRI reports pinned. Its
        own configuration (no GC, no eviction) comes back on exit."""
        self.restart_kubelet(
            # GC on (100 % switches the image manager off altogether), never by usage here
            imageGCHighThresholdPercent=99, imageGCLowThresholdPercent=98,
            imageMinimumGCAge="1s",  # "0s" reads as unset: the 2 min default
            evictionHard={"memory.available": "1Mi", "nodefs.available": "99%",
                          "imagefs.available": "99%", "nodefs.inodesFree": "1%",
                          "imagefs.inodesFree": "1%"},
        )  # fmt: skip
        try:
            yield
        finally:
            self.restart_kubelet()

    @property
    def healthz_host(self) -> str:
        return self.node_ip if self.net is not None else "127.0.0.1"

    def leftover_pids(self) -> list[int]:
        """Processes still referencing this node's tmp dir (shims, containers' parents…)."""
        pids = pids_referencing(str(self.workdir))
        return sorted(set(pids + descendants(pids)))

    def stop(self) -> dict[str, list[str]]:
        """Tear down: kubelet, then every container (via containerd), then containerd; kill any
        process still referencing the tmp dir (by PID), unmount, remove the cgroup root."""
        if self._stopped:
            return self.teardown_report
        self._stopped = True
        report: dict[str, list[str]] = {}
        if self.kubelet is not None:
            self.kubelet.stop(grace=15)
        try:
            report["tasks_killed"] = self.containerd.remove_all_tasks()
        except Exception as exc:
            report["tasks_killed"] = [f"<failed: {exc!r}>"]
        self.procs.stop_all(grace=10)
        # Shims are started in their own process group and re-parented to init, so they
        # outlive containerd's group; they are found by their `-address <our socket>` argv.
        leftovers = self.leftover_pids()
        report["leftover_pids"] = [describe_pid(p) for p in leftovers]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            wait_until(lambda: not self.leftover_pids(), timeout=10, what="leftovers gone")
        report["still_mounted"] = unmount_all_under(self.workdir)
        # kubelet links container logs from the fixed /var/log/containers into our podLogsDir
        report["log_links_removed"] = remove_links_into(Path("/var/log/containers"), self.workdir)
        report["cgroups_left"] = []
        if self.cgroup_root:
            for base in cgroup_subsystem_dirs():
                report["cgroups_left"] += remove_cgroup_tree(base / self.cgroup_root.lstrip("/"))
        self.teardown_report = report
        return report




def kubelet_config(
    node: KubeletNode, *, ca_file: Path, healthz_port: int, cluster_dns: str | None = None
) -> dict[str, Any]:
    d = node.workdir
    dns: dict[str, Any] = {"resolvConf": "/etc/resolv.conf"}
    if cluster_dns:
        # Pods resolve cluster names only: the node's upstream list is empty on purpose.
        (d / "resolv.conf").write_text("# no upstream resolvers: tests stay inside the cluster\n")
        dns = {"resolvConf": str(d / "resolv.conf"), "clusterDNS": [cluster_dns]}
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": node.healthz_host,
        "healthzPort": healthz_port,
        "containerRuntimeEndpoint": node.containerd.endpoint,
        "imageServiceEndpoint": node.containerd.endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failCgroupV1": False,
        "failSwapOn": False,
        "memorySwap": {},
        "makeIPTablesUtilChains": False,
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": str(d / "pki" / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(d / "pki" / "kubelet-serving.key"),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "registerNode": True,
        "serializeImagePulls": True,
        # Never garbage-collect images during tests, never evict.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "24h",
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "evictionPressureTransitionPeriod": "5s",
        "podLogsDir": str(d / "pod-logs"),
        **dns,
        "clusterDomain": "cluster.local",
        "maxPods": 50,
        "nodeStatusUpdateFrequency": "5s",
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "10Mi",
        "localStorageCapacityIsolation": True,
        "protectKernelDefaults": False,
        "volumePluginDir": str(d / "volume-plugins"),
    }


def _write_kubelet_kubeconfig(node: KubeletNode, *, server: str, ca_file: Path, ca_key: Path,
                              node_ip: str) -> Path:
    """The kubelet's client certificate (`system:node:<name>`, group `system:nodes`) and
    serving certificate, issued by the cluster CA; its kubeconfig."""
    pki_dir = node.workdir / "pki"
    pki_dir.mkdir(exist_ok=True)
    ca = pki.CA(cert=ca_file, key=ca_key, dir=pki_dir)
    client = ca.issue(
        "kubelet-client", common_name=f"system:node:{node.name}",
        organizations=("system:nodes",), client=True,
    )  # fmt: skip
    ca.issue(
        "kubelet-serving",
        common_name=node.name,
        ip_addresses=(node_ip,),
        dns_names=("localhost", node.name),
        server=True,
    )
    return write_kubeconfig(
        node.workdir / "kubelet.kubeconfig",
        server=server,
        ca_file=ca_file,
        user=f"system:node:{node.name}",
        client_cert=client.cert,
        client_key=client.key,
    )


def _write_kubelet_config(node: KubeletNode, *, ca_file: Path, cluster_dns: str | None
                          ) -> None:
    """kubelet-config.yaml (and its copy `restart_kubelet` starts from) and the kubelet's
    directories; the node remembers the config's path and healthz port."""
    workdir = node.workdir
    config_path = workdir / "kubelet-config.yaml"
    healthz_port = free_port() if node.net is None else 10248
    config = yaml.safe_dump(kubelet_config(node, ca_file=ca_file, healthz_port=healthz_port,
                                           cluster_dns=cluster_dns))  # fmt: skip
    config_path.write_text(config)
    config_path.with_suffix(".base.yaml").write_text(config)  # restart_kubelet's base
    node.kubelet_config_path, node.kubelet_healthz_port = config_path, healthz_port
    for sub in ("kubelet", "pod-logs", "volume-plugins"):
        (workdir / sub).mkdir(exist_ok=True)


def _start_kubelet(node: KubeletNode, *, bin_dir: Path, kubeconfig: Path, node_ip: str,
                   taints: tuple[str, ...], extra_kubelet_args: tuple[str, ...]) -> None:
    """The kubelet (in the node's network namespace when it has one), waited for until its
    /healthz answers."""
    prefix = node.net.exec_prefix if node.net is not None else []
    argv = [
        *prefix,
        str(bin_dir / "kubelet"),
        f"--config={node.kubelet_config_path}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={node.workdir / 'kubelet'}",
        f"--cert-dir={node.workdir / 'pki'}",
        f"--hostname-override={node.name}",
        *([f"--node-ip={node_ip}"] if node.net is not None else []),
        *([f"--register-with-taints={','.join(taints)}"] if taints else []),
        "--v=2",
        *extra_kubelet_args,
    ]
    kubelet = node.kubelet = node.procs.start("kubelet", argv)
    wait_until(
        lambda: _healthz(node.healthz_host, node.kubelet_healthz_port),
        timeout=KUBELET_READY_TIMEOUT, what="kubelet /healthz", proc=kubelet,
    )  # fmt: skip


def _clean_up_half_started(procs: ProcessGroup, workdir: Path) -> None:
    """Before a KubeletNode exists to stop itself: its processes, anything still holding
    the work dir, and mounts under it."""
    procs.stop_all()
    for pid in pids_referencing(str(workdir)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    unmount_all_under(workdir)


def start_kubelet_node(
    workdir: Path,
    *,
    bin_dir: Path,
    server: str,
    ca_file: Path,
    ca_key: Path,
    pause: oci.OciImage,
    node_ip: str = "127.0.0.1",
    subnet: str = "10.244.0.0/24",
    taints: tuple[str, ...] = (),
    extra_kubelet_args: tuple[str, ...] = (),
    net: NodeNet | None = None,
    name: str | None = None,
    cluster_dns: str | None = None,
) -> KubeletNode:
    """Start containerd (CRI) + kubelet. Does not wait for Ready (the scheduler and node
    controllers may not be running yet): call the cluster's `wait_node_ready()`.

    Without `net` the node is named after its loopback address `node_ip` (see the module
    doc). With `net` (tests/cluster/netns.py) both daemons run in the node's network
    namespace, the node is `name` at `net.ip` with the kubelet on its usual ports (10250,
    healthz 10248) and pods on `net.pod_cidr`; `cluster_dns` is the DNS Service address."""
    missing = missing_prerequisites()
    if missing:
        raise FileNotFoundError(f"cannot run a kubelet node here, missing: {missing}")
    marks = [time.monotonic()]
    if net is not None:
        node_ip, subnet = net.ip, net.pod_cidr
    name = name or node_ip
    workdir.mkdir(parents=True, exist_ok=True)
    procs = ProcessGroup(log_dir=workdir / "logs")
    node: KubeletNode | None = None
    try:
        cd = start_containerd(
            procs, workdir / "containerd", name=name, pause_image=pause.name, subnet=subnet,
            exec_prefix=net.exec_prefix if net is not None else [],
        )
        marks.append(time.monotonic())
        cd.import_image(pause)
        marks.append(time.monotonic())
        node = KubeletNode(
            name=name, workdir=workdir, containerd=cd, procs=procs, net=net,
            kubelet_port=free_port(node_ip) if net is None else 10250,
            cgroup_root=f"/tote-{secrets.token_hex(4)}",
        )  # fmt: skip
        make_cgroup_root(node.cgroup_root)
        kubeconfig = _write_kubelet_kubeconfig(node, server=server, ca_file=ca_file,
                                               ca_key=ca_key, node_ip=node_ip)
        _write_kubelet_config(node, ca_file=ca_file, cluster_dns=cluster_dns)
        marks.append(time.monotonic())
        _start_kubelet(node, bin_dir=bin_dir, kubeconfig=kubeconfig, node_ip=node_ip,
                       taints=taints, extra_kubelet_args=extra_kubelet_args)
        marks.append(time.monotonic())
        node.startup_seconds = step_seconds(
            ("containerd", "pause-import", "certs+config", "kubelet-healthz"), marks)
        return node
    except BaseException:
        if node is not None:
            node.stop()
        else:
            _clean_up_half_started(procs, workdir)
        raise


def _healthz(host: str, port: int) -> bool:
    import urllib.request

    if not port_open(host, port):
        return False
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
