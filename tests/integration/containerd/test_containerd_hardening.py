"""Data-path defects of issue 12, each against real agents and containerd: parallel blob
streams failing together give one clear status; a refused import leaves no lease; the data
channel wants a client certificate in the handshake and bounds its connections; the agent's
JSON logs stay valid JSON whatever the message holds."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import trio
from tote_containerd.agent import errors
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agent.tls import client_context
from tote_containerd.agent.tokens import Signer

from tests.cluster.containerd_env import Env
from tests.cluster.images import layered_image

MiB = 1024 * 1024
pytestmark = pytest.mark.integration


def _token(env: Env, digest: str, source: str, target: str, *, rogue: bool = False) -> str:
    c = env.pki.rogue_controller if rogue else env.pki.controller
    return Signer(c.cert, c.key).mint(digest=digest, source=source, target=target, ttl=60)


def _leases(env: Env, node: str) -> str:
    return env.nodes[node].ctr("leases", "ls").stdout


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


async def test_source_killed_with_parallel_streams_gives_one_unavailable(env: Env) -> None:
    """API path, four layers in flight when the source agent is SIGKILLed: every stream
    fails at once; the target answers one UNAVAILABLE (was INTERNAL "ExceptionGroup … (4
    sub-exceptions)" and "ImportFrom crashed" in its log)."""
    a, b = env.nodes["a"], env.nodes["b"]
    img = layered_image("docker.io/tote/parallel:v1", [48 * MiB] * 4, seed=121,
                        spool_dir=env.base / "spool")
    a.import_archive(img.write_archive(env.base / "parallel.tar"))
    src = env.agent("a", "--no-fast-path", name="agent-a-parallel")
    killed = trio.Event()

    async def progress(p: ImportProgress) -> None:
        if p.bytes_transferred >= 16 * MiB and not killed.is_set():
            # Freeze the source first so all four streams wait on its connection, then kill
            # it: the connection's end fails every stream in the same instant.
            os.killpg(src.proc.pid, signal.SIGSTOP)
            await trio.sleep(1)
            src.proc.kill()
            killed.set()

    log_before = env.agents["b"].proc.log_path.stat().st_size
    with pytest.raises(errors.AgentError) as err:
        async with env.open_agent("b") as agent:
            await agent.import_from(ImportRequest(
                source_node="a", source_endpoint=src.endpoint,
                token=_token(env, img.digest, "a", "b"), digest=img.digest,
                names=[img.name], parallelism=4), progress)
    assert killed.is_set(), "the transfer finished before the source could be killed"
    assert type(err.value) is errors.Unavailable, repr(err.value)
    assert "ExceptionGroup" not in str(err.value)
    log = env.agents["b"].proc.log_path.read_bytes()[log_before:].decode(errors="replace")
    assert "ImportFrom crashed" not in log
    assert not [n for n in b.image_names() if "tote/parallel" in n]


async def test_refused_import_leaves_no_lease(env: Env) -> None:
    """Refusals before any byte moves (token from another CA; image over the size limit)
    leave no import lease on the target (one used to stay for an hour)."""
    img = layered_image("docker.io/tote/refused:v1", [512 * 1024], seed=122)
    env.nodes["a"].import_archive(img.write_archive(env.base / "refused.tar"))
    lease = "tote-import-" + img.digest.split(":")[1][:32]
    async with env.open_agent("b") as agent:
        with pytest.raises(errors.Unauthenticated):
            await agent.import_from(ImportRequest(
                source_node="a", source_endpoint=env.agents["a"].endpoint,
                token=_token(env, img.digest, "a", "b", rogue=True), digest=img.digest,
                names=[img.name]))
        assert lease not in _leases(env, "b")
        with pytest.raises(errors.FailedPrecondition) as err:
            await agent.import_from(ImportRequest(
                source_node="a", source_endpoint=env.agents["a"].endpoint,
                token=_token(env, img.digest, "a", "b"), digest=img.digest,
                names=[img.name], max_bytes=1000))
        assert err.value.reason == "too_large"
        assert lease not in _leases(env, "b")


async def test_data_channel_requires_a_client_certificate(env: Env) -> None:
    """A TLS client without a certificate is refused in the handshake: the server never
    reads the request and sends no byte of a blob."""
    port = env.agents["d"].data_port
    ctx = client_context("", "", env.pki.agent.ca)

    def attempt() -> BaseException | bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                ctx.wrap_socket(raw) as conn:
            try:
                conn.sendall(b'{"session": "x", "digest": "sha256:00", "offset": 0}\n')
                return conn.recv(4096)
            except (ssl.SSLError, OSError) as exc:
                return exc

    log_before = env.agents["d"].proc.log_path.stat().st_size
    got = await trio.to_thread.run_sync(attempt)
    # TLS 1.3: the client's side of the handshake ends before the server checks its
    # certificate, so the client sees the server's alert or just the end of the connection
    # (depending on timing) — never a reply. The server says why it refused.
    assert isinstance(got, (ssl.SSLError, ConnectionError)) or got == b"", got
    if isinstance(got, ssl.SSLError) and "ALERT" in str(got).upper():
        assert "CERTIFICATE_REQUIRED" in str(got).upper(), got
    # The agent logs the refusal on its own schedule (a loaded machine can lag the client):
    # poll its log rather than read it once.
    log = ""
    with trio.move_on_after(15):
        while "data connection refused in the TLS handshake" not in log:
            log = env.agents["d"].proc.log_path.read_bytes()[log_before:].decode(
                errors="replace")
            await trio.sleep(0.2)
    assert "data connection refused in the TLS handshake" in log, log[-2000:]
    assert "CERTIFICATE" in log.upper()
    # A certificate from the tote CA without the agent role completes the handshake and is
    # refused at once, before the request is read.
    u = env.pki.unknown
    ctx2 = client_context(u.cert, u.key, u.ca)

    def attempt_unknown() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                ctx2.wrap_socket(raw) as conn:
            got = b""
            while not got.endswith(b"\n"):
                data = conn.recv(4096)
                if not data:
                    break
                got += data
            return got

    reply = json.loads(await trio.to_thread.run_sync(attempt_unknown))
    assert reply == {"ok": False, "code": "PERMISSION_DENIED",
                     "message": "the data channel is for agent identities only"}


async def test_data_channel_bounds_its_connections(env: Env) -> None:
    """60 idle connections (no TLS hello): the agent's threads stay bounded (one per open
    connection up to the limit, not one per connection); once they go, a fast-path import
    still runs over the data channel."""
    agent = env.agents["d"]
    before = _threads(agent.proc.pid)
    idle = [socket.create_connection(("127.0.0.1", agent.data_port), timeout=10)
            for _ in range(60)]
    try:
        await trio.sleep(2)
        during = _threads(agent.proc.pid)
        assert during - before <= 16 + 2, (before, during)
    finally:
        for s in idle:
            s.close()
    img = layered_image("docker.io/tote/bounded:v1", [8 * MiB, 4 * MiB], seed=123)
    env.nodes["c"].import_archive(img.write_archive(env.base / "bounded.tar"))
    src = env.extra["c-fast"]
    deadline = time.monotonic() + 60
    async with env.open_agent("d") as target:
        done = await target.import_from(ImportRequest(
            source_node="c", source_endpoint=src.endpoint,
            token=_token(env, img.digest, "c", "d"), digest=img.digest, names=[img.name]))
    assert time.monotonic() < deadline
    assert done.path == "fast" and img.name in env.nodes["d"].image_names()


async def test_json_logs_are_valid_json_with_quotes_and_newlines(env: Env) -> None:
    """An agent with `--log-format json` at debug level: refusals whose messages quote the
    caller's input (double quotes) and failure details with tracebacks (newlines) — every
    line of its output is one JSON object."""
    agent = env.agent("b", "--no-fast-path", "--log-format", "json", name="agent-b-json")
    try:
        async with env.open_agent("b", endpoints={"b": agent.endpoint}) as c:
            for ref in ['docker.io/x/"quoted":1', "docker.io/x/a\nb:1", "docker.io/x/y:1"]:
                with pytest.raises(errors.AgentError):
                    await c.inspect(ref)
            with pytest.raises(errors.AgentError):
                await c.import_from(ImportRequest(
                    source_node="a", source_endpoint="127.0.0.1:1",
                    token='tote1."quoted"..', digest="sha256:" + "0" * 64, names=[]))
    finally:
        agent.proc.stop()
    lines = [ln for ln in agent.proc.log_path.read_text().splitlines() if ln.strip()]
    entries = [json.loads(ln) for ln in lines]  # raises on any invalid line
    msgs = " ".join(e["msg"] for e in entries)
    assert '"quoted"' in msgs
    assert any("exc" in e or "\n" in e["msg"] for e in entries), entries[-5:]
