"""The incident store: once per incident, forgotten when the subject goes — and the users
that share it (detection, salvage's pod events, notifications) keep their once-per-incident
rule through it."""

from __future__ import annotations

from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Notification
from tote_core.incidents import IncidentStore


def test_first_only_once_per_incident_and_forgotten_with_its_subject() -> None:
    store = IncidentStore()
    assert store.first("uid-1", "detect", "app", "reg/web:1", "detected")
    assert not store.first("uid-1", "detect", "app", "reg/web:1", "detected")
    assert store.first("uid-1", "detect", "app", "reg/web:1", "hooked")  # another outcome
    assert store.first("uid-2", "detect", "app", "reg/web:1", "detected")  # another pod
    assert not store.seen("uid-1", "config", "InvalidAnnotation", "note")
    store.record("uid-1", "config", "InvalidAnnotation", "note")
    assert store.seen("uid-1", "config", "InvalidAnnotation", "note")
    assert len(store) == 4
    store.forget("uid-1")
    assert len(store) == 1
    assert store.first("uid-1", "detect", "app", "reg/web:1", "detected")
    store.forget("never-seen")  # nothing to forget is fine


def test_memory_is_bounded_oldest_subject_first() -> None:
    store = IncidentStore(max_subjects=2)
    for uid in ("a", "b", "c"):
        store.record(uid, "x")
    assert not store.seen("a", "x") and store.seen("b", "x") and store.seen("c", "x")


async def test_notifications_are_once_per_incident_until_the_pod_goes() -> None:
    host = PluginHost()
    note = Notification(type="salvaged", pod_name="web-1", namespace="shop", pod_uid="u1",
                        image_ref="reg/web:1", digest="sha256:ab", target_node="n1")
    assert await host.notify(note)
    assert not await host.notify(note)  # a repeat is dropped
    assert await host.notify(Notification(
        type="failed", pod_name="web-1", namespace="shop", pod_uid="u1",
        image_ref="reg/web:1", digest="sha256:ab", target_node="n1"))  # another type
    host.incidents.forget("u1")  # the pod went
    assert await host.notify(note)
