"""Scripted agents: a plugin whose `transfer` outcomes the test decides call by call, and
which answers the inventory hooks (`find_image`, `resolve_tag`, `remove_image`) from what
the test says each node holds.

Why scripted rather than a mock: the salvage engine's branches are decided by what a
transfer does — returns a `TransferResult`, raises `RetryLater` or `PermanentError`, or
never returns — and by which nodes hold the digest. The script is that and nothing more; the
host, the engine, the records and the events stay real.

    agents = ScriptedAgents(holders={"sha256:…": ["node-b"]})
    agents.script(agents.retry_later("agent busy"), agents.succeed())
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio

from tote_core.errors import PermanentError, RetryLater
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import (
    Incident,
    Notification,
    OptInQuery,
    ProgressCallback,
    TransferProgress,
    TransferRequest,
    TransferResult,
)

Outcome = Callable[[TransferRequest, ProgressCallback], Awaitable[TransferResult]]


def result(bytes_total: int = 1000, *, bytes_transferred: int | None = None,
           blobs_skipped: int = 0, duration_seconds: float = 0.5) -> TransferResult:
    """A plain successful `TransferResult` (every byte moved as blobs)."""
    return TransferResult(
        bytes_total=bytes_total,
        bytes_transferred=bytes_total if bytes_transferred is None else bytes_transferred,
        blobs_skipped=blobs_skipped, duration_seconds=duration_seconds,
    )


@dataclass
class ScriptedAgents:
    """A `transfer` plugin with scripted outcomes, plus the inventory the test gives it.

    `holders`: digest → nodes whose agents say they hold it (`find_image`); `tags`:
    tagged reference → digest (`resolve_tag`); `removable`: whether `remove_image`
    succeeds. Outcomes are consumed one per `transfer` call, in order; when the script is
    empty `default` answers (success with `result()` unless set otherwise).
    `calls` records every request; `started` is set when a transfer begins (useful with
    `hang`); `release` ends every hanging transfer with success.
    """

    holders: dict[str, list[str]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    removable: bool = True
    default: Outcome | None = None
    calls: list[TransferRequest] = field(default_factory=list)
    removed: list[tuple[str, str, str | None]] = field(default_factory=list)
    started: trio.Event = field(default_factory=trio.Event)
    _script: deque[Outcome] = field(default_factory=deque)
    _released: trio.Event = field(default_factory=trio.Event)

    # -- the script ------------------------------------------------------------------------

    def script(self, *outcomes: Outcome) -> None:
        """Append outcomes for the next transfer calls, in order."""
        self._script.extend(outcomes)

    @staticmethod
    def succeed(res: TransferResult | None = None, *,
                progress: Iterable[TransferProgress] = ()) -> Outcome:
        """Report each `progress` through the engine's callback, then return `res`."""
        reports = list(progress)

        async def outcome(request: TransferRequest, report: ProgressCallback
                          ) -> TransferResult:
            for p in reports:
                await report(p)
            await trio.lowlevel.checkpoint()
            return res or result()

        return outcome

    @staticmethod
    def retry_later(message: str = "agent unavailable", reason: str = "source_unavailable"
                    ) -> Outcome:
        """Raise `RetryLater` (transient: the engine tries the next source, then retries)."""

        async def outcome(request: TransferRequest, report: ProgressCallback
                          ) -> TransferResult:
            await trio.lowlevel.checkpoint()
            raise RetryLater(message, reason=reason)

        return outcome

    @staticmethod
    def permanent(message: str = "image too large", reason: str = "too_large") -> Outcome:
        """Raise `PermanentError` (`reason` in planner.SOURCE_SPECIFIC, e.g.
        `layers_discarded`, makes it permanent for that source only)."""

        async def outcome(request: TransferRequest, report: ProgressCallback
                          ) -> TransferResult:
            await trio.lowlevel.checkpoint()
            raise PermanentError(message, reason=reason)

        return outcome

    def hang(self, then: TransferResult | None = None) -> Outcome:
        """Never return until `release()` (then succeed with `then`), or until the engine's
        deadline (`--transfer-timeout`) cancels it."""

        async def outcome(request: TransferRequest, report: ProgressCallback
                          ) -> TransferResult:
            await self._released.wait()
            return then or result()

        return outcome

    def release(self) -> None:
        """Let every hanging transfer (and any later `hang`) finish."""
        self._released.set()

    # -- hooks -----------------------------------------------------------------------------

    @hookimpl
    async def transfer(self, request: TransferRequest, progress: ProgressCallback
                       ) -> TransferResult:
        self.calls.append(request)
        self.started.set()
        outcome = self._script.popleft() if self._script else (
            self.default or self.succeed())
        return await outcome(request, progress)

    @hookimpl
    async def find_image(self, digest: str, nodes: list[str]) -> list[str] | None:
        await trio.lowlevel.checkpoint()
        held = [n for n in self.holders.get(digest, []) if n in nodes]
        return held or None

    @hookimpl
    async def resolve_tag(self, image_ref: str, nodes: list[str]) -> str | None:
        await trio.lowlevel.checkpoint()
        return self.tags.get(image_ref)

    @hookimpl
    async def remove_image(self, node: str, image_ref: str, digest: str | None) -> bool:
        await trio.lowlevel.checkpoint()
        self.removed.append((node, image_ref, digest))
        return self.removable


@dataclass
class HookRecorder:
    """A plugin that records what core (and other plugins, through `PluginContext.notify`)
    passed to the broadcast hooks, and answers `opt_in` with `opt_in` (None: no answer).

    Register it next to the plugin under test to see what reached `notify`, `on_detected`
    and `on_salvaged` — the host's once-per-incident rule applied, as a real notifier would
    see it."""

    opt_in_answer: bool | None = None
    detected: list[Incident] = field(default_factory=list)
    salvaged: list[tuple[Incident, TransferRequest, TransferResult]] = field(
        default_factory=list)
    notified: list[Notification] = field(default_factory=list)
    asked: list[OptInQuery] = field(default_factory=list)

    @hookimpl
    def on_detected(self, incident: Incident) -> None:
        self.detected.append(incident)

    @hookimpl
    def on_salvaged(self, incident: Incident, request: TransferRequest,
                    result: TransferResult) -> None:
        self.salvaged.append((incident, request, result))

    @hookimpl
    def notify(self, notification: Notification) -> None:
        self.notified.append(notification)

    @hookimpl
    def opt_in(self, query: OptInQuery) -> bool | None:
        self.asked.append(query)
        return self.opt_in_answer

    def notified_types(self) -> list[str]:
        return [n.type for n in self.notified]
