"""The agent's one error table (`tote_containerd.agent.errors.TABLE`): every row both ways
over the wire, what the salvage engine and a backup push make of each error, containerd's
statuses, unknown statuses and reasons; and the table itself consistent (one status per
class, every status a real gRPC status)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import grpclib.const
import pytest
import trio
from tote_containerd.agent import errors, server
from tote_containerd.agent.api import ImportRequest
from tote_containerd.agent.asyncio_bridge import open_bridge
from tote_containerd.agent.client import AgentClient
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import TABLE, Row
from tote_containerd.agent.node_agent import NodeAgent
from tote_containerd.agent.peer import Peer
from tote_containerd.agent.tokens import Verifier

from tote_core.errors import PermanentError, RegistryError, RetryLater, ToteError

CLASS_ROWS = [r for r in TABLE if r.status is not None]
REASON_ROWS = [r for r in TABLE if r.status is None]
CLASSES = sorted({r.error for r in CLASS_ROWS}, key=lambda c: c.__name__)


def _name(row: Row) -> str:
    return f"{row.error.__name__}[{row.reason or '*'}]"


def test_one_tree() -> None:
    """`except ToteError` catches every agent error."""
    for cls in CLASSES:
        assert issubclass(cls, ToteError)
    assert issubclass(errors.DigestMismatch, errors.DataLoss)
    assert errors.DigestMismatch("x").reason == "digest_mismatch"


def test_every_status_is_a_grpc_status_and_each_class_has_one() -> None:
    members = grpclib.const.Status.__members__
    for row in TABLE:
        assert row.status is None or row.status in members, row
        if row.containerd is not None:
            assert row.containerd[0] in members, row
    # A reason never changes the status: rows bound to a reason either leave the status to
    # the class (None) or are a class's own row.
    by_class: dict[type[errors.AgentError], set[str]] = {}
    for row in CLASS_ROWS:
        assert row.status is not None
        by_class.setdefault(row.error, set()).add(row.status)
    assert all(len(s) == 1 for s in by_class.values()), by_class
    assert TABLE[-1] == Row(errors.AgentError, "", "UNKNOWN", errors.RETRY, "error")


@pytest.mark.parametrize("row", CLASS_ROWS, ids=_name)
def test_class_rows_both_ways(row: Row) -> None:
    exc = row.error("it failed", reason=row.reason)
    status, message, metadata = errors.to_wire(exc)
    assert (status, message) == (row.status, "it failed")
    assert metadata == ({errors.REASON_KEY: row.reason} if row.reason else {})
    back = errors.from_wire(status, message, metadata)
    assert type(back) is row.error and back.reason == row.reason and str(back) == "it failed"
    assert back.code == row.status


@pytest.mark.parametrize("row", REASON_ROWS, ids=_name)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_reason_rows_travel_with_every_class(row: Row, cls: type[errors.AgentError]) -> None:
    """A reason crosses the wire in the metadata, whatever the class, and comes back on the
    same class (the reason never appears in the message)."""
    exc = cls("no luck", reason=row.reason)
    status, message, metadata = errors.to_wire(exc)
    assert row.reason not in message and metadata == {errors.REASON_KEY: row.reason}
    back = errors.from_wire(status, message, metadata)
    assert back.reason == row.reason
    # The class again, unless the class is bound to a reason of its own (DigestMismatch is
    # DATA_LOSS with reason digest_mismatch; with another reason it is a DataLoss) or the
    # reason binds a subclass (DATA_LOSS + digest_mismatch is a DigestMismatch).
    want = next(r.error for r in CLASS_ROWS
                if r.status == exc.code and r.reason in ("", row.reason))
    assert type(back) is want
    assert want is cls or (row.reason == "digest_mismatch" and issubclass(want, cls)) or (
        cls is errors.DigestMismatch and want is errors.DataLoss)


def test_digest_mismatch_on_the_wire() -> None:
    """A DataLoss raised with reason digest_mismatch (the push's registry check) arrives as
    DigestMismatch; one without a reason stays DataLoss."""
    sent = errors.DataLoss("registry stored x as y", reason="digest_mismatch")
    back = errors.from_wire(*errors.to_wire(sent))
    assert type(back) is errors.DigestMismatch and back.code == "DATA_LOSS"
    assert type(errors.from_wire("DATA_LOSS", "short", {})) is errors.DataLoss


@pytest.mark.parametrize("status", ["INTERNAL", "UNIMPLEMENTED", "CANCELLED", "OUT_OF_RANGE",
                                    "ABORTED", "UNKNOWN", "NOT_A_STATUS", ""])
def test_unknown_statuses_are_the_base_class(status: str) -> None:
    back = errors.from_wire(status, "boom", {errors.REASON_KEY: "agent_unreachable"})
    assert type(back) is errors.AgentError
    assert back.code == "UNKNOWN" and back.reason == "agent_unreachable"
    assert type(errors.from_containerd(status, "boom")) is errors.AgentError


@pytest.mark.parametrize("reason", ["Not A Word", "x" * 41, "digest mismatch", "1a", "a-b"])
def test_a_reason_that_is_no_bounded_word_is_dropped(reason: str) -> None:
    """It would become a metric label."""
    assert errors.from_wire("NOT_FOUND", "m", {errors.REASON_KEY: reason}).reason == ""


def test_no_metadata() -> None:
    back = errors.from_wire("NOT_FOUND", "gone", None)
    assert type(back) is errors.NotFound and back.reason == ""


@pytest.mark.parametrize("row", CLASS_ROWS, ids=_name)
def test_containerd_statuses(row: Row) -> None:
    """containerd's status means its row's class (containerd sends no reason); only the
    rows that name a (status, call) of containerd's own differ, and only at that call."""
    assert row.status is not None
    got = errors.from_containerd(row.status, "it said so")
    want = next(r.error for r in CLASS_ROWS if r.status == row.status and not r.reason)
    assert type(got) is want and str(got) == "containerd: it said so" and got.reason == ""
    if row.containerd is not None:
        status, call = row.containerd
        mapped = errors.from_containerd(status, "whatever the text", call)
        assert type(mapped) is row.error and mapped.reason == row.reason
        assert type(errors.from_containerd(status, "whatever", "other")) is not row.error


def test_containerd_commit_refusal_is_a_digest_mismatch_by_status_and_call() -> None:
    """No word of containerd's message is read: the status at COMMIT decides."""
    got = errors.from_containerd("FAILED_PRECONDITION", "", "commit")
    assert isinstance(got, errors.DigestMismatch) and got.reason == "digest_mismatch"
    assert str(got) == "containerd: FAILED_PRECONDITION"
    other = errors.from_containerd("FAILED_PRECONDITION", "unexpected commit digest", "")
    assert type(other) is errors.FailedPrecondition
    assert type(errors.from_containerd("OUT_OF_RANGE", "x", "commit")) is errors.AgentError


# What the salvage engine and a push made of each error before the table (transfer.py's
# translate and push.py's _mapped), kept: (error, salvage kind, reason, push reason, prefix).
E = errors
EXPECTED: list[tuple[errors.AgentError, type, str, str, bool]] = [
    (E.FailedPrecondition("x", reason="too_large"), PermanentError, "too_large", "node", True),
    (E.FailedPrecondition("x", reason="platform_missing"), PermanentError, "platform_missing",
     "node", True),
    (E.FailedPrecondition("x", reason="snapshot_salvage_disabled"), PermanentError,
     "snapshot_salvage_disabled", "node", True),
    (E.FailedPrecondition("x", reason="layer_unverified"), PermanentError, "layer_unverified",
     "node", True),
    (E.FailedPrecondition("x", reason="layers_discarded"), PermanentError, "layers_discarded",
     "node", True),
    (E.FailedPrecondition("x", reason="snapshot_unsupported"), RetryLater,
     "snapshot_unsupported", "node", True),
    (E.FailedPrecondition("x", reason="size_mismatch"), RetryLater, "size_mismatch", "node",
     True),
    (E.FailedPrecondition("x", reason="registry_error"), RetryLater, "registry_error", "error",
     False),
    (E.FailedPrecondition("x", reason="incomplete"), RetryLater, "incomplete", "node", True),
    (E.FailedPrecondition("x"), RetryLater, "agent_unavailable", "node", True),
    (E.DigestMismatch("x"), RetryLater, "digest_mismatch", "error", False),
    (E.DataLoss("x", reason="digest_mismatch"), RetryLater, "digest_mismatch", "error", False),
    (E.DataLoss("x"), RetryLater, "digest_mismatch", "error", True),
    (E.PermissionDenied("x"), PermanentError, "unauthorized", "error", True),
    (E.PermissionDenied("x", reason="unauthorized"), PermanentError, "unauthorized",
     "unauthorized", False),
    (E.Unauthenticated("x", reason="unauthorized"), PermanentError, "unauthorized",
     "unauthorized", False),
    (E.Unauthenticated("x"), PermanentError, "unauthorized", "error", True),
    (E.InvalidArgument("x"), PermanentError, "invalid_request", "error", True),
    (E.NotFound("x"), RetryLater, "source_unavailable", "node", True),
    (E.NotFound("x", reason="absent"), RetryLater, "source_unavailable", "node", True),
    (E.Unavailable("x"), RetryLater, "agent_unavailable", "node", True),
    (E.Unavailable("x", reason="agent_unreachable"), RetryLater, "agent_unreachable", "node",
     True),
    (E.Unavailable("x", reason="unpack_failed"), RetryLater, "unpack_failed", "node", True),
    (E.Unavailable("x", reason="registry_unreachable"), RetryLater, "registry_unreachable",
     "unreachable", False),
    (E.Unavailable("x", reason="registry_error"), RetryLater, "registry_error", "error", False),
    (E.DeadlineExceeded("x", reason="registry_unreachable"), RetryLater,
     "registry_unreachable", "unreachable", False),
    (E.DeadlineExceeded("x"), RetryLater, "agent_unavailable", "error", True),
    (E.ResourceExhausted("x"), RetryLater, "agent_unavailable", "error", True),
    (E.AlreadyExists("x"), RetryLater, "agent_unavailable", "error", True),
    (E.AgentError("x"), RetryLater, "agent_unavailable", "error", True),
]


@pytest.mark.parametrize("exc,kind,reason,push,prefixed", EXPECTED,
                         ids=lambda v: repr(v) if isinstance(v, Exception) else None)
def test_salvage_and_push(exc: errors.AgentError, kind: type[RetryLater | PermanentError],
                          reason: str, push: str, prefixed: bool) -> None:
    out = errors.for_salvage(exc, "import a → b")
    assert type(out) is kind and out.reason == reason and str(out) == "import a → b: x"
    # The same after a trip over the wire (the controller sees the decoded error).
    wired = errors.for_salvage(errors.from_wire(*errors.to_wire(exc)), "import a → b")
    assert type(wired) is kind and wired.reason == reason
    pushed = errors.for_push(exc, "n1")
    assert isinstance(pushed, RegistryError) and pushed.reason == push
    assert str(pushed) == ("node n1: x" if prefixed else "x")


def test_push_without_an_agent_for_the_node() -> None:
    out = errors.for_push(RetryLater("no tote agent known for node 'n1'"), "n1")
    assert out.reason == "node" and str(out).startswith("node n1: ")


# --- over a real gRPC connection -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@contextlib.asynccontextmanager
async def _agent(tmp_path: Path) -> AsyncIterator[str]:
    """A real node agent's gRPC server (insecure, loopback) whose containerd socket does
    not exist; its endpoint."""

    @contextlib.asynccontextmanager
    async def open_peer(endpoint: str) -> AsyncIterator[Peer]:
        async with AgentClient.connect(endpoint, rpc_timeout=10) as client:
            yield client

    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        cd = ContainerdClient(bridge, str(tmp_path / "no-containerd.sock"))
        await cd.connect()
        agent = NodeAgent(cd=cd, node="n1", platform="linux/amd64", verifier=Verifier(),
                          open_peer=open_peer)
        sock = _listening()
        await nursery.start(partial(server.serve, bridge, agent, sock, None, insecure=True))
        try:
            yield f"127.0.0.1:{sock.getsockname()[1]}"
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await cd.close()


async def test_reason_crosses_grpc_in_trailing_metadata(tmp_path: Path) -> None:
    """The target agent fails an import because its source is unreachable: the status
    arrives as Unavailable with the target's reason (read from the trailing metadata), and
    the message is the target's own text, nothing appended."""
    closed = _free_port()
    async with _agent(tmp_path) as endpoint, AgentClient.connect(endpoint) as client:
        with pytest.raises(errors.Unavailable) as err:
            await client.import_from(ImportRequest(
                source_node="n2", source_endpoint=f"127.0.0.1:{closed}", token="t",
                digest="sha256:" + "a" * 64, names=[]))
        assert err.value.reason == "agent_unreachable"
        assert f"agent 127.0.0.1:{closed} unreachable" in str(err.value)
        assert "reason" not in str(err.value)
        # A unary call: containerd's absence, as the agent's own Unavailable (no reason).
        with pytest.raises(errors.Unavailable) as err2:
            await client.inspect("sha256:" + "b" * 64)
        assert err2.value.reason == "" and "containerd unreachable" in str(err2.value)
