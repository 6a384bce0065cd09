"""The worker's routing: each shard has its own router, and a tenant held back (its Genesys budget spent during a
burst) is parked, so it holds up neither the other shards nor the other tenants of its own shard."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.actors.test_ingress import opened_backends, tenant
from wabridge.actors.parking import _parked, _parked_tenants, _pokes
from wabridge.actors.tenant import TenantActor
from wabridge.actors.worker import Worker
from wabridge.cli.assembly import saas_adapters
from wabridge.codecs.routing import QueuedWebhook, encode_queued
from wabridge.engine.drain import Shutdown
from wabridge.engine.backoff import Backoff
from wabridge.adapters.queue.sqlite import shard_of
from wabridge.engine.settings import Settings
from wabridge.ports import MessageToPark
from wabridge.sim import webhooks

pytestmark = pytest.mark.anyio

PREFETCH = 64  # the lanes admit half of it per tenant; the consumer holds at most this many unsettled queue messages
CUSTOMER = "15550000001"


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


async def publish(
    backends, tenant_id: str, phone_number_id: str, n: int, *, customer: str | None = None, first: int = 0
) -> list[str]:
    """n webhooks, each of a customer of its own (the lanes run them in parallel), or all of `customer` (one lane:
    the order the relay sees must be the queue's). Message ids count from `first`."""
    wamids = []
    for i in range(first, first + n):
        message = webhooks.message("text", wa_id=customer or f"1555{i:07d}")
        body = webhooks.webhook(phone_number_id, [message])
        queued = encode_queued(QueuedWebhook(tenant_id, time.time(), "", body))
        await backends.queue.publish(tenant_id, queued, message_id=f"{tenant_id}-{i}")
        wamids.append(message["id"])
    return wamids


async def test_a_tenant_held_back_past_its_capacity_stops_only_its_own_shard(
    embedded_settings: Settings, monkeypatch
) -> None:
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 60.0)  # the routers alone, no parking
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
        relay = HeldRelay(held_id)
        async with running_worker(backends, relay):
            await wait_until(lambda: relay.count(held_id) == settings.tenant_concurrency)  # its lanes are full
            await asyncio.sleep(0.2)  # and the rest of its messages reach its shard's router, which waits on it
            [other_wamid] = await publish(backends, other_id, "100000000002", 1)
            await wait_until(lambda: (other_id, other_wamid) in relay.relayed)
            assert relay.count(held_id) == settings.tenant_concurrency, "the held tenant is still held"
            relay.release.set()
            await wait_until(lambda: relay.count(held_id) == len(held_wamids))
            assert [w for t, w in relay.relayed if t == held_id] == held_wamids, "its own order is kept"



class SlowRelay:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.relayed: list[str] = []

    async def relay(self, tenant, inbound, received_at, *, replay: bool = False) -> str:
        self.relayed.append(inbound.route.wamid)
        await asyncio.sleep(self.seconds)
        return "delivered"


class FailingRelay(HeldRelay):
    """Holds `held_tenant` until `release`, then fails every message of it, as a bug would: each queue message is handed
    back until its last attempt, and then dead-lettered."""

    async def relay(self, tenant, inbound, received_at, *, replay: bool = False) -> str:
        await super().relay(tenant, inbound, received_at, replay=replay)
        raise RuntimeError("relay bug")


@contextlib.asynccontextmanager
async def running_worker(backends, relay) -> AsyncIterator[Worker]:
    """A worker whose relay is `relay`, running until the block ends; then a held relay is released (what the
    lanes admitted finishes) and the worker drains."""
    async with saas_adapters(backends) as saas:
        worker = Worker(backends, saas, prefetch=PREFETCH)
        worker.relay = relay
        shutdown = Shutdown()
        running = asyncio.create_task(worker.run(shutdown))
        try:
            yield worker
        finally:
            if isinstance(relay, HeldRelay):
                relay.release.set()
            shutdown.request("test over")
            await asyncio.wait_for(running, 30)


def any_tenant_parked() -> bool:
    return _parked_tenants.get() > 0


def parked_total() -> float:
    return _parked.labels().get()


