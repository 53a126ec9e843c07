"""Snapshot salvage against real containerd daemons (CRI plugin on, overlayfs) and real
agents: the source discarded its compressed layer blobs after unpacking
(`discard_unpacked_layers = true`, as on EKS), so it holds only manifest, config and the
unpacked snapshots; the target gets each layer regenerated from those snapshots by the
source's containerd diff service and applied into the snapshot its chain ID names.

The source's state is made as the discarding unpacker leaves it: the image is imported and
unpacked (`ctr images import`), then its layer blobs are deleted from the content store.

What is tried: a layer of every entry kind (owners, modes incl. setuid, symlink, hard link,
character device, FIFO, a file capability), a layer of whiteouts and an opaque directory, and an empty
layer, onto a fast-path target and an API-path target, compared file by file (type, mode,
owner, size, content hash, link target, device numbers, xattrs, hard-link groups) between
the source's and the target's mounted root filesystems (user.* extended attributes are
not carried: containerd's tar writer, which BuildKit's layers come from too, keeps only
security.capability); the same image rebuilt from the
tars containerd itself wrote (as BuildKit writes layers) comes back verified against every
diff ID; a mixed image (one layer still a blob on the source) moves that layer as its blob;
a GC right after the import keeps the image; refusals (snapshot salvage turned off, strict
mode with layers that do not hash to their diff IDs) leave no lease, no snapshot and no
image record behind."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.errors import FailedPrecondition
from tote_containerd.agent.tls import client_context
from tote_containerd.agent.tokens import Signer
from tote_containerd.agent.unpack import chain_ids
from tote_containerd.agents import open_agent

from tests.images.build import Image
from tests.images.rootfs_cases import CAP_NET_RAW, image_of_tars, special_layers
from tests.integration.containerd.nodes import AgentProc, Env, Node, start_node

pytestmark = pytest.mark.integration
SNAPSHOTTER = "overlayfs"


@pytest.fixture(scope="module")
def nodes(env: Env) -> Iterator[dict[str, AgentProc]]:
    """`s`: a discarding CRI source (fast path, data channel); `t`: a CRI target with the
    fast path; `w`: a CRI target that discards its own layers too, API path only."""
    for name, discard in (("s", True), ("t", False), ("w", True)):
        env.nodes[name] = start_node(env.group, env.base / "nodes", name, cri=True,
                                     discard_unpacked_layers=discard)
    agents = {"s": env.agent("s"), "t": env.agent("t"), "w": env.agent("w", "--no-fast-path")}
    env.agents.update(agents)
    yield agents


def _discarding_source(env: Env, img: Image, tmp: Path, *, keep: int = 0) -> None:
    """The image on `s` as a discarding node holds it: unpacked, layer blobs gone (all but
    the first `keep`)."""
    s = env.nodes["s"]
    archive = img.write_archive(tmp / f"{img.digest[7:19]}.tar")
    s.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(archive))
    for layer in img.layers["linux/amd64"][keep:]:
        s.delete_blob(layer.digest)
        assert not s.blob_present(layer.digest)


async def _import(env: Env, target: str, img: Image, **request: object) -> ImportProgress:
    c = env.pki.controller
    token = Signer(c.cert, c.key).mint(digest=img.digest, source="s", target=target, ttl=60)
    async with open_agent(target, env.settings()) as agent:
        return await agent.import_from(ImportRequest(
            source_node="s", source_endpoint=env.agents["s"].endpoint, token=token,
            digest=img.digest, names=[img.name], **request))  # type: ignore[arg-type]


def _chains(img: Image) -> list[str]:
    cfg = img.configs["linux/amd64"]
    return chain_ids(json.loads(cfg.data or b"{}")["rootfs"]["diff_ids"])


def _tree(node: Node, chain: str) -> dict[str, tuple[object, ...]]:
    """The root filesystem of snapshot `chain`, mounted read-only through a view: every
    entry's type, mode, owner, size, content hash, link target, device and xattrs, and
    which entries share an inode (hard links)."""
    key = f"test-view-{os.urandom(4).hex()}"
    node.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "view", key, chain)
    mnt = Path(tempfile.mkdtemp(prefix="tote-view-"))
    try:
        cmd = node.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "mounts", str(mnt),
                       key).stdout.strip()
        subprocess.run(cmd, shell=True, check=True)
        try:
            return _walk(mnt)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        mnt.rmdir()
        node.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "rm", key)


def _walk(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            content = ""
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    content += f" linked-with:{inodes.setdefault(st.st_ino, rel)}"
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                xattrs = {k: os.getxattr(p, k) for k in os.listxattr(p)
                          if k.startswith("user.") or k == "security.capability"}
            out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else 0, content,
                        os.readlink(p) if stat.S_ISLNK(st.st_mode) else "",
                        (os.major(st.st_rdev), os.minor(st.st_rdev))
                        if stat.S_ISCHR(st.st_mode) else (), sorted(xattrs.items()))
    return out


def _without_user_xattrs(tree: dict[str, tuple[object, ...]]
                         ) -> dict[str, tuple[object, ...]]:
    return {path: (*entry[:7], [x for x in entry[7] if not x[0].startswith("user.")])
            for path, entry in tree.items()}  # type: ignore[attr-defined]


def _content(node: Node, digest: str) -> bytes:
    return subprocess.run(["ctr", "--address", node.socket, "-n", "k8s.io", "content", "get",
                           digest], capture_output=True, check=True).stdout


def _leftovers(node: Node) -> tuple[str, str, list[str]]:
    leases = node.ctr("leases", "ls").stdout
    snaps = node.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    return leases, snaps, node.image_names()


@pytest.mark.parametrize("target", ["t", "w"])
async def test_every_entry_kind_round_trips(env: Env, nodes: dict[str, AgentProc],
                                            target: str, tmp_path: Path) -> None:
    img = image_of_tars(f"docker.io/tote/snapshot-kinds:{target}", special_layers())
    _discarding_source(env, img, tmp_path)
    done = await _import(env, target, img)
    assert done.done and img.name in done.names
    assert done.mode == "snapshots"
    assert done.layers_regenerated == 3
    # Python's tar writer is not containerd's: these bytes differ from the diff IDs, so the
    # layers are verified end to end (what the source computed over what it sent).
    assert done.layers_verified <= done.layers_regenerated
    node = env.nodes[target]
    top = _chains(img)[-1]
    theirs, ours = _tree(env.nodes["s"], top), _tree(node, top)
    # containerd's tar writer carries one extended attribute, security.capability (as in
    # every layer BuildKit writes); user.* attributes stay behind on the source — which is
    # also why such a layer cannot hash to its diff ID (its tar had them).
    assert theirs["etc/xattr"][7] == [("user.tote", b"salvaged")]
    assert ours["etc/xattr"][7] == []
    assert _without_user_xattrs(ours) == _without_user_xattrs(theirs)
    # The whiteouts and the opaque directory took effect; the rest arrived.
    assert "etc/hello" not in ours and "var/cache/a" not in ours and "var/cache/c" in ours
    assert ours["usr/lib/libx.so.1"][4] == ours["usr/lib/libx.so"][4]
    assert ours["dev/null2"][6] == (1, 3)
    assert ours["bin/ping"][7] == [("security.capability", CAP_NET_RAW)]
    assert ours["bin/tool"][0] == "-rwsr-xr-x"
    # No compressed blob (there never was one), no regenerated tar left, no lease; the
    # config names the top snapshot for containerd's GC.
    for layer in img.layers["linux/amd64"]:
        assert not node.blob_present(layer.digest)
    leases = node.ctr("leases", "ls").stdout
    assert "tote-import" not in leases, leases
    labels = node.ctr("content", "ls").stdout
    assert f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}={top}" in labels


async def test_layers_written_by_containerd_come_back_verified(
        env: Env, nodes: dict[str, AgentProc], tmp_path: Path) -> None:
    """Layers whose tars containerd's own diff service wrote (as BuildKit writes them)
    regenerate byte for byte: every layer is verified against its diff ID."""
    first = image_of_tars("docker.io/tote/snapshot-src:v1", special_layers(seed=21))
    _discarding_source(env, first, tmp_path)
    s = env.nodes["s"]
    # As the target agent would: a session on the source, each layer regenerated, its tar
    # read back through the session.
    c = env.pki.controller
    token = Signer(c.cert, c.key).mint(digest=first.digest, source="s", target="t", ttl=60)
    ctx = client_context(env.pki.agent.cert, env.pki.agent.key, env.pki.agent.ca,
                         peer_role="agent")
    tars = []
    async with AgentClient.connect(env.agents["s"].endpoint, ssl_context=ctx) as source:
        session = await source.open_session(token, "t")
        layers = first.layers["linux/amd64"]
        assert sorted(session.regenerable) == sorted(b.digest for b in layers)
        for layer in layers:
            exported = await source.export_layer(session.session, layer.digest)
            assert exported.diff_id == layer.digest  # uncompressed: blob digest = diff ID
            data = b""
            async with source.read_blob(session.session, exported.digest) as chunks:
                async for _off, chunk, _total in chunks:
                    data += chunk
            assert hashlib.sha256(data).hexdigest() == exported.digest.split(":")[1]
            tars.append(data)
    img = image_of_tars("docker.io/tote/snapshot-buildkit-style:v1", tars)
    _discarding_source(env, img, tmp_path)
    done = await _import(env, "t", img)
    assert done.mode == "snapshots"
    assert done.layers_regenerated == 3 and done.layers_verified == 3
    assert _tree(env.nodes["t"], _chains(img)[-1]) == _tree(s, _chains(img)[-1])
    assert _content(s, done.config_digest)  # the source itself was left as it was


async def test_mixed_blobs_and_snapshots(env: Env, nodes: dict[str, AgentProc],
                                         tmp_path: Path) -> None:
    """The source still holds its first layer's blob: that one moves as a blob (and is
    unpacked as usual), the others are regenerated."""
    img = image_of_tars("docker.io/tote/snapshot-mixed:v1", special_layers(seed=31))
    _discarding_source(env, img, tmp_path, keep=1)
    done = await _import(env, "w", img)
    assert done.mode == "mixed" and done.layers_regenerated == 2
    w = env.nodes["w"]
    assert w.blob_present(img.layers["linux/amd64"][0].digest)
    assert _tree(w, _chains(img)[-1]) == _tree(env.nodes["s"], _chains(img)[-1])


async def test_gc_after_a_snapshot_salvage_keeps_the_image(
        env: Env, nodes: dict[str, AgentProc], tmp_path: Path) -> None:
    img = image_of_tars("docker.io/tote/snapshot-gc:v1", special_layers(seed=41))
    _discarding_source(env, img, tmp_path)
    await _import(env, "t", img)
    t = env.nodes["t"]
    dummy = image_of_tars("docker.io/tote/snapshot-gc-dummy:v1", [special_layers(seed=42)[2]])
    t.import_archive(dummy.write_archive(tmp_path / "dummy.tar"))
    t.ctr("images", "rm", "--sync", dummy.name)  # a synchronous delete runs a full GC
    chains = _chains(img)
    snaps = t.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").stdout
    assert all(c in snaps for c in chains), snaps
    assert img.name in t.image_names()
    assert t.blob_present(img.configs["linux/amd64"].digest)
    assert _tree(t, chains[-1])["var/cache/c"][4] == hashlib.sha256(b"c\n").hexdigest()


@pytest.mark.parametrize(("request_kw", "reason"), [
    ({"allow_snapshots": False}, "snapshot_salvage_disabled"),
    ({"require_verified": True}, "layer_unverified"),
])
async def test_refusals_leave_nothing_behind(env: Env, nodes: dict[str, AgentProc],
                                             tmp_path: Path, request_kw: dict[str, bool],
                                             reason: str) -> None:
    img = image_of_tars(f"docker.io/tote/snapshot-refused:{reason.replace('_', '-')}",
                        special_layers(seed=51 + len(reason)))
    _discarding_source(env, img, tmp_path)
    t = env.nodes["t"]
    before = _leftovers(t)
    with pytest.raises(FailedPrecondition) as err:
        await _import(env, "t", img, **request_kw)
    assert err.value.reason == reason, err.value
    leases, snaps, names = _leftovers(t)
    assert img.name not in names
    assert "extract-" not in snaps
    assert all(c not in snaps for c in _chains(img)[1:])
    if reason == "snapshot_salvage_disabled":  # refused before anything was written
        assert (leases, snaps, names) == before
