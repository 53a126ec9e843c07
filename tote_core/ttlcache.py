"""A small expiring map for answers worth reusing for a few seconds (owner lookups, which
nodes hold a digest, registry HEADs): a burst of failing pods then costs one round of API
calls or RPCs, not one per pod.

`None` is a value like any other (a cached "not found" is an answer), so `get` says whether
it hit. When full it is cleared rather than evicting one entry at a time: the hits come from
bursts, and the oldest entries are the ones that expire first anyway. The clock is the
caller's (trio's clock in the controller, so tests can move it)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[K, tuple[float, V]] = {}  # key → (expires at, value)

    def get(self, key: K) -> tuple[bool, V | None]:
        hit = self._entries.get(key)
        if hit is None:
            return False, None
        if self.clock() >= hit[0]:
            del self._entries[key]
            return False, None
        return True, hit[1]

    def put(self, key: K, value: V, *, ttl: float | None = None) -> None:
        """Keep `value` for `ttl` seconds (the cache's own TTL by default)."""
        if len(self._entries) >= self.max_entries and key not in self._entries:
            self._entries.clear()
        self._entries[key] = (self.clock() + (self.ttl if ttl is None else ttl), value)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
