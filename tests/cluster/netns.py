"""The e2e cluster's network: one bridge on the host, one network namespace per node.

Nodes are hosts of their own, as on a real cluster: each node's containerd, kubelet,
kube-proxy and NetworkPolicy engine run inside the node's namespace (entered with
`nsenter --net`, so the PID the harness tracks is the daemon's own and every mount stays
visible to every node, as the chart's hostPath volumes expect) and see one interface, `eth0`,
with the node's own address on a bridge the harness creates. Pods get addresses from the
node's pod CIDR (the Debian CNI bridge plugin creates `cni0` inside the node's namespace).

Addresses come from one /16 per *slot* — `10.(100+slot).0.0/16` — so two clusters (a test
session and the demo) can run side by side; a slot is held by an flock for the cluster's
life, and whatever a dead run left in its slot is removed when the slot is taken:

    10.S.0.1/24        the host's address on the bridge: kube-apiserver and test registries
    10.S.0.10+i        node i (`eth0` in namespace `toteS-<letter>`)
    10.S.16+i.0/24     node i's pod CIDR                    (pod range 10.S.16.0/20)
    10.S.128.0/20      the Service range; .1 the `kubernetes` Service, .10 cluster DNS

Containment: the host gets an `unreachable` route for the whole /16, so a packet for an
address nothing answers is refused instead of following the default route off the machine;
the more specific routes (the bridge's /24, each pod CIDR via its node) win while they
exist. Node namespaces get no default route at all — only the /16 via the host — so a pod
or a daemon that tries any address outside the cluster gets "network unreachable".

Teardown removes exactly what was created, by name: the node namespaces (after every
process in them has been stopped by PID), the veth pairs, the routes and the bridge.
`leftovers()` says what is still there (tests assert it is empty).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SLOTS = 16
LOCK_DIR = Path("/run/tote-netslots")
NETNS_DIR = Path("/run/netns")
NODE_LETTERS = "abcdefgh"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


@dataclass
class NodeNet:
    """One node's network namespace: its name, address and pod CIDR."""

    netns: str
    ip: str
    pod_cidr: str
    host_veth: str

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix an argv with this to run it inside the node's network namespace."""
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", "--"]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self.exec_prefix, *argv], capture_output=True, text=True)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.netns} failed: {res.stderr.strip()}")
        return res

    def sysctl(self, key: str, value: str) -> None:
        self.run("sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}")

    def pids(self) -> list[int]:
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]


