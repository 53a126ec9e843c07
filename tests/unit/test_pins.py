"""Unpinning salvaged images (tote_core/salvage/pins.py) and the reaper around it, with
fakes for the plugin host, the record store, the recorder and the caches: the decisions
only (which records, when, how often, in which order against deletion). The real thing —
agents, containerd labels, a registry, the API server — is
tests/integration/salvage/test_pinning.py.

Tried: back-off schedule and cap; pull-secret choice (named pod, else same-repository pods);
a registry that does not serve → kept and backed off (no second lookup until due) → serves
→ unpinned, status patched, a Normal ImageUnpinned event regarding the record; records not
pinned never touched; one lookup for records sharing (namespace, image, digest, secrets);
pinning turned off → unpinned without a lookup; a gone node counts as unpinned; at most
CONCURRENCY calls in flight; the reaper deletes an expired pinned record only after its
unpin succeeded, and counts tote_pinned_images.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import trio

from tote_core import metrics
from tote_core.salvage import pins
from tote_core.salvage.pins import Pins, backoff, pull_secrets
from tote_core.salvage.reaper import Reaper
from tote_core.salvage.statuswriter import StatusPatch
from tote_core.structs.kube import (
    Container,
    LocalObjectReference,
    Node,
    ObjectMeta,
    Pod,
    PodSpec,
)
from tote_core.structs.salvagerecord import SalvageRecord, SalvageRecordSpec, SalvageRecordStatus

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def record(name: str, *, digest: str = D1, node: str = "n1", pinned: bool = True,
           ns: str = "app", pod: str = "web", phase: str = "Completed",
           completed: datetime | None = None) -> SalvageRecord:
    return SalvageRecord(
        metadata=ObjectMeta(name=name, namespace=ns, uid=f"uid-{name}"),
        spec=SalvageRecordSpec(pod_name=pod, digest=digest, target_node=node,
                               image_ref=f"reg.example/shop/web@{digest}"),
        status=SalvageRecordStatus(phase=phase, pinned=pinned,  # type: ignore[arg-type]
                                   completed_at=(completed or datetime.now(UTC))
                                   .strftime("%Y-%m-%dT%H:%M:%SZ")),
    )


def pod(name: str, image: str, secrets: tuple[str, ...] = (), ns: str = "app") -> Pod:
    return Pod(metadata=ObjectMeta(name=name, namespace=ns),
               spec=PodSpec(containers=[Container(name="c", image=image)],
                            image_pull_secrets=[LocalObjectReference(name=s) for s in secrets]))


class Host:
    def __init__(self, serves: bool | None = False, unpins: bool | None = True) -> None:
        self.serves, self.unpins = serves, unpins
        self.lookups: list[tuple[str, str, str, list[str]]] = []
        self.unpinned: list[tuple[str, str]] = []
        self.in_flight = self.max_in_flight = 0

    async def _busy(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await trio.sleep(0.01)
        self.in_flight -= 1

    async def registry_serves(self, image_ref: str, digest: str, namespace: str,
                              pull_secrets: list[str]) -> bool | None:
        self.lookups.append((image_ref, digest, namespace, pull_secrets))
        await self._busy()
        return self.serves

    async def unpin_image(self, node: str, digest: str) -> bool | None:
        await self._busy()
        if self.unpins:
            self.unpinned.append((node, digest))
        return self.unpins


class Store:
    def __init__(self, items: list[SalvageRecord]) -> None:
        self.items = items
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []
        self.status = self  # the store's StatusWriter

    async def patch(self, namespace: str, name: str, status: StatusPatch) -> None:
        self.patches.append((name, msgspec.to_builtins(status)))

    async def list_all(self) -> list[SalvageRecord]:
        return self.items

    async def delete(self, namespace: str, name: str, uid: str) -> bool:
        self.deleted.append(name)
        return True


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, str, str, str]] = []

    async def emit(self, regarding: Any, reason: str, note: str, *, type_: str = "Warning",
                   action: str = "") -> None:
        self.events.append((regarding, reason, note, type_))


class Caches:
    synced = True

    def __init__(self, pods: list[Pod] = (), nodes: tuple[str, ...] = ("n1", "n2")) -> None:  # type: ignore[assignment]
        self.pods, self.nodes = list(pods), nodes

    def pods_in_namespace(self, ns: str) -> list[Pod]:
        return [p for p in self.pods if p.metadata.namespace == ns]

    def node(self, name: str) -> Node | None:
        return Node(metadata=ObjectMeta(name=name)) if name in self.nodes else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(items: list[SalvageRecord], host: Host, *, enabled: bool = True,
         caches: Caches | None = None, clock: Clock | None = None
         ) -> tuple[Pins, Store, Recorder]:
    store, rec = Store(items), Recorder()
    p = Pins(host, store, rec, caches or Caches(), enabled=enabled,  # type: ignore[arg-type]
             interval=10.0, check_timeout=1.0, clock=clock or Clock())
    return p, store, rec


def test_backoff_doubles_from_the_reap_interval_and_is_capped() -> None:
    assert [backoff(n, 600) for n in (1, 2, 3, 4, 5, 9)] == [600, 1200, 2400, 3600, 3600, 3600]
    assert backoff(3, 7200) == 7200  # an interval longer than the cap is the cap


def test_pull_secrets_of_the_named_pod_else_of_pods_using_the_repository() -> None:
    r = record("r")
    named = pod("web", "reg.example/shop/web:v1", ("a", "b", "a"))
    assert pull_secrets(r, [named, pod("x", "reg.example/shop/web:v1", ("c",))]) == ["a", "b"]
    # The named pod was restarted by tote (a new name): pods of the same repository.
    others = [pod("web-2", "reg.example/shop/web:v1", ("c",)),
              pod("web-3", f"reg.example/shop/web@{D1}", ("d", "c")),
              pod("db", "reg.example/shop/db:v1", ("e",)),
              pod("bad", "NOT A REF", ("f",))]
    assert pull_secrets(r, others) == ["c", "d"]
    assert pull_secrets(r, []) == []


async def test_not_served_is_kept_and_backed_off_then_unpinned_when_served() -> None:
    clock, host = Clock(), Host(serves=False)
    web = record("web")
    items = [web, record("plain", pinned=False)]
    p, store, rec = make(items, host, clock=clock,
                         caches=Caches([pod("web", "reg.example/shop/web:v1", ("regcred",))]))
    assert await p.cycle(items, set()) == set()
    assert host.lookups == [(web.spec.image_ref, D1, "app", ["regcred"])]
    assert host.unpinned == [] and store.patches == [] and rec.events == []
    await p.cycle(items, set())  # backed off: no second lookup before the interval
    assert len(host.lookups) == 1
    clock.now += 10
    await p.cycle(items, set())
    assert len(host.lookups) == 2
    clock.now += 10  # second failure: 20 s
    await p.cycle(items, set())
    assert len(host.lookups) == 2
    clock.now += 10
    host.serves = True
    assert await p.cycle(items, set()) == {"uid-web"}
    assert host.unpinned == [("n1", D1)]  # the record's node and digest, nothing else
    assert store.patches == [("web", {"pinned": False})]
    ((regarding, reason, note, type_),) = rec.events
    assert regarding is web and reason == "ImageUnpinned" and type_ == "Normal"
    assert "the registry serves it again" in note and "n1" in note and D1 in note


async def test_one_lookup_per_image_and_secrets_then_every_node_unpinned() -> None:
    host = Host(serves=True)
    items = [record("a", node="n1"), record("b", node="n2"), record("c", digest=D2)]
    p, _, rec = make(items, host)
    assert await p.cycle(items, set()) == {"uid-a", "uid-b", "uid-c"}
    assert sorted(lookup[1] for lookup in host.lookups) == [D1, D2]
    assert sorted(host.unpinned) == [("n1", D1), ("n1", D2), ("n2", D1)]
    assert len(rec.events) == 3


async def test_pinning_off_unpins_without_asking_the_registry() -> None:
    host = Host(serves=False)
    items = [record("a")]
    p, _, rec = make(items, host, enabled=False)
    assert await p.cycle(items, set()) == {"uid-a"}
    assert host.lookups == [] and host.unpinned == [("n1", D1)]
    assert "--pin-salvaged-images=false" in rec.events[0][2]


async def test_expiring_is_unpinned_without_a_lookup_and_a_failure_keeps_it() -> None:
    host = Host(serves=False, unpins=False)
    items = [record("a")]
    p, store, rec = make(items, host)
    assert await p.cycle(items, {"uid-a"}) == set()
    assert host.lookups == [] and store.patches == [] and rec.events == []
    host.unpins = None  # no plugin manages the node: kept as well
    assert await p.cycle(items, {"uid-a"}) == set()
    host.unpins = True
    assert await p.cycle(items, {"uid-a"}) == {"uid-a"}
    assert "salvagerecord-ttl" in rec.events[0][2]


async def test_a_node_that_is_gone_counts_as_unpinned() -> None:
    host = Host(serves=True)
    items = [record("a", node="gone")]
    p, store, rec = make(items, host)
    assert await p.cycle(items, set()) == {"uid-a"}
    assert host.unpinned == [] and store.patches == [("a", {"pinned": False})]
    assert "no longer exists" in rec.events[0][2]


async def test_calls_in_flight_are_bounded() -> None:
    host = Host(serves=True)
    items = [record(f"r{i}", digest="sha256:" + f"{i:064x}") for i in range(20)]
    p, _, _ = make(items, host)
    assert len(await p.cycle(items, set())) == 20
    assert host.max_in_flight <= pins.CONCURRENCY


async def test_reaper_deletes_a_pinned_record_only_after_its_unpin() -> None:
    old = datetime.now(UTC) - timedelta(hours=3)
    items = [record("old-pinned", completed=old), record("old-plain", pinned=False,
                                                          completed=old),
             record("fresh-pinned"), record("fresh-plain", pinned=False)]
    host = Host(serves=False, unpins=False)
    p, store, _ = make(items, host)
    reaper = Reaper(store, ttl=3600, interval=10, pins=p)  # type: ignore[arg-type]
    assert await reaper.reap_once() == 1
    assert store.deleted == ["old-plain"]  # old-pinned kept: its agent did not answer
    assert metrics.PINNED_IMAGES._value.get() == 2  # old-pinned, fresh-pinned
    store.items = [r for r in items if r.metadata.name != "old-plain"]
    host.unpins = True
    assert await reaper.reap_once() == 1
    assert store.deleted == ["old-plain", "old-pinned"]
    assert host.unpinned == [("n1", D1)]
    assert metrics.PINNED_IMAGES._value.get() == 1  # fresh-pinned (registry still down)
