"""The node image indices answer exactly what a scan of every node's image list answers.

Tried (hypothesis): random nodes whose images carry random mixes of `repo@digest`,
`repo:tag`, un-normalised (`nginx:1`) and malformed names, updated and deleted in random
order; for every digest and tag involved, `Caches.nodes_with_digest` equals the scan
`inventory.nodes_with_digest`, and `Caches.resolve_tag` finds a digest exactly when the scan
does (the same one whenever the nodes agree on the tag).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tote_core.detect import inventory
from tote_core.detect.reference import parse
from tote_core.kube.cache import Caches
from tote_core.structs.kube import ContainerImage, Node, NodeStatus, ObjectMeta

DIGESTS = ["sha256:" + c * 64 for c in "abc"]
REPOS = ["nginx", "docker.io/library/nginx", "quay.io/x/app", "Bad Name"]
TAGS = ["1", "latest", "v2"]

_names = st.one_of(
    st.builds(lambda r, d: f"{r}@{d}", st.sampled_from(REPOS), st.sampled_from(DIGESTS)),
    st.builds(lambda r, t: f"{r}:{t}", st.sampled_from(REPOS), st.sampled_from(TAGS)),
    st.sampled_from(["", "@", "x@", "::"]),
)
_images = st.lists(st.builds(lambda names: ContainerImage(names=names),
                             st.lists(_names, max_size=3)), max_size=4)
_ops = st.lists(st.tuples(st.sampled_from(["n1", "n2", "n3", "n4"]), st.none() | _images),
                max_size=12)


def _caches() -> Caches:
    return Caches(None, namespace="tote", config_map="tote-config")  # type: ignore[arg-type]


@settings(max_examples=150, deadline=2000)
@given(_ops)
def test_indices_match_a_scan(ops: list[tuple[str, list[ContainerImage] | None]]) -> None:
    caches = _caches()
    informer = caches.nodes
    for name, images in ops:
        old = informer.items.get(name)
        if images is None:
            informer.items.pop(name, None)
            informer._reindex(name, old, None)
        else:
            new = Node(metadata=ObjectMeta(name=name), status=NodeStatus(images=images))
            informer.items[name] = new
            informer._reindex(name, old, new)
    nodes = list(informer.items.values())
    for digest in DIGESTS:
        assert caches.nodes_with_digest(digest) == inventory.nodes_with_digest(nodes, digest)
    for repo in REPOS[:3]:
        for tag in TAGS:
            ref = parse(f"{repo}:{tag}")
            scanned = inventory.resolve_tag(nodes, ref)
            indexed = caches.resolve_tag(ref)
            assert (scanned is None) == (indexed is None)
            answers = {inventory.resolve_tag([n], ref) for n in nodes} - {None}
            if len(answers) == 1:
                assert indexed == scanned
    digest_ref = parse(f"nginx@{DIGESTS[0]}")
    assert caches.resolve_tag(digest_ref) == DIGESTS[0]
