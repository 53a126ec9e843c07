"""Backup push through the agent's Push RPC (issue 10 item 1), against real
containerd nodes and a real `docker-registry` with htpasswd auth and TLS (its own CA).

The `Authorization` value comes from the same registry client the controller uses
(`tote_core.oci.client`: `/v2/` challenge → Basic here); the agent pushes with core's
`tote_core.oci.upload` on a session of that client. What is tried:
(1) digest preserved: pushed manifest and every blob fetched back by digest, bytes equal;
    a layer above `MONOLITHIC_MAX` goes up in chunked PATCHes;
(2) a second push uploads nothing (registry access log: no POST/PATCH/PUT);
(3) another repository of the same registry: blobs cross-repository mounted, not uploaded;
(4) multi-arch: all platforms on the node → index + both manifests, digest = index digest;
    one platform → that platform's manifest only, the result says the index was not pushed;
(5) wrong credentials / no credentials → Unauthenticated, nothing written;
(6) the registry's CA not given → TLS verification fails (Unavailable); bad requests refused;
(7) the registry stopped mid-push → one failed call (Unavailable), the agent stays healthy;
(8) only the controller identity may call Push.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import urllib.request
from collections.abc import Iterator

import pytest
import trio
from tote_containerd.agent import errors
from tote_containerd.agent.api import PushRequest, PushResult
from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.tls import client_context

from tests.cluster.ci import require
from tests.cluster.containerd_env import Env
from tests.cluster.images import Image, layered_image, multiarch_image
from tests.cluster.pki import make_ca
from tests.cluster.prom import scrape_total
from tests.cluster.registry import Registry, available, start_registry
from tote_core.oci import upload
from tote_core.oci.auth import Credentials, push_scope
from tote_core.oci.client import RegistryClient

MiB = 1024 * 1024
USER, PASSWORD = "pusher", "battery-staple-9"
pytestmark = pytest.mark.integration
WRITES = {"POST", "PATCH", "PUT"}


@pytest.fixture(scope="module")
def registry(env: Env) -> Iterator[Registry]:
    require(available(), "docker-registry is needed (.ci/install installs it)")
    ca = make_ca(env.base / "reg-pki", common_name="tote-push-test-ca")
    pair = ca.issue("registry", common_name="127.0.0.1", ip_addresses=("127.0.0.1",),
                    server=True)
    reg = start_registry(env.base / "registry", users={USER: PASSWORD}, tls=pair, ca=ca.cert,
                         access_log=True)
    try:
        yield reg
    finally:
        if reg.procs is not None:
            reg.procs.stop_all()


async def _auth(reg: Registry, repo: str, creds: Credentials | None = None,
                mounts: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """(base URL, Authorization, CA PEM) exactly as the controller's push worker gets them."""
    assert reg.ca is not None
    client = RegistryClient(ca_file=str(reg.ca))
    async with client.session(reg.host, creds or Credentials(USER, PASSWORD)) as s:
        base = await s.base()
        value = await s.authorization([push_scope(repo), *(f"repository:{m}:pull"
                                                          for m in mounts)])
    return base, value, client.ca_pem


async def _push(env: Env, reg: Registry, node: str, digest: str, repo: str, tag: str, *,
                mounts: tuple[str, ...] = (), **over: object) -> PushResult:
    base, value, ca = await _auth(reg, repo, mounts=mounts)
    kw: dict[str, object] = dict(digest=digest, registry_url=base, repository=repo, tag=tag,
                                 authorization=value, ca_pem=ca, mount_from=list(mounts))
    kw.update(over)
    async with env.open_agent(node, rpc_timeout=300) as agent:
        return await agent.push(PushRequest(**kw), deadline=300)  # type: ignore[arg-type]


def _get(reg: Registry, path: str, accept: str = "") -> bytes:
    req = urllib.request.Request(f"{reg.url}{path}")
    if accept:
        req.add_header("Accept", accept)
    with reg._open(req, timeout=60) as resp:
        return bytes(resp.read())


