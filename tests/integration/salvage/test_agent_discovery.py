"""Agents found the in-cluster way: agent pods (label selector, pod IP) from the
controller's pod informer, no `--agent-endpoints` (the Go original's pod cache
dropped podIP and never found its agents).

Two extra agents listen on 127.0.0.11 and 127.0.0.12 with one shared port, like agent pods
on different nodes with the chart's single `--agent-port`; the test creates their Pod
objects (labels, nodeName, status.podIP) as the DaemonSet and kubelet would.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.cluster.containerd_env import REPO
from tests.cluster.images import layered_image
from tests.cluster.objects import create_pod, set_waiting
from tests.cluster.procs import free_port, port_open, wait_until
from tests.integration.salvage.conftest import SalvageEnv
from tests.integration.salvage.test_salvage import REFUSED, MiB, wait_record

AGENT_IPS = {"n1": "127.0.0.11", "n2": "127.0.0.12"}
LABELS = {"app.kubernetes.io/name": "tote", "app.kubernetes.io/component": "agent"}


def shared_port() -> int:
    for _ in range(50):
        port = free_port("127.0.0.11")
        if not port_open("127.0.0.12", port):
            return port
    raise RuntimeError("no port free on both addresses")


def start_pod_agent(senv: SalvageEnv, node: str, ip: str, port: int) -> None:
    n = senv.ctd.nodes[node]
    argv = [
        sys.executable, "-m", "tote_containerd.agent",
        "--containerd-socket", n.socket, "--node-name", node,
        "--listen-address", ip, "--grpc-port", str(port),
        "--metrics-port", str(free_port(ip)), "--data-port", str(free_port(ip)),
        *senv.ctd.tls_args(),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"),
                                         env.get("PYTHONPATH", "")])
    proc = senv.ctd.group.start(f"pod-agent-{node}", argv, env=env, cwd=REPO)
    wait_until(lambda: port_open(ip, port), timeout=60, what=f"agent pod on {node}",
               proc=proc)
    cp = senv.cp
    name = f"tote-agent-{node}"
    cp.apply({"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": name, "namespace": cp.namespace, "labels": LABELS},
              "spec": {"nodeName": node,
                       "containers": [{"name": "agent", "image": "tote:0.1.0"}]}})
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    cp.kubectl("patch", "pod", name, "-n", cp.namespace, "--subresource=status",
               "--type=merge", "-p", json.dumps(status))


def test_agents_discovered_from_agent_pods(
    senv: SalvageEnv, test_namespace: str, tmp_path: Path
) -> None:
    ns = test_namespace
    port = shared_port()
    for node, ip in AGENT_IPS.items():
        start_pod_agent(senv, node, ip, port)
    ctl = senv.controller("discover", f"--agent-port={port}", static_endpoints=False)
    try:
        assert not any(a.startswith("--agent-endpoints") for a in ctl.proc.argv)  # type: ignore[union-attr]
        img = layered_image("127.0.0.1:5999/disc/app:v1", [1 * MiB], seed=31)
        senv.preload("n2", img, img.write_archive(tmp_path / "disc.tar"))
        ref = f"127.0.0.1:5999/disc/app@{img.digest}"
        create_pod(senv.cp, ns, "disc", ref, node="n1",
                   annotations={"tote.dev/auto-salvage": "true"})
        set_waiting(senv.cp, ns, "disc", reason="ErrImagePull", message=REFUSED)
        (rec,) = wait_record(senv, ns, "Completed", timeout=60)
        assert rec["spec"]["sourceNode"] == "n2"  # type: ignore[index]
        assert ref in senv.ctd.nodes["n1"].image_names()
    finally:
        ctl.stop()
        for node in AGENT_IPS:
            senv.cp.kubectl("delete", "pod", f"tote-agent-{node}", "-n", senv.cp.namespace,
                            "--grace-period=0", "--force", check=False)
