"""Local-cache hit cost vs a Redis GET, same run (target: a local hit ≤ 2 µs); and the in-process TTL-LRU map itself
(engine/lru.py's ExpiringLRU) against cachetools' TLRUCache, the well-kept library that would do the same (group
`lru`: the ratio in one run; cachetools is not a dependency, so those skip without it).

Each round awaits OPS gets in one coroutine on a uvloop loop (as `wabridge serve` runs); per-get time = round / OPS.
    .venv/bin/python -m pytest bench/test_cache_bench.py --benchmark-min-time=0.05
"""

from __future__ import annotations

import os
import time

import pytest
import uvloop

from wabridge.adapters.cache.memory import MemoryCache
from wabridge.adapters.cache.redis import RedisCache
from wabridge.engine.lru import MISSING, ExpiringLRU, LocalCache
from wabridge.engine.settings import Settings

OPS = 1000
KEY = "tenant:106540352242922:config"


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def bench_gets(benchmark, loop, cache) -> None:
    loop.run_until_complete(cache.set(KEY, b"x" * 600, 3600))

    async def gets() -> None:
        for _ in range(OPS):
            await cache.get(KEY)

    benchmark.extra_info["ops_per_round"] = OPS
    benchmark(lambda: loop.run_until_complete(gets()))
    assert loop.run_until_complete(cache.get(KEY)) == b"x" * 600
    loop.run_until_complete(cache.close())


def test_local_cache_hit(benchmark, loop):
    bench_gets(benchmark, loop, LocalCache(MemoryCache(), max_staleness=3600))


def test_memory_cache_get(benchmark, loop):
    bench_gets(benchmark, loop, MemoryCache())


@pytest.mark.servers
@pytest.mark.skipif(not os.environ.get("WABRIDGE_REDIS_URL"), reason="needs the real Redis")
def test_redis_get(benchmark, loop):
    bench_gets(benchmark, loop, RedisCache(Settings(redis_url=os.environ["WABRIDGE_REDIS_URL"], key_prefix="bench:")))


def _tlru():
    cachetools = pytest.importorskip("cachetools")
    # Per-entry TTLs as the bridge sets them: the value carries its ttl, the time-to-use function reads it.
    return cachetools.TLRUCache(10_000, ttu=lambda _key, entry, now: now + entry[0], timer=time.monotonic)


@pytest.mark.benchmark(group="lru")
def test_expiring_lru_hit(benchmark):
    lru: ExpiringLRU[str, bytes] = ExpiringLRU(10_000)
    lru.put(KEY, b"x" * 600, 3600)
    benchmark.extra_info["ops_per_round"] = OPS
    benchmark(lambda: [lru.get(KEY, MISSING) for _ in range(OPS)])


@pytest.mark.benchmark(group="lru")
def test_cachetools_tlru_hit(benchmark):
    tlru = _tlru()
    tlru[KEY] = (3600, b"x" * 600)
    benchmark.extra_info["ops_per_round"] = OPS
    benchmark(lambda: [tlru.get(KEY) for _ in range(OPS)])


@pytest.mark.benchmark(group="lru")
def test_expiring_lru_put_past_the_bound(benchmark):
    lru: ExpiringLRU[str, bytes] = ExpiringLRU(100)
    keys = [f"k{n}" for n in range(OPS)]
    benchmark.extra_info["ops_per_round"] = OPS
    benchmark(lambda: [lru.put(key, b"x", 3600) for key in keys])


@pytest.mark.benchmark(group="lru")
def test_cachetools_tlru_put_past_the_bound(benchmark):
    cachetools = pytest.importorskip("cachetools")
    tlru = cachetools.TLRUCache(100, ttu=lambda _key, entry, now: now + entry[0], timer=time.monotonic)
    keys = [f"k{n}" for n in range(OPS)]
    benchmark.extra_info["ops_per_round"] = OPS

    def puts() -> None:
        for key in keys:
            tlru[key] = (3600, b"x")

    benchmark(puts)
