"""The Cache contract, run against Redis (real server), the in-process MemoryCache, and LocalCache over each."""

from __future__ import annotations

import uuid

import asyncio
import time

import pytest
import redis.asyncio as redis

from wabridge.engine import keys
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.adapters.cache.redis import RedisCache
from wabridge.engine.lru import LocalCache
from wabridge.ports import BackendUnavailable, Cache

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        "memory",
        "local+memory",
        pytest.param("redis", marks=pytest.mark.servers),
        pytest.param("local+redis", marks=pytest.mark.servers),
    ]
)
def cache_kind(request):
    settings_fixture = "server_settings" if request.param.endswith("redis") else "embedded_settings"
    return request.param, request.getfixturevalue(settings_fixture)


@pytest.fixture
async def cache(cache_kind):
    kind, settings = cache_kind
    remote: Cache = RedisCache(settings) if kind.endswith("redis") else MemoryCache(settings)
    c = LocalCache(remote, max_staleness=0.2) if kind.startswith("local") else remote
    yield c
    await c.close()


async def test_get_returns_what_set_stored_and_none_for_a_missing_key(cache):
    assert await cache.get("k") is None
    await cache.set("k", b"v1", 60)
    assert await cache.get("k") == b"v1"
    await cache.set("k", b"v2", 60)
    assert await cache.get("k") == b"v2"


async def test_many_keys_are_read_and_set_at_once_with_one_ttl(cache):
    assert await cache.get_many([]) == {}
    await cache.set_many([], 60)
    await cache.set("a", b"old", 60)
    await cache.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")], 60)
    assert await cache.get_many(["a", "b", "missing", "c"]) == {"a": b"1", "b": b"2", "c": b"3"}
    assert await cache.get("b") == b"2"
    await cache.set_many([("short", b"x")], 0.15)
    assert await cache.get_many(["short"]) == {"short": b"x"}
    await asyncio.sleep(0.3)
    assert await cache.get_many(["short", "a"]) == {"a": b"1"}


async def test_a_key_expires_after_its_ttl(cache):
    await cache.set("k", b"v", 0.15)
    assert await cache.get("k") == b"v"
    await asyncio.sleep(0.3)
    assert await cache.get("k") is None


async def test_set_if_absent_creates_once_until_the_key_expires(cache):
    assert await cache.set_if_absent("wamid.1", b"1", 0.15) is True
    assert await cache.set_if_absent("wamid.1", b"2", 0.15) is False
    assert await cache.get("wamid.1") == b"1"
    await asyncio.sleep(0.3)
    assert await cache.set_if_absent("wamid.1", b"3", 60) is True


async def test_concurrent_set_if_absent_has_exactly_one_winner(cache):
    wins = await asyncio.gather(*(cache.set_if_absent("dedupe", b"x", 60) for _ in range(20)))
    assert wins.count(True) == 1


async def test_incr_raises_by_the_amount_asked(cache):
    key = f"n:{uuid.uuid4().hex}"
    assert await cache.incr(key, 60, 5) == 5
    assert await cache.incr(key, 60) == 6
    assert await cache.incr(key, 60, 16) == 22


async def test_incr_counts_and_the_window_starts_at_the_first_increment(cache):
    key = keys.rate_limit("acme", keys.current_minute(time.time()))
    assert [await cache.incr(key, 0.3) for _ in range(3)] == [1, 2, 3]
    await asyncio.sleep(0.15)
    assert await cache.incr(key, 0.3) == 4  # a later incr does not extend the window
    await asyncio.sleep(0.25)
    assert await cache.incr(key, 0.3) == 1


async def test_delete_removes_a_key(cache):
    await cache.set("k", b"v", 60)
    await cache.delete("k")
    await cache.delete("never-set")
    assert await cache.get("k") is None
    assert await cache.ping() is True


# --- keys ---


def test_keys_follow_the_seed_names_with_the_tenant_in_wa_mappings():
    assert keys.mapping_wa("acme", "16505551234") == "mapping:wa:acme:16505551234"
    assert keys.mapping_conv("c-1") == "mapping:conv:c-1"
    assert keys.tenant_config("106540352242922") == "tenant:106540352242922:config"
    assert keys.oauth_token("acme") == "tenant:acme:oauth:token"
    assert keys.oauth_token("acme", "client-2") == "tenant:acme:oauth:token:client-2"
    assert keys.whatsapp_token("acme") == "tenant:acme:whatsapp:token"
    assert keys.rate_limit("acme", 29_000_000) == "ratelimit:acme:29000000"
    assert (keys.MAPPING_TTL, keys.TENANT_CONFIG_TTL, keys.WHATSAPP_TOKEN_TTL, keys.RATE_LIMIT_TTL) == (
        3600, 3600, 86400, 60
    )  # fmt: skip
    assert keys.oauth_token_ttl(86400) == 86100
    assert keys.oauth_token_ttl(300) == 150  # a 5-minute token is still cached, for half its life


