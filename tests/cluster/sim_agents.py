"""Many simulated nodes behind the agent's real gRPC server.

Each simulated node is the agent's own server (`tote_containerd.agent.server.serve`: grpclib,
mTLS, the per-call authorisation, the wire conversion) on a loopback address of its own,
backed by `SimNode`: an in-memory image store in place of containerd, answering what the
controller's inventory asks (ListImages, ResolveTag, Inspect). Used where a real containerd
per node would not fit: thousands of nodes (`tests/bench/bench_fanout.py`) or a test of the
controller's fan-out (`tests/integration/containerd/test_inventory_fanout.py`).

Addresses: node `i` listens on `127.1.<i // 250>.<i % 250 + 1>` (Linux routes all of 127/8
to the loopback interface), so every node has an endpoint of its own as in a cluster.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable
from typing import Any, cast

import trio
from tote_containerd.agent.api import Health, InspectResult
from tote_containerd.agent.asyncio_bridge import AsyncioBridge
from tote_containerd.agent.containerd import Descriptor, ImageRec
from tote_containerd.agent.errors import NotFound
from tote_containerd.agent.node_agent import NodeAgent
from tote_containerd.agent.server import Serving, serve

PLATFORM = "linux/amd64"
INDEX = "application/vnd.oci.image.index.v1+json"


def ip_of(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


class SimStore:
    """The node's containerd image store as `agent.image_records` reads it; counts calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.records: dict[str, ImageRec] = {}

    def add(self, name: str, digest: str) -> None:
        self.records[name] = ImageRec(name=name, target=Descriptor(media_type=INDEX,
                                                                   digest=digest, size=1024))

    async def list_images(self, filters: Iterable[str] = ()) -> list[ImageRec]:
        self.calls += 1
        want = {f.split("==", 1)[1] for f in filters if f.startswith("target.digest==")}
        return [r for r in self.records.values() if not want or r.target.digest in want]

    async def get_image(self, name: str) -> ImageRec | None:
        self.calls += 1
        return self.records.get(name)


class SimNode:
    """The parts of `NodeAgent` the inventory's RPCs reach: `cd` (records), `inspect` and
    `health`.
    `complete`: digests whose content is all there (a record without it is what containerd
    keeps after its blobs were garbage-collected)."""

    def __init__(self, name: str) -> None:
        self.node = name
        self.cd = SimStore()
        self.complete: set[str] = set()

    def hold(self, digest: str, name: str = "", *, complete: bool = True) -> None:
        self.cd.add(name or f"docker.io/sim/image@{digest}", digest)
        if complete:
            self.complete.add(digest)

    @property
    def calls(self) -> int:
        return self.cd.calls

    async def health(self) -> Health:
        return Health(containerd_ok=True, containerd_version="simulated", node_name=self.node,
                      platform=PLATFORM)

    async def inspect(self, ref: str, platform: str = "") -> InspectResult:
        self.cd.calls += 1
        if not any(r.target.digest == ref for r in self.cd.records.values()):
            raise NotFound(f"{ref} not found")
        done = ref in self.complete
        return InspectResult(digest=ref, media_type=INDEX, blobs=[], total_bytes=1024,
                             present_bytes=1024 if done else 0, complete=done,
                             layers_discarded=False, reason="" if done else "blobs missing",
                             names=[], platform=PLATFORM, config_digest="")


def listen(i: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip_of(i), port))
    sock.listen(64)
    return sock


async def serve_node(nursery: trio.Nursery, bridge: AsyncioBridge, node: SimNode,
                     sock: socket.socket, ssl_context: Any) -> Serving:
    """Start the agent server for `node` on `sock` in `nursery`."""
    serving: Serving = await nursery.start(functools.partial(
        serve, bridge, cast(NodeAgent, node), sock, ssl_context, insecure=False))
    return serving
