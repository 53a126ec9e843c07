"""The network as a fault, inside the e2e cluster's node namespaces (tests/cluster/netns.py).

Each fault is a context manager that installs it in one node's namespace and takes it out
again on exit, whatever happened in between:

- `blocked(node, between=(a, b))`: every packet the node forwards between two address
  ranges (e.g. its pods and another node's pod CIDR) is dropped — a cut link for that pair;
  with `probability`, that share of them (iptables' statistic match: this kernel has no
  netem) — packet loss;
- `rate_limited(node, rate)`: the node's `eth0` sends at most `rate` (a TBF qdisc) — a slow
  but live link;
- `delayed(node, dest, port, seconds)`: new connections to a pod on the node go through a
  relay in user space that holds every byte back by `seconds` each way — latency (no
  netem here).

Rules go into a chain of their own (`TOTE-FAULT`) in the `raw` table, jumped to from
PREROUTING and OUTPUT: before conntrack, NAT and the filter table, where kube-proxy's and
kube-router's rules would ACCEPT a packet first (they keep their jumps at the top of
FORWARD). So packets are matched as they travel — a Service's traffic still by its ClusterIP
towards the backend, by the backend's address on the way back — nothing of theirs is
edited, and removal is exact. Same-node pod traffic crosses the node's bridge, which
br_netfilter hands to these hooks too.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from tests.cluster.netns import NodeNet

CHAIN = "TOTE-FAULT"
HOOKS = ("PREROUTING", "OUTPUT")


def _ipt(node: NodeNet, *args: str, check: bool = True) -> None:
    node.run("iptables", "-w", "-t", "raw", *args, check=check)


@contextlib.contextmanager
def blocked(
    node: NodeNet, *, between: tuple[str, str], probability: float | None = None,
    port: int | None = None,
) -> Iterator[None]:
    """Drop what `node` carries between the ranges `between` (both directions); only TCP to
    or from `port` when given."""
    _ipt(node, "-N", CHAIN)
    try:
        for hook in HOOKS:
            _ipt(node, "-I", hook, "1", "-j", CHAIN)
        a, b = between
        for src, dst in ((a, b), (b, a)):
            match = ["-s", src, "-d", dst]
            if port is not None:
                # either side of the connection: requests to the port, answers from it
                proto = ["-p", "tcp", "--dport" if src == a else "--sport", str(port)]
                match += proto
            if probability is not None:
                match += ["-m", "statistic", "--mode", "random", "--probability",
                          f"{probability:.4f}"]  # fmt: skip
            _ipt(node, "-A", CHAIN, *match, "-j", "DROP")
        yield
    finally:
        for hook in HOOKS:
            _ipt(node, "-D", hook, "-j", CHAIN, check=False)
        _ipt(node, "-F", CHAIN, check=False)
        _ipt(node, "-X", CHAIN, check=False)


@contextlib.contextmanager
def rate_limited(node: NodeNet, rate: str) -> Iterator[None]:
    """`rate` as tc reads it (e.g. "80mbit") on what the node sends out of `eth0`."""
    node.run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
             "burst", "64kb", "latency", "400ms")  # fmt: skip
    try:
        yield
    finally:
        node.run("tc", "qdisc", "del", "dev", "eth0", "root", check=False)


# A TCP relay that delays every byte by a fixed time in each direction without limiting the
# rate (each direction: a reader stamps chunks as they arrive, a writer sends each one when
# its time has come). Prints how many bytes it carried when told to stop (SIGTERM).
_RELAY = r"""
import queue, signal, socket, sys, threading, time
listen_ip, listen_port, dest_ip, dest_port, delay = sys.argv[1:6]
delay = float(delay); carried = [0]
def pump(src, dst):
    q = queue.Queue()
    def read():
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            q.put((time.monotonic() + delay, data))
            if not data:
                return
    threading.Thread(target=read, daemon=True).start()
    while True:
        due, data = q.get()
        time.sleep(max(0.0, due - time.monotonic()))
        if not data:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        try:
            dst.sendall(data)
        except OSError:
            return
        carried[0] += len(data)
def serve(conn):
    up = socket.create_connection((dest_ip, int(dest_port)))
    for a, b in ((conn, up), (up, conn)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
def stop(*_):
    print(carried[0], flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((listen_ip, int(listen_port))); ls.listen(16)
print("ready", flush=True)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
RELAY_PORT = 47002


@contextlib.contextmanager
def delayed(node: NodeNet, dest: str, port: int, seconds: float) -> Iterator[list[int]]:
    """New TCP connections that reach `node` for `dest:port` (a pod on it) go through a relay
    in the node's namespace that delays each direction by `seconds` (this kernel has no
    netem). Yields a list that holds, after exit, the bytes the relay carried."""
    relay = subprocess.Popen(
        [*node.exec_prefix, sys.executable, "-c", _RELAY, node.ip, str(RELAY_PORT), dest,
         str(port), str(seconds)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    carried: list[int] = []
    rule = ["PREROUTING", "-d", f"{dest}/32", "-p", "tcp", "--dport", str(port), "-j", "DNAT",
            "--to-destination", f"{node.ip}:{RELAY_PORT}"]  # fmt: skip
    try:
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != "ready":
            raise RuntimeError("the delaying relay did not start")
        node.run("iptables", "-w", "-t", "nat", "-I", *rule[:1], "1", *rule[1:])
        try:
            yield carried
        finally:
            node.run("iptables", "-w", "-t", "nat", "-D", *rule, check=False)
    finally:
        relay.terminate()
        out, _ = relay.communicate(timeout=10)
        if out.strip().isdigit():
            carried.append(int(out.strip()))