@dataclass
class ClusterNetwork:
    slot: int
    nodes: list[NodeNet] = field(default_factory=list)
    _lock_fd: int | None = field(default=None, repr=False)
    _up: bool = False

    # -- addresses -----------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"10.{100 + self.slot}"

    @property
    def cidr(self) -> str:
        """Everything the cluster uses: the host's unreachable route."""
        return f"{self.prefix}.0.0/16"

    @property
    def gateway(self) -> str:
        """The host's address on the bridge (kube-apiserver and test registries bind it)."""
        return f"{self.prefix}.0.1"

    @property
    def node_subnet(self) -> str:
        return f"{self.prefix}.0.0/24"

    @property
    def pod_range(self) -> str:
        return f"{self.prefix}.16.0/20"

    @property
    def service_range(self) -> str:
        return f"{self.prefix}.128.0/20"

    @property
    def kubernetes_service_ip(self) -> str:
        return f"{self.prefix}.128.1"

    @property
    def dns_service_ip(self) -> str:
        return f"{self.prefix}.128.10"

    @property
    def bridge(self) -> str:
        return f"tote{self.slot}br"

    @property
    def netns_prefix(self) -> str:
        return f"tote{self.slot}-"

    def node_ip(self, i: int) -> str:
        return f"{self.prefix}.0.{10 + i}"

    def pod_cidr(self, i: int) -> str:
        return f"{self.prefix}.{16 + i}.0/24"

    def contains(self, address: str) -> bool:
        return ipaddress.ip_address(address) in ipaddress.ip_network(self.cidr)

    # -- set-up ----------------------------------------------------------------------

    def up(self) -> None:
        """Create the bridge and the containment route; remove a dead run's leftovers."""
        self._remove_everything()  # a crashed run holding this slot before us
        _ip("link", "add", self.bridge, "type", "bridge")
        self._up = True
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        _ip("route", "add", "unreachable", self.cidr)

    def add_node(self) -> NodeNet:
        """A new namespace with `eth0` on the bridge; routes come with `connect_pods`."""
        i = len(self.nodes)
        letter = NODE_LETTERS[i]
        node = NodeNet(netns=f"{self.netns_prefix}{letter}", ip=self.node_ip(i),
                       pod_cidr=self.pod_cidr(i),
                       host_veth=f"tote{self.slot}{letter}h")  # fmt: skip
        self.nodes.append(node)
        _ip("netns", "add", node.netns)
        _ip("link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0",
            "netns", node.netns)  # fmt: skip
        _ip("link", "set", node.host_veth, "master", self.bridge, "up")
        node.run("ip", "link", "set", "lo", "up")
        node.run("ip", "addr", "add", f"{node.ip}/24", "dev", "eth0")
        node.run("ip", "link", "set", "eth0", "up")
        # The rest of the cluster (Service range included, which must have a route before
        # kube-proxy's DNAT can apply to a node's own connections) is reached through the
        # host; nothing outside it is reachable at all.
        node.run("ip", "route", "add", self.cidr, "via", self.gateway)
        # Pods are routed through the node; same-node pod traffic crosses cni0, and
        # kube-proxy's and the policy engine's rules must see it (br_netfilter, per namespace).
        node.sysctl("net.ipv4.ip_forward", "1")
        node.sysctl("net.bridge.bridge-nf-call-iptables", "1")
        return node

    def connect_pods(self) -> None:
        """Each pod CIDR routed to its node, from the host and from every other node."""
        for node in self.nodes:
            _ip("route", "replace", node.pod_cidr, "via", node.ip)
            for other in self.nodes:
                if other is not node:
                    other.run("ip", "route", "replace", node.pod_cidr, "via", node.ip)

    # -- faults ----------------------------------------------------------------------

    def set_link(self, node: NodeNet, up: bool) -> None:
        """Take a node's cable out (or put it back): its veth on the bridge goes down."""
        _ip("link", "set", node.host_veth, "up" if up else "down")

    # -- teardown --------------------------------------------------------------------

    def acquire(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_DIR / f"slot-{self.slot}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def down(self) -> dict[str, list[str]]:
        """Remove everything this slot has on the host. Call after every daemon in the node
        namespaces has been stopped; whatever still runs in one is reported and killed by
        PID."""
        report: dict[str, list[str]] = {"killed_in_netns": []}
        for node in self.nodes:
            for pid in node.pids():
                report["killed_in_netns"].append(f"{pid} in {node.netns}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._remove_everything()
        report["left"] = [f"{k}: {v}" for k, v in self.leftovers().items() if v]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        return report

    def _remove_everything(self) -> None:
        for ns in self._our_netns():
            _ip("netns", "delete", ns, check=False)
        for link in self._our_links():
            _ip("link", "delete", link, check=False)
        for route in self._our_routes():
            _ip("route", "del", *route.split(), check=False)
        self._up = False

    def _our_netns(self) -> list[str]:
        out = _ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines()
                if line.split() and line.split()[0].startswith(self.netns_prefix)]  # fmt: skip

    def _our_links(self) -> list[str]:
        out = _ip("-o", "link", "show", check=False).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
        return [n for n in names if n.startswith(f"tote{self.slot}") and
                (n == self.bridge or n.endswith("h"))]  # fmt: skip

    def _our_routes(self) -> list[str]:
        out = _ip("route", "show", check=False).stdout
        mine = []
        for line in out.splitlines():
            dest = line.split()[1] if line.startswith("unreachable") else line.split()[0]
            with contextlib.suppress(ValueError):
                net = ipaddress.ip_network(dest, strict=False)
                if net.subnet_of(ipaddress.ip_network(self.cidr)) and "proto kernel" not in line:
                    mine.append(line.split(" proto")[0].strip())
        return mine

    def leftovers(self) -> dict[str, list[str]]:
        """What of this slot is still on the host (empty lists after `down`)."""
        return {"netns": self._our_netns(), "links": self._our_links(),
                "routes": self._our_routes()}  # fmt: skip


def open_network(slot: int | None = None) -> ClusterNetwork:
    """Take the first free slot (or `slot`) and bring its bridge up."""
    candidates = [slot] if slot is not None else list(range(SLOTS))
    for s in candidates:
        net = ClusterNetwork(slot=s)
        try:
            net.acquire()
        except BlockingIOError:
            continue
        try:
            net.up()
        except BaseException:
            net.down()
            raise
        return net
    raise RuntimeError(f"no free network slot among {candidates} (locks in {LOCK_DIR})")
