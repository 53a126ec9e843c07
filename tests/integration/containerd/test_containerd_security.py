"""(8) mTLS and token negatives against real agents: all refused, nothing written."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
import trio
from tote_containerd.agent import errors
from tote_containerd.agent.api import ImportRequest
from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.tls import client_context
from tote_containerd.agent.tokens import Signer

from tests.cluster.containerd_env import REPO, Env
from tests.cluster.images import layered_image
from tests.cluster.pki import Identity

pytestmark = pytest.mark.integration


def _ctx(ident: Identity | None, ca: str):  # type: ignore[no-untyped-def]
    """A client context that dials agents, as the controller's and an agent's do."""
    if ident is None:
        return client_context("", "", ca, peer_role="agent")
    return client_context(ident.cert, ident.key, ca, peer_role="agent")


@pytest.fixture(scope="module")
def image(env: Env) -> str:
    img = layered_image("docker.io/tote/secure:v1", [256 * 1024], seed=81)
    env.nodes["a"].import_archive(img.write_archive(env.base / "secure.tar"))
    return img.digest


def _names_on_b(env: Env, digest: str) -> list[str]:
    return [n for n in env.nodes["b"].image_names() if "tote/secure" in n or digest in n]


async def test_health_without_client_cert(env: Env) -> None:
    ca = env.pki.controller.ca
    async with AgentClient.connect(env.agents["a"].endpoint, ssl_context=_ctx(None, ca)) as c:
        assert (await c.health()).containerd_ok
        with pytest.raises(errors.Unauthenticated):
            await c.inspect("docker.io/tote/secure:v1")
        with pytest.raises(errors.Unauthenticated):
            await c.list_images()
    # grpc.health.v1 over TLS without a client certificate.
    code = (
        "import asyncio, ssl, sys\n"
        "from grpclib.client import Channel\n"
        "from grpclib.health.v1.health_pb2 import HealthCheckRequest\n"
        "from grpclib.health.v1.health_grpc import HealthStub\n"
        "async def main():\n"
        "    ctx = ssl.create_default_context(cafile=sys.argv[1]); ctx.check_hostname = False\n"
        "    ctx.set_alpn_protocols(['h2'])\n"
        "    ch = Channel('127.0.0.1', int(sys.argv[2]), ssl=ctx)\n"
        "    r = await HealthStub(ch).Check(HealthCheckRequest(), timeout=10)\n"
        "    print(r.status); ch.close()\n"
        "asyncio.run(main())\n")
    out = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-c", code, ca, str(env.agents["a"].port)],
        capture_output=True, text=True, timeout=60))
    assert out.stdout.strip() == "1", out.stderr  # SERVING
    url = f"http://127.0.0.1:{env.agents['a'].metrics_port}/healthz"
    body = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert body.startswith(b"ok")


async def test_wrong_ca_refused(env: Env, image: str) -> None:
    rogue = env.pki.rogue_controller
    # Client cert from another CA: the handshake fails.
    with pytest.raises(errors.Unavailable):
        async with AgentClient.connect(env.agents["b"].endpoint,
                                       ssl_context=_ctx(rogue, env.pki.controller.ca)) as c:
            await c.list_images()
    # Client trusting another CA does not accept the agent either.
    with pytest.raises(errors.Unavailable):
        async with AgentClient.connect(env.agents["b"].endpoint,
                                       ssl_context=_ctx(env.pki.controller, rogue.ca)) as c:
            await c.list_images()


async def test_identities_are_enforced(env: Env, image: str) -> None:
    agent_ctx = _ctx(env.pki.agent, env.pki.agent.ca)
    ctl_ctx = _ctx(env.pki.controller, env.pki.controller.ca)
    unknown_ctx = _ctx(env.pki.unknown, env.pki.unknown.ca)
    token = Signer(env.pki.controller.cert, env.pki.controller.key).mint(
        digest=image, source="a", target="b", ttl=60)
    async with AgentClient.connect(env.agents["b"].endpoint, ssl_context=agent_ctx) as c:
        with pytest.raises(errors.PermissionDenied):
            await c.import_from(ImportRequest(
                source_node="a", source_endpoint=env.agents["a"].endpoint, token=token,
                digest=image, names=["docker.io/tote/secure:v1"]))
        with pytest.raises(errors.PermissionDenied):
            await c.remove_image(names=["docker.io/tote/app:v1"])
        with pytest.raises(errors.PermissionDenied):
            await c.inspect("docker.io/tote/app:v1")
    async with AgentClient.connect(env.agents["a"].endpoint, ssl_context=ctl_ctx) as c:
        with pytest.raises(errors.PermissionDenied):
            await c.open_session(token, "b")
        with pytest.raises(errors.PermissionDenied):
            async with c.read_blob("x", image) as chunks:
                async for _ in chunks:
                    pass
    async with AgentClient.connect(env.agents["a"].endpoint, ssl_context=unknown_ctx) as c:
        with pytest.raises(errors.Unauthenticated):
            await c.open_session(token, "b")
    assert not _names_on_b(env, image)


async def test_client_checks_the_server_identity(env: Env) -> None:
    """A server with a valid tote certificate but the controller identity is no agent."""
    from tests.cluster.containerd_env import start_agent

    c = env.pki.controller
    fake = start_agent(env.group, env.nodes["c"], "--tls-cert", c.cert, "--tls-key", c.key,
                       "--tls-ca", c.ca, "--no-fast-path", name="agent-c-wrong-identity")
    try:
        with pytest.raises(errors.PermissionDenied, match="expected 'agent'"):
            async with AgentClient.connect(fake.endpoint,
                                           ssl_context=_ctx(c, c.ca)) as client:
                await client.list_images()
    finally:
        fake.proc.stop()


async def _import_with(env: Env, token: str, digest: str) -> None:
    async with AgentClient.connect(
            env.agents["b"].endpoint,
            ssl_context=_ctx(env.pki.controller, env.pki.controller.ca)) as c:
        await c.import_from(ImportRequest(
            source_node="a", source_endpoint=env.agents["a"].endpoint, token=token,
            digest=digest, names=["docker.io/tote/secure:v1"]))


async def test_bad_tokens_refused_nothing_written(env: Env, image: str) -> None:
    ctl = env.pki.controller
    good = Signer(ctl.cert, ctl.key)
    cases = {
        "expired": good.mint(digest=image, source="a", target="b", ttl=60,
                             now=time.time() - 3600),
        "rogue-signer": Signer(env.pki.rogue_controller.cert,
                               env.pki.rogue_controller.key).mint(
            digest=image, source="a", target="b", ttl=60),
        "agent-signed": Signer(env.pki.agent.cert, env.pki.agent.key).mint(
            digest=image, source="a", target="b", ttl=60),
        "unsigned": Signer().mint(digest=image, source="a", target="b", ttl=60),
        "wrong-target": good.mint(digest=image, source="a", target="c", ttl=60),
        "wrong-source": good.mint(digest=image, source="c", target="b", ttl=60),
        "garbage": "tote1.e30.AAAA.AAAA",
    }
    # Claims edited after signing (target c → b): the signature no longer matches.
    p = good.mint(digest=image, source="a", target="c", ttl=60).split(".")
    import base64
    import json
    claims = json.loads(base64.urlsafe_b64decode(p[1] + "=" * (-len(p[1]) % 4)))
    claims["target"] = "b"
    p[1] = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    cases["tampered"] = ".".join(p)
    for name, token in cases.items():
        with pytest.raises((errors.PermissionDenied, errors.Unauthenticated)) as err:
            await _import_with(env, token, image)
        print(f"{name}: {err.value}")
    # A token for a different digest cannot read this image's blobs.
    other = good.mint(digest="sha256:" + "1" * 64, source="a", target="b", ttl=60)
    with pytest.raises(errors.NotFound):
        await _import_with(env, other, image)
    assert not _names_on_b(env, image)


async def test_replayed_token_refused(env: Env, image: str) -> None:
    ctl = env.pki.controller
    token = Signer(ctl.cert, ctl.key).mint(digest=image, source="a", target="b", ttl=60)
    agent_ctx = _ctx(env.pki.agent, env.pki.agent.ca)
    async with AgentClient.connect(env.agents["a"].endpoint, ssl_context=agent_ctx) as c:
        await c.open_session(token, "b")
        with pytest.raises(errors.PermissionDenied, match="already used"):
            await c.open_session(token, "b")
    # Durable: a restarted (here: second) agent on the same node refuses it too.
    second = env.agent("a", "--no-fast-path", name="agent-a-second")
    try:
        async with AgentClient.connect(second.endpoint, ssl_context=agent_ctx) as c:
            with pytest.raises(errors.PermissionDenied, match="already used"):
                await c.open_session(token, "b")
    finally:
        second.proc.stop()
    with pytest.raises(errors.PermissionDenied):
        await _import_with(env, token, image)
    assert not _names_on_b(env, image)


def test_refuses_to_start_without_tls_or_insecure(env: Env) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tote_containerd.agent", "--containerd-socket",
         env.nodes["a"].socket, "--grpc-port", "1"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'plugins'}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert "--insecure" in out.stderr
