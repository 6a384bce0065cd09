"""Parking with placed tenants: the poke for a shard's orphaned parked rows goes into that shard, not the one the
queue's hash would give the tenant (a placed tenant's rows live in its placed shard). Both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.actors.test_parking import TENANT, Tenants, body_of
from tests.contract.queue_harness import Collector, QueueKit, hold
from wabridge.actors.parking import ShardParking, is_poke
from wabridge.adapters.store.postgres import PostgresStore
from wabridge.adapters.store.sqlite import SqliteStore
from wabridge.engine.settings import Settings
from wabridge.ports import MessageToPark, Store

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.servers)])
def settings(request: pytest.FixtureRequest) -> Settings:
    return request.getfixturevalue(f"{request.param}_settings")


@pytest.fixture
async def backends(settings: Settings) -> AsyncIterator[tuple[Store, QueueKit]]:
    servers = settings.database_url is not None
    store: Store = PostgresStore(settings) if servers else SqliteStore(settings)
    await store.open()
    await store.migrate()
    kit = QueueKit("amqp" if servers else "sqlite", settings)
    try:
        yield store, kit
    finally:
        await kit.clean_up()
        await store.close()


async def test_the_poke_for_orphaned_rows_goes_into_their_shard_not_the_tenants_hash_shard(backends) -> None:
    store, kit = backends
    queue = await kit.open()
    probe = Collector()
    consumer = await queue.consume(probe)
    await queue.publish(TENANT, b"", message_id="probe")  # by hash: where an unplaced tenant's messages go
    (hashed,) = await probe.wait_for(1)
    await consumer.stop()
    shard = (hashed.shard + 1) % queue.shards
    await store.park(shard, [MessageToPark(TENANT, "w1:campaign", body_of("w1:campaign"), 1)])
    parking = ShardParking(shard, store, queue, Tenants(), delivery_limit=3, hold_back_limit=1024, events=list().append)
    got = Collector(settle=hold)
    consumer = await queue.consume(got, shards=[shard])
    try:
        await parking.find_orphans()
        [poke] = await got.wait_for(1)
        assert is_poke(poke) and (poke.tenant_id, poke.shard) == (TENANT, shard)
        await poke.ack()
    finally:
        await parking.close()
        await consumer.stop()
