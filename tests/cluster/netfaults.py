"""The network as a fault, inside the e2e cluster's node namespaces (tests/cluster/netns.py).

Each fault is a context manager that installs it in one node's namespace and takes it out
again on exit, whatever happened in between:

- `blocked(node, between=(a, b))`: every packet the node forwards between two address
  ranges (e.g. its pods and another node's pod CIDR) is dropped — a cut link for that pair;
  with `probability`, that share of them (iptables' statistic match: this kernel has no
  netem) — packet loss;
- `rate_limited(node, rate)`: the node's `eth0` sends at most `rate` (a TBF qdisc) — a slow
  but live link.

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
