"""This node's containerd content store as the agent's parts read it: whether a blob is
here, small JSON blobs (manifests, indexes), a record name or digest → its top descriptor,
and the blob file itself when the agent sees containerd's content directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tote_containerd.agent import oci
from tote_containerd.agent.containerd import ContainerdClient, Descriptor
from tote_containerd.agent.errors import NotFound


class LocalContent:
    def __init__(self, cd: ContainerdClient, node: str, content_root: str = "",
                 fast_path: bool = False) -> None:
        self.cd = cd
        self.node = node
        self.content_root = content_root
        self.fast_path = fast_path and bool(content_root)  # blob files read/written directly

    async def present(self, digest: str) -> bool:
        return await self.cd.info(digest) is not None

    async def json(self, digest: str, what: str) -> dict[str, Any]:
        data = await self.cd.read_all(digest, limit=oci.MAX_MANIFEST_BYTES)
        return oci.load_json(data, what)

    async def target_of(self, ref: str) -> tuple[Descriptor, list[str]]:
        """Resolve a ref (record name) or digest to the top descriptor and record names."""
        if oci.is_digest(ref):
            info = await self.cd.info(ref)
            if info is None:
                raise NotFound(f"{ref} is not in this node's content store", reason="absent")
            doc = await self.json(ref, ref)
            mt = oci.media_type_of(doc, oci.MT_OCI_MANIFEST)
            recs = await self.cd.list_images([f"target.digest=={ref}"])
            return Descriptor(media_type=mt, digest=ref, size=info.size), [r.name for r in recs]
        if ref.startswith("sha256:"):
            oci.check_digest(ref)
        oci.parse_ref(ref)
        rec = await self.cd.get_image(ref)
        if rec is None:
            raise NotFound(f"no image record {ref!r} on node {self.node}", reason="absent")
        recs = await self.cd.list_images([f"target.digest=={rec.target.digest}"])
        return rec.target, sorted({r.name for r in recs} | {ref})

    def blob_path(self, digest: str) -> Path | None:
        """Where containerd keeps the blob's file (whether or not it is there), if known."""
        if not self.content_root:
            return None
        return Path(self.content_root) / "blobs" / "sha256" / digest.split(":", 1)[1]

    def readable_file(self, digest: str) -> Path | None:
        """The blob's file when the fast path is on and the file is there, else None."""
        path = self.blob_path(digest) if self.fast_path else None
        return path if path is not None and path.exists() else None
