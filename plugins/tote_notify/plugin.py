"""The `notify` plugin: detected notifications, and webhook / Slack delivery.

Two hooks:

- `on_detected` turns each new incident into a `detected` notification and emits it through
  the host (`PluginContext.notify`), so every `notify` implementation — this one and any
  third-party one — receives it, once per incident.
- `notify` only enqueues (a bounded memory channel) and returns: it runs inside detection
  and salvage workers and must never make them wait. A full queue drops the notification
  and counts it in `tote_webhook_dropped_total`.

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
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tote_core import __version__, metrics
from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import NOTIFICATION_TYPES, Incident, Notification
from tote_notify import payload

log = logging.getLogger("tote.plugins.notify")

QUEUE_SIZE = 256  # a burst of incidents; beyond it the receiver is down and drops are counted
TIMEOUT = 5.0  # per attempt
ATTEMPTS = 3  # one try and two retries
RETRY_PAUSES = (1.0, 3.0)  # before the 2nd and 3rd attempt
DROP_LOG_INTERVAL = 60.0  # at most one warning a minute while dropping


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
    def configure(self, context: PluginContext) -> None:
        self.context = context
        s = context.settings
        if not s.webhook_url:
            return
        # Read once at start-up: a Secret mounted as a file (whitespace at the ends is not
        # part of the key — `kubectl create secret --from-file` keeps a trailing newline).
        key = Path(s.webhook_secret_file).read_bytes().strip() if s.webhook_secret_file else b""
        self.webhook = Webhook(
            url=s.webhook_url, events=frozenset(s.webhook_events or NOTIFICATION_TYPES),
            format=s.webhook_format, key=key,
        )
        context.add_service("notify-webhook", self.run)
        log.info("webhook notifications to %s (%s; events %s%s)", _redact(s.webhook_url),
                 s.webhook_format, ",".join(sorted(self.webhook.events)),
                 "; signed" if key else "")

    @hookimpl
    async def on_detected(self, incident: Incident) -> None:
        if self.context is None:
            return
        await self.context.notify(Notification(
            type="detected", pod_name=incident.pod_name, namespace=incident.namespace,
            pod_uid=incident.pod_uid, image_ref=incident.image_ref,
            digest=incident.digest or "", target_node=incident.node_name or "",
        ))

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
