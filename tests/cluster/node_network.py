"""A networked node's own network daemons: kube-proxy and a NetworkPolicy engine.

On a real cluster these run on every node (usually as DaemonSets with hostNetwork); here
they are processes in the node's network namespace (tests/cluster/netns.py), started after
the node's kubelet, tracked in the node's `ProcessGroup` and stopped with it. Each
authenticates with a client certificate from the cluster CA under the identity the
bootstrap RBAC knows: `system:kube-proxy` (ClusterRoleBinding `system:node-proxier`) for
kube-proxy; kube-router's policy controller gets a ClusterRole of its own (the cluster
applies it).

- kube-proxy, iptables mode: ClusterIP Services (the `kubernetes` Service included) work
  from pods and from the node; traffic to a Service from outside the pod range is
  masqueraded (`clusterCIDR`), so replies find their way back.
- kube-router with only its firewall (`--run-firewall`): NetworkPolicies are enforced with
  iptables and ipsets in the node's namespace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import pki
from tests.cluster.controlplane import write_kubeconfig
from tests.cluster.node import KubeletNode
from tests.cluster.procs import Proc, port_open, wait_until

KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_ROUTER_HEALTH_PORT = 20244

# What kube-router's policy controller reads and writes (its own upstream manifests grant the
# same): pods, namespaces, nodes, NetworkPolicies; events for what it reports.
KUBE_ROUTER_RBAC: list[dict[str, Any]] = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
     "metadata": {"name": "tote-test:kube-router"},
     "rules": [
         {"apiGroups": [""], "resources": ["namespaces", "pods", "services", "nodes",
                                           "endpoints"],
          "verbs": ["get", "list", "watch"]},
         {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch", "update"]},
         {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
          "verbs": ["get", "list", "watch"]},
         {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
          "verbs": ["get", "list", "watch"]},
         {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
          "verbs": ["create", "patch", "update"]},
     ]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "tote-test:kube-router"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "tote-test:kube-router"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                   "name": "system:kube-router"}]},
]  # fmt: skip


def _client_kubeconfig(
    node: KubeletNode, ca: pki.CA, *, user: str, server: str, ca_file: Path
) -> Path:
    cert = ca.issue(user.replace(":", "-"), common_name=user, client=True)
    return write_kubeconfig(node.workdir / f"{user.replace(':', '-')}.kubeconfig",
                            server=server, ca_file=ca_file, user=user,
                            client_cert=cert.cert, client_key=cert.key)  # fmt: skip


def kube_proxy_config(node: KubeletNode, *, kubeconfig: Path, cluster_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        "mode": "iptables",
        "clusterCIDR": cluster_cidr,
        "healthzBindAddress": f"{node.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        # Leave the kernel's conntrack table alone (not ours to size; read-only in a netns).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
    }  # fmt: skip


def start_kube_proxy(
    node: KubeletNode, *, bin_dir: Path, ca: pki.CA, server: str, ca_file: Path,
    cluster_cidr: str,
) -> Proc:
    kubeconfig = _client_kubeconfig(node, ca, user="system:kube-proxy", server=server,
                                    ca_file=ca_file)  # fmt: skip
    cfg = node.workdir / "kube-proxy.yaml"
    cfg.write_text(yaml.safe_dump(kube_proxy_config(node, kubeconfig=kubeconfig,
                                                    cluster_cidr=cluster_cidr)))  # fmt: skip
    proc = node.procs.start("kube-proxy", [
        *node.exec_prefix, str(bin_dir / "kube-proxy"), f"--config={cfg}", "--v=1",
    ])  # fmt: skip
    wait_until(lambda: port_open(node.node_ip, KUBE_PROXY_HEALTHZ_PORT), timeout=60,
               what=f"kube-proxy on {node.name}", proc=proc)  # fmt: skip
    return proc


def start_kube_router(
    node: KubeletNode, *, bin_dir: Path, ca: pki.CA, server: str, ca_file: Path,
    service_range: str,
) -> Proc:
    """kube-router's NetworkPolicy firewall only (no routing, no service proxy) in the
    node's namespace. Needs `KUBE_ROUTER_RBAC` applied. It finds its node by $NODE_NAME
    before --hostname-override, so both are set."""
    kubeconfig = _client_kubeconfig(node, ca, user="system:kube-router", server=server,
                                    ca_file=ca_file)  # fmt: skip
    proc = node.procs.start("kube-router", [
        *node.exec_prefix, str(bin_dir / "kube-router"),
        f"--kubeconfig={kubeconfig}",
        "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
        "--enable-cni=false", "--enable-ipv4=true", "--enable-ipv6=false",
        f"--service-cluster-ip-range={service_range}",
        f"--hostname-override={node.name}",
        f"--health-port={KUBE_ROUTER_HEALTH_PORT}", "--metrics-port=0",
        "--v=1",
    ], env={**os.environ, "NODE_NAME": node.name})  # fmt: skip
    wait_until(lambda: port_open(node.node_ip, KUBE_ROUTER_HEALTH_PORT), timeout=60,
               what=f"kube-router on {node.name}", proc=proc)  # fmt: skip
    return proc
