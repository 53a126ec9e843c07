"""tote on the real e2e cluster: agents, the controller, and what the scenarios observe.

`start_salvage_env(cluster, workdir)` adds to a running `KubeCluster`

- one `tote agent` per kubelet node — the workload node `node-a` and the source nodes
  `node-b` ("node B") and `node-c` (tainted so workloads never land there) — with mTLS
  (test PKI: controller and agent identities), as processes on the host's loopback that
  reach each node's containerd by its socket,
- `tote controller` as a process with the control plane's restricted identity
  (`controller_kubeconfig`, `--namespace tote-harness`), reaching the agents through
  `--agent-endpoints node=host:port`.

It is used by tests/e2e/test_salvage_e2e.py (module fixture), the demo
(`python -m tests.cluster.demo`) and the P3 benchmark (tests/bench/bench_e2e.py).
Everything is started through `ProcessGroup`s and stopped by PID.

`Timeline` watches one workload (by label selector) through kubectl and notes, with the
test process's monotonic clock, when each step of the story was first seen: pull failure,
back-off, tote's events, a replacement pod if any (tote starts the failing pod in place), Running.

Over 400 lines on purpose: the salvage e2e's one environment (cluster, agents, registry,
controller) and the timeline that measures it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import oci, prom
from tests.cluster.cluster import KubeCluster
from tests.cluster.containerd_env import AgentProc, Node, start_agent
from tests.cluster.controller import ControllerProcess, Controllers
from tests.cluster.manifests import deployment_manifest, pod_manifest, waiting_reasons
from tests.cluster.node import KubeletNode
from tests.cluster.objects import events as k8s_events
from tests.cluster.objects import pod_running
from tests.cluster.pki import PKI, make_pki
from tests.cluster.procs import ProcessGroup, wait_until
from tests.cluster.registry import Registry
from tote_core.settings import ControllerSettings

OPT_IN = {"tote.dev/auto-salvage": "true"}
TOTE_REASONS = (
    "ImageSalvageable", "ImageNotActionable", "ImageResolvedUncached", "ImageSalvaged",
    "ImageSalvageFailed", "ImageCorrupt", "ImagePushed", "ImagePushFailed",
)  # fmt: skip


@dataclass
class SalvageEnv:
    cluster: KubeCluster
    workdir: Path
    pki: PKI
    group: ProcessGroup
    agents: dict[str, AgentProc] = field(default_factory=dict)
    controller: ControllerProcess | None = None
    startup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def cp(self) -> Any:
        return self.cluster.control_plane

    @property
    def node_b(self) -> KubeletNode:
        return self.cluster.node_b

    @property
    def ctl(self) -> ControllerProcess:
        assert self.controller is not None
        return self.controller

    # -- the runtime kill switch (ConfigMap <controller ns>/tote-config, key `enabled`) ----

    def set_enabled(self, enabled: bool | None, *, settle: float = 20) -> None:
        """Write `enabled: "true"/"false"` (None deletes the ConfigMap); wait until the
        controller's `tote_enabled` gauge agrees."""
        ns = self.cp.namespace
        if enabled is None:
            self.cluster.kubectl("delete", "configmap", "tote-config", "-n", ns,
                                 "--ignore-not-found")  # fmt: skip
        else:
            self.cluster.apply({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "tote-config", "namespace": ns},
                "data": {"enabled": "true" if enabled else "false"},
            })  # fmt: skip
        want = 0.0 if enabled is False else 1.0
        # the gauge is refreshed on each reconcile; the runtime value is also logged
        wait_until(lambda: self._runtime_state() == want, timeout=settle, interval=0.5,
                   what=f"controller sees enabled={enabled}", proc=self.ctl.proc)  # fmt: skip

    def _runtime_state(self) -> float | None:
        """1.0 / 0.0 from the controller log's last kill-switch line, else the gauge."""
        assert self.ctl.proc is not None
        log = self.ctl.proc.log_path.read_text(errors="replace")
        i_on = log.rfind("runtime kill switch: salvage enabled")
        i_off = log.rfind("runtime kill switch: salvage disabled")
        if i_on == i_off == -1:
            return self.ctl.metrics().get("tote_enabled")
        return 1.0 if i_on > i_off else 0.0

    # -- observation ---------------------------------------------------------------------

    def records(self, namespace: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "salvagerecords", "-n", namespace, "-o", "json")
        return list(json.loads(out.stdout)["items"])

    def tote_events(self, namespace: str, pod: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in k8s_events(self.cp, namespace, pod)
            if e.get("reportingController") == "tote.dev/controller"
        ]  # fmt: skip

    def wait_tote_event(
        self, namespace: str, reason: str, *, pod: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        got: list[dict[str, Any]] = []

        def seen() -> bool:
            got[:] = [e for e in self.tote_events(namespace, pod) if e.get("reason") == reason]
            return bool(got)

        try:
            wait_until(
                seen,
                timeout=timeout,
                interval=0.5,
                what=f"tote event {reason} in {namespace}",
                proc=self.ctl.proc,
            )
        except TimeoutError:
            have = [(e.get("reason"), e.get("note")) for e in self.tote_events(namespace)]
            raise TimeoutError(f"no {reason} event in {namespace} after {timeout}s; "
                               f"tote events: {have}") from None  # fmt: skip
        return got[0]

    def agent_metric(self, node: str, name: str) -> float:
        return prom.total(prom.parse(prom.fetch(self.agents[node].metrics_port, timeout=3)),
                          name)

    def logs(self) -> dict[str, str]:
        out = dict(self.group.logs())
        if self.controller is not None:
            out.update(self.controller.logs())
        return out

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        self.group.stop_all()
        self.cluster.kubectl("delete", "configmap", "tote-config", "-n", self.cp.namespace,
                             "--ignore-not-found", check=False)  # fmt: skip


def _agent_node(name: str, socket: str) -> Node:
    """`start_agent` only needs the node's name and containerd socket."""
    return Node(name=name, dir=Path(socket).parent, proc=None)  # type: ignore[arg-type]


def start_salvage_env(
    cluster: KubeCluster,
    workdir: Path,
    *,
    controller_args: tuple[str, ...] = (),
) -> SalvageEnv:
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    env = SalvageEnv(
        cluster=cluster, workdir=workdir, pki=make_pki(workdir / "pki"),
        group=ProcessGroup(workdir / "logs"),
    )  # fmt: skip
    try:
        t_nodes = time.monotonic()
        a = env.pki.agent
        tls = ["--tls-cert", a.cert, "--tls-key", a.key, "--tls-ca", a.ca]
        for name, socket in ((n.name, n.socket) for n in cluster.nodes):
            env.agents[name] = start_agent(
                env.group, _agent_node(name, socket), *tls, "--log-level", "info",
                name=f"agent-{name}",
            )  # fmt: skip
        t_agents = time.monotonic()
        c = env.pki.controller
        endpoints = ",".join(f"{n}={ag.endpoint}" for n, ag in env.agents.items())
        env.controller = Controllers(cluster.control_plane, workdir / "controller").start(
            "e2e", f"--agent-endpoints={endpoints}",
            f"--tls-cert={c.cert}", f"--tls-key={c.key}", f"--tls-ca={c.ca}", *controller_args,
            lease=ControllerSettings().lease_name, wait_lead=True,
        )  # fmt: skip
        t_end = time.monotonic()
        env.startup_seconds = {
            "agents": round(t_agents - t_nodes, 2),
            "controller": round(t_end - t_agents, 2),
            "total": round(t_end - t0, 2),
        }
        return env
    except BaseException:
        env.stop()
        raise


# --------------------------------------------------------------------------- workloads


def namespace(cluster: KubeCluster, name: str | None = None) -> str:
    """A namespace opted in with `tote.dev/allow: "true"`."""
    name = name or f"t-{uuid.uuid4().hex[:10]}"
    cluster.apply({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "annotations": {"tote.dev/allow": "true"}},
    })  # fmt: skip
    cluster.wait_default_service_account(name)
    return name


