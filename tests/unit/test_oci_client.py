"""tote_core.oci.client and upload: TLS trust, the origin rule for credentials, status and
transport errors as bounded `RegistryError` reasons, and the agent's mapping of them.

A stdlib HTTP server on loopback stands in for the registry's origin (real sockets, real
httpx); the protocol against a real `docker-registry` (token and Basic auth, TLS, mounts,
chunked uploads) is tests/integration/containerd/test_containerd_push.py and
tests/integration/salvage/test_registry_resolve.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio
from tote_containerd.agent import errors
from tote_containerd.agent.registry_push import _agent_error

from tote_core.errors import ConfigError, RegistryError
from tote_core.oci import mediatypes
from tote_core.oci.client import (
    DigestNotPreserved,
    RegistryClient,
    RegistryStatus,
    RegistryTimeout,
    status_error,
)
from tote_core.oci.upload import Repository

D = "sha256:" + "a" * 64


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str]] = []  # (method, path, Authorization)

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        status = 404 if "/blobs/" in self.path else 403 if "forbidden" in self.path else 200
        body = b"denied: not yours" if status == 403 else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    _Handler.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_credentials_go_to_the_registry_origin_only(server: int) -> None:
    client = RegistryClient(insecure=True)

    async def main() -> None:
        async with client.session(f"127.0.0.1:{server}", scheme="http",
                                  authorization="Bearer t0ken") as s:
            assert await s.base() == f"http://127.0.0.1:{server}"
            assert await s.authorization(["anything"]) == "Bearer t0ken"
            await s.send("GET", "/v2/", "ping")
            await s.send("GET", f"http://localhost:{server}/elsewhere", "other origin")

    trio.run(main)
    assert _Handler.seen == [("GET", "/v2/", "Bearer t0ken"), ("GET", "/elsewhere", "")]


def test_statuses_become_bounded_reasons(server: int) -> None:
    client = RegistryClient(insecure=True)

    async def main() -> None:
        async with client.session(f"127.0.0.1:{server}", scheme="http") as s:
            repo = Repository(s, "backup/app")
            assert await repo.blob_exists(D) is False  # 404 on a blob: absent, no error
            with pytest.raises(RegistryStatus) as err:
                await repo.manifest_at("forbidden", mediatypes.OCI_MANIFEST)
            assert err.value.status == 403 and err.value.reason == "unauthorized"
            assert str(err.value) == ("registry answered 403 to HEAD "
                                      "/v2/backup/app/manifests/forbidden")
            resp = await s.send("GET", "/v2/forbidden/", "GET")
            assert str(status_error(resp, "GET x")) == "registry answered 403 to GET x: " \
                "denied: not yours"  # the start of the body says why

    trio.run(main)
    head = _Handler.seen[-2]
    assert head[0] == "HEAD" and head[1] == "/v2/backup/app/manifests/forbidden"
    reasons = {s: RegistryStatus("x", status=s).reason for s in (404, 500, 401)}
    assert reasons == {404: "not_found", 500: "error", 401: "unauthorized"}


def test_an_unreachable_registry_is_named(server: int) -> None:
    client = RegistryClient(insecure=True, timeout=2.0)

    async def main() -> None:
        async with client.session("127.0.0.1:1") as s:  # https, then http: both refused
            await s.base()

    with pytest.raises(RegistryError) as err:
        trio.run(main)
    assert err.value.reason == "unreachable" and "cannot reach registry 127.0.0.1:1" in str(
        err.value)


def test_ca_bundle_must_hold_a_certificate() -> None:
    with pytest.raises(ConfigError, match="ca_pem is not a usable PEM bundle"):
        RegistryClient(ca_pem="not a pem")
    assert RegistryClient(ca_pem="not a pem", insecure=True).insecure  # never loaded


def test_accept_lists_every_manifest_kind_once() -> None:
    assert mediatypes.accept(mediatypes.DOCKER_MANIFEST).count(
        mediatypes.DOCKER_MANIFEST) == 1
    assert set(mediatypes.accept("").split(", ")) == set(mediatypes.MANIFEST_ACCEPT.split(", "))


@pytest.mark.parametrize(("exc", "kind", "reason"), [
    (RegistryStatus("x", status=401), errors.Unauthenticated, "unauthorized"),
    (RegistryStatus("x", status=403), errors.PermissionDenied, "unauthorized"),
    (RegistryStatus("x", status=503), errors.Unavailable, "registry_error"),
    (RegistryStatus("x", status=404), errors.FailedPrecondition, "registry_error"),
    (RegistryError("registry sent no Location"), errors.FailedPrecondition, "registry_error"),
    (RegistryTimeout("slow"), errors.DeadlineExceeded, "registry_unreachable"),
    (RegistryError("gone", reason="unreachable"), errors.Unavailable, "registry_unreachable"),
    (DigestNotPreserved("other digest"), errors.DigestMismatch, "digest_mismatch"),
])  # fmt: skip
def test_the_agent_maps_registry_errors_at_its_edge(
    exc: RegistryError, kind: type[errors.AgentError], reason: str
) -> None:
    got = _agent_error(exc)
    assert type(got) is kind and got.reason == reason and str(got) == str(exc)
