"""Local-cache hit cost vs a Redis GET, same run (target: a local hit ≤ 2 µs).

Each round awaits OPS gets in one coroutine on a uvloop loop (as `wabridge serve` runs); per-get time = round / OPS.
    .venv/bin/python -m pytest bench/test_cache_bench.py --benchmark-min-time=0.05
"""

from __future__ import annotations

import os

import pytest
import uvloop

from wabridge.adapters.cache.memory import MemoryCache
from wabridge.adapters.cache.redis import RedisCache
from wabridge.engine.lru import LocalCache
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