def _blob_bytes(img: Image, digest: str) -> bytes:
    blob = next(b for b in img.blobs if b.digest == digest)
    return blob.data if blob.data is not None else blob.path.read_bytes()  # type: ignore[union-attr]


def _writes_since(reg: Registry, n: int) -> list[tuple[str, str, int]]:
    return [r for r in reg.requests()[n:] if r[0] in WRITES]


async def test_1_digest_preserved_and_2_second_push_uploads_nothing(
    env: Env, registry: Registry
) -> None:
    a = env.nodes["a"]
    big = upload.MONOLITHIC_MAX + 3 * MiB  # forces chunked PATCH uploads
    img = layered_image("docker.io/tote/pushme:v1", [2 * MiB, big, 1000], seed=41,
                        spool_dir=env.base)
    a.import_archive(img.write_archive(env.base / "pushme.tar"))
    before = len(registry.requests())

    res = await _push(env, registry, "a", img.digest, "backup/tote/pushme", "v1")
    assert res.pushed_digest == img.digest and not res.index_pushed and not res.note
    assert res.blobs_total == 4 and res.blobs_uploaded == 4 and res.blobs_skipped == 0
    assert res.bytes_uploaded == sum(b.size for b in img.blobs[1:])
    assert registry.manifest_digest("backup/tote/pushme", "v1") == img.digest
    writes = _writes_since(registry, before)
    assert any(m == "PATCH" for m, _, _ in writes), writes  # the big layer went in chunks
    # The bytes the registry serves by digest are the bytes of the original image.
    manifest = _get(registry, f"/v2/backup/tote/pushme/manifests/{img.digest}",
                    accept=img.top.media_type)
    assert manifest == img.top.data
    for blob in img.blobs[1:]:
        data = _get(registry, f"/v2/backup/tote/pushme/blobs/{blob.digest}")
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
        assert data == _blob_bytes(img, blob.digest)

    # (2) Again: the tag already names the digest → HEAD only, no upload.
    before = len(registry.requests())
    again = await _push(env, registry, "a", img.digest, "backup/tote/pushme", "v1")
    assert again.blobs_uploaded == 0 and again.bytes_uploaded == 0 and again.blobs_mounted == 0
    assert again.blobs_skipped == 4
    assert _writes_since(registry, before) == []
    # Same image under a new tag: blobs HEAD-skipped, only the manifest PUT.
    before = len(registry.requests())
    retag = await _push(env, registry, "a", img.digest, "backup/tote/pushme", "salvaged-x")
    assert retag.blobs_uploaded == 0 and retag.blobs_skipped == 4
    assert [(m, p.split("/")[-1]) for m, p, _ in _writes_since(registry, before)] == [
        ("PUT", "salvaged-x")]


async def test_3_cross_repository_mount(env: Env, registry: Registry) -> None:
    b = env.nodes["b"]
    img = layered_image("docker.io/tote/shared:v1", [1 * MiB, 1 * MiB], seed=43)
    b.import_archive(img.write_archive(env.base / "shared.tar"))
    first = await _push(env, registry, "b", img.digest, "backup/one/shared", "v1")
    assert first.blobs_uploaded == 3
    before = len(registry.requests())
    res = await _push(env, registry, "b", img.digest, "backup/two/shared", "v1",
                      mounts=("backup/one/shared",))
    assert res.blobs_mounted == 3 and res.blobs_uploaded == 0 and res.bytes_uploaded == 0
    posts = [p for m, p, s in _writes_since(registry, before) if m == "POST"]
    assert len(posts) == 3 and all("mount=" in p and "from=backup" in p for p in posts), posts
    assert registry.manifest_digest("backup/two/shared", "v1") == img.digest


