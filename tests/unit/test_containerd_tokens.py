"""Transfer tokens and certificate identities (no network)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tote_containerd.agent.errors import PermissionDenied, Unauthenticated
from tote_containerd.agent.tls import identity_of
from tote_containerd.agent.tokens import Signer, Verifier, describe

from tests.cluster.pki import PKI, Identity, issue, make_intermediate, make_pki

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


def _mint(ident: Identity) -> str:
    return Signer(ident.cert, ident.key).mint(digest=D, source="a", target="b", ttl=60)


def test_signer_chain_through_an_intermediate(pki: PKI, tmp_path: Path) -> None:
    """A controller certificate issued by an intermediate CA: the token carries the
    intermediate and validates as a chain to the tote root (it used to be refused: only a
    certificate directly issued by the CA was accepted)."""
    inter = make_intermediate(tmp_path, pki.root, "tote-intermediate")
    ctl = issue(tmp_path, inter, "ctl-via-intermediate", "spiffe://tote/controller",
                chain=[inter[0]], root=pki.root[2])
    tok = _mint(ctl)
    assert len(tok.split(".")[2].split("~")) == 2
    assert Verifier(pki.controller.ca).verify(tok, source="a", target="b").digest == D
    # Without the intermediate in the token there is no chain to the root.
    bare = issue(tmp_path, inter, "ctl-bare", "spiffe://tote/controller", root=pki.root[2])
    with pytest.raises(Unauthenticated, match="chain"):
        Verifier(pki.controller.ca).verify(_mint(bare), source="a", target="b")


def test_controller_cn_without_sans_signs(pki: PKI, tmp_path: Path) -> None:
    """The chart's self-generated certificates (Helm's genSignedCert) carry no SAN at all: the
    role is the CN, as in the TLS handshake (tls.identity_of), still in a valid chain."""
    tok = _mint(issue(tmp_path, pki.root, "tote-controller", None))
    assert Verifier(pki.controller.ca).verify(tok, source="a", target="b").digest == D


@pytest.mark.parametrize("case", ["agent-cn-only", "controller-cn-agent-uri", "is-ca",
                                  "no-client-auth", "expired", "issued-by-leaf",
                                  "too-many-certs"])
def test_signer_role_and_chain_refusals(pki: PKI, tmp_path: Path, case: str) -> None:
    """Signer certificates from the tote CA that are not a controller identity in a valid
    chain: each refused as unauthenticated (is-ca, no-client-auth and issued-by-leaf were
    accepted before chain validation)."""
    ca = pki.root
    if case == "agent-cn-only":  # an agent's CN, no SAN: the agent role cannot sign
        tok = _mint(issue(tmp_path, ca, "tote-agent", None))
    elif case == "controller-cn-agent-uri":  # URIs decide when present; the CN is ignored
        tok = _mint(issue(tmp_path, ca, "tote-controller", "spiffe://tote/agent"))
    elif case == "is-ca":  # a CA certificate cannot sign tokens
        tok = _mint(issue(tmp_path, ca, "ctl-ca", "spiffe://tote/controller", is_ca=True))
    elif case == "no-client-auth":  # key usage restricted to servers
        tok = _mint(issue(tmp_path, ca, "ctl-server", "spiffe://tote/controller",
                          client_auth=False))
    elif case == "expired":
        tok = _mint(issue(tmp_path, ca, "ctl-old", "spiffe://tote/controller",
                          valid_for=dt.timedelta(minutes=-1)))
    elif case == "issued-by-leaf":  # the agent's (non-CA) key used as an issuer
        agent_cert = x509.load_pem_x509_certificate(Path(pki.agent.cert).read_bytes())
        agent_key = serialization.load_pem_private_key(Path(pki.agent.key).read_bytes(), None)
        assert isinstance(agent_key, ec.EllipticCurvePrivateKey)
        fake = issue(tmp_path, (agent_cert, agent_key, Path(pki.agent.ca)), "ctl-by-agent",
                     "spiffe://tote/controller", chain=[agent_cert])
        tok = _mint(fake)
    else:
        parts = _mint(pki.controller).split(".")
        parts[2] = "~".join([parts[2]] * 5)
        tok = ".".join(parts)
    with pytest.raises(Unauthenticated):
        Verifier(pki.controller.ca).verify(tok, source="a", target="b")
