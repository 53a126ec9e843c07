"""The one expiring map the plugins share (tote_core/ttlcache.py): expiry by the caller's
clock, None cached as an answer, per-entry TTL, cleared when full."""

from __future__ import annotations

from tote_core.ttlcache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hit_until_the_ttl_then_miss() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(10.0, 8, clock)
    cache.put("a", 1)
    assert cache.get("a") == (True, 1)
    clock.now += 9.99
    assert cache.get("a") == (True, 1)
    clock.now += 0.01
    assert cache.get("a") == (False, None)
    assert len(cache) == 0  # an expired entry is dropped when seen


def test_none_is_an_answer_and_a_shorter_ttl_per_entry() -> None:
    clock = Clock()
    cache: TTLCache[str, str | None] = TTLCache(30.0, 8, clock)
    cache.put("missing", None, ttl=5.0)
    assert cache.get("missing") == (True, None)
    assert cache.get("never") == (False, None)
    clock.now += 5.0
    assert cache.get("missing") == (False, None)


def test_cleared_when_full_but_not_for_an_overwrite() -> None:
    cache: TTLCache[int, int] = TTLCache(10.0, 3, Clock())
    for i in range(3):
        cache.put(i, i)
    cache.put(2, 20)  # same key: no clearing
    assert len(cache) == 3 and cache.get(2) == (True, 20)
    cache.put(3, 3)  # a fourth key: starts over
    assert len(cache) == 1 and cache.get(0) == (False, None) and cache.get(3) == (True, 3)
    cache.clear()
    assert len(cache) == 0