async def wait_until_stable(read, *, settle: float = 0.5, timeout: float = 10.0):
    """Wait until `await read()` is truthy and has not changed for `settle` seconds."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        got = await read()
        if got != last:
            last, since = got, time.monotonic()
        elif got and time.monotonic() - since >= settle:
            return got
        assert time.monotonic() < deadline, f"timed out, last read {got!r}"
        await asyncio.sleep(0.05)


async def wait_until_async(read, expected, timeout: float = 10.0):
    """Wait until `await read()` equals `expected` (or, when `expected` is callable, satisfies it)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await read()
        if (expected(got) if callable(expected) else got == expected):
            return got
        assert time.monotonic() < deadline, f"timed out, last read {got!r}"
        await asyncio.sleep(0.05)


@pytest.fixture(params=["embedded", pytest.param("servers", marks=pytest.mark.servers)])
def any_settings(request) -> Settings:
    """Both backends: SQLite queue and store, and RabbitMQ with PostgreSQL (parking acks, pokes, the store's order)."""
    name = "embedded_settings" if request.param == "embedded" else "server_settings"
    return request.getfixturevalue(name)


async def test_a_held_back_tenant_is_parked_and_the_tenants_of_its_shard_move_on(
    any_settings: Settings, monkeypatch
) -> None:
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 0.2)
    settings = any_settings.replace(mailbox_size=2, metrics_port=0, shards=1)  # one shard: the two tenants share it
    held_id, other_id, shard = "campaign", "other", 0
    held, other = tenant(held_id, ("100000000001",), "s1"), tenant(other_id, ("100000000002",), "s2")
    async with opened_backends(settings) as backends:
        for t in (held, other):
            await backends.store.put_tenant(t)
        # Twice what the consumer may hold unsettled: without parking the shard's window fills with the held
        # tenant's messages and the other tenant's never even reaches the worker.
        held_wamids = await publish(backends, held_id, "100000000001", 2 * PREFETCH)
        relay = HeldRelay(held_id)
        async with running_worker(backends, relay):
            await wait_until(lambda: relay.count(held_id) == settings.tenant_concurrency)
            [other_wamid] = await publish(backends, other_id, "100000000002", 1)
            await wait_until(lambda: (other_id, other_wamid) in relay.relayed)
            assert relay.count(held_id) == settings.tenant_concurrency, "the held tenant is still held"
            parked = await backends.store.parked_tenants(shard)
            assert parked.get(held_id, 0) > PREFETCH // 2, parked  # its backlog waits in the store, not the queue
            assert other_id not in parked
            relay.release.set()
            await wait_until(lambda: relay.count(held_id) == len(held_wamids))
            assert [w for t, w in relay.relayed if t == held_id] == held_wamids, "its order is kept, each once"
            await wait_until(lambda: not any_tenant_parked())
            # Unparked: its next message goes straight to it, after all the parked ones.
            [late] = await publish(backends, held_id, "100000000001", 1)
            await wait_until(lambda: (held_id, late) in relay.relayed)
            assert relay.relayed[-1] == (held_id, late)
            await wait_until_async(lambda: backends.store.parked_tenants(shard), {})
            # The episode's fence was lifted once what the tenant had taken before it was settled.
            await wait_until_async(lambda: backends.store.parking_fences(shard), {})
        assert relay.count(held_id) == len(held_wamids) + 1 and relay.count(other_id) == 1


async def test_parked_messages_outlive_their_worker_and_the_next_one_feeds_them_in_order(
    any_settings: Settings, monkeypatch
) -> None:
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 0.2)
    settings = any_settings.replace(mailbox_size=2, metrics_port=0, shards=1)
    held_id, shard = "campaign", 0
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(held_id, ("100000000001",), "s1"))
        held_wamids = await publish(backends, held_id, "100000000001", 2 * PREFETCH)
        relay = HeldRelay(held_id)
        async with running_worker(backends, relay):
            await wait_until(lambda: relay.count(held_id) == settings.tenant_concurrency)
            await wait_until_stable(lambda: backends.store.parked_tenants(shard))  # all routed: parked or in hand
        # Stopped: what its lanes admitted finished once released, the rest stays parked.
        left = (await backends.store.parked_tenants(shard)).get(held_id, 0)
        assert left > PREFETCH // 2, "most were still parked when the first worker stopped"
        assert relay.count(held_id) + left == len(held_wamids), "the rest were relayed, their rows deleted"

        # No new webhook comes: the next worker finds the parked rows through the drained worker's fence, which
        # went back to the queue unacked, or through a poke of its own (the test below has no fence).
        relay2 = HeldRelay("nobody")
        async with running_worker(backends, relay2):
            await wait_until(lambda: relay2.count(held_id) == left)
            await wait_until_async(lambda: backends.store.parked_tenants(shard), {})
            await wait_until_async(lambda: backends.store.parking_fences(shard), {})
        relayed = [w for t, w in relay.relayed + relay2.relayed if t == held_id]
        assert relayed == held_wamids, "each once, in order, across the two workers"


