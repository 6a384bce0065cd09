"""The worker's routing: each shard has its own router, so a tenant that is held back (its Genesys budget spent
during a burst) stops only the tenants of its own shard, not every tenant of the worker."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.actors.test_ingress import opened_backends, tenant
from wabridge.actors.worker import Worker
from wabridge.codecs.routing import QueuedWebhook, encode_queued
from wabridge.engine.drain import Shutdown
from wabridge.engine.queue_sqlite import shard_of
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks

pytestmark = pytest.mark.anyio

PREFETCH = 64  # the lanes admit half of it per tenant; the consumer holds at most this many unsettled deliveries


class HeldRelay:
    """Stands in for the relay (which would reach Genesys): `held_tenant`'s messages wait until `release` is set,
    like a tenant whose rate budget is spent; everyone else's go through at once."""

    def __init__(self, held_tenant: str) -> None:
        self.held_tenant = held_tenant
        self.release = asyncio.Event()
        self.relayed: list[tuple[str, str]] = []  # (tenant, wamid) as the relay was called

    async def relay(self, tenant, inbound, received_at, *, replay: bool = False) -> str:
        self.relayed.append((tenant.tenant_id, inbound.route.wamid))
        if tenant.tenant_id == self.held_tenant:
            await self.release.wait()
        return "delivered"

    def count(self, tenant_id: str) -> int:
        return sum(1 for t, _ in self.relayed if t == tenant_id)


async def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def publish(backends, tenant_id: str, phone_number_id: str, n: int) -> list[str]:
    wamids = []
    for i in range(n):
        message = webhooks.message("text", wa_id=f"1555{i:07d}")  # a customer each: the lanes run them in parallel
        body = webhooks.webhook(phone_number_id, [message])
        queued = encode_queued(QueuedWebhook(tenant_id, time.time(), "", body))
        await backends.queue.publish(tenant_id, queued, message_id=f"{tenant_id}-{i}")
        wamids.append(message["id"])
    return wamids


async def test_a_tenant_held_back_past_its_capacity_stops_only_its_own_shard(embedded_settings: Settings) -> None:
    settings = embedded_settings.replace(mailbox_size=2, metrics_port=0)
    held_id = "campaign"
    other_id = next(f"other-{n}" for n in range(20) if shard_of(f"other-{n}", 4) != shard_of(held_id, 4))
    assert settings.shards == 4
    held, other = tenant(held_id, ("100000000001",), "s1"), tenant(other_id, ("100000000002",), "s2")
    async with opened_backends(settings) as backends:
        for t in (held, other):
            await backends.store.put_tenant(t)
        # More than the held tenant's worker can keep (lanes PREFETCH // 2, its mailbox 2, one being admitted), so
        # its shard's router ends up waiting on it; fewer than PREFETCH in all, so the consumer still takes the
        # other tenant's message.
        held_wamids = await publish(backends, held_id, "100000000001", 40)
        worker = Worker(backends, prefetch=PREFETCH)
        relay = worker.relay = HeldRelay(held_id)  # type: ignore[assignment]
        shutdown = Shutdown()
        running = asyncio.create_task(worker.run(shutdown))
        try:
            await wait_until(lambda: relay.count(held_id) == settings.tenant_concurrency)  # its lanes are full
            await asyncio.sleep(0.2)  # and the rest of its messages reach its shard's router, which waits on it
            [other_wamid] = await publish(backends, other_id, "100000000002", 1)
            await wait_until(lambda: (other_id, other_wamid) in relay.relayed)
            assert relay.count(held_id) == settings.tenant_concurrency, "the held tenant is still held"
            relay.release.set()
            await wait_until(lambda: relay.count(held_id) == len(held_wamids))
            assert [w for t, w in relay.relayed if t == held_id] == held_wamids, "its own order is kept"
        finally:
            relay.release.set()
            shutdown.request("test over")
            await asyncio.wait_for(running, 30)
