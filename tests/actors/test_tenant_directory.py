"""The tenant directory: local tier → Cache port (encrypted) → Store, negatives bounded, invalidation, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.actors.test_ingress import ACME, GLOBEX, opened_backends, tenant
from wabridge.actors.directory import TenantDirectory
from wabridge.engine import keys
from wabridge.ports import BackendUnavailable
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backends(embedded_settings: Settings) -> AsyncIterator:
    async with opened_backends(embedded_settings) as opened:
        for t in (ACME, GLOBEX):
            await opened.store.put_tenant(t)
        yield opened


def directory_on(backends, settings: Settings, **options) -> TenantDirectory:
    return TenantDirectory(backends.store, backends.cache, settings.secret_box(), **options)


async def test_a_tenant_is_found_by_phone_number_then_served_from_the_process(backends, embedded_settings) -> None:
    directory = directory_on(backends, embedded_settings)
    first = await directory.by_phone_number("1234567890")
    assert first is not None and first.tenant_id == "acme" and first.app_secret.reveal() == "acme-app-secret"
    for _ in range(100):
        assert await directory.by_phone_number("1234567890") is first
    stats = directory.statistics()
    assert (stats.store_lookups, stats.local_hits) == (1, 100) and stats.hit_ratio > 0.99


async def test_the_cache_port_holds_the_config_encrypted_and_serves_other_processes(backends, embedded_settings) -> None:
    await directory_on(backends, embedded_settings).by_phone_number("1234567890")
    sealed = await backends.cache.get(keys.tenant_config("1234567890"))
    assert sealed is not None and sealed.startswith(b"v1:")
    for secret in (b"acme-app-secret", b"verify-acme", b"wa-token", b"client-secret"):
        assert secret not in sealed
    other = directory_on(backends, embedded_settings)  # another worker process, same Redis
    found = await other.by_phone_number("1234567890")
    assert found == await backends.store.get_tenant("acme")
    assert (other.statistics().cache_hits, other.statistics().store_lookups) == (1, 0)


async def test_a_sealed_config_copied_under_another_number_is_not_trusted(backends, embedded_settings) -> None:
    await directory_on(backends, embedded_settings).by_phone_number("1234567890")
    sealed = await backends.cache.get(keys.tenant_config("1234567890"))
    await backends.cache.set(keys.tenant_config("1122334455667"), sealed, 60)
    found = await directory_on(backends, embedded_settings).by_phone_number("1122334455667")
    assert found is not None and found.tenant_id == "globex"  # the store decided, not the planted entry


async def test_a_flood_of_one_unknown_number_asks_the_store_once(backends, embedded_settings) -> None:
    directory = directory_on(backends, embedded_settings)
    answers = await asyncio.gather(*(directory.by_phone_number("555") for _ in range(200)))
    answers += [await directory.by_phone_number("555") for _ in range(50)]
    assert answers == [None] * 250
    assert directory.statistics().store_lookups == 1


async def test_negative_entries_are_bounded_and_expire(backends, embedded_settings) -> None:
    now = [0.0]
    directory = directory_on(backends, embedded_settings, max_negatives=10, negative_ttl=5.0, clock=lambda: now[0])
    for n in range(100):
        assert await directory.by_phone_number(f"unknown-{n}") is None
    assert directory.statistics().negatives == 10
    await backends.store.put_tenant(tenant("late", ("unknown-99",), "s"))
    await backends.cache.delete(keys.tenant_config("unknown-99"))
    assert await directory.by_phone_number("unknown-99") is None  # still the cached negative
    now[0] = 6.0
    found = await directory.by_phone_number("unknown-99")
    assert found is not None and found.tenant_id == "late"


async def test_invalidate_shows_a_changed_tenant_at_once_here_and_within_ttl_elsewhere(backends, embedded_settings) -> None:
    here = directory_on(backends, embedded_settings)
    elsewhere = directory_on(backends, embedded_settings, ttl=0.2)
    assert (await here.by_phone_number("1234567890")).app_secret.reveal() == "acme-app-secret"
    assert await elsewhere.by_phone_number("1234567890") is not None
    old = await backends.store.get_tenant("acme")
    moved = tenant("acme", ("1234567890", "777"), "rotated-secret")
    await backends.store.put_tenant(moved)
    await here.invalidate(moved, previous=old)
    assert (await here.by_phone_number("1234567890")).app_secret.reveal() == "rotated-secret"
    assert (await here.by_id("acme")).app_secret.reveal() == "rotated-secret"
    await asyncio.sleep(0.25)
    assert (await elsewhere.by_phone_number("1234567890")).app_secret.reveal() == "rotated-secret"


async def test_by_id_and_all_find_tenants(backends, embedded_settings) -> None:
    directory = directory_on(backends, embedded_settings)
    assert (await directory.by_id("globex")).phone_number_ids == ("1122334455667",)
    assert await directory.by_id("nobody") is None
    assert sorted(t.tenant_id for t in await directory.all()) == ["acme", "globex"]


@pytest.mark.servers
async def test_with_redis_down_the_store_answers_and_with_postgres_down_it_raises(server_settings, proxy_factory) -> None:
    redis_proxy, redis_url = await proxy_factory(server_settings.redis_url)
    pg_proxy, pg_url = await proxy_factory(server_settings.database_url.reveal())
    settings = server_settings.replace(redis_url=redis_url, database_url=Secret(pg_url))
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(ACME)
        directory = directory_on(backends, settings)
        redis_proxy.cut()
        found = await directory.by_phone_number("1234567890")
        assert found is not None and found.tenant_id == "acme"
        pg_proxy.cut()
        with pytest.raises(BackendUnavailable):
            await directory.by_phone_number("1122334455667")
        assert (await directory.by_phone_number("1234567890")).tenant_id == "acme"  # the process tier still serves
        redis_proxy.restore()
        pg_proxy.restore()
