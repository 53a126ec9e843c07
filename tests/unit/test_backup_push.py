"""Backup push, pure parts: ref rewriting, settings, the queue and how outcomes are reported.

The registry and agents are real in tests/integration/containerd/test_containerd_push.py and
tests/integration/salvage/test_backup_push.py; here the host, recorder and Secret read are
stand-ins built from the real Struct types, and the real `PluginHost` carries `push_image`.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from tote_containerd.agent.api import PushRequest as AgentPushRequest
from tote_registry import backup
from tote_registry.backup import BackupPush, backup_target, split_destination
from tote_registry.backup_plugin import BackupSettings

from tote_core import metrics
from tote_core.errors import RegistryError
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import (
    Incident,
    Notification,
    PushRequest,
    PushResult,
    TransferRequest,
)
from tote_core.oci.client import RegistryClient

D = "sha256:" + "ab12cd34ef56" + "0" * 52


@pytest.mark.parametrize(("ref", "dest", "want"), [
    ("docker.io/library/nginx:1.25", "reg.example:5000", ("library/nginx", "1.25")),
    ("nginx:1.25", "reg.example/mirror/", ("mirror/library/nginx", "1.25")),
    ("ghcr.io/org/app@" + D, "reg.example/m/n", ("m/n/org/app", "salvaged-ab12cd34ef56")),
    ("nginx", "reg.example", ("library/nginx", "salvaged-ab12cd34ef56")),  # never `latest`
    ("quay.io/a/b:latest", "reg.example", ("a/b", "salvaged-ab12cd34ef56")),
    ("quay.io/a/b:v2@" + D, "reg.example", ("a/b", "v2")),
])  # fmt: skip
def test_backup_target_keeps_the_path_and_never_tags_latest(
    ref: str, dest: str, want: tuple[str, str]
) -> None:
    host, repo, tag = backup_target(ref, D, dest)
    assert host == split_destination(dest)[0]
    assert (repo, tag) == want


@pytest.mark.parametrize("value", ["myorg", "reg.example/Upper", "reg.example/p:tag",
                                   "reg.example@sha256:00", "reg.example:"])
def test_backup_registry_setting_refuses_what_is_not_host_prefix(value: str) -> None:
    with pytest.raises(ValueError, match="--backup-registry"):
        BackupSettings(registry=value)


def test_backup_options_without_backup_registry_are_refused() -> None:
    for kw in ({"registry_secret": "s"}, {"registry_insecure": True}):
        with pytest.raises(ValueError, match="without --backup-registry"):
            BackupSettings(**kw)  # type: ignore[arg-type]
    BackupSettings(registry="10.0.0.5:5000/tote", registry_secret="s")


def test_requests_never_print_the_authorization() -> None:
    core = PushRequest(node="n", digest=D, registry_url="https://r", repository="a",
                       tag="t", authorization="Basic c2VjcmV0")
    agent = AgentPushRequest(digest=D, registry_url="https://r", repository="a", tag="t",
                             authorization="Basic c2VjcmV0")
    for obj in (core, agent):
        assert "c2VjcmV0" not in repr(obj) and "c2VjcmV0" not in str(obj)


# -- the worker --------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    async def emit(self, pod: Any, reason: str, note: str, *, type_: str, action: str) -> None:
        self.events.append((pod.metadata.name, reason, type_, note))


class Pusher:
    """An inline plugin: target node cannot serve the image, source node pushes."""

    def __init__(self, fail: RegistryError | None = None) -> None:
        self.calls: list[PushRequest] = []
        self.fail = fail
        self.notes: list[Notification] = []

    @hookimpl
    async def push_image(self, request: PushRequest) -> PushResult | None:
        self.calls.append(request)
        if self.fail is not None:
            raise self.fail
        if request.node == "target":
            raise RegistryError("node target: incomplete", reason="node")
        return PushResult(pushed_digest=D, index_pushed=False, manifests=(D,), blobs_total=3,
                          blobs_uploaded=2, blobs_skipped=1, blobs_mounted=0,
                          bytes_uploaded=5 * 1024 * 1024)

    @hookimpl
    def notify(self, notification: Notification) -> None:
        self.notes.append(notification)


def _job_parts() -> tuple[Incident, TransferRequest]:
    inc = Incident(namespace="ns", pod_name="web-1", pod_uid="u1", container="app",
                   init_container=False, image_ref="docker.io/shop/web@" + D, digest=D,
                   node_name="target", kind="pull", message="")
    return inc, TransferRequest(image_ref=inc.image_ref, digest=D, source_node="source",
                                target_node="target")


def _service(plugin: Pusher) -> tuple[BackupPush, Recorder]:
    host = PluginHost()
    host.register(plugin, "pusher")
    rec = Recorder()
    svc = BackupPush(kube=None, host=host, recorder=rec, client=RegistryClient(),
                     destination="reg.example/backup", secret="", namespace="tote",
                     timeout=30)

    async def header(host: str, repo: str, mounts: list[str]) -> tuple[str, str]:
        return "https://reg.example", "Basic x"

    svc._credentials_header = header  # type: ignore[method-assign]
    return svc, rec


async def test_push_falls_back_to_the_source_node_and_reports_success() -> None:
    plugin = Pusher()
    svc, rec = _service(plugin)
    ok0 = metrics.PUSH_SUCCESSES._value.get()
    inc, req = _job_parts()
    result = await svc.push(backup.Job(inc, req, *backup_target(inc.image_ref, D,
                                                                svc.destination)))
    assert result is not None
    assert [c.node for c in plugin.calls] == ["target", "source"]
    assert plugin.calls[0].tag == "salvaged-ab12cd34ef56"
    assert plugin.calls[0].repository == "backup/shop/web"
    (ev,) = rec.events
    assert ev[:3] == ("web-1", "ImagePushed", "Normal")
    assert "reg.example/backup/shop/web:salvaged-ab12cd34ef56" in ev[3] and "node source" in ev[3]
    assert [n.type for n in plugin.notes] == ["pushed"]
    assert metrics.PUSH_SUCCESSES._value.get() == ok0 + 1


async def test_registry_failure_is_reported_once_and_not_retried() -> None:
    plugin = Pusher(fail=RegistryError("cannot reach reg.example", reason="unreachable"))
    svc, rec = _service(plugin)
    failed0 = metrics.PUSH_FAILURES._value.get()
    inc, req = _job_parts()
    await svc.push(backup.Job(inc, req, *backup_target(inc.image_ref, D, svc.destination)))
    assert len(plugin.calls) == 1  # a registry problem is not another node's to fix
    (ev,) = rec.events
    assert ev[1:3] == ("ImagePushFailed", "Warning") and "cannot reach" in ev[3]
    assert [(n.type, "backup push" in n.error) for n in plugin.notes] == [("failed", True)]
    assert metrics.PUSH_FAILURES._value.get() == failed0 + 1


async def test_queue_is_bounded_and_dedupes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup, "QUEUE_SIZE", 2)
    plugin = Pusher()
    svc, rec = _service(plugin)
    inc, req = _job_parts()
    await svc.submit(inc, req)
    await svc.submit(inc, req)  # same digest and destination: queued once
    other = TransferRequest(image_ref="docker.io/shop/b:v1", digest="sha256:" + "1" * 64,
                            source_node="source", target_node="target")
    third = TransferRequest(image_ref="docker.io/shop/c:v1", digest="sha256:" + "2" * 64,
                            source_node="source", target_node="target")
    await svc.submit(inc, other)
    await svc.submit(inc, third)  # full: dropped and reported, never waited for
    assert [e[1] for e in rec.events] == ["ImagePushFailed"] and "queue is full" in rec.events[0][3]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc.run)
        with trio.fail_after(5):
            while len([e for e in rec.events if e[1] == "ImagePushed"]) < 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()  # leadership lost after the first push ...
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc.run)  # ... and regained: the worker carries on
        with trio.fail_after(5):
            while len([e for e in rec.events if e[1] == "ImagePushed"]) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
