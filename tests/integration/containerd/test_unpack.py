"""Imports unpack while the bytes arrive (issue 15), against real containerd daemons with the
CRI plugin on (overlayfs), as on a kubelet node, and real agents (fast path and API path).

What is checked against containerd itself: the snapshots, their names (chain IDs), parents
and labels, the `containerd.io/uncompressed` labels on layers and the
`containerd.io/gc.ref.snapshot.overlayfs` label on the config are the same as what
containerd's own unpack (`ctr images import`, into another namespace of the same daemon)
leaves for the same image; `ctr images check` calls the image unpacked; a GC right after
the import keeps every snapshot; layers already unpacked (a shared base, or an earlier
attempt) are kept, not unpacked again; a layer that does not unpack to its diff ID leaves
the image imported (not unpacked, reason logged) and no extraction snapshot behind.
Layers: uncompressed, gzip and zstd (OCI), gzip (Docker v2 schema 2), and one platform of
a multi-arch index.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agent.tokens import Signer
from tote_containerd.agent.unpack import chain_ids

from tests.cluster.containerd_env import AgentProc, Env, Node
from tests.cluster.images import Blob, Image, compressed_image, digest_of, multiarch_image
from tests.cluster.prom import scrape_total

pytestmark = pytest.mark.integration
SNAPSHOTTER = "overlayfs"


@pytest.fixture(scope="module")
def cri(env: Env) -> Iterator[dict[str, AgentProc]]:
    """Two CRI nodes: `u` (agent with the fast path) and `v` (API path only)."""
    yield env.cri_pair("u", "v")


async def _import(env: Env, target: str, img: Image) -> ImportProgress:
    c = env.pki.controller
    token = Signer(c.cert, c.key).mint(digest=img.digest, source="a", target=target, ttl=60)
    async with env.open_agent(target) as agent:
        return await agent.import_from(ImportRequest(
            source_node="a", source_endpoint=env.extra["a-fast"].endpoint, token=token,
            digest=img.digest, names=[img.name]))


def _snapshot(node: Node, key: str, namespace: str = "k8s.io") -> dict[str, object] | None:
    out = node.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "info", key,
                   namespace=namespace, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def _content_labels(node: Node, digest: str, namespace: str = "k8s.io") -> dict[str, str]:
    for line in node.ctr("content", "ls", namespace=namespace).stdout.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == digest:
            raw = parts[-1] if "=" in parts[-1] else ""
            return dict(kv.split("=", 1) for kv in raw.split(",") if "=" in kv)
    raise AssertionError(f"{digest} not in {node.name}'s content store")


def _unpack_facts(node: Node, img: Image, namespace: str) -> dict[str, object]:
    """Everything an unpack leaves that CRI and GC rely on, in a comparable form."""
    layers = img.layers["linux/amd64"]
    cfg = img.configs["linux/amd64"]
    diff_ids = json.loads(cfg.data or b"{}")["rootfs"]["diff_ids"]
    chains = chain_ids(diff_ids)
    snaps = []
    for i, chain in enumerate(chains):
        info = _snapshot(node, chain, namespace)
        assert info is not None, f"no snapshot {chain} (layer {i}) in {namespace}"
        # Names, parents and kinds; not the informational snapshot labels, which differ
        # between containerd's own unpack paths (1.7's `ctr images import` sets none).
        snaps.append((info["Name"], info.get("Parent", ""), info["Kind"]))
    return {
        "snapshots": snaps,
        "uncompressed": [_content_labels(node, layer.digest, namespace).get(
            "containerd.io/uncompressed") for layer in layers],
        "config": _content_labels(node, cfg.digest, namespace).get(
            f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
        "top": chains[-1],
    }


def _unpacks(env: Env, node: str, result: str) -> float:
    return scrape_total(env.agents[node].metrics_port,
                        f'tote_agent_unpacks_total{{result="{result}"}}')


IMAGES = {
    "oci-tar-gzip-zstd": lambda: compressed_image(
        "docker.io/tote/unpack-oci:v1", ["tar", "gzip", "zstd"], seed=151),
    "docker-v2s2-gzip": lambda: compressed_image(
        "docker.io/tote/unpack-docker:v1", ["gzip", "gzip"], seed=152, docker=True),
    "multiarch-one-platform": lambda: multiarch_image(
        "docker.io/tote/unpack-multi:v1", [300_000, 200_000], seed=153),
}


@pytest.mark.parametrize("target", ["u", "v"])
@pytest.mark.parametrize("kind", sorted(IMAGES))
async def test_import_unpacks_as_containerd_would(env: Env, cri: dict[str, AgentProc],
                                                   target: str, kind: str) -> None:
    img = IMAGES[kind]()
    archive = img.write_archive(env.base / f"unpack-{kind}.tar")
    env.nodes["a"].import_archive(archive, all_platforms=True)
    node = env.nodes[target]
    before = _unpacks(env, target, "ok")
    done = await _import(env, target, img)
    assert done.done and img.name in done.names
    assert _unpacks(env, target, "ok") == before + 1
    ours = _unpack_facts(node, img, "k8s.io")
    # containerd's own unpack of the same image, in another namespace of the same daemon
    ns = f"ref-{target}"
    if _snapshot(node, str(ours["top"]), ns) is None:
        node.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(archive), namespace=ns)
    theirs = _unpack_facts(node, img, ns)
    assert ours == theirs
    assert all(s[2] == "Committed" for s in ours["snapshots"])  # type: ignore[attr-defined]
    check = node.ctr("images", "check", "--snapshotter", SNAPSHOTTER).stdout
    line = next(ln for ln in check.splitlines() if ln.startswith(img.name))
    assert line.split()[-1] == "true", f"not reported unpacked: {line}"


async def test_gc_right_after_import_keeps_the_snapshots(env: Env, cri: dict[str, AgentProc],
                                                         tmp_path: Path) -> None:
    img = compressed_image("docker.io/tote/unpack-gc:v1", ["gzip", "tar", "gzip"], seed=154)
    env.nodes["a"].import_archive(img.write_archive(tmp_path / "gc.tar"))
    await _import(env, "u", img)
    u = env.nodes["u"]
    dummy = compressed_image("docker.io/tote/unpack-gc-dummy:v1", ["tar"], size=1000,
                             seed=155)
    u.import_archive(dummy.write_archive(tmp_path / "dummy.tar"))
    u.ctr("images", "rm", "--sync", dummy.name)  # a synchronous delete runs a full GC
    facts = _unpack_facts(u, img, "k8s.io")
    assert facts["config"] == facts["top"]
    assert len(facts["snapshots"]) == 3  # type: ignore[arg-type]
    leases = u.ctr("leases", "ls").stdout
    assert "tote-import" not in leases, leases


async def test_layers_already_unpacked_are_kept_not_unpacked_again(
        env: Env, cri: dict[str, AgentProc], tmp_path: Path) -> None:
    """Image B has image A's two layers plus one: importing B after A unpacks only B's top
    layer and keeps A's snapshots as they were (the same path an interrupted import takes
    when it is retried: every chain ID already committed is skipped)."""
    base = compressed_image("docker.io/tote/unpack-base:v1", ["gzip", "gzip"], seed=156)
    more = compressed_image("docker.io/tote/unpack-more:v1", ["gzip", "gzip", "gzip"],
                            seed=156)
    assert [b.digest for b in more.layers["linux/amd64"][:2]] == \
        [b.digest for b in base.layers["linux/amd64"]]
    for img in (base, more):
        env.nodes["a"].import_archive(img.write_archive(tmp_path / f"{img.name[-7:]}.tar"))
    u = env.nodes["u"]
    await _import(env, "u", base)
    facts = _unpack_facts(u, base, "k8s.io")
    lower = [_snapshot(u, str(s[0])) for s in facts["snapshots"]]  # type: ignore[attr-defined]
    done = await _import(env, "u", more)
    assert done.blobs_skipped >= 2  # A's layers were not moved again …
    assert [_snapshot(u, str(s[0])) for s in facts["snapshots"]] == lower  # … nor unpacked
    top = _unpack_facts(u, more, "k8s.io")
    assert top["config"] == top["top"] and top["top"] != facts["top"]


async def test_a_layer_that_does_not_match_its_diff_id_is_left_to_cri(
        env: Env, cri: dict[str, AgentProc], tmp_path: Path) -> None:
    """The config names a wrong diff ID for the last layer: the import still succeeds (the
    bytes are the image's), the image is not marked unpacked (CRI unpacks at create), and no
    extraction snapshot is left behind. (The lower layers' committed snapshots are held only
    by the import's lease; containerd's GC may take them once it is released.)"""
    img = compressed_image("docker.io/tote/unpack-bad:v1", ["gzip", "gzip"], seed=157)
    cfg = img.configs["linux/amd64"]
    doc = json.loads(cfg.data or b"{}")
    doc["rootfs"]["diff_ids"][-1] = "sha256:" + "ab" * 32
    bad = _blob(cfg.media_type, json.dumps(doc, sort_keys=True).encode())
    manifest_doc = json.loads(img.top.data or b"{}")
    manifest_doc["config"] = bad.descriptor()
    top = _blob(img.top.media_type, json.dumps(manifest_doc, sort_keys=True).encode())
    img.top, img.configs["linux/amd64"] = top, bad
    img.blobs = [top, bad, *img.layers["linux/amd64"]]
    env.nodes["a"].import_archive(img.write_archive(tmp_path / "bad.tar"))
    failed = _unpacks(env, "v", "failed")
    done = await _import(env, "v", img)
    assert done.done and img.name in env.nodes["v"].image_names()
    assert _unpacks(env, "v", "failed") == failed + 1
    v = env.nodes["v"]
    snaps = v.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    assert "extract-" not in snaps, snaps
    assert f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}" not in _content_labels(v, bad.digest)


def _blob(media_type: str, data: bytes) -> Blob:
    return Blob(media_type, data, digest_of(data), len(data))
