"""RateBudget: a tenant over its per-credential budget waits for the next window; nothing is dropped."""

from __future__ import annotations

import os
import uuid

import pytest
import redis.asyncio as redis

from wabridge.genesys.ratelimit import BLOCK_MAX, RateBudget, block_for, budget_key
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.adapters.cache.redis import RedisCache
from wabridge.ports import GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio


class FakeClock:
    """Wall-clock stand-in: sleeping moves time on at once, so a one-minute window costs nothing."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def tenant(*client_ids: str, budget: int = 5, tenant_id: str = "acme") -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id,
        phone_number_ids=("106540352242922",),
        app_secret=Secret("app"),
        verify_token=Secret("verify"),
        whatsapp_token=Secret("wa"),
        genesys_api_url="https://api.mypurecloud.com",
        genesys_login_url="https://login.mypurecloud.com",
        genesys_integration_id="int-1",
        credentials=tuple(GenesysCredential(c, Secret("s")) for c in (client_ids or ("cid",))),
        rate_limit_per_minute=budget,
    )


async def test_within_budget_nothing_waits_and_one_over_waits_for_the_next_minute() -> None:
    clock = FakeClock(now=1_800_000_010.0)  # 10 s into a minute
    budget = RateBudget(MemoryCache(), clock=clock, sleep=clock.sleep)
    acme = tenant(budget=5)
    for _ in range(5):
        await budget.acquire(acme)
    assert clock.slept == []
    await budget.acquire(acme)
    assert clock.slept and 50.0 <= clock.slept[0] <= 50.01
    assert clock.now // 60 == 1_800_000_010 // 60 + 1
    assert budget.statistics().granted == 6 and budget.statistics().waits == 1


async def test_the_count_is_shared_by_every_bridge_process_through_the_cache() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    cache = MemoryCache()
    first, second = (RateBudget(cache, clock=clock, sleep=clock.sleep) for _ in range(2))
    acme = tenant(budget=4)
    for _ in range(2):
        await first.acquire(acme)
        await second.acquire(acme)
    assert await cache.get(f"ratelimit:acme:{1_800_000_000 // 60}") == b"4"
    await second.acquire(acme)
    assert second.statistics().waits == 1 and first.statistics().waits == 0


async def test_deliveries_spread_over_credentials_each_with_its_own_budget() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    budget = RateBudget(MemoryCache(), clock=clock, sleep=clock.sleep)
    acme = tenant("one", "two", "three", budget=2)
    got = [(await budget.acquire(acme)).client_id for _ in range(6)]
    assert sorted(got) == ["one", "one", "three", "three", "two", "two"]
    assert got[:3] == ["one", "two", "three"]  # round-robin, not one credential drained first
    assert clock.slept == []
    await budget.acquire(acme)
    assert len(clock.slept) == 1
    minute = int(clock.now // 60) - 1
    assert budget_key(acme, acme.credentials[0], minute) == f"ratelimit:acme:{minute}"
    assert budget_key(acme, acme.credentials[1], minute) == f"ratelimit:acme:{minute}:two"


async def test_tenants_do_not_share_a_budget_and_zero_means_unlimited() -> None:
    clock = FakeClock(now=1_800_000_000.0)
    budget = RateBudget(MemoryCache(), clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await budget.acquire(tenant(budget=3, tenant_id="a"))
        await budget.acquire(tenant(budget=3, tenant_id="b"))
    for _ in range(1000):
        await budget.acquire(tenant(budget=0, tenant_id="c"))
    assert clock.slept == []


async def test_grants_are_reserved_in_blocks_and_never_exceed_the_budget_across_processes() -> None:
    """One counter round trip per block of grants, not per message; two processes sharing the count still get the
    budget at most, in all, per window (a block is granted only as far as the shared count stays within it)."""
    clock = FakeClock(now=1_800_000_000.0)
    budget = RateBudget(MemoryCache(), clock=clock, sleep=clock.sleep)
    acme = tenant(budget=300)
    for _ in range(300):
        await budget.acquire(acme)
    assert clock.slept == [] and budget.statistics().reservations == 300 // block_for(300) == 20
    await budget.acquire(acme)
    assert len(clock.slept) == 1, "the 301st waits for the next window"

    clock = FakeClock(now=1_800_000_000.0)
    cache = MemoryCache()
    first, second = (RateBudget(cache, clock=clock, sleep=clock.sleep) for _ in range(2))
    small = tenant(budget=50)  # blocks of 2
    granted = 0
    while not clock.slept:
        for process in (first, second, second):  # unevenly: one process reserves more often
            await process.acquire(small)
            if not clock.slept:
                granted += 1
    assert granted <= 50 and granted >= 50 - 2 * block_for(50), granted  # at most a block per process left unused
    assert block_for(1_000_000) == BLOCK_MAX and block_for(8) == 1


def redis_settings() -> Settings:
    return Settings(redis_url=os.environ["WABRIDGE_REDIS_URL"], key_prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.mark.servers
async def test_in_redis_the_minute_counter_lives_at_most_one_window() -> None:
    settings = redis_settings()
    cache = RedisCache(settings)
    budget = RateBudget(cache)
    acme = tenant(budget=300)
    for _ in range(3):
        await budget.acquire(acme)
    raw = redis.Redis.from_url(settings.redis_url)
    keys: list[bytes] = []
    try:
        keys = [k async for k in raw.scan_iter(match=settings.key_prefix + "ratelimit:acme:*")]
        assert len(keys) in (1, 2)  # 2 if the minute turned during the test
        # one reservation of a block (a twentieth of 300) per window the three grants fell in
        assert sum([int(await raw.get(k)) for k in keys]) == block_for(300) * len(keys)
        assert budget.statistics().reservations == len(keys)
        assert all([0 < await raw.ttl(k) <= 60 for k in keys])
    finally:
        for k in keys:
            await raw.delete(k)
        await raw.aclose()
        await cache.close()


@pytest.mark.servers
async def test_with_redis_down_the_budget_is_counted_in_process(proxy_factory) -> None:
    settings = redis_settings()
    proxy, url = await proxy_factory(settings.redis_url)
    cache = RedisCache(settings.replace(redis_url=url))
    clock = FakeClock(now=1_800_000_000.0)
    budget = RateBudget(cache, clock=clock, sleep=clock.sleep)
    proxy.cut()
    acme = tenant(budget=3)
    for _ in range(4):
        await budget.acquire(acme)
    assert budget.statistics().waits == 1 and budget.statistics().local_counts >= 4
    await cache.close()
