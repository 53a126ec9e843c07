"""Errors of the agent side, free of grpclib so trio code can catch them.

One tree: `AgentError` is a `tote_core.errors.ToteError`, so `except ToteError` catches
everything tote raises on purpose, agent errors included.

One table: `TABLE` says, for every agent error, which gRPC status it travels as (both
directions; its `reason` rides along in the `tote-reason` trailing metadata, never in the
message text), what the salvage engine makes of it (`RetryLater` / `PermanentError` and
the reason), what a failed backup push makes of it (a `RegistryError` reason), and which
containerd answer it stands for. The functions below (`to_wire`, `from_wire`,
`from_containerd`, `for_salvage`, `for_push`) only read the table: a new error or reason
is one row, and the directions cannot disagree.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final, NamedTuple

# One exception-group helper for tote, re-exported for the agent's modules.
from tote_core.errors import PermanentError, RegistryError, RetryLater, ToteError
from tote_core.errors import leaves as leaves
from tote_core.errors import single_leaf as single_leaf

REASON_KEY: Final = "tote-reason"  # trailing metadata (and data channel reply) key
_REASON_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}")  # a bounded word: it becomes a label


class AgentError(ToteError):
    """Base; `reason` is a short bounded word (a metric label, and what callers decide
    on). `code` is the gRPC status name the error travels as, from `TABLE`."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def code(self) -> str:
        status = _row(self, "status").status
        assert status is not None
        return status


class InvalidArgument(AgentError): ...
class NotFound(AgentError): ...
class AlreadyExists(AgentError): ...
class FailedPrecondition(AgentError): ...
class PermissionDenied(AgentError): ...
class Unauthenticated(AgentError): ...
class Unavailable(AgentError): ...
class ResourceExhausted(AgentError): ...
class DeadlineExceeded(AgentError): ...


class DataLoss(AgentError):
    """Bytes that do not hash to their digest."""


class DigestMismatch(DataLoss):
    """Bytes whose hash is not the digest they were sent under, raised where the hash is
    taken: the agent's own writers (fast path, small blobs), or containerd's COMMIT of a
    content write (`from_containerd`, call "commit"). Never found by reading error text."""

    def __init__(self, message: str, *, reason: str = "digest_mismatch") -> None:
        super().__init__(message, reason=reason)


class Salvage(NamedTuple):
    """What the salvage engine makes of an agent error: `RetryLater` or `PermanentError`
    with `reason` ("" = the error's own reason, else "agent_unavailable")."""

    kind: type[RetryLater] | type[PermanentError]
    reason: str = ""


RETRY = Salvage(RetryLater)
PERMANENT = Salvage(PermanentError)


def permanent(reason: str) -> Salvage:
    return Salvage(PermanentError, reason)


def retry(reason: str) -> Salvage:
    return Salvage(RetryLater, reason)


class Row(NamedTuple):
    """One line of `TABLE`. A row applies to an error that is an instance of `error` and
    carries `reason` ("" = any reason). For each column the first row that applies and
    has a value (not None) decides."""

    error: type[AgentError]
    reason: str
    status: str | None          # gRPC status name, both directions
    salvage: Salvage | None     # the salvage engine's RetryLater / PermanentError
    push: str | None            # RegistryError reason of a failed backup push
    containerd: tuple[str, str] | None = None  # (containerd's status, the call) it means


# Reason rows first (a bounded word decides over the class), then one row per class, most
# specific class first; the last row (AgentError, any reason) has every column.
# Salvage: PERMANENT / RETRY keep the error's own reason (RETRY: "agent_unavailable" if none).
# Push: a reason row is the registry's own answer relayed (the message stays the agent's);
# a class row is the node's failure ("node N: …"); `node` = another node may serve it.
TABLE: Final[tuple[Row, ...]] = (
    #   error       reason                       status salvage    push
    Row(AgentError, "too_large",                 None,  PERMANENT, None),
    Row(AgentError, "layers_discarded",          None,  PERMANENT, None),
    Row(AgentError, "platform_missing",          None,  PERMANENT, None),
    Row(AgentError, "snapshot_salvage_disabled", None,  PERMANENT, None),
    Row(AgentError, "layer_unverified",          None,  PERMANENT, None),
    Row(AgentError, "registry_unreachable",      None,  None,      "unreachable"),
    Row(AgentError, "unauthorized",              None,  None,      "unauthorized"),
    Row(AgentError, "registry_error",            None,  None,      "error"),
    Row(AgentError, "digest_mismatch",           None,  None,      "error"),
    # containerd verifies the digest itself when a content write is committed with the
    # expected digest: its FAILED_PRECONDITION answering that COMMIT is a digest mismatch
    # (`containerd.ContentWriter.commit` says why nothing else can cause it there).
    Row(DigestMismatch, "digest_mismatch", "DATA_LOSS", retry("digest_mismatch"), "error",
        containerd=("FAILED_PRECONDITION", "commit")),
    #   error               reason status                 salvage                       push
    Row(DataLoss,           "",    "DATA_LOSS",           retry("digest_mismatch"),     "error"),
    Row(InvalidArgument,    "",    "INVALID_ARGUMENT",    permanent("invalid_request"), "error"),
    Row(NotFound,           "",    "NOT_FOUND",           retry("source_unavailable"),  "node"),
    Row(AlreadyExists,      "",    "ALREADY_EXISTS",      RETRY,                        "error"),
    Row(FailedPrecondition, "",    "FAILED_PRECONDITION", RETRY,                        "node"),
    Row(PermissionDenied,   "",    "PERMISSION_DENIED",   permanent("unauthorized"),    "error"),
    Row(Unauthenticated,    "",    "UNAUTHENTICATED",     permanent("unauthorized"),    "error"),
    Row(Unavailable,        "",    "UNAVAILABLE",         RETRY,                        "node"),
    Row(ResourceExhausted,  "",    "RESOURCE_EXHAUSTED",  RETRY,                        "error"),
    Row(DeadlineExceeded,   "",    "DEADLINE_EXCEEDED",   RETRY,                        "error"),
    Row(AgentError,         "",    "UNKNOWN",             RETRY,                        "error"),
)


