"""Several containerd daemons on one machine, each standing in for a node.

Each node gets its own root, state, gRPC/ttrpc/debug sockets under a tmp dir; the CRI plugin
is disabled (tote only needs content, images, leases and introspection). Processes are started
and stopped through `tests.cluster.procs.ProcessGroup` (by PID, never by name).
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from tote_containerd.agent.client import AgentClient
from tote_containerd.agents import RPC_TIMEOUT, Agents, open_agent
from tote_containerd.discovery import AgentDiscovery

from tests.cluster import containerd_config, versions
from tests.cluster.agent_pki import PKI

# The same containerd wrapper as the e2e nodes', under the name these tests use for it.
from tests.cluster.containerd_node import Containerd as Node
from tests.cluster.procs import Proc, ProcessGroup, free_port, port_open, wait_until
from tote_core.settings import ControllerSettings

REPO = Path(__file__).resolve().parents[2]


def containerd_unusable() -> str | None:
    """Why real containerd daemons cannot run here (None when they can)."""
    if versions.containerd_bin_dir() is None:
        return (
            f"containerd {versions.pin('CONTAINERD_VERSION')} is not built "
            "(bash tests/cluster/build-containerd.sh)"
        )
    if not shutil.which("containerd") or not shutil.which("ctr"):
        return "containerd/ctr not installed"
    if os.geteuid() != 0:
        return "needs root to run containerd"
    return None


def start_node(group: ProcessGroup, base: Path, name: str, *, cri: bool = False,
               discard_unpacked_layers: bool = False) -> Node:
    """A containerd "node". `cri=True`: with the CRI plugin (overlayfs), as on a kubelet
    node — nothing here runs pods, but CRI's image service answers (its image filesystem
    names the snapshotter imports are unpacked into). `discard_unpacked_layers`: CRI's
    setting as EKS and other managed node images write it."""
    versions.use_containerd()
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "config.toml"
    if cri:
        cfg.write_text(containerd_config.cri(
            d, pause="registry.k8s.io/pause:3.10", cni_bin="/usr/lib/cni",
            discard_unpacked_layers=discard_unpacked_layers))
    else:
        cfg.write_text(containerd_config.plain(d))
    proc = group.start(f"containerd-{name}", ["containerd", "--config", str(cfg)])
    node = Node(name=name, dir=d, proc=proc)
    wait_until(lambda: Path(node.socket).exists() and node.ctr(
        "version", check=False).returncode == 0, timeout=30,
        what=f"containerd {name} socket", proc=proc)
    return node


@dataclass
class AgentProc:
    node: Node
    port: int
    metrics_port: int
    proc: Proc
    data_port: int = 0  # the fast-path data channel (served only with content access)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_agent(group: ProcessGroup, node: Node, *extra: str, name: str | None = None,
                env: dict[str, str] | None = None, port: int = 0) -> AgentProc:
    """An agent process for `node`; `port`: its gRPC port (default: a free one), e.g. to
    bring up something else where an agent used to listen."""
    port = port or free_port()
    mport = free_port()
    dport = free_port()
    argv = [
        sys.executable, "-m", "tote_containerd.agent",
        "--containerd-socket", node.socket,
        "--node-name", node.name,
        "--listen-address", "127.0.0.1",
        "--grpc-port", str(port),
        "--metrics-port", str(mport),
        "--data-port", str(dport),
        "--log-level", "debug",
        *extra,
    ]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "plugins"), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    proc = group.start(name or f"agent-{node.name}", argv, env=full_env, cwd=REPO)
    wait_until(lambda: port_open("127.0.0.1", port) and port_open("127.0.0.1", mport),
               timeout=60, what=f"agent on {node.name}", proc=proc)
    return AgentProc(node=node, port=port, metrics_port=mport, proc=proc, data_port=dport)


@dataclass
class Env:
    base: Path
    group: ProcessGroup
    pki: PKI
    nodes: dict[str, Node] = field(default_factory=dict)
    agents: dict[str, AgentProc] = field(default_factory=dict)
    # Extra agents, e.g. "a-fast": a fast-path (direct file access + data channel) source.
    extra: dict[str, AgentProc] = field(default_factory=dict)

    def tls_args(self) -> list[str]:
        a = self.pki.agent
        return ["--tls-cert", a.cert, "--tls-key", a.key, "--tls-ca", a.ca]

    def agent(self, node: str, *extra: str, name: str | None = None) -> AgentProc:
        return start_agent(self.group, self.nodes[node], *self.tls_args(), *extra, name=name)

    def settings(self, **over: object) -> ControllerSettings:
        """Core's settings as the controller would have them: its mTLS identity."""
        c = self.pki.controller
        kw: dict[str, object] = dict(tls_cert=c.cert, tls_key=c.key, tls_ca=c.ca)
        kw.update(over)
        return ControllerSettings(**kw)  # type: ignore[arg-type]

    def discovery(self, endpoints: dict[str, str] | None = None) -> AgentDiscovery:
        """The agent plugin's settings: every agent of this environment, by node."""
        return AgentDiscovery(endpoints=endpoints if endpoints is not None else
                              {n: a.endpoint for n, a in self.agents.items()})

    def client_agents(self, endpoints: dict[str, str] | None = None, **over: object
                      ) -> Agents:
        """The controller side's view of the agents (discovery + identity)."""
        return Agents(self.settings(**over), discovery=self.discovery(endpoints))

    def open_agent(self, node: str, endpoints: dict[str, str] | None = None,
                   rpc_timeout: float = RPC_TIMEOUT, **over: object
                   ) -> AbstractAsyncContextManager[AgentClient]:
        """One connection to `node`'s agent with the controller's identity."""
        return open_agent(node, self.settings(**over), rpc_timeout=rpc_timeout,
                          discovery=self.discovery(endpoints))
