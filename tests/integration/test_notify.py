"""The `notify` plugin against a real HTTP receiver started by the test.

The plugin runs inside the real plugin host, its worker started as a host service, exactly
as in the controller; notifications enter through the host (`notify`). What
is tried: the JSON payload and its signature, the Slack Block Kit message, the event
filter, a receiver answering 500, one that hangs, and a port that refuses connections.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from tote_notify.plugin import NotifyPlugin, WebhookSettings

from tests.cluster.procs import free_port
from tests.cluster.webhook import Mode, Receiver
from tote_core import metrics
from tote_core.hooks.context import PluginContext
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Incident, Notification, PluginSettings, detected
from tote_core.settings import ControllerSettings

DIGEST = "sha256:" + "ab" * 32
INCIDENT = Incident(
    namespace="shop", pod_name="web-1", pod_uid="uid-1", container="app",
    init_container=False, image_ref="registry.example:5000/shop/web:1.2", digest=DIGEST,
    node_name="node-b", kind="pull", message="connection refused",
)


def failed(**extra: str) -> Notification:
    fields = {"pod_name": "web-1", "namespace": "shop", "pod_uid": "uid-1",
              "image_ref": INCIDENT.image_ref, "digest": DIGEST, "source_node": "node-a",
              "target_node": "node-b", **extra}
    return Notification(type="failed", **fields)


def counter(c: Any) -> float:
    return c._value.get()  # type: ignore[no-any-return]


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    mode: Mode = getattr(request, "param", "ok")
    r = Receiver(mode=mode).start()
    try:
        yield r
    finally:
        r.stop()


@asynccontextmanager
async def notifier(plugin: NotifyPlugin | None = None, **settings: Any
                   ) -> AsyncIterator[tuple[PluginHost, NotifyPlugin]]:
    """The real host with the webhook plugin configured (its own settings, as flags would
    give them) and its worker running."""
    host = PluginHost()
    plugin = plugin or NotifyPlugin()
    host.register(plugin, "webhook")
    host.plugin_settings = PluginSettings({"webhook": msgspec.convert(settings,
                                                                      WebhookSettings)})
    context = PluginContext(
        settings=ControllerSettings(),
        kube=None, cache=None, host=host,  # type: ignore[arg-type]  # unused by webhook
    )
    await host.configure(context)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run_services)
        yield host, plugin
        nursery.cancel_scope.cancel()


async def wait_for(predicate: Any, seconds: float = 20) -> None:
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.05)


async def test_json_payload_fields_and_signature(receiver: Receiver, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret-key\n")  # as `kubectl create secret --from-file` keeps it
    async with notifier(url=receiver.url, secret_file=str(secret)) as (host, _):
        await host.notify(detected(INCIDENT))
        await host.notify(failed(error="source node-a: agent unreachable"))
        await wait_for(lambda: len(receiver.requests) == 2)
    seen, fail = (r.json() for r in receiver.requests)
    assert list(seen) == ["type", "pod_name", "namespace", "image_ref", "digest",
                          "source_node", "target_node", "error", "timestamp"]
    assert seen | {"timestamp": ""} == {
        "type": "detected", "pod_name": "web-1", "namespace": "shop",
        "image_ref": INCIDENT.image_ref, "digest": DIGEST, "source_node": "",
        "target_node": "node-b", "error": "", "timestamp": "",
    }
    assert fail["type"] == "failed" and fail["error"] == "source node-a: agent unreachable"
    assert fail["source_node"] == "node-a"
    for r in receiver.requests:
        assert r.headers["Content-Type"] == "application/json"
        stamp = r.json()["timestamp"]
        assert time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")  # RFC3339 UTC
        want = "sha256=" + hmac.new(b"s3cret-key", r.body, hashlib.sha256).hexdigest()
        assert r.headers["X-Tote-Signature-256"] == want


async def test_unsigned_without_a_secret(receiver: Receiver) -> None:
    async with notifier(url=receiver.url) as (host, _):
        await host.notify(failed())
        await wait_for(lambda: len(receiver.requests) == 1)
    assert "X-Tote-Signature-256" not in receiver.requests[0].headers


async def test_slack_block_kit_with_the_same_facts(receiver: Receiver) -> None:
    async with notifier(url=receiver.url, format="slack") as (host, _):
        await host.notify(failed(error="too large: 3.1GiB over --max-image-size"))
        await wait_for(lambda: len(receiver.requests) == 1)
    msg = receiver.requests[0].json()
    assert "web-1" in msg["text"]  # fallback text for clients without blocks
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds == ["header", "section", "section", "context"]
    facts = "\n".join(f["text"] for f in msg["blocks"][1]["fields"])
    for fact in ("shop/web-1", INCIDENT.image_ref, DIGEST, "node-a", "node-b"):
        assert fact in facts
    assert "too large" in msg["blocks"][2]["text"]["text"]
    assert "technical debt" in msg["blocks"][3]["elements"][0]["text"]


async def test_event_filter(receiver: Receiver) -> None:
    async with notifier(url=receiver.url, events=["salvaged"]) as (host, _):
        await host.notify(detected(INCIDENT))
        await host.notify(failed())
        await host.notify(Notification(type="salvaged", pod_name="web-1", namespace="shop",
                                       image_ref=INCIDENT.image_ref, digest=DIGEST))
        await wait_for(lambda: len(receiver.requests) == 1)
        await trio.sleep(0.5)
    assert [r.json()["type"] for r in receiver.requests] == ["salvaged"]


@pytest.mark.parametrize("receiver", ["error"], indirect=True)
async def test_receiver_answering_500_bounded_retry_then_counted(receiver: Receiver) -> None:
    before = counter(metrics.WEBHOOK_FAILURES)
    async with notifier(url=receiver.url) as (host, plugin):
        await host.notify(failed())
        await wait_for(lambda: counter(metrics.WEBHOOK_FAILURES) == before + 1)
        await trio.sleep(1.5)  # no fourth attempt
    assert len(receiver.requests) == plugin.attempts == 3
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 2.9  # the retry pauses (1 s, 3 s)


@pytest.mark.parametrize("receiver", ["hang"], indirect=True)
async def test_hanging_receiver_times_out_at_5s_and_never_blocks(receiver: Receiver) -> None:
    before = counter(metrics.WEBHOOK_FAILURES)
    dropped = counter(metrics.WEBHOOK_DROPPED)
    plugin = NotifyPlugin(attempts=1, queue_size=4)  # one attempt: measure the 5 s deadline
    async with notifier(plugin, url=receiver.url) as (host, _):
        t0 = trio.current_time()
        for i in range(10):  # more than the queue holds while the worker hangs
            await host.notify(failed(pod_uid=f"uid-{i}"))
        assert trio.current_time() - t0 < 0.5  # never waits for the receiver
        await wait_for(lambda: counter(metrics.WEBHOOK_FAILURES) == before + 1, seconds=15)
        took = trio.current_time() - t0
    assert 4.9 <= took < 12, took  # the 5 s deadline, plus scheduling on a busy machine
    # One in flight, four queued, five dropped and counted.
    assert counter(metrics.WEBHOOK_DROPPED) == dropped + 5


async def test_refused_connection_counted() -> None:
    before = counter(metrics.WEBHOOK_FAILURES)
    plugin = NotifyPlugin(retry_pauses=(0.1, 0.1))
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    async with notifier(plugin, url=url) as (host, _):
        await host.notify(failed())
        await wait_for(lambda: counter(metrics.WEBHOOK_FAILURES) == before + 1)


async def test_once_per_incident_through_the_host(receiver: Receiver) -> None:
    async with notifier(url=receiver.url) as (host, _):
        for _ in range(3):  # three reconciles / retries of the same incident
            await host.notify(detected(INCIDENT))
            await host.notify(failed())
        await wait_for(lambda: len(receiver.requests) == 2)
        await trio.sleep(0.5)
    assert sorted(r.json()["type"] for r in receiver.requests) == ["detected", "failed"]
