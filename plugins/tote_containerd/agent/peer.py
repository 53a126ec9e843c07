"""The source agent as an import sees it: where it is (`split_endpoint`) and what the import
needs from it (`Peer`, implemented by `client.AgentClient`). The transfer target and the fast path
see only this, so they stay free of the gRPC bridge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from tote_containerd.agent import errors
from tote_containerd.agent.api import ExportedLayer, Session


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) → (host without brackets, port); anything else,
    including a port outside 1..65535, is InvalidArgument (never a crash in connect())."""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument(f"invalid agent endpoint {endpoint!r}")
    return host.strip("[]"), int(port)


Chunk = tuple[int, bytes, int]  # offset, data, blob size


class Peer(Protocol):
    async def open_session(self, token: str, target_node: str) -> Session: ...

    async def export_layer(self, session: str, layer_digest: str,
                           deadline: float | None = None) -> ExportedLayer: ...

    def read_blob(self, session: str, digest: str, offset: int = 0, length: int = 0
                  ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Chunk]]:
        ...


PeerOpener = Callable[[str], contextlib.AbstractAsyncContextManager[Peer]]
