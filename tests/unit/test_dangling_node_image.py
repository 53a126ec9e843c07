"""A Node whose status lists a dangling image (`"names": null`, what kubelet writes for an
image with neither tag nor digest left) decodes, and the holder and tag lookups skip it.

Before, decoding failed: the node informer's list failed on every retry and the controller
never became ready — the soak (tests/bench/bench_soak.py) found it after a controller restart
on a node where images had been removed.
"""

from __future__ import annotations

import msgspec

from tote_core.detect.inventory import digests_of, nodes_with_digest, resolve_tag, tags_of
from tote_core.detect.reference import parse
from tote_core.structs.kube import Node, ObjectList, share_node_strings

DIGEST = "sha256:" + "a" * 64
NODE_LIST = b"""{"kind": "NodeList", "metadata": {"resourceVersion": "7"}, "items": [
 {"metadata": {"name": "node-a"}, "status": {"images": [
   {"names": null, "sizeBytes": 123},
   {"names": ["reg.example/app@%s", "reg.example/app:v1"], "sizeBytes": 456},
   {"sizeBytes": 789}
 ]}}]}""" % DIGEST.encode()


def test_list_with_a_dangling_image_decodes_and_lookups_skip_it() -> None:
    nodes = msgspec.json.decode(NODE_LIST, type=ObjectList[Node]).items
    node = share_node_strings(nodes[0])  # what the node cache stores
    assert [i.names for i in node.status.images] == [
        [], [f"reg.example/app@{DIGEST}", "reg.example/app:v1"], []]
    assert nodes_with_digest([node], DIGEST) == ["node-a"]
    assert resolve_tag([node], parse("reg.example/app:v1")) == DIGEST
    assert digests_of(node) == {DIGEST}
    assert tags_of(node) == {"reg.example/app:v1"}


def test_a_node_without_names_decoded_alone() -> None:
    node = msgspec.json.decode(b'{"status": {"images": [{"names": null}]}}', type=Node)
    assert node.status.images[0].names is None
    assert nodes_with_digest([node], DIGEST) == []
    assert digests_of(node) == set() and tags_of(node) == set()
