"""Cluster DNS for the e2e cluster: CoreDNS (built here, tests/cluster/network_images.py) as
a Deployment in kube-system behind the `kube-dns` Service, as kubeadm installs it.

It serves `cluster.local` (Services, pods) from the API server, which it reaches through the
`kubernetes` Service like any in-cluster client. There is no upstream: a name outside the
cluster gets NXDOMAIN/SERVFAIL instead of a query leaving the machine.
"""

from __future__ import annotations

from typing import Any

from tests.cluster.procs import wait_until

NAMESPACE = "kube-system"
# CoreDNS runs as a non-root user and listens on an unprivileged port, the Service maps 53 to
# it: binding :53 needs either a file capability on the binary (what upstream's image has)
# or unprivileged low ports in the pod (containerd 2.x's CRI default, not 1.7's).
PORT = 1053
COREFILE = """.:1053 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa {
        pods insecure
        fallthrough in-addr.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
"""


def manifests(image: str, service_ip: str) -> list[dict[str, Any]]:
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"},
         "rules": [
             {"apiGroups": [""], "resources": ["services", "pods", "namespaces"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "coredns", "namespace": NAMESPACE},
         "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": NAMESPACE, "labels": labels},
         "spec": {
             "replicas": 1,
             "selector": {"matchLabels": labels},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "serviceAccountName": "coredns",
                     "priorityClassName": "system-cluster-critical",
                     "dnsPolicy": "Default",
                     "tolerations": [{"operator": "Exists"}],
                     "securityContext": {"runAsUser": 65532, "runAsGroup": 65532,
                                         "runAsNonRoot": True},
                     "containers": [{
                         "name": "coredns", "image": image, "imagePullPolicy": "Never",
                         "args": ["-conf", "/etc/coredns/Corefile"],
                         "ports": [{"containerPort": PORT, "protocol": "UDP", "name": "dns"},
                                   {"containerPort": PORT, "protocol": "TCP",
                                    "name": "dns-tcp"}],
                         "securityContext": {
                             "allowPrivilegeEscalation": False,
                             "capabilities": {"drop": ["ALL"]},
                             "readOnlyRootFilesystem": True,
                         },
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                            "periodSeconds": 2},
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                     }],
                     "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": NAMESPACE, "labels": labels},
         "spec": {"selector": labels, "clusterIP": service_ip,
                  "ports": [{"name": "dns", "port": 53, "targetPort": PORT, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "targetPort": PORT,
                             "protocol": "TCP"}]}},
    ]  # fmt: skip


def install(cluster: Any, image: str, service_ip: str, timeout: float = 120) -> None:
    """Apply the add-on and wait until CoreDNS is Ready (its endpoint is then in kube-dns)."""
    cluster.apply(manifests(image, service_ip))

    def ready() -> bool:
        dep = cluster.get_json("deployment", "coredns", "-n", NAMESPACE)
        return bool(dep.get("status", {}).get("readyReplicas") == 1)

    wait_until(ready, timeout=timeout, interval=0.5, what="CoreDNS Ready")
