"""TokenProvider: Genesys client-credentials tokens, cached, one login per credential, safe when the cache is down."""

from __future__ import annotations

import os
import uuid

import anyio
import pytest
import redis.asyncio as redis

from wabridge.genesys.auth import LoginFailed, TokenProvider, token_key
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.adapters.cache.redis import RedisCache
from wabridge.ports import GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.sim.genesys import GenesysSim

pytestmark = pytest.mark.anyio


def tenant_for(sim: GenesysSim, *clients: tuple[str, str], tenant_id: str = "acme") -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id,
        phone_number_ids=("106540352242922",),
        app_secret=Secret("app"),
        verify_token=Secret("verify"),
        whatsapp_token=Secret("wa"),
        genesys_api_url=sim.url,
        genesys_login_url=sim.url,
        genesys_integration_id="int-1",
        credentials=tuple(GenesysCredential(c, Secret(s)) for c, s in (clients or (("cid", "secret"),))),
    )


async def test_a_hundred_callers_at_once_make_one_login_and_share_its_token() -> None:
    async with GenesysSim(clients={"cid": "secret"}) as sim:
        tokens = TokenProvider(MemoryCache())
        tenant = tenant_for(sim)
        got: list[str] = []

        async def one() -> None:
            got.append(await tokens.token(tenant))

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
        assert sim.stats.logins == 1
        assert len(got) == 100 and len(set(got)) == 1
        assert await tokens.token(tenant) == got[0] and sim.stats.logins == 1  # then from process memory
        await tokens.aclose()


async def test_a_token_is_shared_through_the_cache_under_the_seed_key() -> None:
    async with GenesysSim() as sim:
        cache = MemoryCache()
        tenant = tenant_for(sim)
        first, second = TokenProvider(cache), TokenProvider(cache)  # two bridge processes
        token = await first.token(tenant)
        assert token_key(tenant, tenant.credentials[0]) == "tenant:acme:oauth:token"
        assert await cache.get("tenant:acme:oauth:token") == token.encode()
        assert await second.token(tenant) == token
        assert sim.stats.logins == 1 and second.statistics().from_cache == 1
        await first.aclose()
        await second.aclose()


async def test_each_credential_of_a_tenant_has_its_own_token_and_key() -> None:
    async with GenesysSim(clients={"one": "s1", "two": "s2"}) as sim:
        cache = MemoryCache()
        tenant = tenant_for(sim, ("one", "s1"), ("two", "s2"))
        tokens = TokenProvider(cache)
        a = await tokens.token(tenant, tenant.credentials[0])
        b = await tokens.token(tenant, tenant.credentials[1])
        assert a != b and sim.stats.logins == 2
        assert await cache.get("tenant:acme:oauth:token") == a.encode()
        assert await cache.get("tenant:acme:oauth:token:two") == b.encode()
        await tokens.aclose()


async def test_invalidating_a_refused_token_logs_in_again_once_and_never_drops_a_newer_token() -> None:
    async with GenesysSim() as sim:
        cache = MemoryCache()
        tenant = tenant_for(sim)
        tokens = TokenProvider(cache)
        stale = await tokens.token(tenant)
        await tokens.invalidate(tenant, tenant.credentials[0], stale)
        assert await cache.get("tenant:acme:oauth:token") is None
        fresh = await tokens.token(tenant)
        # A second delivery that failed with the stale token reports it late: the fresh one must survive.
        await tokens.invalidate(tenant, tenant.credentials[0], stale)
        assert await tokens.token(tenant) == fresh != stale
        assert sim.stats.logins == 2
        await tokens.aclose()


class GatedCache(MemoryCache):
    """The embedded cache whose first read pauses after it has read its value, until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.reading, self.gate, self._gated = anyio.Event(), anyio.Event(), True

    async def get(self, key: str) -> bytes | None:
        value = await super().get(key)
        if self._gated:
            self._gated = False
            self.reading.set()
            await self.gate.wait()
        return value


async def test_a_token_refused_while_a_fetch_was_reading_it_from_the_cache_is_not_handed_out_again() -> None:
    """The bench lost a message to this: Genesys forgot its tokens (the simulator restarted); deliveries got 401s
    on the cached token; one of them fetched a fresh token while another's fetch, which had read the stale token
    from the cache just before, brought it back; the retry got 401 "with a fresh token" and the message failed."""
    async with GenesysSim(clients={"cid": "secret"}) as sim:
        cache, tenant = GatedCache(), tenant_for(sim)
        credential = tenant.credentials[0]
        await cache.set(token_key(tenant, credential), b"forgotten-token", 3600)  # Genesys no longer knows it
        tokens = TokenProvider(cache)
        got: list[str] = []

        async def fetch() -> None:
            got.append(await tokens.token(tenant))

        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            await cache.reading.wait()  # the fetch has read the stale token and not yet handed it out
            await tokens.invalidate(tenant, credential, "forgotten-token")  # another delivery's 401 meanwhile
            cache.gate.set()
        assert got != ["forgotten-token"] and sim.stats.logins == 1
        assert await tokens.token(tenant) == got[0], "the fresh token is held"
        assert await cache.get(token_key(tenant, credential)) == got[0].encode()
        await tokens.aclose()


async def test_a_refused_login_is_a_permanent_failure_and_a_failing_login_fails_every_waiter_once() -> None:
    async with GenesysSim(clients={"cid": "secret"}) as sim:
        tokens = TokenProvider(None)
        with pytest.raises(LoginFailed) as refused:
            await tokens.token(tenant_for(sim, ("cid", "wrong")))
        assert refused.value.permanent and refused.value.status == 401
        sim.add_fault(status=503, latency_ms=100, target="login")
        failures: list[LoginFailed] = []

        async def one() -> None:
            try:
                await tokens.token(tenant_for(sim))
            except LoginFailed as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        assert len(failures) == 20 and not failures[0].permanent
        assert sim.stats.faults == 1  # one login request for the 20 waiters
        assert "secret" not in str(failures[0]) and "wrong" not in str(refused.value)
        await tokens.aclose()


def redis_settings() -> Settings:
    return Settings(redis_url=os.environ["WABRIDGE_REDIS_URL"], key_prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.mark.servers
async def test_in_redis_the_token_lives_expires_in_minus_300_seconds() -> None:
    settings = redis_settings()
    async with GenesysSim(token_lifetime=3600) as sim:
        cache = RedisCache(settings)
        tokens = TokenProvider(cache)
        token = await tokens.token(tenant_for(sim))
        raw = redis.Redis.from_url(settings.redis_url)
        key = settings.key_prefix + "tenant:acme:oauth:token"
        try:
            assert await raw.get(key) == token.encode()
            assert 3290 <= await raw.ttl(key) <= 3300
        finally:
            await raw.delete(key)
            await raw.aclose()
            await tokens.aclose()
            await cache.close()


@pytest.mark.servers
async def test_with_redis_down_tokens_still_come_from_memory_and_the_login(proxy_factory) -> None:
    settings = redis_settings()
    proxy, url = await proxy_factory(settings.redis_url)
    async with GenesysSim() as sim:
        cache = RedisCache(settings.replace(redis_url=url))
        tokens = TokenProvider(cache)
        tenant = tenant_for(sim)
        proxy.cut()
        token = await tokens.token(tenant)
        assert await tokens.token(tenant) == token
        await tokens.invalidate(tenant, tenant.credentials[0], token)
        assert await tokens.token(tenant) != token
        assert sim.stats.logins == 2
        await tokens.aclose()
        await cache.close()
