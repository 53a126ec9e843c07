"""One error tree for tote.

Control flow between the reconcile engine and the code it drives uses exceptions rather than
status codes so that a plugin deep in a transfer can say "try again later" or "this will never
work" without every layer in between having to thread a result type through.
"""

from __future__ import annotations


class ToteError(Exception):
    """Base of every error tote raises on purpose."""


class ConfigError(ToteError):
    """Settings that cannot be used; raised before anything starts."""


class InvalidReference(ToteError):
    """An image reference that does not parse. The message is shown to users verbatim."""


class KubeError(ToteError):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when no response)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Conflict(KubeError):
    """409 from the API server: already exists, or a precondition / resourceVersion mismatch."""


class NotFound(KubeError):
    """404 from the API server."""


class Gone(KubeError):
    """410 from the API server: a watch's resourceVersion is too old; relist."""


class RetryLater(ToteError):
    """A transient failure: the caller should requeue with back-off.

    `reason` is a short machine-readable word used as a bounded metric label.
    """

    def __init__(self, message: str, *, reason: str = "transient") -> None:
        super().__init__(message)
        self.reason = reason


class PermanentError(ToteError):
    """A failure that retrying cannot fix (too large, no source, auth, Always policy, …)."""

    def __init__(self, message: str, *, reason: str = "permanent") -> None:
        super().__init__(message)
        self.reason = reason


class RegistryError(ToteError):
    """A registry lookup or push failed.

    `reason` is a bounded word: `unauthorized`, `not_found`, `unreachable` or `error`.
    """

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason
