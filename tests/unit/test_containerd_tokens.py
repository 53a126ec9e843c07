"""Transfer tokens and certificate identities (no network)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from tote_containerd.agent.errors import PermissionDenied, Unauthenticated
from tote_containerd.agent.tls import identity_of
from tote_containerd.agent.tokens import Signer, Verifier, describe

from tests.integration.containerd.certs import PKI, make_pki

D = "sha256:" + "d" * 64


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


def test_roundtrip(pki: PKI) -> None:
    tok = Signer(pki.controller.cert, pki.controller.key).mint(
        digest=D, source="a", target="b", ttl=60)
    claims = Verifier(pki.controller.ca).verify(tok, source="a", target="b")
    assert claims.digest == D and claims.exp > time.time()
    assert describe(tok)["target"] == "b"


@pytest.mark.parametrize("case", ["expired", "future", "source", "target", "rogue", "agent",
                                  "unsigned", "tampered", "garbage", "empty", "huge"])
def test_refusals(pki: PKI, case: str) -> None:
    good = Signer(pki.controller.cert, pki.controller.key)
    now = time.time()
    tok = good.mint(digest=D, source="a", target="b", ttl=60)
    source, target = "a", "b"
    if case == "expired":
        tok = good.mint(digest=D, source="a", target="b", ttl=60, now=now - 120)
    elif case == "future":
        tok = good.mint(digest=D, source="a", target="b", ttl=600, now=now + 300)
    elif case == "source":
        source = "x"
    elif case == "target":
        target = "x"
    elif case == "rogue":
        tok = Signer(pki.rogue_controller.cert, pki.rogue_controller.key).mint(
            digest=D, source="a", target="b", ttl=60)
    elif case == "agent":
        tok = Signer(pki.agent.cert, pki.agent.key).mint(
            digest=D, source="a", target="b", ttl=60)
    elif case == "unsigned":
        tok = Signer().mint(digest=D, source="a", target="b", ttl=60)
    elif case == "tampered":
        parts = tok.split(".")
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        claims["digest"] = "sha256:" + "e" * 64
        parts[1] = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        tok = ".".join(parts)
    elif case == "garbage":
        tok = "tote1.!!!.@@@.###"
    elif case == "empty":
        tok = ""
    elif case == "huge":
        tok = "tote1." + "a" * 20000 + ".."
    with pytest.raises((PermissionDenied, Unauthenticated)):
        Verifier(pki.controller.ca).verify(tok, source=source, target=target)


def test_insecure_verifier_accepts_unsigned_only_claims() -> None:
    tok = Signer().mint(digest=D, source="a", target="b", ttl=60)
    assert Verifier("").verify(tok, source="a", target="b").digest == D
    with pytest.raises(PermissionDenied):
        Verifier("").verify(tok, source="a", target="c")


def test_identities() -> None:
    assert identity_of(None).role is None
    assert identity_of({}).role is None
    ctl = {"subjectAltName": (("URI", "spiffe://tote/controller"),)}
    assert identity_of(ctl).role == "controller"
    ag = identity_of({"subjectAltName": (("DNS", "x"), ("URI", "spiffe://tote/agent/node-1"))})
    assert (ag.role, ag.node) == ("agent", "node-1")
    assert identity_of({"subjectAltName": (("URI", "spiffe://tote/agent"),)}).node == ""
    assert identity_of({"subject": ((("commonName", "tote-controller"),),)}).role \
        == "controller"
    assert identity_of({"subject": ((("commonName", "tote-agent-7"),),)}).role == "agent"
    assert identity_of({"subjectAltName": (("URI", "spiffe://tote/admin"),)}).role is None
