"""Several containerd daemons on one machine, each standing in for a node, with agents.

`containerd_env(prefix, nodes, agents=…)` is the one environment every suite starts them
through (the integration suites' fixtures, the image test, the benchmarks): the machine
checked with `require` (a skip here, a failure under CI), a tmp base, the test PKI, one
containerd per node (`containerd_node.start_containerd`, the same daemon the kubelet nodes
run; without CRI unless asked: tote only needs content, images, leases and introspection)
and the agents asked for. Processes are started and stopped through
`tests.cluster.procs.ProcessGroup` (by PID, never by name); logs survive the run under
`TOTE_KEEP_LOGS` when set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from tote_containerd.agent.client import AgentClient
from tote_containerd.agents import RPC_TIMEOUT, Agents, open_agent
from tote_containerd.discovery import AgentDiscovery

from tests.cluster import versions
from tests.cluster.ci import require

# The same containerd wrapper as the e2e nodes', under the name these tests use for it.
from tests.cluster.containerd_node import Containerd as Node
from tests.cluster.containerd_node import start_containerd
from tests.cluster.pki import PKI, make_pki
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

    def add_node(self, name: str, *, cri: bool = False, discard_layers: bool = False) -> Node:
        """One more containerd "node" (`cri=True`: with the CRI plugin, overlayfs, as on a
        kubelet node: nothing here runs pods, but CRI's image service answers and names the
        snapshotter imports are unpacked into; `discard_layers`: CRI's
        `discard_unpacked_layers`, as EKS and other managed node images set it)."""
        node = start_containerd(self.group, self.base / "nodes" / name, name=name, cri=cri,
                                subnet=None, discard_layers=discard_layers)
        self.nodes[name] = node
        return node

    def agent(self, node: str, *extra: str, name: str | None = None) -> AgentProc:
        return start_agent(self.group, self.nodes[node], *self.tls_args(), *extra, name=name)

    def cri_pair(self, fast: str, api: str) -> dict[str, AgentProc]:
        """Two CRI nodes with their agents, registered in `agents`: `fast` with the fast
        path, `api` with the API path only (`--no-fast-path`) — what the suites that import
        into CRI's snapshotter run every case on."""
        for name in (fast, api):
            self.add_node(name, cri=True)
        agents = {fast: self.agent(fast), api: self.agent(api, "--no-fast-path")}
        self.agents.update(agents)
        return agents

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


@contextlib.contextmanager
def containerd_env(
    prefix: str, nodes: Sequence[str] = (), *,
    agents: Mapping[str, Sequence[str]] | None = None,
    extra_agents: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    dump_logs_on_error: bool = False, base_dir: str | None = None,
) -> Iterator[Env]:
    """The containerd environment (see the module docstring), torn down on exit.

    `nodes`: a plain containerd each (more with `Env.add_node`). `agents`: node → the
    agent's extra flags (e.g. `--no-fast-path`); None: an agent with no extra flags on
    every node; `{}`: none. `extra_agents`: name → (node, flags), a second agent on a node
    (`Env.extra`, its process `agent-<name>`). `dump_logs_on_error`: print every process's
    log when the body fails (suites whose failures are hard to read from the test alone).
    `base_dir`: where the tmp base goes (benchmarks: `TOTE_BENCH_DIR`; default the system's
    tmp dir)."""
    why = containerd_unusable()
    require(why is None, why)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
    group = ProcessGroup(base / "logs")
    env = Env(base=base, group=group, pki=make_pki(base / "pki"))
    try:
        for name in nodes:
            env.add_node(name)
        for name, flags in (agents if agents is not None else {n: () for n in nodes}).items():
            env.agents[name] = env.agent(name, *flags)
        for name, (node, flags) in (extra_agents or {}).items():
            env.extra[name] = env.agent(node, *flags, name=f"agent-{name}")
        yield env
    except BaseException:
        if dump_logs_on_error:
            for n, log in group.logs().items():
                print(f"===== {n}\n{log}")
        raise
    finally:
        group.stop_all()
        keep = os.environ.get("TOTE_KEEP_LOGS")
        if keep:  # process logs survive the run
            shutil.copytree(base / "logs", Path(keep) / base.name, dirs_exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)