@pytest.mark.servers
async def test_the_redis_adapter_prepends_the_key_prefix(server_settings):
    cache = RedisCache(server_settings)
    raw = redis.Redis.from_url(server_settings.redis_url)
    try:
        await cache.set(keys.whatsapp_token("acme"), b"t", 60)
        assert await raw.get(f"{server_settings.key_prefix}tenant:acme:whatsapp:token") == b"t"
        assert await raw.get("tenant:acme:whatsapp:token") is None
    finally:
        await cache.close()
        await raw.aclose()


# --- bounds ---


async def test_memory_cache_drops_the_least_recently_used_key_at_its_bound(embedded_settings):
    cache = MemoryCache(embedded_settings, max_entries=3)
    for k in "abc":
        await cache.set(k, k.encode(), 60)
    await cache.get("a")  # now "b" is the least recently used
    await cache.set("d", b"d", 60)
    assert [await cache.get(k) for k in "abcd"] == [b"a", None, b"c", b"d"]


async def test_local_cache_holds_at_most_max_entries(embedded_settings):
    local = LocalCache(MemoryCache(embedded_settings), max_entries=2)
    for k in "abc":
        await local.set(k, k.encode(), 60)
    assert len(local._entries) == 2
    assert await local.get("a") == b"a"  # evicted locally, still answered by the remote


@pytest.mark.servers
async def test_a_change_made_in_redis_by_another_process_is_seen_within_max_staleness(server_settings):
    other_process = RedisCache(server_settings)
    local = LocalCache(RedisCache(server_settings), max_staleness=0.3)
    try:
        key = keys.tenant_config("106540352242922")
        await other_process.set(key, b"v1", 60)
        assert await local.get(key) == b"v1"
        await other_process.set(key, b"v2", 60)
        changed_at = time.monotonic()
        while (seen := await local.get(key)) == b"v1":
            assert time.monotonic() - changed_at <= 0.3 + 0.05  # the bound, plus one loop turn of slack
            await asyncio.sleep(0.01)
        assert seen == b"v2"
        assert time.monotonic() - changed_at >= 0.1  # it really was served locally for a while
        await other_process.delete(key)
        await asyncio.sleep(0.35)
        assert await local.get(key) is None
    finally:
        await other_process.close()
        await local.close()


@pytest.mark.servers
async def test_a_change_through_the_same_local_cache_is_seen_at_once(server_settings):
    local = LocalCache(RedisCache(server_settings), max_staleness=60)
    try:
        key = keys.mapping_wa("acme", "16505551234")
        assert await local.get(key) is None  # a remembered miss…
        await local.set(key, b"c-1", keys.MAPPING_TTL)
        assert await local.get(key) == b"c-1"  # …is replaced at once
        await local.set(key, b"c-2", keys.MAPPING_TTL)
        assert await local.get(key) == b"c-2"
        await local.delete(key)
        assert await local.get(key) is None
        assert await local.set_if_absent(key, b"c-3", 60) is True
        assert await local.get(key) == b"c-3"
    finally:
        await local.close()


async def test_local_get_many_asks_the_remote_only_for_what_it_does_not_hold(embedded_settings):
    asked: list[list[str]] = []

    class Counting(MemoryCache):
        async def get_many(self, keys):
            asked.append(list(keys))
            return await super().get_many(keys)

    remote = Counting(embedded_settings)
    await remote.set_many([("held", b"1"), ("far", b"2")], 60)
    local = LocalCache(remote, max_staleness=60)
    assert await local.get("held") == b"1"  # now held locally
    asked.clear()
    assert await local.get_many(["held", "far", "none"]) == {"held": b"1", "far": b"2"}
    assert asked == [["far", "none"]]
    assert await local.get_many(["held", "far", "none"]) == {"held": b"1", "far": b"2"}  # misses remembered too
    assert len(asked) == 1
    await local.set_many([("none", b"3")], 60)  # a write through this cache replaces the remembered miss at once
    assert await local.get_many(["none"]) == {"none": b"3"} and len(asked) == 1
    await local.close()


@pytest.mark.servers
async def test_incr_and_set_if_absent_are_shared_by_local_caches_of_two_processes(server_settings):
    a, b = LocalCache(RedisCache(server_settings)), LocalCache(RedisCache(server_settings))
    try:
        assert [await a.incr("ratelimit:acme:1", 60), await b.incr("ratelimit:acme:1", 60)] == [1, 2]
        assert [await a.set_if_absent("wamid.1", b"x", 60), await b.set_if_absent("wamid.1", b"x", 60)] == [True, False]
    finally:
        await a.close()
        await b.close()


# --- outages ---


@pytest.mark.servers
async def test_redis_down_raises_backend_unavailable_quickly_and_recovers(server_settings, proxy_factory):
    proxy, url = await proxy_factory(server_settings.redis_url)
    cache = RedisCache(server_settings.replace(redis_url=url))
    try:
        await cache.set("k", b"v", 60)
        proxy.cut()
        for op in (cache.get("k"), cache.set("k", b"v", 60), cache.incr("n", 60), cache.set_if_absent("d", b"", 60)):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await op
            assert time.monotonic() - started < 2.0
        assert await cache.ping() is False
        proxy.restore()
        assert await cache.get("k") == b"v"
    finally:
        await cache.close()
