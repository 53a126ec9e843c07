"""Errors of the agent side, free of grpclib so trio code can catch them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# One exception-group helper for tote, re-exported for the agent's modules.
from tote_core.errors import leaves as leaves
from tote_core.errors import single_leaf as single_leaf


class AgentError(Exception):
    """Base; `code` is a gRPC status name (e.g. NOT_FOUND), `reason` a short bounded word.
    Each subclass names its code in its class line and is found again by it (`from_code`)."""

    code = "UNKNOWN"
    by_code: dict[str, type[AgentError]] = {}

    def __init_subclass__(cls, *, code: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code
        AgentError.by_code[code] = cls

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidArgument(AgentError, code="INVALID_ARGUMENT"): ...
class NotFound(AgentError, code="NOT_FOUND"): ...
class AlreadyExists(AgentError, code="ALREADY_EXISTS"): ...
class FailedPrecondition(AgentError, code="FAILED_PRECONDITION"): ...
class PermissionDenied(AgentError, code="PERMISSION_DENIED"): ...
class Unauthenticated(AgentError, code="UNAUTHENTICATED"): ...
class Unavailable(AgentError, code="UNAVAILABLE"): ...
class ResourceExhausted(AgentError, code="RESOURCE_EXHAUSTED"): ...
class DeadlineExceeded(AgentError, code="DEADLINE_EXCEEDED"): ...


class DataLoss(AgentError, code="DATA_LOSS"):
    """Bytes that do not hash to their digest."""


def from_code(code: str, message: str, reason: str = "") -> AgentError:
    return AgentError.by_code.get(code, AgentError)(message, reason=reason)


def one_error(eg: BaseExceptionGroup[Any], what: str) -> BaseException:
    """One status for parallel work that failed together (a source or registry that goes
    away fails every stream at once): the most telling agent error — bytes that do not match
    their digest or a refusal before a lost connection — naming how many of `what` failed.
    Anything that is not an agent error stays a group (a bug: INTERNAL)."""
    errs = [e for e in leaves(eg) if isinstance(e, AgentError)]
    if not errs or len(errs) != len(leaves(eg)):
        return eg
    rank: dict[type[AgentError], int] = {
        DataLoss: 0, PermissionDenied: 1, FailedPrecondition: 2, Unavailable: 4}
    pick = min(errs, key=lambda e: rank.get(type(e), 3))
    if len(errs) == 1:
        return pick
    one = type(pick)(f"{pick} ({len(errs)} {what} failed)", reason=pick.reason)
    one.__cause__ = pick
    return one


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
