"""List+watch informer: a local cache of one resource kind kept current by a watch.

List once, watch from the list's resourceVersion with bookmarks, re-watch when the server
closes the stream, relist on 410 Gone, reconnect with capped exponential back-off when the
API server is unreachable (it may be restarting). Handlers are plain sync callables that
must not block (they enqueue keys).

Indices (client-go's indexers) answer "which objects have value V" without a scan: at 10 000
pods a scan per lookup is ~10 ms of a single-threaded event loop, and a lookup per node of a
500-node fan-out was a multi-second stall (the detection-latency tail of issue 12).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from typing import Generic, TypeVar

import msgspec
import trio

from tote_core.errors import Gone, KubeError
from tote_core.kube.client import KubeClient
from tote_core.structs.kube import PartialObject, Status, meta_key

log = logging.getLogger("tote.informer")

T = TypeVar("T", bound=msgspec.Struct)
Handler = Callable[[str, "T | None", "T | None"], None]  # key, old, new (new None = deleted)
IndexFunc = Callable[[T], Iterable[str]]  # object → the index values it is found under

BACKOFF_START = 0.5
BACKOFF_CAP = 30.0


@dataclass(eq=False)
class Informer(Generic[T]):
    """Keeps `self.items` (key → object) current for one list/watch path."""

    client: KubeClient
    path: str
    type_: type[T]
    _: KW_ONLY
    name: str
    label_selector: str | None = None
    field_selector: str | None = None
    watch_timeout: int = 300
    # Items per list request (client-go's reflector pages by 500 too): bounds the peak
    # memory of a relist to one page's body above the cache itself. None: one request.
    page_size: int | None = 500
    # Applied to every object before it is cached or handed to handlers: the caches pass
    # `share_pod_strings` / `share_node_strings` (one copy of each repeated string).
    compact: Callable[[T], T] | None = None
    # False: a stream, not a cache. Handlers see every listed, added and modified object
    # (old always None, deletions not at all) and nothing is kept: kubelet's Events are
    # signals to act on, not state to look up, and a cluster has many.
    store: bool = True
    items: dict[str, T] = field(default_factory=dict, init=False)
    synced: trio.Event = field(default_factory=trio.Event, init=False)
    resource_version: str = field(default="", init=False)
    _handlers: list[Handler[T]] = field(default_factory=list, init=False)
    _indices: dict[str, tuple[IndexFunc[T], dict[str, set[str]]]] = field(
        default_factory=dict, init=False)

    def add_handler(self, handler: Handler[T]) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> T | None:
        return self.items.get(key)

    def add_index(self, name: str, index_of: IndexFunc[T]) -> None:
        """Keep an index `name`: value → keys of objects for which `index_of` yields it."""
        values: dict[str, set[str]] = {}
        self._indices[name] = (index_of, values)
        for key, obj in self.items.items():
            self._index_add(key, obj, index_of, values)

    def by_index(self, name: str, value: str) -> list[T]:
        """Objects whose index `name` holds `value` (KeyError for an unknown index)."""
        keys = self._indices[name][1].get(value, ())
        return [self.items[k] for k in keys if k in self.items]

    def keys_by_index(self, name: str, value: str) -> list[str]:
        """Keys of the objects `by_index` returns, without fetching them: a node's key is
        its name, and a burst asks for the holders of one digest once per failing pod."""
        items = self.items
        return [k for k in self._indices[name][1].get(value, ()) if k in items]

    @staticmethod
    def _index_add(key: str, obj: T, index_of: IndexFunc[T], values: dict[str, set[str]]
                   ) -> None:
        for value in index_of(obj):
            values.setdefault(value, set()).add(key)

    def _reindex(self, key: str, old: T | None, new: T | None) -> None:
        for index_of, values in self._indices.values():
            if old is not None:
                for value in index_of(old):
                    keys = values.get(value)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del values[value]
            if new is not None:
                self._index_add(key, new, index_of, values)

    def _emit(self, key: str, old: T | None, new: T | None) -> None:
        for handler in self._handlers:
            try:
                handler(key, old, new)
            except Exception:
                log.exception("informer %s: handler failed for %s", self.name, key)

    async def _relist(self) -> None:
        fresh: dict[str, T] = {}
        resource_version = ""
        async for page in self.client.list_pages(
            self.path,
            self.type_,
            limit=self.page_size,
            skip_undecodable=True,
            labelSelector=self.label_selector,
            fieldSelector=self.field_selector,
        ):
            compact = self.compact
            for obj in page.items:
                if compact is not None:
                    obj = compact(obj)
                fresh[meta_key(obj.metadata)] = obj  # type: ignore[attr-defined]
            resource_version = page.metadata.resource_version
        self.resource_version = resource_version
        if not self.store:
            for key, obj in fresh.items():
                self._emit(key, None, obj)
            return
        old_items = self.items
        self.items = fresh
        for index_of, values in self._indices.values():
            values.clear()
            for key, obj in fresh.items():
                self._index_add(key, obj, index_of, values)
        for key in old_items.keys() - fresh.keys():
            self._emit(key, old_items[key], None)
        for key, obj in fresh.items():
            self._emit(key, old_items.get(key), obj)
        log.debug("informer %s: listed %d at rv %s", self.name, len(fresh), self.resource_version)

    async def _watch_once(self) -> None:
        async with self.client.watch(
            self.path,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
            labelSelector=self.label_selector,
            fieldSelector=self.field_selector,
        ) as events:
            async for event in events:
                if event.type == "ERROR":
                    status = msgspec.json.decode(event.object, type=Status)
                    if status.code == 410:
                        raise Gone(f"watch {self.name}: {status.message}", status=410)
                    raise KubeError(f"watch {self.name}: {status.message}", status=status.code)
                if event.type == "BOOKMARK":
                    # Bookmarks carry only metadata.resourceVersion (and null spec fields).
                    mark = msgspec.json.decode(event.object, type=PartialObject)
                    if mark.metadata.resource_version:
                        self.resource_version = mark.metadata.resource_version
                    continue
                try:
                    obj = msgspec.json.decode(event.object, type=self.type_)
                except msgspec.ValidationError as exc:
                    # One odd object must not stop the informer (and with it the controller).
                    log.warning("informer %s: skipping undecodable %s event: %s; object: %.300s",
                                self.name, event.type, exc, bytes(event.object))
                    continue
                if self.compact is not None:
                    obj = self.compact(obj)
                meta = obj.metadata  # type: ignore[attr-defined]
                if meta.resource_version:
                    self.resource_version = meta.resource_version
                key = meta_key(meta)
                if not self.store:
                    if event.type != "DELETED":
                        self._emit(key, None, obj)
                    continue
                old = self.items.get(key)
                if event.type == "DELETED":
                    self.items.pop(key, None)
                    self._reindex(key, old, None)
                    self._emit(key, old, None)
                else:
                    self.items[key] = obj
                    self._reindex(key, old, obj)
                    self._emit(key, old, obj)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """List, signal started (synced), then watch forever."""
        backoff = BACKOFF_START
        need_list = True
        started = False
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                    if not started:
                        self.synced.set()
                        task_status.started()
                        started = True
                await self._watch_once()
                backoff = BACKOFF_START  # clean end of a watch window
            except Gone:
                log.info("informer %s: resourceVersion too old, relisting", self.name)
                need_list = True
            except KubeError as exc:
                log.warning(
                    "informer %s: %s; retrying in %.1fs", self.name, exc, backoff
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
                if exc.status in (0, 500, 503):
                    # After an outage the watch cache may have compacted: relist to be safe.
                    need_list = True
            except (msgspec.DecodeError, OSError, ValueError) as exc:
                # A truncated stream during an API server restart, or a bad list body.
                log.warning("informer %s: %s: %s; relisting in %.1fs",
                            self.name, type(exc).__name__, exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
                need_list = True