def _row(exc: AgentError, column: str) -> Row:
    """The row that decides `column` for `exc`."""
    for row in TABLE:
        if isinstance(exc, row.error) and row.reason in ("", exc.reason) \
                and getattr(row, column) is not None:
            return row
    raise AssertionError(f"TABLE has no {column} for {type(exc).__name__}")  # last row has all


def to_wire(exc: AgentError) -> tuple[str, str, dict[str, str]]:
    """`exc` as a gRPC status: (status name, message, trailing metadata with the reason)."""
    return exc.code, str(exc), {REASON_KEY: exc.reason} if exc.reason else {}


def from_wire(status: str, message: str, metadata: Mapping[str, Any] | None = None
              ) -> AgentError:
    """The agent error a gRPC status and its trailing metadata stand for. A row bound to
    the reason that came along wins over its class's row; a status no row names (INTERNAL,
    UNIMPLEMENTED, …) is the base `AgentError`. A reason that is not a bounded word is
    dropped (it would become a metric label)."""
    reason = str((metadata or {}).get(REASON_KEY, ""))
    if not _REASON_WORD.fullmatch(reason):
        reason = ""
    found: type[AgentError] | None = None
    for row in TABLE:
        if row.status != status:
            continue
        if row.reason and row.reason == reason:
            return row.error(message, reason=reason)
        if not row.reason and found is None:
            found = row.error
    return (found or AgentError)(message, reason=reason)


def from_containerd(status: str, message: str, call: str = "") -> AgentError:
    """containerd's gRPC status (answering `call`) as an agent error: a row naming that
    (status, call) first, else the status's own row. containerd sends no reason."""
    text = f"containerd: {message or status}"
    for row in TABLE:
        if row.containerd == (status, call):
            return row.error(text)
    return from_wire(status, text)


def for_salvage(exc: AgentError, where: str) -> RetryLater | PermanentError:
    """An agent's error as the salvage engine's RetryLater / PermanentError."""
    outcome = _row(exc, "salvage").salvage
    assert outcome is not None
    return outcome.kind(f"{where}: {exc}",
                        reason=outcome.reason or exc.reason or "agent_unavailable")


def for_push(exc: AgentError | RetryLater, node: str) -> RegistryError:
    """A failed backup push on `node` as the `RegistryError` its caller acts on. A
    RetryLater here means no agent is known for the node: another node may serve."""
    if isinstance(exc, RetryLater):
        return RegistryError(f"node {node}: {exc}", reason="node")
    row = _row(exc, "push")
    assert row.push is not None
    return RegistryError(str(exc) if row.reason else f"node {node}: {exc}", reason=row.push)


def one_error(eg: BaseExceptionGroup[Any], what: str) -> BaseException:
    """One status for parallel work that failed together (a source or registry that goes
    away fails every stream at once): the most telling agent error — bytes that do not match
    their digest or a refusal before a lost connection — naming how many of `what` failed.
    Anything that is not an agent error stays a group (a bug: INTERNAL)."""
    errs = [e for e in leaves(eg) if isinstance(e, AgentError)]
    if not errs or len(errs) != len(leaves(eg)):
        return eg
    rank: dict[type[AgentError], int] = {
        DigestMismatch: 0, DataLoss: 0, PermissionDenied: 1, FailedPrecondition: 2,
        Unavailable: 4}
    pick = min(errs, key=lambda e: rank.get(type(e), 3))
    if len(errs) == 1:
        return pick
    one = type(pick)(f"{pick} ({len(errs)} {what} failed)", reason=pick.reason)
    one.__cause__ = pick
    return one


def agent_error_of(exc: BaseException) -> AgentError | None:
    """The agent error a failed call stands for, at the call's edge (the gRPC handler): the
    error itself, or `one_error` of a group made only of agent errors; None for anything
    else (a bug, answered INTERNAL)."""
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        one = one_error(exc, "tasks")
        return one if isinstance(one, AgentError) else None
    return None


@contextlib.contextmanager
def as_one_error(what: str) -> Iterator[None]:
    """Around a nursery of parallel work: what fails together leaves as `one_error`'s
    single agent error (or the group itself, when something else failed too)."""
    try:
        yield
    except BaseExceptionGroup as eg:
        leaf = one_error(eg, what)
        if leaf is eg:
            raise
        raise leaf from None
