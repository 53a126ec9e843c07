"""tote_core.oci.auth: pure parsing of pull secrets, registry hosts, `WWW-Authenticate`
challenges and token scopes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tote_core.oci.auth import (
    Credentials,
    api_host,
    auths_from_secret,
    basic_header,
    canonical_host,
    credentials_for,
    parse_challenges,
    pull_scope,
    push_scope,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(auths: dict[str, Any], kind: str = "kubernetes.io/dockerconfigjson") -> dict[str, Any]:
    if kind == "kubernetes.io/dockercfg":
        return {"type": kind, "data": {".dockercfg": b64(json.dumps(auths))}}
    return {"type": kind, "data": {".dockerconfigjson": b64(json.dumps({"auths": auths}))}}


def test_bearer_challenge() -> None:
    (c,) = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.params == {"realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull"}  # fmt: skip


def test_basic_challenge_and_several_in_one_header() -> None:
    (c,) = parse_challenges('Basic realm="tote-test-registry"')
    assert c.scheme == "basic" and c.realm == "tote-test-registry"
    cs = parse_challenges('Basic realm="a b, c", Bearer realm="https://t/x",scope="s"')
    assert [x.scheme for x in cs] == ["basic", "bearer"]
    assert cs[0].realm == "a b, c" and cs[1].params["scope"] == "s"


def test_challenge_oddities() -> None:
    (c,) = parse_challenges('BEARER Realm=https://t/x , service="a\\"b"')
    assert c.scheme == "bearer" and c.realm == "https://t/x" and c.params["service"] == 'a"b'
    assert parse_challenges("") == []


@pytest.mark.parametrize(("key", "want"), [
    ("https://index.docker.io/v1/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("docker.io", "docker.io"),
    ("https://Reg.Example:5000/v2/", "reg.example:5000"),
    ("127.0.0.1:5000", "127.0.0.1:5000"),
])  # fmt: skip
def test_canonical_host(key: str, want: str) -> None:
    assert canonical_host(key) == want


def test_api_host_for_docker_hub() -> None:
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"


def test_dockerconfigjson_auth_field_matches_host() -> None:
    s = secret({"127.0.0.1:5000": {"auth": b64("alice:pa:ss")},
                "other.example": {"auth": b64("bob:x")}})  # fmt: skip
    creds = credentials_for(auths_from_secret(s), "127.0.0.1:5000")
    assert creds == Credentials("alice", "pa:ss")  # only the first colon separates
    assert credentials_for(auths_from_secret(s), "127.0.0.1:5001") is None


def test_dockerconfigjson_username_password_and_docker_hub_aliases() -> None:
    s = secret({"https://index.docker.io/v1/": {"username": "u", "password": "p"}})
    assert credentials_for(auths_from_secret(s), "docker.io") == Credentials("u", "p")


def test_legacy_dockercfg() -> None:
    s = secret({"https://reg.example": {"auth": b64("u:p")}}, kind="kubernetes.io/dockercfg")
    assert credentials_for(auths_from_secret(s), "reg.example") == Credentials("u", "p")


@pytest.mark.parametrize("bad", [
    {"type": "Opaque", "data": {".dockerconfigjson": b64('{"auths": {}}')}},
    {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "!!notb64"}},
    {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b64("[1]")}},
    {"type": "kubernetes.io/dockerconfigjson"},
])  # fmt: skip
def test_unusable_secrets_yield_nothing(bad: dict[str, Any]) -> None:
    assert auths_from_secret(bad) == {}


def test_broken_auth_entry_is_skipped() -> None:
    s = secret({"reg.example": {"auth": b64("no-colon")}})
    assert credentials_for(auths_from_secret(s), "reg.example") is None


def test_credentials_never_printed() -> None:
    c = Credentials("alice", "s3cret")
    assert "s3cret" not in repr(c) and "alice" not in repr(c)
    assert basic_header(c) == "Basic " + b64("alice:s3cret")


def test_token_scopes() -> None:
    assert pull_scope("backup/app") == "repository:backup/app:pull"
    assert push_scope("backup/app") == "repository:backup/app:pull,push"
