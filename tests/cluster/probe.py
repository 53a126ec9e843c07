"""What a pod can reach: a throw-away pod runs `hello probe TARGET...` (tests/cluster/hello)
on a chosen node and reports, per target, whether it got through.

Used to prove the cluster's network (pod to pod across nodes, Services, cluster DNS) and
NetworkPolicies (a pod outside tote refused by the agent's ports) from where a real client
would stand: inside a pod, on the pod network.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.cluster import oci
from tests.cluster.manifests import pod_manifest
from tests.cluster.procs import wait_until


def probe(
    cluster: Any, namespace: str, targets: list[str], *, node: str | None = None,
    labels: dict[str, str] | None = None, timeout: float = 60,
) -> dict[str, str]:
    """target → "OK detail" / "FAIL error", seen from a new pod in `namespace` (on `node`,
    else wherever the scheduler puts it), carrying `labels` (for policy selectors)."""
    name = f"probe-{uuid.uuid4().hex[:8]}"
    manifest = pod_manifest(name, namespace, oci.HELLO_IMAGE, args=["probe", *targets],
                            restart_policy="Never", labels=labels)  # fmt: skip
    if node is not None:
        manifest["spec"]["nodeName"] = node
    cluster.apply(manifest)
    try:
        def done() -> bool:
            pod = cluster.pod(namespace, name)
            return bool(pod and pod.get("status", {}).get("phase") in ("Succeeded", "Failed"))

        wait_until(done, timeout=timeout, interval=0.5, what=f"probe pod {namespace}/{name}")
        out: dict[str, str] = {}
        for line in cluster.pod_logs(namespace, name).splitlines():
            verdict, _, rest = line.partition(" ")
            target, _, detail = rest.partition(" ")
            if verdict in ("OK", "FAIL") and target:
                out[target] = f"{verdict} {detail}".strip()
        missing = [t for t in targets if t not in out]
        if missing:
            raise RuntimeError(f"probe pod said nothing about {missing}: {out}")
        return out
    finally:
        cluster.kubectl("delete", "pod", name, "-n", namespace, "--wait=false", check=False)


def probe_until(
    cluster: Any, namespace: str, targets: list[str], ok: Callable[[dict[str, str]], bool],
    *, timeout: float = 60, **kw: Any,
) -> dict[str, str]:
    """`probe` again until `ok(answers)` or `timeout`; the last answers either way. A new
    Service or policy takes a moment to reach every node's kube-proxy and firewall, as on
    any cluster: the test states what must hold once it has."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe(cluster, namespace, targets, **kw)
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(1)
