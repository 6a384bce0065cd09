"""ExpiringLRU, the one in-process TTL-LRU map (LocalCache, MemoryCache and the tenant directory use it): expiry at each
entry's own deadline, the least recently used dropped at the bound, None kept apart from absence. A fake clock: no
sleeping."""

from __future__ import annotations

import pytest

from wabridge.engine.lru import MISSING, ExpiringLRU


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_until_its_own_deadline_and_is_dropped_when_read_after_it() -> None:
    clock = Clock()
    lru: ExpiringLRU[str, str] = ExpiringLRU(10, clock=clock)
    lru.put("short", "a", 1.0)
    lru.put("long", "b", 5.0)
    clock.now += 0.999
    assert lru.get("short", MISSING) == "a" and lru.get("long", MISSING) == "b"
    clock.now += 0.001
    assert lru.get("short", MISSING) is MISSING, "expired at its deadline"
    assert len(lru) == 1, "the expired entry dropped when touched"
    assert lru.get("long", MISSING) == "b"


def test_past_the_bound_the_least_recently_read_entry_goes() -> None:
    lru: ExpiringLRU[str, int] = ExpiringLRU(2, clock=Clock())
    lru.put("a", 1, 60)
    lru.put("b", 2, 60)
    assert lru.get("a", None) == 1  # now "b" is the least recently used
    lru.put("c", 3, 60)
    assert len(lru) == 2
    assert lru.get("b", None) is None and lru.get("a", None) == 1 and lru.get("c", None) == 3


def test_a_remembered_none_is_told_apart_from_a_key_never_put() -> None:
    lru: ExpiringLRU[str, None] = ExpiringLRU(2, clock=Clock())
    lru.put("negative", None, 60)
    assert lru.get("negative", MISSING) is None
    assert lru.get("unknown", MISSING) is MISSING


def test_replace_keeps_the_first_deadline_and_pop_forgets() -> None:
    clock = Clock()
    lru: ExpiringLRU[str, int] = ExpiringLRU(2, clock=clock)
    lru.put("count", 1, 10)
    clock.now += 9
    lru.replace("count", 2)
    assert lru.get("count", None) == 2
    clock.now += 1
    assert lru.get("count", None) is None, "the window ends where it began, not 10 s after the replace"
    lru.put("gone", 1, 10)
    lru.pop("gone")
    lru.pop("never there")
    assert lru.get("gone", None) is None


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ExpiringLRU(0)