async def test_parked_rows_nobody_feeds_and_no_delivery_points_to_are_found_by_a_poke(any_settings: Settings) -> None:
    """Rows left parked with no fence and nothing in the queue (their worker lifted its fence, then died): only a
    poke to the shard tells the worker that consumes it that they are there."""
    settings = any_settings.replace(metrics_port=0, shards=1)
    held_id, shard = "campaign", 0
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(held_id, ("100000000001",), "s1"))
        messages = [webhooks.message("text", wa_id=f"1555{i:07d}") for i in range(20)]
        await backends.store.park(shard, [
            MessageToPark(held_id, f"{held_id}-{i}", encode_queued(QueuedWebhook(held_id, time.time(), "",
                webhooks.webhook("100000000001", [message]))), 1)
            for i, message in enumerate(messages)
        ])  # fmt: skip
        pokes = _pokes.labels().get()
        relay = SlowRelay(0.0)
        async with running_worker(backends, relay):
            await wait_until(lambda: len(relay.relayed) == len(messages))
            await wait_until_async(lambda: backends.store.parked_tenants(shard), {})
        assert relay.relayed == [m["id"] for m in messages], "each once, in the order parked"
        assert _pokes.labels().get() > pokes, "found by a poke"


async def test_a_busy_tenant_is_not_parked(embedded_settings: Settings, monkeypatch) -> None:
    """A full mailbox alone is not a held-back tenant: one that takes its messages at a busy worker's pace (a
    message every ~10 ms here, against PARK_AFTER 0.2 s) keeps plain backpressure, since parking it would add a store
    write and read to each of its messages."""
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 0.2)
    settings = embedded_settings.replace(mailbox_size=2, metrics_port=0, tenant_concurrency=2)
    busy_id = "busy"
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(busy_id, ("100000000001",), "s1"))
        wamids = await publish(backends, busy_id, "100000000001", 2 * PREFETCH)
        relay = SlowRelay(0.02)  # ~100 messages/s over 2 lanes
        parked_before = parked_total()
        async with running_worker(backends, relay):
            await wait_until(lambda: len(relay.relayed) == len(wamids), timeout=30)
            assert sorted(relay.relayed) == sorted(wamids), "each once"
            assert parked_total() == parked_before, "nothing parked"


async def test_a_parked_message_that_keeps_failing_ends_in_the_dead_letters_like_any_other(
    any_settings: Settings, monkeypatch
) -> None:
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 0.2)
    settings = any_settings.replace(mailbox_size=2, metrics_port=0, shards=1)
    held_id = "campaign"
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(held_id, ("100000000001",), "s1"))
        await publish(backends, held_id, "100000000001", 2 * PREFETCH)
        message_ids = {f"{held_id}-{i}" for i in range(2 * PREFETCH)}
        relay = FailingRelay(held_id)
        dead: list = []

        async def all_dead() -> int:
            dead.extend(await backends.queue.dead_letters(limit=1000))
            return len(dead)

        async with running_worker(backends, relay):
            await wait_until(lambda: relay.count(held_id) == settings.tenant_concurrency)
            await wait_until_stable(lambda: backends.store.parked_tenants(0))
            relay.release.set()
            await wait_until_async(all_dead, lambda n: n >= len(message_ids), timeout=60)
        assert sorted(d.message_id for d in dead) == sorted(message_ids), "each once in the dead letters"
        assert all(d.reason for d in dead)
        assert await backends.store.parked_tenants(0) == {}
        assert relay.count(held_id) == settings.delivery_limit * len(message_ids), "every attempt was made"
        for d in dead:
            await d.ack()


