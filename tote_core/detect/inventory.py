"""What kubelet says each node holds (`Node.status.images`), indexed for lookups.

kubelet reports at most 50 images per node (`--node-status-max-images`), so absence here
proves nothing: agents are asked next (salvage issue).
"""

from __future__ import annotations

from collections.abc import Iterable

from tote_core.detect.reference import ImageReference, parse
from tote_core.errors import InvalidReference
from tote_core.structs.kube import Node


def nodes_with_digest(nodes: Iterable[Node], digest: str) -> list[str]:
    """Names of nodes whose status lists a `repo@digest` name with this digest (sorted)."""
    suffix = "@" + digest
    return sorted(
        node.metadata.name
        for node in nodes
        if any(name.endswith(suffix) for image in node.status.images for name in image.names)
    )


def resolve_tag(nodes: Iterable[Node], ref: ImageReference) -> str | None:
    """The digest some node reports for `ref`'s repository:tag, or None.

    kubelet lists an image's names together (`repo:tag` and `repo@digest` for the same
    image), so a tag is resolved by finding the image entry that carries the normalised
    tagged name and taking its digest name from the same repository.
    """
    wanted = ref.tagged
    if wanted is None:
        return ref.digest
    for node in nodes:
        for image in node.status.images:
            normalised: list[ImageReference] = []
            for name in image.names:
                try:
                    normalised.append(parse(name))
                except InvalidReference:
                    continue
            if not any(n.tagged == wanted and n.digest is None for n in normalised):
                continue
            for n in normalised:
                if n.repository == ref.repository and n.digest and n.tag is None:
                    return n.digest
    return None