async def test_4_multiarch_full_index_and_partial_index(env: Env, registry: Registry) -> None:
    c, d = env.nodes["c"], env.nodes["d"]
    img = multiarch_image("docker.io/tote/multi:v1", [1 * MiB], seed=45)
    archive = img.write_archive(env.base / "multi.tar")
    c.import_archive(archive, all_platforms=True)
    full = await _push(env, registry, "c", img.digest, "backup/tote/multi", "v1")
    assert full.index_pushed and full.pushed_digest == img.digest and not full.note
    assert sorted(full.manifests) == sorted(m.digest for m in img.manifests.values())
    assert registry.manifest_digest("backup/tote/multi", "v1") == img.digest
    assert _get(registry, f"/v2/backup/tote/multi/manifests/{img.digest}",
                accept=img.top.media_type) == img.top.data

    d.import_archive(archive)  # this node's platform only (linux/amd64)
    amd64 = img.manifests["linux/amd64"].digest
    part = await _push(env, registry, "d", img.digest, "backup/tote/multi-one", "v1")
    assert not part.index_pushed and part.pushed_digest == amd64
    assert part.platform == "linux/amd64" and part.manifests == [amd64]
    assert "not pushed" in part.note and "1 of 2" in part.note and img.digest in part.note
    assert registry.manifest_digest("backup/tote/multi-one", "v1") == amd64
    assert registry.manifest_digest("backup/tote/multi-one", img.digest) is None


async def test_5_wrong_or_missing_credentials(env: Env, registry: Registry) -> None:
    a = env.nodes["a"]
    img = layered_image("docker.io/tote/secret:v1", [100_000], seed=47)
    a.import_archive(img.write_archive(env.base / "secret.tar"))
    base, _, ca = await _auth(registry, "backup/tote/secret")
    wrong = "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()
    async with env.open_agent("a") as agent:
        for value in (wrong, ""):
            with pytest.raises(errors.Unauthenticated, match="401"):
                await agent.push(PushRequest(
                    digest=img.digest, registry_url=base, repository="backup/tote/secret",
                    tag="v1", authorization=value, ca_pem=ca), deadline=60)
    assert registry.manifest_digest("backup/tote/secret", "v1") is None
    # The controller's client refuses the wrong password before any agent is asked.
    from tote_core.errors import RegistryError

    with pytest.raises(RegistryError) as err:
        await _auth(registry, "backup/tote/secret", Credentials(USER, "wrong"))
    assert err.value.reason == "unauthorized" and "wrong" not in str(err.value)
    log = env.agents["a"].proc.log_path.read_text(errors="replace")
    assert PASSWORD not in log and base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() \
        not in log


