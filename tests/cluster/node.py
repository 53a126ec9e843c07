"""A real kubelet node for the e2e cluster: its own containerd (CRI plugin) + a kubelet.

Everything lives under one tmp dir (`workdir`): containerd root/state/sockets, the CNI conf
dir and IPAM state, the kubelet root dir, pod logs, certificates and config files. Processes
are started through `procs.ProcessGroup` (tracked by PID, stopped by PID).

Choices forced by this kind of machine (see docs/e2e-cluster.md):

- Node name / address. kubelet refuses a loopback `--node-ip` ("nodeIP can't be loopback
  address", kubelet_node_status.go validateNodeIP). When `--hostname-override` is an IP and
  no `--node-ip` is given, kubelet uses that IP for InternalIP and Hostname without the
  check. So a node is named after its loopback address (`127.0.0.1` by default): the
  apiserver reaches the kubelet (logs, exec) at 127.0.0.1:<free port>, hostNetwork pods get
  podIP 127.0.0.1, and nothing uses a non-loopback address.
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
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import containerd_config, oci, pki, versions
from tests.cluster.procs import Proc, ProcessGroup, free_port, port_open, wait_until

CGROUP_FS = Path("/sys/fs/cgroup")

CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")

KUBELET_READY_TIMEOUT = 90.0


def cni_bin_dir() -> str | None:
    for d in CNI_BIN_DIRS:
        if all(os.access(Path(d) / p, os.X_OK) for p in ("bridge", "host-local", "loopback")):
            return d
    return None


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a kubelet node (empty when it can)."""
    missing = [
        t for t in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "mount", "umount")
        if shutil.which(t) is None
    ]  # fmt: skip
    if cni_bin_dir() is None:
        missing.append("CNI plugins (bridge, host-local, loopback) in " + " or ".join(CNI_BIN_DIRS))
    if os.geteuid() != 0:
        missing.append("root (kubelet and containerd need it)")
    return missing


# --------------------------------------------------------------------------- containerd


@dataclass
class Containerd:
    """A containerd daemon with the CRI plugin, its own root/state/socket under `dir`."""

    name: str
    dir: Path
    proc: Proc

    @property
    def socket(self) -> str:
        return str(self.dir / "containerd.sock")

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def content_root(self) -> Path:
        return self.dir / "root" / "io.containerd.content.v1.content"

    def ctr(
        self, *args: str, namespace: str = "k8s.io", check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ctr", "--address", self.socket, "--namespace", namespace, *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {res.stderr.strip()}")
        return res

    def image_names(self) -> list[str]:
        out = self.ctr("images", "ls", "-q").stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def trust_registry(self, host: str) -> None:
        """Treat `host` (e.g. 127.0.0.1:5000) as a plain-HTTP registry (hosts.toml)."""
        d = self.dir / "certs.d" / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "http://{host}"\n\n'
            f'[host."http://{host}"]\n'
            '  capabilities = ["pull", "resolve", "push"]\n'
            "  skip_verify = true\n"
        )

    def import_image(
        self, image: oci.OciImage, name: str | None = None, *, unpack: bool = True
    ) -> None:
        image.import_into(self.socket, name=name, unpack=unpack)

    def delete_blob(self, digest: str) -> None:
        """Remove one blob from the content store (to make a corrupt image record)."""
        self.ctr("content", "rm", digest)

    def remove_all_tasks(self) -> list[str]:
        """SIGKILL and delete every task and container in `k8s.io` (what a drain would do)."""
        removed: list[str] = []
        if not self.proc.alive():
            return removed
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for t in tasks:
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", t, check=False)
        for t in tasks:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                res = self.ctr("tasks", "delete", "--force", t, check=False)
                if res.returncode == 0 or "not found" in res.stderr:
                    break
                time.sleep(0.2)
            removed.append(t)
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", c, check=False)
        return removed


