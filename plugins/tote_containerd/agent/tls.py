"""mTLS (TLS 1.3) contexts and peer identities.

Identities come from the peer certificate: a SAN URI `spiffe://tote/controller` or
`spiffe://tote/agent[/<node>]`, or (fallback) a CN `tote-controller` / `tote-agent[-…]`.
The gRPC server requests but does not require a client certificate, so health checks work
without one; every other RPC is authorised per call from the verified certificate. The data
channel requires one. A certificate from
another CA fails the handshake.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from tote_containerd.agent.tokens import Verifier
from tote_core import tlsfiles, tlsreload

Role = Literal["controller", "agent"]
log = logging.getLogger("tote.agent.tls")


class Identity(msgspec.Struct, frozen=True):
    role: Role | None  # None: no (recognised) certificate
    node: str = ""
    name: str = ""


INSECURE = Identity(role=None, name="insecure")


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2"])
    return ctx


def data_server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """The fast-path data channel (`data_channel`): TLS 1.3 that *requires* a client certificate
    from the tote CA. Unlike the gRPC port it serves no health checks, so a peer without a
    certificate fails the handshake before any request byte is read."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class PeerRoleMismatch(ssl.SSLCertVerificationError):
    """The peer's chain is valid (signed by the tote CA) but its certificate names another
    role than the one this client dials (e.g. a controller listening where an agent was
    expected)."""


class _ClientContext(ssl.SSLContext):
    """A client context that knows which role its peers must have: every connection made
    with it — gRPC (asyncio, through `wrap_bio`) and the data channel (blocking sockets) —
    checks the role right after the handshake, so a connection that is reused or silently
    re-established is checked as often as it is opened."""

    peer_role: Role | None = None


def _check_role(context: ssl.SSLContext, peercert: dict[str, Any] | None) -> None:
    want = getattr(context, "peer_role", None)
    if want is None:
        return
    got = identity_of(peercert).role
    if got != want:
        raise PeerRoleMismatch(f"peer presents identity {got!r}, expected {want!r}")


class _RoleCheckedObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _check_role(self.context, self.getpeercert())


class _RoleCheckedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check_role(self.context, self.getpeercert())


_ClientContext.sslobject_class = _RoleCheckedObject
_ClientContext.sslsocket_class = _RoleCheckedSocket


def client_context(cert: str, key: str, ca: str, *, peer_role: Role | None = None
                   ) -> ssl.SSLContext:
    """Client side: chain verified against the tote CA; peers are addressed by pod IP, so the
    host name is not checked. With `peer_role`, the role in the peer's certificate (see
    `identity_of`) is checked in every handshake; a mismatch raises `PeerRoleMismatch`."""
    ctx = _ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.peer_role = peer_role
    ctx.load_verify_locations(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def identity_of(peercert: dict[str, Any] | None) -> Identity:
    """Role from a verified peer certificate as returned by `SSLSocket.getpeercert()`."""
    if not peercert:
        return Identity(role=None)
    for kind, value in peercert.get("subjectAltName", ()):
        if kind != "URI" or not isinstance(value, str):
            continue
        if value == "spiffe://tote/controller":
            return Identity(role="controller", name=value)
        if value == "spiffe://tote/agent" or value.startswith("spiffe://tote/agent/"):
            node = value[len("spiffe://tote/agent/"):] if value.count("/") > 3 else ""
            return Identity(role="agent", node=node, name=value)
    cn = ""
    for rdn in peercert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = str(v)
    if cn == "tote-controller":
        return Identity(role="controller", name=cn)
    if cn == "tote-agent" or cn.startswith("tote-agent-"):
        return Identity(role="agent", name=cn)
    return Identity(role=None, name=cn)


class AgentTLS:
    """The agent's mTLS contexts, following its files (`tote_core.tlsreload`): the gRPC and
    data-channel listeners keep their sockets and pick up a renewed certificate or CA at the
    next handshake; connections to peer agents dial with the newest client context; the
    transfer-token verifier trusts the newest CA bundle. Files that do not validate (see
    `tote_core.tlsfiles.check_mtls`) are ignored until a good renewal arrives."""

    def __init__(self, settings: tlsfiles.TLSSettings, verifier: Verifier) -> None:
        self.settings = settings
        files = (settings.tls_cert, settings.tls_key, settings.tls_ca)
        self._stamp = tlsreload.FileStamp(files)
        self.grpc = tlsreload.ServerContext(lambda: self._checked(server_context), "grpc")
        self.data = tlsreload.ServerContext(lambda: self._checked(data_server_context), "data")
        self._peer = self._peer_context()
        self.verifier = verifier

    def _checked(self, build: Callable[[str, str, str], ssl.SSLContext]) -> ssl.SSLContext:
        tlsfiles.check_mtls(self.settings)
        return build(*self._files())

    def _files(self) -> tuple[str, str, str]:
        s = self.settings
        return s.tls_cert, s.tls_key, s.tls_ca

    def _peer_context(self) -> ssl.SSLContext:
        cert, key, ca = self._files()
        return client_context(cert, key, ca, peer_role="agent")

    def peer(self) -> ssl.SSLContext:
        """The client context for the next connection to a peer agent."""
        return self._peer

    def refresh(self) -> bool:
        """Reload everything if a file changed and the new set validates; True if reloaded."""
        if not self._stamp.changed():
            return False
        if not (self.grpc.reload() and self.data.reload()):
            return False
        self._peer = self._peer_context()
        self.verifier.load(self.settings.tls_ca)
        log.info("TLS files renewed: new certificate in use from the next connection on")
        return True


ClientTLS = Callable[[], "ssl.SSLContext | None"]
"""Answers the client context for the next connection (None: insecure mode): a callable, not
a context, so a connection opened after a renewal uses the renewed certificate."""


def no_tls() -> ssl.SSLContext | None:
    return None
