"""The Store contract for tenant placement (migration 7), PostgreSQL and SQLite: a tenant's queue shard reads back,
an update that names no shard keeps the stored one, and a tenant stored without one reads back with None."""

from __future__ import annotations

import msgspec
import pytest

from tests.contract.test_store import make_store, tenant

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def store_settings(request):
    return request.getfixturevalue("embedded_settings" if request.param == "sqlite" else "server_settings")


@pytest.fixture
async def store(store_settings):
    s = make_store(store_settings)
    await s.open()
    await s.migrate()
    yield s
    await s.close()


async def test_a_placed_tenant_reads_back_with_its_shard_by_id_number_and_list(store):
    placed = msgspec.structs.replace(tenant(), shard=3)
    await store.put_tenant(placed)
    assert await store.get_tenant("acme") == placed
    assert (await store.tenant_for_phone_number("106540352242922")).shard == 3
    assert [t.shard for t in await store.list_tenants()] == [3]


async def test_an_update_without_a_shard_keeps_the_stored_one_and_one_with_a_shard_moves_it(store):
    await store.put_tenant(msgspec.structs.replace(tenant(), shard=2))
    await store.put_tenant(msgspec.structs.replace(tenant(), rate_limit_per_minute=60))  # shard None
    back = await store.get_tenant("acme")
    assert (back.shard, back.rate_limit_per_minute) == (2, 60)
    await store.put_tenant(msgspec.structs.replace(tenant(), shard=0))
    assert (await store.get_tenant("acme")).shard == 0


async def test_a_tenant_stored_without_a_shard_has_none(store):
    await store.put_tenant(tenant())
    assert (await store.get_tenant("acme")).shard is None