async def test_an_actor_stopped_to_make_room_while_its_router_waits_costs_no_message(
    embedded_settings: Settings, monkeypatch
) -> None:
    """Room for one tenant actor and two busy tenants on two shards: each shard's router waits on its tenant's full
    mailbox while the other router has the registry stop that actor to make room for its own. The waiting router
    hands the queue message to the tenant's next actor; it used to die of the closed mailbox, and the worker with it."""
    monkeypatch.setattr("wabridge.actors.worker.MAX_TENANT_ACTORS", 1)
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 60.0)
    settings = embedded_settings.replace(mailbox_size=1, metrics_port=0, shards=2)
    first, second = "t-a", next(f"t-{n}" for n in range(50) if shard_of(f"t-{n}", 2) != shard_of("t-a", 2))
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(first, ("100000000001",), "s1"))
        await backends.store.put_tenant(tenant(second, ("100000000002",), "s2"))
        wamids = await publish(backends, first, "100000000001", 40) + await publish(
            backends, second, "100000000002", 40
        )
        relay = SlowRelay(0.005)
        async with running_worker(backends, relay) as worker:
            await wait_until(lambda: len(relay.relayed) >= len(wamids), timeout=30)
            assert worker._router_died is not None and not worker._router_died.done(), "every router is alive"
        assert sorted(set(relay.relayed)) == sorted(wamids), "every message relayed"


class OutageRelay(HeldRelay):
    """Holds `held_tenant` until `release`; then its first message fails once, as at the end of an outage longer
    than the hold, and the actor hands back everything of that customer it holds. `delivered` is what went through."""

    def __init__(self, held_tenant: str) -> None:
        super().__init__(held_tenant)
        self.delivered: list[str] = []
        self.failed = False

    async def relay(self, tenant, inbound, received_at, *, replay: bool = False) -> str:
        await super().relay(tenant, inbound, received_at, replay=replay)
        if tenant.tenant_id == self.held_tenant and not self.failed:
            self.failed = True
            raise ConnectionError("Genesys unreachable for longer than the outage hold")
        self.delivered.append(inbound.route.wamid)
        return "delivered"


async def test_a_customers_message_handed_back_is_not_overtaken_by_the_ones_taken_after_it(
    any_settings: Settings, monkeypatch
) -> None:
    """The customer's first message fails once and goes back to the queue; its lane's next ones go back with it. The
    ones the actor takes from its mailbox while the failed one is away must not go through before it comes back
    (they used to, once the lane was empty): every message reaches Genesys in the order sent, each once."""
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 60.0)  # not parked: the queue brings it back
    settings = any_settings.replace(mailbox_size=2, metrics_port=0, shards=1)
    tenant_id = "campaign"
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(tenant_id, ("100000000001",), "s1"))
        wamids = await publish(backends, tenant_id, "100000000001", PREFETCH, customer=CUSTOMER)
        relay = OutageRelay(tenant_id)
        async with running_worker(backends, relay):
            await wait_until(lambda: relay.count(tenant_id) == 1)
            await asyncio.sleep(0.3)  # the lane and the mailbox fill up behind the held message
            relay.release.set()
            await wait_until(lambda: len(relay.delivered) == len(wamids), timeout=30)
        assert relay.failed
        assert relay.delivered == wamids, "in order, each once"
        assert await backends.queue.dead_letters(limit=10) == []


async def test_deliveries_handed_back_while_their_tenant_is_parked_go_back_in_front_of_the_parked_rows(
    any_settings: Settings, monkeypatch
) -> None:
    """What the actor took before its tenant was parked is older than every parked row. Handed back while the tenant
    is still parked (an outage outlasting the hold), it must not come back through the queue behind the rows: it is
    fed again first, in the order handed back, and the customer's messages reach Genesys in order, each once."""
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 0.2)
    settings = any_settings.replace(mailbox_size=2, metrics_port=0, shards=1)
    held_id, shard = "campaign", 0
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(held_id, ("100000000001",), "s1"))
        wamids = await publish(backends, held_id, "100000000001", 2 * PREFETCH, customer=CUSTOMER)
        relay = OutageRelay(held_id)
        async with running_worker(backends, relay):
            await wait_until(lambda: relay.count(held_id) == 1)
            parked = await wait_until_stable(lambda: backends.store.parked_tenants(shard))
            assert parked[held_id] > PREFETCH // 2, parked
            relay.release.set()
            await wait_until(lambda: len(relay.delivered) == len(wamids), timeout=30)
            await wait_until_async(lambda: backends.store.parked_tenants(shard), {})
            await wait_until_async(lambda: backends.store.parking_fences(shard), {})
        assert relay.failed
        assert relay.delivered == wamids, "in order, each once"


