"""The `webhook` plugin: notifications delivered to a webhook, as JSON or Slack Block Kit.

Its settings (`WebhookSettings`, `--webhook-url` …) are its own, declared through
`settings_type`. Core emits the notifications (`detected`, `salvaged`, `failed`; the backup
plugin `pushed`); this plugin's `notify` only enqueues (a bounded memory channel) and
returns: it runs inside detection and salvage workers and must never make them wait. A full
queue drops the notification and counts it in `tote_webhook_dropped_total`.

Delivery is a service the host runs in the controller's leader-only nursery: one worker,
one `httpx.AsyncClient` owned by this object, one request at a time (a Slack channel reads
in order). Each attempt has a 5 s deadline; connection errors, timeouts, 408, 429 and 5xx
are retried a small bounded number of times with a short pause; anything else, or running
out of attempts, counts in `tote_webhook_failures_total` and moves on. A receiver that
hangs therefore costs the worker at most ATTEMPTS attempts of 5 s per notification and
costs reconciliation nothing: the queue fills up and further notifications are dropped
and counted.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import httpx
import msgspec
import trio

from tote_core import __version__, metrics
from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import NOTIFICATION_TYPES, Notification
from tote_notify import payload

log = logging.getLogger("tote.plugins.notify")

QUEUE_SIZE = 256  # a burst of incidents; beyond it the receiver is down and drops are counted
TIMEOUT = 5.0  # per attempt
ATTEMPTS = 3  # one try and two retries
RETRY_PAUSES = (1.0, 3.0)  # before the 2nd and 3rd attempt
DROP_LOG_INTERVAL = 60.0  # at most one warning a minute while dropping


class WebhookSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`--webhook-*`: where notifications go; no URL, no webhook."""

    url: str = ""
    events: list[str] = msgspec.field(default_factory=list)  # empty: every type
    format: Literal["json", "slack"] = "json"
    secret_file: str = ""  # HMAC-SHA256 key for X-Tote-Signature-256

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "url": "POST notifications (JSON or Slack) here; empty = no webhook",
        "events": "comma list of detected,salvaged,failed,pushed (default: all)",
        "format": "json (default) or slack (Block Kit)",
        "secret_file": "file holding the key for X-Tote-Signature-256 (HMAC-SHA256)",
    }

    def __post_init__(self) -> None:
        bad = set(self.events) - set(NOTIFICATION_TYPES)
        if bad:
            raise ValueError(f"--webhook-events: unknown event types {sorted(bad)} "
                             "(use detected, salvaged, failed, pushed)")
        if self.url and not re.match(r"https?://[^/\s]+", self.url):
            raise ValueError(f"--webhook-url: {self.url!r} is not an http(s) URL")
        if self.secret_file and not os.access(self.secret_file, os.R_OK):
            raise ValueError(f"--webhook-secret-file: cannot read {self.secret_file}")
        if (self.events or self.secret_file) and not self.url:
            given = [f for f in ("events", "secret_file") if getattr(self, f)]
            raise ValueError(f"--webhook-{given[0].replace('_', '-')} given without "
                             "--webhook-url")


def retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


@dataclass(frozen=True)
class Webhook:
    """Where and how to deliver, from `--webhook-*` settings."""

    url: str
    events: frozenset[str]
    format: payload.Format
    key: bytes  # empty: unsigned

    def wants(self, n: Notification) -> bool:
        return n.type in self.events

    def request(self, n: Notification) -> tuple[bytes, dict[str, str]]:
        data = payload.body(n, self.format)
        headers = {"Content-Type": "application/json", "User-Agent": f"tote/{__version__}"}
        if self.key:
            headers[payload.SIGNATURE_HEADER] = payload.signature(self.key, data)
        return data, headers


class NotifyPlugin:
    def __init__(
        self, *, queue_size: int = QUEUE_SIZE, timeout: float = TIMEOUT,
        attempts: int = ATTEMPTS, retry_pauses: tuple[float, ...] = RETRY_PAUSES,
    ) -> None:
        self.timeout = timeout
        self.attempts = attempts
        self.retry_pauses = retry_pauses
        self.context: PluginContext | None = None
        self.webhook: Webhook | None = None
        self.client: httpx.AsyncClient | None = None  # while the worker runs
        self._send, self._receive = trio.open_memory_channel[Notification](queue_size)
        self._last_drop_log = -math.inf

    # -- hooks -----------------------------------------------------------------------------

    @hookimpl
    def settings_type(self) -> type[WebhookSettings]:
        return WebhookSettings

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        self.context = context
        s = context.settings_for(WebhookSettings)
        if not s.url:
            return
        # Read once at start-up: a Secret mounted as a file (whitespace at the ends is not
        # part of the key — `kubectl create secret --from-file` keeps a trailing newline).
        key = Path(s.secret_file).read_bytes().strip() if s.secret_file else b""
        self.webhook = Webhook(
            url=s.url, events=frozenset(s.events or NOTIFICATION_TYPES),
            format=s.format, key=key,
        )
        context.add_service("notify-webhook", self.run)
        log.info("webhook notifications to %s (%s; events %s%s)", _redact(s.url),
                 s.format, ",".join(sorted(self.webhook.events)),
                 "; signed" if key else "")

    @hookimpl
    def notify(self, notification: Notification) -> None:
        if self.webhook is None or not self.webhook.wants(notification):
            return
        try:
            self._send.send_nowait(notification)
        except trio.WouldBlock:
            metrics.WEBHOOK_DROPPED.inc()
            now = trio.current_time()
            if now - self._last_drop_log >= DROP_LOG_INTERVAL:
                self._last_drop_log = now
                log.warning("webhook queue full (%d waiting): dropping %s notifications; the "
                            "receiver is slow or down (see tote_webhook_dropped_total)",
                            self._send.statistics().current_buffer_used, notification.type)

    # -- the worker (a service the host runs) ----------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver queued notifications one by one until cancelled (leadership lost or
        shutdown); what is still queued waits for the next run."""
        async with httpx.AsyncClient(follow_redirects=False) as client:
            self.client = client
            task_status.started()
            try:
                while True:
                    await self.deliver(await self._receive.receive())
            finally:
                self.client = None

    async def deliver(self, n: Notification) -> bool:
        """One notification, with the bounded retry; True when the receiver took it."""
        assert self.webhook is not None and self.client is not None
        data, headers = self.webhook.request(n)
        why = ""
        for attempt in range(self.attempts):
            if attempt:
                await trio.sleep(self.retry_pauses[min(attempt, len(self.retry_pauses)) - 1])
            try:
                with trio.fail_after(self.timeout):
                    response = await self.client.post(
                        self.webhook.url, content=data, headers=headers)
            except trio.TooSlowError:
                why = f"no answer within {self.timeout:g}s"
                continue
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                log.debug("webhook took %s notification for %s/%s", n.type, n.namespace,
                          n.pod_name)
                return True
            why = f"HTTP {response.status_code}"
            if not retryable(response.status_code):
                break
        metrics.WEBHOOK_FAILURES.inc()
        log.warning("webhook did not take the %s notification for %s/%s after %d attempt(s): "
                    "%s", n.type, n.namespace, n.pod_name, attempt + 1, why)
        return False


def _redact(url: str) -> str:
    """Scheme and host only: Slack webhook paths are secrets."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}/…"