def deployment(
    name: str, ns: str, image: str, *, opt_in: bool = True, **spec_kw: Any
) -> dict[str, Any]:
    return deployment_manifest(name, ns, image, annotations=OPT_IN if opt_in else {}, **spec_kw)


def standalone_pod(
    name: str, ns: str, image: str, *, opt_in: bool = True, **spec_kw: Any
) -> dict[str, Any]:
    return pod_manifest(name, ns, image, annotations=OPT_IN if opt_in else {}, **spec_kw)


def workload_image(workdir: Path, name: str, *, marker: str, payload_mib: int = 0,
                   payload_layers: int = 1) -> oci.OciImage:
    """The hello program printing `marker`; with `payload_mib`, plus that many MiB of
    incompressible payload (gzip leaves it as large): `/payload.bin` in the same layer, or
    with `payload_layers` N > 1, `/payload-<i>.bin` in N layers of its own."""
    if not payload_mib:
        return oci.build_hello(workdir, name, marker=marker)
    workdir.mkdir(parents=True, exist_ok=True)
    parts = max(1, payload_layers)
    payloads = [workdir / f"payload-{uuid.uuid4().hex[:8]}-{i}.bin" for i in range(parts)]
    for i, payload in enumerate(payloads):
        with payload.open("wb") as f:
            for _ in range(payload_mib // parts + (i < payload_mib % parts)):
                f.write(os.urandom(1 << 20))
    files = {"/hello": oci.go_binary("hello")}
    extra: list[dict[str, Path]] = []
    if parts == 1:
        files["/payload.bin"] = payloads[0]
    else:
        extra = [{f"/payload-{i}.bin": p} for i, p in enumerate(payloads)]
    try:
        return oci.build_image(
            workdir, name, files, entrypoint=["/hello"], cmd=[marker],
            labels={"dev.tote.test.marker": marker}, extra_layers=extra,
        )  # fmt: skip
    finally:
        for payload in payloads:
            payload.unlink()


def image_only_on_node_b(
    cluster: KubeCluster,
    registry: Registry,
    tmp: Path,
    repo: str,
    *,
    marker: str,
    tag: str = "v1",
    stop_registry: bool = True,
    payload_mib: int = 0,
    payload_layers: int = 1,
    discard_layers: bool = False,
) -> oci.OciImage:
    """Image X: pushed to the loopback registry, loaded onto node B from the same OCI layout
    (same digest, what an earlier pull would have left: tag record labelled CRI-managed;
    node B's kubelet reports it in status.images on its own); then the registry is stopped.
    The workload node does not have it. `discard_layers`: node B then holds it as a node
    with `discard_unpacked_layers = true` does after a pull — unpacked, its compressed layer
    blobs deleted, only manifest, config and snapshots left."""
    ref = f"{registry.host}/{repo}:{tag}"
    img = workload_image(tmp, ref, marker=marker, payload_mib=payload_mib,
                         payload_layers=payload_layers)
    img.push(ref)
    cluster.node_b.import_image(img)
    if discard_layers:
        for layer in img.layer_digests:
            cluster.node_b.delete_blob(layer)
    if stop_registry:
        registry.stop()
    assert ref not in cluster.node.image_names()
    return img


# --------------------------------------------------------------------------- timeline


@dataclass
class Timeline:
    """First time (monotonic seconds since `t0`) each step of one workload's story was seen.

    Keys: `ErrImagePull`, `ImagePullBackOff`, `CreateContainerError` (waiting reasons),
    kubelet event reasons (`Failed`, `BackOff`, `Pulled`), tote event reasons, `Running`.
    Pods come and go (an owned pod is replaced); `pods` lists every UID seen, in order.
    """

    cluster: KubeCluster
    namespace: str
    selector: str | None = None  # label selector (Deployments)
    pod_name: str | None = None  # or one pod by name
    t0: float = field(default_factory=time.monotonic)
    first: dict[str, float] = field(default_factory=dict)
    pods: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    counts: dict[str, int] = field(default_factory=dict)  # event reason → summed count
    running_pod: dict[str, Any] | None = None

    def _pods(self) -> list[dict[str, Any]]:
        if self.pod_name:
            p = self.cluster.pod(self.namespace, self.pod_name)
            return [p] if p else []
        assert self.selector
        return self.cluster.pods(self.namespace, self.selector)

    def _note(self, key: str, now: float) -> None:
        self.first.setdefault(key, round(now - self.t0, 2))

    def poll(self) -> bool:
        """One look; True once a pod of the workload is Running with its container started
        (and not being deleted)."""
        now = time.monotonic()
        pods = self._pods()
        names = {p["metadata"]["name"] for p in pods}
        for p in pods:
            ident = (p["metadata"]["name"], p["metadata"]["uid"])
            if ident not in self.pods:
                self.pods.append(ident)
            st = p.get("status", {})
            for c in st.get("initContainerStatuses", []) + st.get("containerStatuses", []):
                w = (c.get("state") or {}).get("waiting") or {}
                if w.get("reason") in ("ErrImagePull", "ImagePullBackOff", "CreateContainerError"):
                    self._note(w["reason"], now)
        res = self.cluster.kubectl("get", "events", "-n", self.namespace, "-o", "json",
                                   check=False)  # fmt: skip
        if res.returncode == 0:
            counts: dict[str, int] = {}
            for e in json.loads(res.stdout)["items"]:
                involved = e.get("involvedObject", {})
                if involved.get("kind") == "Pod" and (
                    involved.get("name") in names
                    or any(involved.get("uid") == uid for _, uid in self.pods)
                ):
                    self._note(e.get("reason", ""), now)
                    r = e.get("reason", "")
                    counts[r] = counts.get(r, 0) + int(e.get("count") or 1)
            self.counts = counts
        for p in pods:
            if pod_running(p):
                self._note("Running", now)
                self.running_pod = p
                return True
        return False

    def wait_running(self, timeout: float, interval: float = 0.5) -> dict[str, Any]:
        try:
            wait_until(
                self.poll,
                timeout=timeout,
                interval=interval,
                what=f"{self.selector or self.pod_name} Running in {self.namespace}",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; seen so far {self.first}; {self.describe()}") from None
        assert self.running_pod is not None
        return self.running_pod

    def describe(self) -> str:
        """Pods (phase, node, waiting reasons, deletion) and the namespace's events."""
        pods = [
            (p["metadata"]["name"], p.get("status", {}).get("phase"), p["spec"].get("nodeName"),
             waiting_reasons(p), p["metadata"].get("deletionTimestamp"))
            for p in self._pods()
        ]  # fmt: skip
        evs = self.cluster.kubectl("get", "events", "-n", self.namespace, check=False).stdout
        rs = self.cluster.kubectl("get", "deploy,rs,pods", "-n", self.namespace, "-o", "wide",
                                  check=False).stdout  # fmt: skip
        return f"pods {pods}\n{rs}\nevents:\n{evs}"

    def watch(self, seconds: float, interval: float = 1.0) -> bool:
        """Poll for `seconds`; True if it became Running meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.poll():
                return True
            time.sleep(interval)
        return False

    def since(self, start: str, end: str = "Running") -> float | None:
        if start in self.first and end in self.first:
            return round(self.first[end] - self.first[start], 2)
        return None

    def first_failure(self) -> str | None:
        """The earliest observed pull-failure signal."""
        cands = [k for k in ("ErrImagePull", "Failed", "ImagePullBackOff", "BackOff")
                 if k in self.first]  # fmt: skip
        return min(cands, key=lambda k: self.first[k]) if cands else None

    def first_backoff(self) -> str | None:
        cands = [k for k in ("BackOff", "ImagePullBackOff") if k in self.first]
        return min(cands, key=lambda k: self.first[k]) if cands else None

    def summary(self) -> str:
        steps = sorted(self.first.items(), key=lambda kv: kv[1])
        return ", ".join(f"{k}@{v}s" for k, v in steps)