class FailFirstRelay(HeldRelay):
    """The held tenant's first message fails at once; every later one waits for `release`."""

    def __init__(self, held_tenant: str) -> None:
        super().__init__(held_tenant)
        self.delivered: list[str] = []

    async def relay(self, tenant, inbound, received_at, *, replay: bool = False) -> str:
        if tenant.tenant_id == self.held_tenant and not self.relayed:
            self.relayed.append((tenant.tenant_id, inbound.route.wamid))
            raise ConnectionError("S3 down for longer than the outage hold")
        await super().relay(tenant, inbound, received_at, replay=replay)
        self.delivered.append(inbound.route.wamid)
        return "delivered"


async def hand_back_just_before_parking(settings: Settings):
    """A customer's first message fails while its tenant is not parked: it and the customer's next ones go back to
    the queue. The first comes back and is held, another customer's messages fill the tenant's hold, the tenant is
    parked, and with it the first customer's later messages, all inside the consumer's window (64); only then do the
    handed-back ones come back. Returns the relay, the first customer's messages in order, the other's, and the
    dead letters."""
    held_id, shard, other = "campaign", 0, "15550000002"
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(held_id, ("100000000001",), "s1"))
        first = await publish(backends, held_id, "100000000001", 10, customer=CUSTOMER)
        others = await publish(backends, held_id, "100000000001", 40, customer=other, first=10)
        first += await publish(backends, held_id, "100000000001", 10, customer=CUSTOMER, first=50)
        others += await publish(backends, held_id, "100000000001", 2 * PREFETCH, customer=other, first=60)
        relay = FailFirstRelay(held_id)
        async with running_worker(backends, relay):
            parked = await wait_until_stable(lambda: backends.store.parked_tenants(shard))
            assert parked[held_id] > PREFETCH, parked
            relay.release.set()
            await wait_until(lambda: len(relay.delivered) == len(first + others), timeout=30)
            await wait_until_async(lambda: backends.store.parked_tenants(shard), {})
        return relay, first, others, await backends.queue.dead_letters(limit=10)


async def test_messages_handed_back_to_the_queue_just_before_their_tenant_is_parked_come_back_in_front(
    any_settings: Settings, monkeypatch
) -> None:
    """...of the rows parked meanwhile: they were taken before every one of them. Each customer's messages arrive in
    order, each once."""
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 0.2)
    settings = any_settings.replace(mailbox_size=2, metrics_port=0, shards=1)
    relay, first, others, dead = await hand_back_just_before_parking(settings)
    assert [w for w in relay.delivered if w in first] == first, "in order, each once"
    assert [w for w in relay.delivered if w in others] == others
    assert dead == []


async def test_a_blocked_customer_whose_failed_message_comes_back_behind_the_others_loses_none_of_them(
    embedded_settings: Settings, monkeypatch
) -> None:
    """Should the failed message come back behind the customer's later ones (here: the worker forgets it handed it
    back, so it is parked at the end), those would go back again and again while the customer waits for it, and end
    dead-lettered. Each waits until its last attempt at most: all are delivered, each once, none dead-lettered."""
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 0.2)
    monkeypatch.setattr("wabridge.actors.parking.ShardParking.returned", lambda self, queue_message: False)
    settings = embedded_settings.replace(mailbox_size=2, metrics_port=0, shards=1)
    relay, first, others, dead = await hand_back_just_before_parking(settings)
    assert sorted(w for w in relay.delivered if w in first) == sorted(first), "each once"
    assert [w for w in relay.delivered if w in others] == others
    assert dead == []


