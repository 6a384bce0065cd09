"""Tenant → shard placement on the Queue port, both adapters: a publish with the tenant's placed shard lands there,
one out of range goes by the hash (logged once), and a dead letter retried goes back to the shard it came from."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.queue_harness import Collector, QueueKit, take_dead_letters
from tests.contract.test_queue import amqp_settings
from wabridge.adapters.queue.sqlite import shard_of
from wabridge.engine.settings import Settings
from wabridge.ports import QueueMessage

pytestmark = pytest.mark.anyio

SHARD = 3  # of the default 4
# Tenants whose hash shard (the embedded queue's) is not SHARD; the broker's hash spreads six over its 4 shards too.
TENANTS = [t for t in (f"placed-{n}" for n in range(40)) if shard_of(t, 4) != SHARD][:6]


@pytest.fixture(params=["sqlite", pytest.param("amqp", marks=pytest.mark.servers)])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueKit]:
    settings = amqp_settings(tmp_path) if request.param == "amqp" else Settings(data_dir=tmp_path / "data")
    kit = QueueKit(request.param, settings)
    try:
        yield kit
    finally:
        await kit.clean_up()


async def test_a_placed_tenants_messages_land_on_its_shard_in_publish_order(kit: QueueKit) -> None:
    queue = await kit.open()
    for n in range(5):
        for tenant in TENANTS:
            await queue.publish(tenant, b"x", message_id=f"{tenant}/{n}", shard=SHARD)
    got = Collector()
    consumer = await queue.consume(got, shards=[SHARD])  # only the placed shard: the hash's shards are not read
    await got.wait_for(5 * len(TENANTS))
    await consumer.stop()
    assert {d.shard for d in got.queue_messages} == {SHARD}
    for tenant in TENANTS:
        assert [d.message_id for d in got.queue_messages if d.tenant_id == tenant] == [f"{tenant}/{n}" for n in range(5)]


async def test_a_shard_out_of_range_goes_by_the_hash_and_is_logged_once(
    kit: QueueKit, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await kit.open()
    with caplog.at_level(logging.ERROR, logger="wabridge.adapters.queue.placement"):
        await queue.publish("far-off", b"x", message_id="m1", shard=17)
        await queue.publish("far-off", b"x", message_id="m2", shard=17)
    assert [r.getMessage() for r in caplog.records if "shard 17" in r.getMessage()] != []
    assert len([r for r in caplog.records if "shard 17" in r.getMessage()]) == 1
    got = Collector()
    consumer = await queue.consume(got)
    await got.wait_for(2)
    await consumer.stop()
    assert got.message_ids == ["m1", "m2"]
    if kit.kind == "sqlite":
        assert {d.shard for d in got.queue_messages} == {shard_of("far-off", queue.shards)}


async def dead_letter(queue_message: QueueMessage) -> None:
    await queue_message.dead_letter("refused")


async def retry(queue_message: QueueMessage) -> None:
    await queue_message.retry()  # past the delivery limit the queue itself dead-letters it


@pytest.mark.parametrize("settle", [dead_letter, retry], ids=["dead_letter", "delivery_limit"])
async def test_a_dead_letter_retried_goes_back_to_the_shard_it_came_from(kit: QueueKit, settle) -> None:
    queue = await kit.open()
    for tenant in TENANTS:
        await queue.publish(tenant, b"x", message_id=f"{tenant}/dead", shard=SHARD)
    failing = Collector(settle)
    consumer = await queue.consume(failing, shards=[SHARD])
    letters = await take_dead_letters(queue, len(TENANTS))
    await consumer.stop()
    for letter in letters:
        await letter.retry()
    got = Collector()
    consumer = await queue.consume(got, shards=[SHARD])
    await got.wait_for(len(TENANTS))
    await consumer.stop()
    assert sorted(got.message_ids) == sorted(f"{t}/dead" for t in TENANTS)
    assert {d.shard for d in got.queue_messages} == {SHARD}


async def test_a_buried_message_retried_goes_to_the_shard_it_was_buried_from(kit: QueueKit) -> None:
    queue = await kit.open()
    for tenant in TENANTS:
        await queue.bury(tenant, b"x", message_id=f"{tenant}/parked", reason="handed back", shard=SHARD)
    for letter in await take_dead_letters(queue, len(TENANTS)):
        await letter.retry()
    got = Collector()
    consumer = await queue.consume(got, shards=[SHARD])
    await got.wait_for(len(TENANTS))
    await consumer.stop()
    assert sorted(got.message_ids) == sorted(f"{t}/parked" for t in TENANTS)