async def test_6_tls_without_ca_and_bad_requests(env: Env, registry: Registry) -> None:
    a = env.nodes["a"]
    img = layered_image("docker.io/tote/tls:v1", [100_000], seed=49)
    a.import_archive(img.write_archive(env.base / "tls.tar"))
    base, value, _ = await _auth(registry, "backup/tote/tls")
    ok = dict(digest=img.digest, registry_url=base, repository="backup/tote/tls", tag="v1",
              authorization=value)
    async with env.open_agent("a") as agent:
        with pytest.raises(errors.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await agent.push(PushRequest(**ok), deadline=60)  # type: ignore[arg-type]
        bad: list[dict[str, object]] = [
            {"digest": "sha256:1234"}, {"registry_url": "ftp://x"}, {"tag": ""},
            {"repository": "Upper/Case"}, {"tag": "bad tag"}, {"ca_pem": "not a pem"},
            {"digest": "sha256:" + "0" * 64},
        ]
        for over in bad:
            with pytest.raises((errors.InvalidArgument, errors.NotFound)):
                await agent.push(PushRequest(**{**ok, "ca_pem": registry.ca.read_text(),  # type: ignore[union-attr, arg-type]
                                                **over}), deadline=60)
    assert registry.manifest_digest("backup/tote/tls", "v1") is None


def _agent_metric(env: Env, node: str, name: str) -> float:
    return scrape_total(env.agents[node].metrics_port, name)


async def test_7_registry_stopped_mid_push(env: Env, registry: Registry) -> None:
    b = env.nodes["b"]
    img = layered_image("docker.io/tote/cut:v1", [96 * MiB, 96 * MiB], seed=51,
                        spool_dir=env.base)
    b.import_archive(img.write_archive(env.base / "cut.tar"))
    base, value, ca = await _auth(registry, "backup/tote/cut")
    sent0 = _agent_metric(env, "b", "tote_agent_push_bytes_total")
    failure: list[BaseException] = []

    async def run() -> None:
        async with env.open_agent("b", rpc_timeout=300) as agent:
            try:
                await agent.push(PushRequest(
                    digest=img.digest, registry_url=base, repository="backup/tote/cut",
                    tag="v1", authorization=value, ca_pem=ca, parallelism=1), deadline=300)
            except errors.AgentError as exc:
                failure.append(exc)

    try:
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                while _agent_metric(env, "b", "tote_agent_push_bytes_total") < sent0 + 8 * MiB:
                    await trio.sleep(0.05)
                await trio.to_thread.run_sync(registry.stop)
    finally:
        registry.start()
    assert len(failure) == 1 and isinstance(failure[0], errors.Unavailable), failure
    assert "registry" in str(failure[0])
    assert registry.manifest_digest("backup/tote/cut", "v1") is None
    async with env.open_agent("b") as agent:
        assert (await agent.health()).containerd_ok


async def test_8_only_the_controller_may_push(env: Env, registry: Registry) -> None:
    base, value, ca = await _auth(registry, "backup/tote/denied")
    req = PushRequest(digest="sha256:" + "1" * 64, registry_url=base,
                      repository="backup/tote/denied", tag="v1", authorization=value,
                      ca_pem=ca)
    for ident, exc in ((env.pki.agent, errors.PermissionDenied),
                       (env.pki.unknown, errors.Unauthenticated)):
        ctx: ssl.SSLContext = client_context(ident.cert, ident.key, ident.ca)
        async with AgentClient.connect(env.agents["a"].endpoint, ssl_context=ctx) as c:
            with pytest.raises(exc):
                await c.push(req, deadline=30)



async def test_9_bearer_token_registry_plain_http_insecure(env: Env) -> None:
    """Token auth (a real token server issuing ES256 JWTs the registry verifies) on a
    plain-HTTP registry: the controller's client falls back from https (insecure), gets one
    token scoped `repository:<repo>:pull,push`, the agent pushes with it; a wrong password
    is refused at the token endpoint before any agent is asked."""
    from tests.cluster.tokenauth import TokenServer
    from tote_core.errors import RegistryError

    require(available(), "docker-registry is needed (.ci/install installs it)")
    tokens = TokenServer(env.base / "token", {USER: PASSWORD})
    reg = start_registry(env.base / "token-registry", users={USER: PASSWORD}, token=tokens)
    try:
        img = layered_image("docker.io/tote/bearer:v1", [1 * MiB], seed=53)
        env.nodes["c"].import_archive(img.write_archive(env.base / "bearer.tar"))
        client = RegistryClient(insecure=True)
        repo = "backup/tote/bearer"
        async with client.session(reg.host, Credentials(USER, PASSWORD)) as s:
            base = await s.base()
            value = await s.authorization([push_scope(repo)])
        assert base == f"http://{reg.host}" and value.startswith("Bearer ")
        assert tokens.requests[-1] == (USER, [f"repository:{repo}:pull,push"], 200)
        async with env.open_agent("c") as agent:
            res = await agent.push(PushRequest(
                digest=img.digest, registry_url=base, repository=repo, tag="v1",
                authorization=value, insecure=True), deadline=120)
        assert res.blobs_uploaded == 2 and res.pushed_digest == img.digest
        assert reg.manifest_digest(repo, "v1") == img.digest
        with pytest.raises(RegistryError) as err:
            async with client.session(reg.host, Credentials(USER, "wrong")) as s:
                await s.authorization([push_scope(repo)])
        assert err.value.reason == "unauthorized"
        assert tokens.requests[-1][2] == 401
    finally:
        tokens.close()
        if reg.procs is not None:
            reg.procs.stop_all()