def write_containerd_config(d: Path, *, pause_image: str) -> Path:
    cni_bin = cni_bin_dir() or CNI_BIN_DIRS[0]
    for sub in ("root", "state", "opt", "certs.d", "cni/net.d", "cni/ipam"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    cfg = d / "containerd.toml"
    cfg.write_text(containerd_config.cri(d, pause=pause_image, cni_bin=cni_bin))
    return cfg


def write_cni_config(d: Path, *, bridge: str, subnet: str) -> None:
    """bridge + host-local (+ CRI's own loopback): makes the node report NetworkReady.

    No test traffic uses it (test pods are hostNetwork); no ipMasq, no portmap → no iptables.
    """
    conf = {
        "cniVersion": "0.4.0",
        "name": "tote-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": str(d / "cni" / "ipam"),
                },
            }
        ],
    }
    (d / "cni" / "net.d" / "10-tote.conflist").write_text(json.dumps(conf, indent=2))


def start_containerd(
    procs: ProcessGroup, d: Path, *, name: str, pause_image: str, subnet: str = "10.244.0.0/24"
) -> Containerd:
    versions.use_containerd()
    d.mkdir(parents=True, exist_ok=True)
    cfg = write_containerd_config(d, pause_image=pause_image)
    write_cni_config(d, bridge=f"tote{secrets.token_hex(3)}", subnet=subnet)
    proc = procs.start(f"containerd-{name}", ["containerd", "--config", str(cfg)])
    cd = Containerd(name=name, dir=d, proc=proc)
    wait_until(
        lambda: Path(cd.socket).exists() and cd.ctr("version", check=False).returncode == 0,
        timeout=30, what=f"containerd {name} socket", proc=proc,
    )  # fmt: skip
    return cd


# --------------------------------------------------------------------------- cgroups


def _cgroup_subsystem_dirs() -> list[Path]:
    """The cgroup hierarchies kubelet uses (v1 controller mounts, or the v2 unified one)."""
    dirs: list[Path] = []
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return dirs
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2"):
            dirs.append(Path(parts[1]))  # v1: one per controller set; v2: the unified one
    return dirs


def _make_cgroup_root(rel: str) -> list[Path]:
    made = []
    for base in _cgroup_subsystem_dirs():
        p = base / rel.lstrip("/")
        if not p.exists():
            p.mkdir()
            made.append(p)
        if base.name == "cpuset" or "cpuset" in base.name.split(","):
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (p / f).exists() and not (p / f).read_text().strip():
                    (p / f).write_text((base / f).read_text())
    return made


def _remove_cgroup_tree(root: Path) -> list[str]:
    """rmdir a cgroup subtree bottom-up; returns dirs that could not be removed."""
    left: list[str] = []
    if not root.exists():
        return left
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError as exc:
            left.append(f"{dirpath}: {exc.strerror}")
    return left


# --------------------------------------------------------------------------- processes/mounts


def _pids_referencing(needle: str) -> list[int]:
    """PIDs whose command line mentions `needle` (a path unique to this node's tmp dir)."""
    found = []
    me = os.getpid()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append(int(p.name))
    return found


def _descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(p.name))
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    out: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        mp = line.split()[4].replace("\\040", " ")
        if mp.startswith(prefix) or mp == prefix[:-1]:
            out.append(mp)
    return out


def unmount_all_under(root: Path) -> list[str]:
    """Unmount everything mounted under `root`, deepest first; returns what stayed mounted."""
    for _ in range(3):
        mps = sorted(set(_mounts_under(root)), key=len, reverse=True)
        if not mps:
            return []
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
    return _mounts_under(root)


# --------------------------------------------------------------------------- kubelet


