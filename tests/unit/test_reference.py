"""Image reference parsing and normalisation (the Go original never normalised)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tote_core.detect.reference import digest_of_image_id, parse
from tote_core.errors import InvalidReference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("library/nginx:1.25", "docker.io/library/nginx:1.25"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
        ("foo/bar", "docker.io/foo/bar:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/team/app:v1", "localhost:5000/team/app:v1"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("quay.io/org/app@" + D, "quay.io/org/app@" + D),
        ("nginx@" + D, "docker.io/library/nginx@" + D),
        ("nginx:1.25@" + D, "docker.io/library/nginx:1.25@" + D),
        ("registry.example.com:443/a/b/c:1.0-rc_1", "registry.example.com:443/a/b/c:1.0-rc_1"),
    ],
)
def test_normalises_like_the_container_ecosystem(raw: str, normalised: str) -> None:
    assert parse(raw).name == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " nginx",
        "Nginx",
        "nginx:",
        "nginx@sha256:abc",
        "nginx@sha256:" + "A" * 64,
        "nginx:bad tag",
        "a:b:c",
        "/nginx",
        "nginx/",
        "docker.io//nginx",
        "nginx:" + "t" * 200,
        "-bad/host/x",
        "a" * 300,
    ],
)
def test_rejects_malformed_references_with_a_reason(raw: str) -> None:
    with pytest.raises(InvalidReference) as err:
        parse(raw)
    assert str(err.value)


def test_parts() -> None:
    ref = parse("nginx:1.25")
    assert ref.repository == "docker.io/library/nginx"
    assert ref.tagged == "docker.io/library/nginx:1.25"
    assert ref.with_digest(D) == "docker.io/library/nginx@" + D


def test_image_id_digest() -> None:
    assert digest_of_image_id("docker.io/library/nginx@" + D) == D
    assert digest_of_image_id(D) == D
    assert digest_of_image_id("") is None
    assert digest_of_image_id("docker.io/x@sha256:zz") is None


_component = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_host = st.sampled_from(["quay.io", "localhost:5000", "127.0.0.1:5000", "reg.example.com"])


@given(
    host=st.none() | _host,
    path=st.lists(_component, min_size=1, max_size=3),
    tag=st.none() | _tag,
    digest=st.none() | st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True),
)
def test_normalisation_is_idempotent_and_round_trips(
    host: str | None, path: list[str], tag: str | None, digest: str | None
) -> None:
    raw = "/".join(path)
    if host:
        raw = f"{host}/{raw}"
    elif "." in path[0] and len(path) > 1:
        # A dotted first component *is* a registry host (ecosystem rule); covered above.
        raw = "team/" + raw
    if tag:
        raw += f":{tag}"
    if digest:
        raw += f"@{digest}"
    ref = parse(raw)
    assert parse(ref.name) == ref  # normalising a normalised name changes nothing
    assert ref.digest == digest
    assert ref.tag == (tag or (None if digest else "latest"))
    if host:
        assert ref.domain == host


@given(st.text(max_size=80))
def test_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference:
        return
    assert parse(ref.name) == ref
