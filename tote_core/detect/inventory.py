"""What kubelet says each node holds (`Node.status.images`), indexed for lookups.

kubelet reports at most 50 images per node (`--node-status-max-images`), so absence here
proves nothing: agents are asked next (salvage issue).

The node informer keeps two indices over these lists (`digests_of`, `tags_of`): a scan of
500 nodes x 50 images per lookup cost 40-70 ms of the event loop per detection reconcile
(issue 12), an index lookup microseconds.
"""

from __future__ import annotations

import functools
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
        if any(name.endswith(suffix) for image in node.status.images
               for name in image.names or ())
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
            for name in image.names or ():
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


DIGEST_INDEX = "image-digest"
TAG_INDEX = "image-tag"

_parse_name = functools.lru_cache(maxsize=8192)(parse)  # nodes share most image names


def digests_of(node: Node) -> set[str]:
    """Index function: every digest named as `repo@digest` in the node's status."""
    return {
        name[name.rfind("@") + 1:]
        for image in node.status.images
        for name in image.names or ()
        if "@" in name
    }


def tags_of(node: Node) -> set[str]:
    """Index function: every normalised `repository:tag` (no digest) in the node's status."""
    out: set[str] = set()
    for image in node.status.images:
        for name in image.names or ():
            try:
                ref = _parse_name(name)
            except InvalidReference:
                continue
            if ref.tagged and ref.digest is None:
                out.add(ref.tagged)
    return out
