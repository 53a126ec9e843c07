"""Errors of the agent side, free of grpclib so trio code can catch them."""

from __future__ import annotations

# One exception-group helper for tote, re-exported for the agent's modules.
from tote_core.errors import leaves as leaves
from tote_core.errors import single_leaf as single_leaf


class AgentError(Exception):
    """Base; `code` is a gRPC status name (e.g. NOT_FOUND), `reason` a short bounded word."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidArgument(AgentError):
    code = "INVALID_ARGUMENT"


class NotFound(AgentError):
    code = "NOT_FOUND"


class AlreadyExists(AgentError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(AgentError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(AgentError):
    code = "PERMISSION_DENIED"


class Unauthenticated(AgentError):
    code = "UNAUTHENTICATED"


class Unavailable(AgentError):
    code = "UNAVAILABLE"


class ResourceExhausted(AgentError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(AgentError):
    code = "DEADLINE_EXCEEDED"


class DataLoss(AgentError):
    """Bytes that do not hash to their digest."""

    code = "DATA_LOSS"


BY_CODE: dict[str, type[AgentError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, PermissionDenied,
                Unauthenticated, Unavailable, ResourceExhausted, DeadlineExceeded, DataLoss)
}


def from_code(code: str, message: str, reason: str = "") -> AgentError:
    return BY_CODE.get(code, AgentError)(message, reason=reason)
