"""One agent process's state for its node, and the parts that serve the agent API: the
node's content store (`content`), the source side of transfers (`source`), imports
(`transfer_target`), inspect, backup push, and the containerd health probe. The gRPC server
(`server.py`) calls these; image records are plain functions in `image_records.py`."""

from __future__ import annotations

from pathlib import Path

from tote_containerd.agent import inspection, metrics, oci, registry_push
from tote_containerd.agent.api import Health, InspectResult, PushRequest, PushResult
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.content import LocalContent
from tote_containerd.agent.errors import AgentError
from tote_containerd.agent.layer_export import LayerExporter
from tote_containerd.agent.peer import PeerOpener
from tote_containerd.agent.tls import ClientTLS, no_tls
from tote_containerd.agent.tokens import Verifier
from tote_containerd.agent.transfer_source import TransferSource
from tote_containerd.agent.transfer_target import TransferTarget


class NodeAgent:
    def __init__(self, *, cd: ContainerdClient, node: str, platform: str,
                 verifier: Verifier, open_peer: PeerOpener, content_root: str = "",
                 fast_path: bool = False, parallelism: int = 4, data_port: int = 0,
                 data_ssl: ClientTLS = no_tls) -> None:
        self.cd = cd
        self.node = node
        self.platform = platform
        self.content = LocalContent(cd, node, content_root, fast_path)
        self.target = TransferTarget(self.content, platform=platform, open_peer=open_peer,
                                 parallelism=parallelism, data_ssl=data_ssl)
        self.exporter = LayerExporter(cd, self.target.unpacker)
        # The data channel is served only with file access.
        self.source = TransferSource(self.content, verifier,
                                 data_port if self.content.fast_path else 0, self.exporter)
        self.containerd_version = ""
        self.containerd_error = ""

    @property
    def fast_path(self) -> bool:
        return self.content.fast_path

    async def probe(self) -> bool:
        try:
            self.containerd_version = await self.cd.version()
            self.containerd_error = ""
            metrics.CONTAINERD_UP.set(1)
            return True
        except AgentError as exc:
            self.containerd_error = str(exc)
            metrics.CONTAINERD_UP.set(0)
            return False

    async def health(self) -> Health:
        ok = await self.probe()
        return Health(containerd_ok=ok, containerd_version=self.containerd_version,
                      node_name=self.node, platform=self.platform,
                      content_root=self.content.content_root, fast_path=self.fast_path,
                      error=self.containerd_error)

    async def inspect(self, ref: str, platform: str = "") -> InspectResult:
        want = oci.check_platform(platform) if platform else self.platform
        return await inspection.inspect(self.content, ref, want, self.exporter)

    async def push(self, req: PushRequest) -> PushResult:
        """Backup push (see `push`): blobs from the files when this agent reads them directly."""
        def readable(digest: str) -> Path | None:
            return self.content.blob_path(digest) if self.fast_path else None

        return await registry_push.Pusher(self.cd, req, platform=self.platform,
                                          blob_path=readable).run()
