"""Fixtures: the real apiserver plus containerd "nodes" with real agents, and a controller.

Three containerd instances stand in for nodes `n1`, `n2`, `n3`, each with an agent (mTLS);
the harness creates matching Node objects and writes `status.images` the way kubelet does.
The controller runs as its own process with the restricted RBAC identity and reaches the
agents through `--agent-endpoints`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.containerd_env import (
    REPO,
    AgentProc,
    Env,
    Node,
    containerd_env,
)
from tests.cluster.controller import ControllerProcess, Controllers
from tests.cluster.controlplane import ControlPlane
from tests.cluster.images import Image
from tests.cluster.objects import create_node, set_node_images
from tests.cluster.procs import port_open, wait_until

NODES = ("n1", "n2", "n3")


@dataclass
class SalvageEnv:
    cp: ControlPlane
    ctd: Env
    workdir: Path
    controllers: Controllers  # every controller of the module, stopped at its end

    def preload(self, node: str, img: Image, archive: Path, *, keep_tag: bool = True) -> None:
        """Put an image on a node as a CRI pull would have: the tag, `repo@digest`
        and the config-digest image ID, then report it in Node.status.images.
        `keep_tag=False` drops the tag name afterwards (nothing on the node names it)."""
        n = self.ctd.nodes[node]
        n.import_archive(archive)
        repo = img.name.rsplit(":", 1)[0]
        config = next(iter(img.configs.values())).digest
        for extra in (f"{repo}@{img.digest}", config):
            if extra not in n.image_names():
                n.ctr("images", "tag", img.name, extra)
        if not keep_tag:
            n.ctr("images", "rm", img.name)
        self.node_status_from_containerd(node)

    def node_status_from_containerd(self, node: str, *, hide: set[str] | None = None) -> None:
        """Write Node.status.images from what the node's containerd holds (kubelet-like)."""
        names = self.ctd.nodes[node].image_names()
        by_target: dict[str, list[str]] = {}
        for line in self.ctd.nodes[node].ctr("images", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0] in names:
                by_target.setdefault(parts[2], []).append(parts[0])
        images = [sorted(v)[:5] for k, v in by_target.items() if k not in (hide or set())]
        set_node_images(self.cp, node, images)

    def controller(self, identity: str, *extra: str, lease: str | None = None,
                   wait_lead: bool = True, static_endpoints: bool = True) -> ControllerProcess:
        c = self.ctd.pki.controller
        return self.controllers.start(
            identity,
            *([f"--agent-endpoints={self.agent_endpoints()}"] if static_endpoints else []),
            f"--tls-cert={c.cert}", f"--tls-key={c.key}", f"--tls-ca={c.ca}", *extra,
            lease=lease or f"salvage-{identity}", wait_lead=wait_lead,
        )

    def agent_endpoints(self) -> str:
        """`--agent-endpoints`' value: every node's agent."""
        return ",".join(f"{n}={a.endpoint}" for n, a in self.ctd.agents.items())

    def stop_agent(self, node: str) -> None:
        self.ctd.agents[node].proc.kill()

    def restart_agent(self, node: str, *, fast_path: bool | None = None) -> None:
        """Start the node's agent again with the same argv (same ports), stopping it first
        if it still runs; `fast_path` switches `--no-fast-path` off or on."""
        old = self.ctd.agents[node]
        if old.proc.alive():
            old.proc.stop()
        argv = [a for a in old.proc.argv if a != "--no-fast-path"]
        if (fast_path is None and "--no-fast-path" in old.proc.argv) or fast_path is False:
            argv.append("--no-fast-path")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"),
                                             env.get("PYTHONPATH", "")])
        wait_until(lambda: not port_open("127.0.0.1", old.port), timeout=15, what="port free")
        proc = self.ctd.group.start(f"agent-{node}-again", argv, env=env, cwd=REPO)
        wait_until(lambda: port_open("127.0.0.1", old.port), timeout=60,
                   what=f"agent {node} back", proc=proc)
        self.ctd.agents[node] = AgentProc(node=old.node, port=old.port,
                                          metrics_port=old.metrics_port, proc=proc)

    def restart_containerd(self, node: str) -> None:
        """SIGKILL the node's containerd and start it again with the same config."""
        old = self.ctd.nodes[node]
        old.proc.kill()
        proc = self.ctd.group.start(f"containerd-{node}-again", old.proc.argv)
        new = Node(name=old.name, dir=old.dir, proc=proc)
        wait_until(lambda: new.ctr("version", check=False).returncode == 0, timeout=60,
                   what=f"containerd {node} back", proc=proc)
        self.ctd.nodes[node] = new
        self.ctd.agents[node].node = new

    def logs(self) -> dict[str, str]:
        return {**self.ctd.group.logs(), **self.controllers.logs()}


@pytest.fixture(scope="module")
def senv(control_plane: ControlPlane) -> Iterator[SalvageEnv]:
    with containerd_env("tote-salvage-", NODES) as ctd:
        env = SalvageEnv(cp=control_plane, ctd=ctd, workdir=ctd.base / "ctl",
                         controllers=Controllers(control_plane, ctd.base / "ctl"))
        try:
            for name in NODES:
                create_node(control_plane, name)
            yield env
        finally:
            env.controllers.stop_all()
            for name in NODES:
                control_plane.kubectl("delete", "node", name, "--ignore-not-found",
                                      check=False)


def records(cp: ControlPlane, ns: str) -> list[dict[str, object]]:
    out = cp.kubectl("get", "salvagerecords", "-n", ns, "-o", "json").stdout
    return json.loads(out)["items"]  # type: ignore[no-any-return]
