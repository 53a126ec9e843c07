"""Pure image logic of the agent: references, digests, manifests, platforms, GC labels."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tote_containerd.agent import oci
from tote_containerd.agent.errors import FailedPrecondition, InvalidArgument

from tests.unit.test_reference_grammar import references
from tote_core.detect import reference
from tote_core.errors import InvalidReference

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
D3 = "sha256:" + "c" * 64


@pytest.mark.parametrize("ref,repo,tag,digest", [
    ("docker.io/library/nginx:1.25", "docker.io/library/nginx", "1.25", None),
    ("localhost:5000/a/b@" + D1, "localhost:5000/a/b", None, D1),
    ("registry.example.com/team/app:v1@" + D1, "registry.example.com/team/app", "v1", D1),
    ("docker.io/tote/app", "docker.io/tote/app", None, None),
    ("docker.io/library/nginx:latest", "docker.io/library/nginx", "latest", None),
    ("Registry.Example.com/app:v1", "Registry.Example.com/app", "v1", None),
    ("[::1]:5000/app@" + D1, "[::1]:5000/app", None, D1),
])
def test_parse_ref(ref: str, repo: str, tag: str | None, digest: str | None) -> None:
    """The agent reads references with core's parser (one grammar for both processes)."""
    r = oci.parse_ref(ref)
    assert (r.repository, r.tag, r.digest) == (repo, tag, digest)
    assert r.with_digest(D2) == f"{repo}@{D2}"


@pytest.mark.parametrize("ref", ["", "nginx", "docker.io/x:", "docker.io/UPPER/x:1",
                                 "docker.io/x@sha256:abc", "a b/c", "docker.io/x:" + "t" * 200,
                                 # not normalised: core's parser would rewrite them
                                 "docker.io/x", "library/nginx:1", "myhost/app:1",
                                 "index.docker.io/library/nginx:1",
                                 # outside the grammar: non-ASCII tag, digests other than sha256
                                 "docker.io/a/b:é", "r.io/a@sha512:" + "a" * 128,
                                 " docker.io/library/nginx:1"])
def test_parse_ref_rejects(ref: str) -> None:
    with pytest.raises(InvalidArgument):
        oci.parse_ref(ref)


@given(st.text(max_size=80))
def test_parse_ref_never_crashes(text: str) -> None:
    with contextlib.suppress(InvalidArgument):
        oci.parse_ref(text)


@given(references())
def test_parse_ref_accepts_exactly_what_core_leaves_as_written(
    case: tuple[str, str | None, str | None, str | None],
) -> None:
    """Tried: references from the distribution grammar (hosts or none, ports, IPv6, tags,
    sha256 and other digests) and their normalised forms: the agent accepts a reference
    iff core's parser leaves it as written (a missing tag aside) and its digest is sha256."""
    text = case[0]
    try:
        normal = reference.parse(text)
    except InvalidReference:
        with pytest.raises(InvalidArgument):
            oci.parse_ref(text)
        return
    sha256 = normal.digest is None or reference.is_digest(normal.digest)
    for candidate in {text, normal.name}:
        as_written = candidate in (normal.name, normal.repository)
        if as_written and sha256:
            got = oci.parse_ref(candidate)
            assert (got.name == candidate and got.repository == normal.repository
                    and got.digest == normal.digest)
        else:
            with pytest.raises(InvalidArgument):
                oci.parse_ref(candidate)


@pytest.mark.parametrize("d", ["", "sha256:", "sha256:" + "A" * 64, "sha512:" + "a" * 128,
                               "sha256:" + "a" * 63, D1 + "\n"])
def test_check_digest_rejects(d: str) -> None:
    with pytest.raises(InvalidArgument):
        oci.check_digest(d)


def test_platforms() -> None:
    assert oci.check_platform("linux/arm64/v8") == "linux/arm64/v8"
    for bad in ["linux", "linux/", "a/b/c/d", "Linux/AMD64"]:
        with pytest.raises(InvalidArgument):
            oci.check_platform(bad)
    assert oci.node_platform().startswith("linux/")


def _index() -> dict[str, object]:
    return {"schemaVersion": 2, "manifests": [
        {"mediaType": oci.MT_OCI_MANIFEST, "digest": D1, "size": 10,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": oci.MT_OCI_MANIFEST, "digest": D2, "size": 20,
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]}


def test_select_manifest() -> None:
    idx = _index()
    assert oci.select_manifest(idx, "linux/amd64") == oci.Desc(oci.MT_OCI_MANIFEST, D2, 20)
    assert oci.select_manifest(idx, "linux/arm64/v8") is not None
    assert oci.select_manifest(idx, "linux/arm64/v7") is None
    assert oci.select_manifest(idx, "linux/s390x") is None
    with pytest.raises(FailedPrecondition):
        oci.select_manifest({"manifests": "nope"}, "linux/amd64")


def test_manifest_children_and_gc_labels() -> None:
    m = {"config": {"mediaType": "c", "digest": D1, "size": 5},
         "layers": [{"mediaType": "l", "digest": D2, "size": 6},
                    {"mediaType": "l", "digest": D3, "size": 7}]}
    cfg, layers = oci.manifest_children(m)
    assert cfg.digest == D1 and [x.digest for x in layers] == [D2, D3]
    assert oci.gc_labels_manifest(cfg, layers) == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.l.0": D2,
        "containerd.io/gc.ref.content.l.1": D3,
    }
    # Only manifests the node holds get index labels (absent siblings are fine).
    assert oci.gc_labels_index(_index(), {D2}) == {"containerd.io/gc.ref.content.m.1": D2}


@pytest.mark.parametrize("bad", [
    {"layers": []},
    {"config": {"digest": "md5:x", "size": 1}, "layers": []},
    {"config": {"digest": D1, "size": -1}, "layers": []},
    {"config": {"digest": D1, "size": 1}, "layers": [{"digest": D2}]},
    {"config": {"digest": D1, "size": 1}},
])
def test_manifest_children_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(FailedPrecondition):
        oci.manifest_children(bad)


def test_load_json_and_media_type() -> None:
    with pytest.raises(FailedPrecondition):
        oci.load_json(b"\xff", "x")
    with pytest.raises(FailedPrecondition):
        oci.load_json(b"[]", "x")
    assert oci.media_type_of(oci.load_json(json.dumps(_index()).encode(), "i"), "") \
        == oci.MT_OCI_INDEX
    assert oci.media_type_of({"config": {}}, "") == oci.MT_OCI_MANIFEST


def test_image_names() -> None:
    assert oci.image_names("docker.io/library/nginx:1.25", None, D1, D2) == [
        "docker.io/library/nginx:1.25", f"docker.io/library/nginx@{D1}", D2]
    assert oci.image_names(f"docker.io/library/nginx@{D1}", None, D1, D2) == [
        f"docker.io/library/nginx@{D1}", D2]
    assert oci.image_names(None, None, D1, D2) == [D2]
