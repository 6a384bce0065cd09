"""Both ingress routes publish a placed tenant's webhooks to its shard (TenantConfig.shard): the Meta route to the
inbound queue, the Genesys route to the outbound one; a tenant without a shard keeps the hash routing. Embedded
backends and the real servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from tests.actors.test_ingress import ACME, HELLO, sign
from tests.actors.test_outbound_ingress import SECRET, TEXT, signed
from wabridge.actors.ingress import IngressApp
from wabridge.adapters.backends import Backends, open_backends
from wabridge.adapters.queue.sqlite import shard_of
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.ports import Queue

pytestmark = pytest.mark.anyio

PLACEABLE = msgspec.structs.replace(ACME, genesys_webhook_secret=Secret(SECRET))


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.servers)])
def settings(request: pytest.FixtureRequest) -> Settings:
    return request.getfixturevalue(f"{request.param}_settings")


@contextlib.asynccontextmanager
async def ingress_with(settings: Settings, tenant) -> AsyncIterator[tuple[IngressApp, Backends]]:
    async with open_backends(settings) as backends:
        await backends.store.put_tenant(tenant)
        app = IngressApp(settings, backends)
        try:
            yield app, backends
        finally:
            await app.aclose()
            for queue in (backends.queue, backends.outbound):  # the shared broker keeps no test's queues
                with contextlib.suppress(Exception):
                    await queue.delete_topology()


async def shards_of(queue: Queue, count: int, *, shards: list[int] | None = None) -> list[int]:
    """The shard of each of the first `count` messages the given shards hold."""
    got: list[int] = []
    enough = asyncio.Event()

    async def handler(queue_message) -> None:
        got.append(queue_message.shard)
        await queue_message.ack()
        if len(got) >= count:
            enough.set()

    consumer = await queue.consume(handler, shards=shards)
    try:
        await asyncio.wait_for(enough.wait(), 20)
    finally:
        await consumer.stop()
    return got


async def place_off_the_hash(backends: Backends, queue: Queue) -> int:
    """Place acme on a shard other than the one the queue's hash gives it (a probe published by hash shows it)."""
    await queue.publish(ACME.tenant_id, b"", message_id="probe")
    (hashed,) = await shards_of(queue, 1)
    shard = (hashed + 1) % queue.shards
    await backends.store.put_tenant(msgspec.structs.replace(PLACEABLE, shard=shard))
    return shard


async def test_a_meta_webhook_of_a_placed_tenant_is_queued_on_its_shard(settings: Settings) -> None:
    async with ingress_with(settings, PLACEABLE) as (app, backends):
        shard = await place_off_the_hash(backends, backends.queue)
        answer = await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)
        assert answer.status == 200
        assert await shards_of(backends.queue, 1) == [shard]


async def test_an_agents_answer_of_a_placed_tenant_is_queued_on_its_outbound_shard(settings: Settings) -> None:
    async with ingress_with(settings, PLACEABLE) as (app, backends):
        shard = await place_off_the_hash(backends, backends.outbound)
        answer = await app.handle("POST", "/webhook/genesys/acme", "", signed(TEXT), TEXT)
        assert answer.status == 200
        assert await shards_of(backends.outbound, 1) == [shard]


async def test_a_tenant_without_a_shard_keeps_the_hash_routing(embedded_settings: Settings) -> None:
    async with ingress_with(embedded_settings, ACME) as (app, backends):
        answer = await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)
        assert answer.status == 200
        assert await shards_of(backends.queue, 1) == [shard_of(ACME.tenant_id, 4)]