async def test_deliveries_that_crash_their_tenant_actor_are_dead_lettered_and_stop_neither_the_worker_nor_others(
    any_settings: Settings, monkeypatch
) -> None:
    """Issue 15: five poison webhooks in ten seconds made the worker's supervisor give up and `serve` exit, every
    tenant down. Now each crash is charged to its queue message (dead-lettered on its last attempt, with the crash as
    the reason) and to its tenant's actor (paused and restarted alone), never to the process."""
    monkeypatch.setattr("wabridge.engine.supervisor.COOL_DOWN", Backoff(0.05, 0.2, jitter=None))
    real_on_receive = TenantActor.on_receive

    async def on_receive(self, queue_message):
        if getattr(queue_message, "tenant_id", None) == poison_id:
            raise OverflowError("int too large to convert to float")  # as a bug the data triggers would
        return await real_on_receive(self, queue_message)

    monkeypatch.setattr(TenantActor, "on_receive", on_receive)
    settings = any_settings.replace(metrics_port=0, shards=1)  # one shard: both tenants share its consumer
    poison_id, healthy_id = "poisoned", "healthy"
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(poison_id, ("100000000001",), "s1"))
        await backends.store.put_tenant(tenant(healthy_id, ("100000000002",), "s2"))
        relay = HeldRelay("nobody")
        dead: list = []

        async def dead_count() -> int:
            dead.extend(await backends.queue.dead_letters(limit=1000))
            return len(dead)

        async with running_worker(backends, relay):
            await publish(backends, poison_id, "100000000001", 8)
            healthy = await publish(backends, healthy_id, "100000000002", 20, first=100)
            await wait_until_async(dead_count, lambda n: n >= 8, timeout=60)
            later = await publish(backends, healthy_id, "100000000002", 5, first=200)
            # Published after the crashes: a worker that had given up would never take them.
            await wait_until(lambda: relay.count(healthy_id) == len(healthy) + len(later), timeout=30)
        assert sorted(d.message_id for d in dead) == sorted(f"{poison_id}-{i}" for i in range(8)), "each once"
        assert all("OverflowError" in d.reason for d in dead), [d.reason for d in dead]
        assert sorted(w for _, w in relay.relayed) == sorted(healthy + later), "the healthy tenant lost nothing"
        for d in dead:
            await d.ack()


async def test_a_worker_closed_leaves_none_of_its_tasks_running(any_settings: Settings, monkeypatch) -> None:
    """A queue message that crashed its tenant actor is handed back by a task of the worker's; when the worker is closed
    (here by the drain's deadline, while that hand-back is stuck), the task is cancelled and awaited with it rather
    than left running after the worker is gone."""
    monkeypatch.setattr("wabridge.engine.supervisor.COOL_DOWN", (0.05, 0.2))
    real_on_receive = TenantActor.on_receive

    async def on_receive(self, queue_message):
        if getattr(queue_message, "tenant_id", None) == "poisoned":
            raise OverflowError("a bug the data triggers")
        return await real_on_receive(self, queue_message)

    handing_back = asyncio.Event()

    async def stuck_retry(self) -> None:
        handing_back.set()
        await asyncio.Event().wait()  # a queue that never answers

    monkeypatch.setattr(TenantActor, "on_receive", on_receive)
    monkeypatch.setattr("wabridge.adapters.queue.sqlite.SqliteQueueMessage.retry", stuck_retry)
    monkeypatch.setattr("wabridge.adapters.queue.amqp.AmqpQueueMessage.retry", stuck_retry)
    settings = any_settings.replace(metrics_port=0, shards=1)
    async with opened_backends(settings) as backends, saas_adapters(backends) as saas:
        await backends.store.put_tenant(tenant("poisoned", ("100000000001",), "s1"))
        await publish(backends, "poisoned", "100000000001", 1)
        before = asyncio.all_tasks()  # the backends' and the SaaS clients' own are closed with them
        shutdown = Shutdown()
        running = asyncio.create_task(Worker(backends, saas, prefetch=PREFETCH).run(shutdown))
        await asyncio.wait_for(handing_back.wait(), 30)
        shutdown.request("test over")
        await asyncio.wait([running], timeout=1)  # the drain waits for the hand-back...
        running.cancel()  # ...until its deadline
        await asyncio.gather(running, return_exceptions=True)
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        assert left == [], left