@dataclass
class KubeletNode:
    """One kubelet + its containerd. `name` is also its loopback address (see module doc)."""

    name: str
    workdir: Path
    containerd: Containerd
    procs: ProcessGroup
    kubelet_port: int = 0
    kubelet: Proc | None = None
    cgroup_root: str = ""
    startup_seconds: dict[str, float] = field(default_factory=dict)
    # What teardown found and had to clean up (tests assert on it).
    teardown_report: dict[str, list[str]] = field(default_factory=dict)
    _stopped: bool = False

    @property
    def node_ip(self) -> str:
        return self.name

    @property
    def socket(self) -> str:
        return self.containerd.socket

    def ctr(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.containerd.ctr(*args, **kw)

    def image_names(self) -> list[str]:
        return self.containerd.image_names()

    def trust_registry(self, host: str) -> None:
        self.containerd.trust_registry(host)

    def import_image(
        self, image: oci.OciImage, name: str | None = None, *, unpack: bool = True
    ) -> None:
        self.containerd.import_image(image, name=name, unpack=unpack)

    def delete_blob(self, digest: str) -> None:
        self.containerd.delete_blob(digest)

    def logs(self) -> dict[str, str]:
        return self.procs.logs()

    def leftover_pids(self) -> list[int]:
        """Processes still referencing this node's tmp dir (shims, containers' parents…)."""
        pids = _pids_referencing(str(self.workdir))
        return sorted(set(pids + _descendants(pids)))

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
        report["leftover_pids"] = [_describe(p) for p in leftovers]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            wait_until(lambda: not self.leftover_pids(), timeout=10, what="leftovers gone")
        report["still_mounted"] = unmount_all_under(self.workdir)
        # kubelet links container logs from the fixed /var/log/containers into our podLogsDir
        report["log_links_removed"] = _remove_links_into(Path("/var/log/containers"), self.workdir)
        report["cgroups_left"] = []
        if self.cgroup_root:
            for base in _cgroup_subsystem_dirs():
                report["cgroups_left"] += _remove_cgroup_tree(base / self.cgroup_root.lstrip("/"))
        self.teardown_report = report
        return report


def _remove_links_into(directory: Path, target_root: Path) -> list[str]:
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    prefix = str(target_root.resolve()) + "/"
    for link in directory.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(prefix):
            link.unlink(missing_ok=True)
            removed.append(link.name)
    return removed


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmd = "?"
    return f"{pid}: {cmd[:200]}"


def kubelet_config(node: KubeletNode, *, ca_file: Path, healthz_port: int) -> dict[str, Any]:
    d = node.workdir
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
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
        "resolvConf": "/etc/resolv.conf",
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
) -> KubeletNode:
    """Start containerd (CRI) + kubelet registering as node `node_ip`. Does not wait for
    Ready (the scheduler and node controllers may not be running yet): call
    `wait_registered()` / the cluster's `wait_node_ready()`."""
    missing = missing_prerequisites()
    if missing:
        raise FileNotFoundError(f"cannot run a kubelet node here, missing: {missing}")
    t0 = time.monotonic()
    name = node_ip
    workdir.mkdir(parents=True, exist_ok=True)
    procs = ProcessGroup(log_dir=workdir / "logs")
    node: KubeletNode | None = None
    try:
        cd = start_containerd(
            procs, workdir / "containerd", name=name, pause_image=pause.name, subnet=subnet
        )
        t_cd = time.monotonic()
        cd.import_image(pause)
        t_pause = time.monotonic()

        node = KubeletNode(
            name=name, workdir=workdir, containerd=cd, procs=procs,
            kubelet_port=free_port(node_ip),
            cgroup_root=f"/tote-{secrets.token_hex(4)}",
        )  # fmt: skip
        _make_cgroup_root(node.cgroup_root)

        # -- certificates: client (system:node:<name>) and serving, from the cluster CA
        pki_dir = workdir / "pki"
        pki_dir.mkdir(exist_ok=True)
        ca = pki.CA(cert=ca_file, key=ca_key, dir=pki_dir)
        client = ca.issue(
            "kubelet-client", common_name=f"system:node:{name}",
            organizations=("system:nodes",), client=True,
        )  # fmt: skip
        ca.issue(
            "kubelet-serving",
            common_name=name,
            ip_addresses=(node_ip,),
            dns_names=("localhost",),
            server=True,
        )
        kubeconfig = workdir / "kubelet.kubeconfig"
        _write_kubeconfig(
            kubeconfig,
            server=server,
            ca_file=ca_file,
            user=f"system:node:{name}",
            cert=client.cert,
            key=client.key,
        )
        config_path = workdir / "kubelet-config.yaml"
        healthz_port = free_port()
        config_path.write_text(
            yaml.safe_dump(kubelet_config(node, ca_file=ca_file, healthz_port=healthz_port))
        )
        for sub in ("kubelet", "pod-logs", "volume-plugins"):
            (workdir / sub).mkdir(exist_ok=True)
        t_cfg = time.monotonic()

        argv = [
            str(bin_dir / "kubelet"),
            f"--config={config_path}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={workdir / 'kubelet'}",
            f"--cert-dir={pki_dir}",
            f"--hostname-override={name}",
            *([f"--register-with-taints={','.join(taints)}"] if taints else []),
            "--v=2",
            *extra_kubelet_args,
        ]
        node.kubelet = procs.start("kubelet", argv)
        wait_until(
            lambda: _healthz(healthz_port), timeout=KUBELET_READY_TIMEOUT,
            what="kubelet /healthz", proc=node.kubelet,
        )  # fmt: skip
        t_end = time.monotonic()
        node.startup_seconds = {
            "containerd": round(t_cd - t0, 2),
            "pause-import": round(t_pause - t_cd, 2),
            "certs+config": round(t_cfg - t_pause, 2),
            "kubelet-healthz": round(t_end - t_cfg, 2),
            "total": round(t_end - t0, 2),
        }
        return node
    except BaseException:
        if node is not None:
            node.stop()
        else:
            procs.stop_all()
            for pid in _pids_referencing(str(workdir)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            unmount_all_under(workdir)
        raise


def _healthz(port: int) -> bool:
    import urllib.request

    if not port_open("127.0.0.1", port):
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _write_kubeconfig(
    path: Path, *, server: str, ca_file: Path, user: str, cert: Path, key: Path
) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tote-test",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": user, "context": {"cluster": "tote-test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- image-only nodes


def _microtime() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _parse_size(text: str) -> int:
    """`ctr images ls` sizes ("1.4 MiB") → bytes (approximate, like kubelet's sizeBytes)."""
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
    try:
        num, unit = text.split()
        return int(float(num) * units.get(unit, 1))
    except ValueError:
        return 0


@dataclass
class ImageNode:
    """Another "node" of the cluster: a containerd (CRI plugin on, like a real node) that
    holds images and never runs pods, plus a Node object the test process keeps Ready.

    `heartbeat()` (called every few seconds by the cluster) renews the node's Lease in
    `kube-node-lease` — what the node lifecycle controller watches — and, when the image list
    changed, writes `status.images` the way kubelet reports it (`repo@digest` + `repo:tag`,
    at most 50 images). The node is tainted `tote.test/image-only:NoSchedule`.
    """

    name: str
    address: str
    workdir: Path
    containerd: Containerd
    procs: ProcessGroup
    report_images: bool = True
    runtime_version: str = "containerd://unknown"
    ready_since: str = ""
    _stopped: bool = False

    TAINT_KEY = "tote.test/image-only"

    @property
    def socket(self) -> str:
        return self.containerd.socket

    def ctr(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.containerd.ctr(*args, **kw)

    def image_names(self) -> list[str]:
        return self.containerd.image_names()

    def trust_registry(self, host: str) -> None:
        self.containerd.trust_registry(host)

    def import_image(
        self, image: oci.OciImage, name: str | None = None, *, unpack: bool = True
    ) -> None:
        self.containerd.import_image(image, name=name, unpack=unpack)

    def delete_blob(self, digest: str) -> None:
        self.containerd.delete_blob(digest)

    def logs(self) -> dict[str, str]:
        return self.procs.logs()

    def node_images(self) -> list[dict[str, Any]]:
        """What kubelet would put in Node.status.images for this containerd."""
        res = self.ctr("images", "ls", check=False)
        by_digest: dict[str, dict[str, Any]] = {}
        for line in res.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) < 5:
                continue
            ref, digest = parts[0], parts[2]
            size = _parse_size(f"{parts[3]} {parts[4]}")
            if ref.startswith("sha256:"):
                continue
            entry = by_digest.setdefault(digest, {"names": [], "sizeBytes": size})
            repo = ref.split("@", 1)[0]
            if "@" not in ref:
                last = repo.rsplit("/", 1)[-1]
                if ":" in last:
                    repo = repo[: repo.rfind(":")]
            for n in (f"{repo}@{digest}", ref):
                if n not in entry["names"]:
                    entry["names"].append(n)
        images = sorted(by_digest.values(), key=lambda i: -int(i["sizeBytes"]))[:50]
        for i in images:  # kubelet: digests first, at most 5 names
            i["names"] = sorted(i["names"], key=lambda n: "@" not in n)[:5]
        return images

    def register_manifests(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": oci.go_arch(),
                    "tote.test/image-only": "true",
                },
            },
            "spec": {"taints": [{"key": self.TAINT_KEY, "value": "true", "effect": "NoSchedule"}]},
        }

    def status_patch(self) -> dict[str, Any]:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.ready_since = self.ready_since or now
        status: dict[str, Any] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "image-only test node (containerd, no kubelet)",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self.ready_since,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.address},
                {"type": "Hostname", "address": self.name},
            ],
            "capacity": {"cpu": "1", "memory": "1Gi", "pods": "0"},
            "allocatable": {"cpu": "1", "memory": "1Gi", "pods": "0"},
            "nodeInfo": {
                "containerRuntimeVersion": self.runtime_version,
                "kubeletVersion": "",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": oci.go_arch(),
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "tote image-only test node",
            },
        }
        if self.report_images:
            status["images"] = self.node_images()
        return {"status": status}

    def lease(self) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": 40,
                "renewTime": _microtime(),
            },
        }

    def stop(self) -> dict[str, list[str]]:
        if self._stopped:
            return {}
        self._stopped = True
        report: dict[str, list[str]] = {}
        try:
            report["tasks_killed"] = self.containerd.remove_all_tasks()
        except Exception as exc:
            report["tasks_killed"] = [f"<failed: {exc!r}>"]
        self.procs.stop_all(grace=10)
        pids = _pids_referencing(str(self.workdir))
        leftovers = sorted(set(pids + _descendants(pids)))
        report["leftover_pids"] = [_describe(p) for p in leftovers]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        report["still_mounted"] = unmount_all_under(self.workdir)
        return report


def start_image_node(
    workdir: Path, *, name: str, address: str, pause_image: str, report_images: bool = True
) -> ImageNode:
    """Start the containerd of an image-only node (the cluster registers its Node object)."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = ProcessGroup(log_dir=workdir / "logs")
    try:
        cd = start_containerd(procs, workdir / "containerd", name=name, pause_image=pause_image)
    except BaseException:
        procs.stop_all()
        unmount_all_under(workdir)
        raise
    out = cd.ctr("version", check=False).stdout
    # "Server:\n  Version:  1.6.20~ds1" → containerd://1.6.20
    versions = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Version:" in ln]
    version = versions[-1].split("~")[0] if versions else "unknown"
    return ImageNode(
        name=name, address=address, workdir=workdir, containerd=cd, procs=procs,
        report_images=report_images, runtime_version=f"containerd://{version}",
    )  # fmt: skip
