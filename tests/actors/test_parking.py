"""Parking's state machine (actors/parking.py), driven directly: no worker, no router, no tenant actor.

Each test runs on both backends: the SQLite store and queue, and PostgreSQL with RabbitMQ. The queue messages parked are
real queue messages, so "acked" and "left unacked" are checked where they matter, on the queue: a consumer that
stops gets back what was never acked. The tenant actors are a small stand-in (`Tenants`): ShardParking only tells
them messages, and the test takes them one by one, at the pace of a tenant held back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.contract.queue_harness import Collector, QueueKit, hold, take_dead_letters
from wabridge.actors import parking as parking_module
from wabridge.actors.fed_messages import HeldBack, FedMessage
from wabridge.actors.parking import POKE_PREFIX, ShardParking, is_poke
from wabridge.actors.tenant import Settled
from wabridge.ports import QueueMessage, MessageEvent, MessageToPark, ParkedMessage, ParkingFence, Store
from wabridge.engine.settings import Settings
from wabridge.adapters.store.postgres import PostgresStore
from wabridge.adapters.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

SHARD = 0  # one shard: every tenant of these tests shares it
TENANT = "campaign"
OTHER = "other"
DELIVERY_LIMIT = 3
SETTLE = 0.3  # s given to something that must not happen, before saying it did not (never a speed assertion)


def message_id(i: int, tenant_id: str = TENANT) -> str:
    return f"w{i}:{tenant_id}"  # the ingress's `<webhook id>:<tenant id>`


def body_of(message_id: str) -> bytes:
    return f"body of {message_id}".encode()


async def unparked(parking: ShardParking, tenant_id: str = TENANT, timeout: float = 10.0) -> None:
    """Until the tenant is no longer parked: its feeder has handed over its last row, a step after the test took it."""
    deadline = time.monotonic() + timeout
    while parking.holds(tenant_id):
        assert time.monotonic() < deadline, "still parked"
        await asyncio.sleep(0.01)


class Watched:
    """A queue message as the router holds it, settled on the queue as it is; `how` says how it was settled."""

    def __init__(self, queue_message: QueueMessage) -> None:
        self.queue_message = queue_message
        self.tenant_id = queue_message.tenant_id
        self.message_id = queue_message.message_id
        self.body = queue_message.body
        self.shard = queue_message.shard
        self.attempt = queue_message.attempt
        self.settled: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"Watched({self.message_id!r}, attempt={self.attempt})"

    async def ack(self) -> None:
        await self.queue_message.ack()
        self.settled.set_result("ack")

    async def retry(self) -> None:
        await self.queue_message.retry()
        self.settled.set_result("retry")

    async def dead_letter(self, reason: str) -> None:
        await self.queue_message.dead_letter(reason)
        self.settled.set_result(f"dead_letter: {reason}")

    async def how(self, timeout: float = 10.0) -> str:
        return await asyncio.wait_for(asyncio.shield(self.settled), timeout)


class Tenants:
    """Stands in for the worker's registry of tenant actors, which ShardParking only `tell`s: each tenant's messages
    wait in a mailbox of one until the test takes them, as with an actor busy with earlier ones. `Settled` marks
    taken along the way are kept apart (`marks`), for the test to pass when it chooses."""

    def __init__(self) -> None:
        self._mailboxes: dict[str, asyncio.Queue[Any]] = {}
        self.marks: dict[str, list[Settled]] = {}

    def mailbox(self, tenant_id: str) -> asyncio.Queue[Any]:
        return self._mailboxes.setdefault(tenant_id, asyncio.Queue(1))

    async def tell(self, tenant_id: str, message: Any) -> None:
        await self.mailbox(tenant_id).put(message)

    async def take(self, tenant_id: str = TENANT, timeout: float = 10.0) -> Any:
        """The tenant's next queue message (a FedMessage or a HeldBack), marks set aside."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.mailbox(tenant_id).get()
                if type(message) is not Settled:
                    return message
                self.marks.setdefault(tenant_id, []).append(message)

    async def take_mark(self, tenant_id: str = TENANT, timeout: float = 10.0) -> Settled:
        """The next `Settled` mark told to the tenant; the queue messages in front of it must have been taken."""
        async with asyncio.timeout(timeout):
            while not self.marks.get(tenant_id):
                message = await self.mailbox(tenant_id).get()
                assert type(message) is Settled, f"a delivery not taken before the mark: {message!r}"
                self.marks.setdefault(tenant_id, []).append(message)
        return self.marks[tenant_id].pop(0)

    async def nothing_more(self, tenant_id: str = TENANT) -> None:
        """No queue message is told to the tenant (marks are set aside)."""
        await asyncio.sleep(SETTLE)
        mailbox = self.mailbox(tenant_id)
        while not mailbox.empty():
            message = mailbox.get_nowait()
            assert type(message) is Settled, f"told {message!r}"
            self.marks.setdefault(tenant_id, []).append(message)


class Lot:
    """One test's store and queue (shard 0), the queue messages its consumer took, and the ShardParkings it made."""

    def __init__(self, store: Store, kit: QueueKit) -> None:
        self.store = store
        self.kit = kit
        self.queue: Any = None
        self.collector = Collector(settle=hold)
        self.consumer: Any = None
        self.parkings: list[ShardParking] = []
        self.events: list[MessageEvent] = []

    async def open(self) -> None:
        self.queue = await self.kit.open()
        self.consumer = await self.queue.consume(self.collector)

    def parking(self, tenants: Tenants, *, hold_back_limit: int = 1024) -> ShardParking:
        made = ShardParking(
            SHARD,
            self.store,
            self.queue,
            tenants,
            delivery_limit=DELIVERY_LIMIT,
            hold_back_limit=hold_back_limit,
            events=self.events.append,
        )
        self.parkings.append(made)
        return made

    async def take(self, n: int, *, first: int = 0, tenant_id: str = TENANT) -> list[Watched]:
        """n messages of the tenant published and taken by the consumer, left unacked: what the router holds."""
        before = len(self.collector.queue_messages)
        for i in range(first, first + n):
            await self.queue.publish(tenant_id, body_of(message_id(i, tenant_id)), message_id=message_id(i, tenant_id))
        taken = (await self.collector.wait_for(before + n))[before:]
        assert [d.message_id for d in taken] == [message_id(i, tenant_id) for i in range(first, first + n)]
        return [Watched(d) for d in taken]

    async def restart_consumer(self, expect: int) -> list[Watched]:
        """The consumer stops and a new one starts: what comes back is what was never acked, in queue order."""
        await self.consumer.stop()
        self.collector = Collector(settle=hold)
        self.consumer = await self.queue.consume(self.collector)
        if expect:
            await self.collector.wait_for(expect)
        await asyncio.sleep(SETTLE)
        assert len(self.collector.queue_messages) == expect, self.collector.message_ids
        return [Watched(d) for d in self.collector.queue_messages]

    async def rows(self, tenant_id: str = TENANT) -> list[tuple[str, int]]:
        """The tenant's parked rows, (message id, attempt), in seq order."""
        return [(m.message_id, m.attempt) for m in await self.store.parked(SHARD, tenant_id, limit=1000)]

    async def park_rows(
        self, n: int, *, first: int = 0, tenant_id: str = TENANT, fence: str | None = None
    ) -> list[str]:
        """Rows left parked by a worker gone: written straight to the store."""
        ids = [message_id(i, tenant_id) for i in range(first, first + n)]
        await self.store.park(
            SHARD,
            [MessageToPark(tenant_id, m, body_of(m), 1) for m in ids],
            fences=[ParkingFence(tenant_id, fence)] if fence else (),
        )
        return ids

    async def close(self) -> None:
        for made in self.parkings:
            await made.close()
        if self.consumer is not None:
            await self.consumer.stop()
        await self.kit.clean_up()


@pytest.fixture(params=["embedded", pytest.param("servers", marks=pytest.mark.servers)])
def lot_settings(request: pytest.FixtureRequest) -> Settings:
    """Both backends (the contract tests' pattern): SQLite store and queue, or PostgreSQL and RabbitMQ."""
    name = {"embedded": "embedded_settings", "servers": "server_settings"}[request.param]
    settings: Settings = request.getfixturevalue(name)
    return settings.replace(shards=1)


@pytest.fixture
async def lot(lot_settings: Settings) -> AsyncIterator[Lot]:
    servers = lot_settings.database_url is not None
    store: Store = PostgresStore(lot_settings) if servers else SqliteStore(lot_settings)
    await store.open()
    await store.migrate()
    made = Lot(store, QueueKit("amqp" if servers else "sqlite", lot_settings))
    try:
        await made.open()
        yield made
    finally:
        await made.close()
        await store.close()


def ids(queue_messages: list[Any]) -> list[str]:
    return [d.message_id for d in queue_messages]


# --- parking ----------------------------------------------------------------------------------------------------


async def test_a_parked_tenants_deliveries_are_written_in_order_and_acked_all_but_the_fence(lot: Lot) -> None:
    taken = await lot.take(5)
    parking = lot.parking(Tenants())
    for queue_message in taken:
        parking.park(queue_message)
    assert parking.holds(TENANT) and not parking.holds(OTHER)
    for queue_message in taken[1:]:
        assert await queue_message.how() == "ack", "acked once written"
    rows = await lot.store.parked(SHARD, TENANT, limit=100)
    assert [(r.message_id, r.body, r.attempt, r.shard) for r in rows] == [
        (d.message_id, d.body, 1, SHARD) for d in taken
    ], "in the order parked, whole"
    assert [r.seq for r in rows] == sorted({r.seq for r in rows}), "seq ascending, one each"
    assert await lot.store.parking_fences(SHARD) == {TENANT: taken[0].message_id}
    assert not taken[0].settled.done(), "the fence stays unacked"
    back = await lot.restart_consumer(expect=1)
    assert [(d.message_id, d.attempt) for d in back] == [(taken[0].message_id, 2)], "only the fence was unacked"
    assert [e.event for e in lot.events] == ["parked"] * 5


async def test_parked_rows_are_fed_back_in_order_at_the_tenants_pace_and_the_tenant_unparked_after_the_last(
    lot: Lot,
) -> None:
    taken = await lot.take(4)
    tenants = Tenants()
    parking = lot.parking(tenants)
    parked_tenants = parking_module._parked_tenants.get()
    for queue_message in taken:
        parking.park(queue_message)
    assert parking_module._parked_tenants.get() == parked_tenants + 1
    fed = [await tenants.take()]
    fed.append(await tenants.take())
    # Two still in the store and not handed over (the tenant takes one at a time): still parked.
    assert parking.holds(TENANT)
    fed += [await tenants.take(), await tenants.take()]
    assert all(type(d) is FedMessage for d in fed)
    assert ids(fed) == ids(taken), "in the order parked"
    assert [d.attempt for d in fed] == [1] * 4 and [d.body for d in fed] == [d.body for d in taken]
    # The last one handed over: unparked at once, while the rows wait for their settlement.
    await unparked(parking)
    assert parking_module._parked_tenants.get() == parked_tenants
    assert await lot.rows() == [(d.message_id, 1) for d in taken]
    await tenants.nothing_more()
    for queue_message in fed:
        await queue_message.ack()
    assert await lot.store.parked_tenants(SHARD) == {}, "each row deleted by its ack"
    assert [e.event for e in lot.events].count("fed") == 4


async def test_a_tenant_parked_again_after_its_fence_was_lifted_starts_an_episode_with_a_fence_of_its_own(
    lot: Lot,
) -> None:
    first, second = await lot.take(2), await lot.take(2, first=2)
    tenants = Tenants()
    parking = lot.parking(tenants)
    for queue_message in first:
        parking.park(queue_message)
    fed = [await tenants.take(), await tenants.take()]
    (await tenants.take_mark()).passed.set_result(None)
    assert await first[0].how() == "ack"
    for queue_message in fed:
        await queue_message.ack()
    await unparked(parking)
    for queue_message in second:
        parking.park(queue_message)
    assert parking.holds(TENANT)
    assert await second[1].how() == "ack"
    assert await lot.store.parking_fences(SHARD) == {TENANT: second[0].message_id}
    assert ids([await tenants.take(), await tenants.take()]) == ids(second)


async def test_deliveries_parked_while_the_earlier_ones_are_fed_follow_them(lot: Lot) -> None:
    taken = await lot.take(4)
    tenants = Tenants()
    parking = lot.parking(tenants)
    for queue_message in taken[:2]:
        parking.park(queue_message)
    fed = [await tenants.take()]  # the feeder has read the first write; the second comes in meanwhile
    for queue_message in taken[2:]:
        parking.park(queue_message)
    fed += [await tenants.take() for _ in range(3)]
    assert ids(fed) == ids(taken), "each once, in the order parked"
    await unparked(parking)


async def test_a_tenant_parked_again_before_its_fence_was_lifted_keeps_that_fence(lot: Lot) -> None:
    """The older fence still covers what the actor took before it: the new episode's queue messages are all acked."""
    first, second = await lot.take(1), await lot.take(2, first=1)
    tenants = Tenants()
    parking = lot.parking(tenants)
    parking.park(first[0])
    fed = [await tenants.take()]
    await unparked(parking)
    for queue_message in second:
        parking.park(queue_message)
    assert [await d.how() for d in second] == ["ack", "ack"]
    fed += [await tenants.take() for _ in second]
    assert ids(fed) == ids(first + second)
    assert await lot.store.parking_fences(SHARD) == {TENANT: first[0].message_id}
    (await tenants.take_mark()).passed.set_result(None)
    assert await first[0].how() == "ack"
    assert await lot.store.parking_fences(SHARD) == {}


# --- the fence ----------------------------------------------------------------------------------------------------


async def test_the_fence_is_cleared_and_acked_once_what_the_tenant_took_before_it_is_settled(lot: Lot) -> None:
    taken = await lot.take(3)
    tenants = Tenants()
    parking = lot.parking(tenants)
    for queue_message in taken:
        parking.park(queue_message)
    fed = [await tenants.take() for _ in taken]
    mark = await tenants.take_mark()  # told behind everything the actor took before the episode
    await asyncio.sleep(SETTLE)
    assert await lot.store.parking_fences(SHARD) == {TENANT: taken[0].message_id}
    assert not taken[0].settled.done(), "not before the older deliveries are settled"
    mark.passed.set_result(None)
    assert await taken[0].how() == "ack"
    assert await lot.store.parking_fences(SHARD) == {}
    for queue_message in fed:
        await queue_message.ack()
    await lot.restart_consumer(expect=0)


async def test_the_fence_waits_for_the_deliveries_taken_back_in_front_of_the_parked_rows(lot: Lot) -> None:
    older = await lot.take(1)
    newer = await lot.take(2, first=1)
    tenants = Tenants()
    parking = lot.parking(tenants)
    for queue_message in newer:
        parking.park(queue_message)
    assert parking.take_back(older[0])
    fed = [await tenants.take() for _ in range(3)]
    (await tenants.take_mark()).passed.set_result(None)
    await asyncio.sleep(SETTLE)
    assert not newer[0].settled.done(), "the one taken back is older than the fence and not settled yet"
    assert await lot.store.parking_fences(SHARD) == {TENANT: newer[0].message_id}
    await fed[0].ack()
    assert await older[0].how() == "ack", "a HeldBack settles the queue delivery it wraps"
    assert await newer[0].how() == "ack"
    assert await lot.store.parking_fences(SHARD) == {}


# --- queue messages handed back ---------------------------------------------------------------------------------------


async def test_deliveries_handed_back_while_the_tenant_is_parked_are_fed_again_in_front_of_the_parked_rows(
    lot: Lot,
) -> None:
    older = await lot.take(2)  # taken by the actor before its tenant was parked
    newer = await lot.take(3, first=2)
    tenants = Tenants()
    parking = lot.parking(tenants)
    for queue_message in newer:
        parking.park(queue_message)
    fed = [await tenants.take()]  # the first parked row is in the actor's hands when the older ones come back
    assert parking.take_back(older[0]) and parking.take_back(older[1])
    fed += [await tenants.take() for _ in range(4)]
    # The second row was on its way to the actor already; everything not yet handed over waits behind them.
    assert ids(fed) == ids([newer[0], newer[1], older[0], older[1], newer[2]])
    assert [type(d) for d in fed[2:4]] == [HeldBack, HeldBack]
    assert [d.attempt for d in fed[2:4]] == [2, 2], "an attempt more, as the queue would count it"
    assert not older[0].settled.done(), "unacked on the queue meanwhile"
    await fed[2].retry()
    assert await older[0].how() == "retry", "a HeldBack's retry is the queue delivery's"
    assert await lot.rows() == [(d.message_id, 1) for d in newer], "the rows are left as they were"


async def test_a_delivery_handed_back_while_its_tenant_is_not_parked_goes_back_to_the_queue_and_is_remembered(
    lot: Lot,
) -> None:
    [queue_message] = await lot.take(1)
    parking = lot.parking(Tenants())
    assert not parking.take_back(queue_message), "not parked: through the queue"
    assert parking.returned(queue_message), "remembered until the queue brings it back"
    assert not parking.returned(queue_message), "once"
    assert not parking.returned((await lot.take(1, first=1))[0]), "only what was handed back"


async def test_redeliveries_taken_back_are_bounded_by_hold_back_limit_and_keep_their_attempt(lot: Lot) -> None:
    taken = await lot.take(4)
    parked, redelivered = taken[0], taken[1:]
    tenants = Tenants()
    parking = lot.parking(tenants, hold_back_limit=1)
    parking.park(parked)
    assert parking.take_back(redelivered[0], redelivered=True)
    assert not parking.take_back(redelivered[1], redelivered=True), "the limit reached: parked behind instead"
    assert parking.take_back(redelivered[2]), "the actor's own hand-backs are not bounded"
    row = ParkedMessage(seq=1, shard=SHARD, tenant_id=TENANT, message_id=parked.message_id, body=b"", attempt=1)
    assert not parking.take_back(FedMessage(row, parking)), "a parked one settles in the store, never the queue"
    fed = [await tenants.take() for _ in range(3)]
    assert [(d.message_id, d.attempt) for d in fed] == [
        (redelivered[0].message_id, 1), (redelivered[2].message_id, 2), (parked.message_id, 1)
    ], "a redelivery has had its attempt counted by the queue already; the actor's hand-back has not"


async def test_a_delivery_handed_back_during_a_drain_goes_back_to_the_queue(lot: Lot) -> None:
    """Its tenant still parked, but nobody will feed it any more: a HeldBack would be lost in memory."""
    taken = await lot.take(2)
    parking = lot.parking(Tenants())
    parking.park(taken[1])
    await asyncio.sleep(0)  # the write under way
    closing = asyncio.ensure_future(parking.close())
    await asyncio.sleep(0)  # the drain has begun, and waits for the write
    assert parking.holds(TENANT)
    assert not parking.take_back(taken[0])
    await closing


# --- settling a parked message ----------------------------------------------------------------------------------


async def test_a_parked_message_handed_back_is_fed_again_before_the_rest_one_attempt_on(lot: Lot) -> None:
    parked = await lot.park_rows(3)
    tenants = Tenants()
    parking = lot.parking(tenants)
    await parking.load()
    first = await tenants.take()
    await first.retry()
    fed = [await tenants.take() for _ in range(3)]
    # The second was on its way to the actor already; the third waits behind the one handed back.
    assert [(d.message_id, d.attempt) for d in fed] == [(parked[1], 1), (parked[0], 2), (parked[2], 1)]
    assert (await lot.rows())[0] == (parked[0], 2), "its attempt recorded: a restart feeds it at that attempt"


async def test_a_parked_message_handed_back_after_its_tenant_was_unparked_parks_it_again(lot: Lot) -> None:
    [parked] = await lot.park_rows(1)
    tenants = Tenants()
    parking = lot.parking(tenants)
    await parking.load()
    fed = await tenants.take()
    await unparked(parking)
    await fed.retry()  # its tenant parked again, so that it goes before whatever the router hands it next
    again = await tenants.take()
    assert (again.message_id, again.attempt) == (parked, 2)
    await again.ack()
    await unparked(parking)
    assert await lot.store.parked_tenants(SHARD) == {}


async def test_a_parked_message_that_fails_for_good_is_buried_in_the_dead_letters_with_its_reason(lot: Lot) -> None:
    [parked] = await lot.park_rows(1)
    tenants = Tenants()
    parking = lot.parking(tenants)
    await parking.load()
    await (await tenants.take()).dead_letter("genesys 400: missing text")
    [dead] = await take_dead_letters(lot.queue, 1)
    assert (dead.tenant_id, dead.message_id, dead.body) == (TENANT, parked, body_of(parked))
    assert dead.reason == "genesys 400: missing text"  # type: ignore[attr-defined]
    assert await lot.store.parked_tenants(SHARD) == {}, "unparked once buried"
    assert [(e.event, e.detail, e.webhook_id) for e in lot.events if e.event == "buried"] == [
        ("buried", "genesys 400: missing text", "w0")
    ]
    await dead.ack()


async def test_a_parked_message_handed_back_at_its_last_attempt_is_buried(lot: Lot) -> None:
    [parked] = await lot.park_rows(1)
    tenants = Tenants()
    parking = lot.parking(tenants)
    await parking.load()
    for attempt in range(1, DELIVERY_LIMIT + 1):
        fed = await tenants.take()
        assert (fed.message_id, fed.attempt) == (parked, attempt)
        await fed.retry()
    [dead] = await take_dead_letters(lot.queue, 1)
    assert dead.message_id == parked
    assert dead.reason == f"attempt {DELIVERY_LIMIT} of {DELIVERY_LIMIT}: handed back"  # type: ignore[attr-defined]
    assert await lot.store.parked_tenants(SHARD) == {}
    await tenants.nothing_more()
    await dead.ack()


# --- after a restart --------------------------------------------------------------------------------------------


async def test_a_worker_taking_over_feeds_the_parked_rows_only_once_the_fence_comes_back(lot: Lot) -> None:
    older = await lot.take(2)  # in the first worker's actor when the tenant was parked
    newer = await lot.take(3, first=2)
    first = lot.parking(Tenants())
    for queue_message in newer:
        first.park(queue_message)
    for queue_message in newer[1:]:
        assert await queue_message.how() == "ack"
    await first.close()  # the first worker goes away holding the older ones and the fence, unacked
    back = await lot.restart_consumer(expect=3)
    assert ids(back) == ids(older) + [newer[0].message_id], "in queue order: the older ones, then the fence"

    tenants = Tenants()
    second = lot.parking(tenants)
    await second.load()
    assert second.fence_awaited(TENANT) == newer[0].message_id
    assert not second.holds(TENANT), "the older ones go to the actor, not behind the rows"
    await tenants.nothing_more()
    for queue_message in back[:2]:
        await queue_message.ack()  # the router handed them to the actor, which settled them
    second.fence_came(back[2])
    assert second.fence_awaited(TENANT) is None and second.holds(TENANT)
    fed = [await tenants.take() for _ in newer]
    assert ids(fed) == ids(newer), "the fence's row stands for it, first"
    (await tenants.take_mark()).passed.set_result(None)
    assert await back[2].how() == "ack"
    assert await lot.store.parking_fences(SHARD) == {}


async def test_a_fence_that_never_comes_back_is_waited_for_fence_wait_then_the_rows_are_fed(
    lot: Lot, monkeypatch: pytest.MonkeyPatch
) -> None:
    parked = await lot.park_rows(2, fence="w9:gone")
    tenants = Tenants()
    waiting = lot.parking(tenants)
    await waiting.load()
    assert waiting.fence_awaited(TENANT) == "w9:gone"
    await tenants.nothing_more()
    monkeypatch.setattr(parking_module, "FENCE_WAIT", 0.0)
    tenants = Tenants()
    given_up = lot.parking(tenants)
    await given_up.load()
    assert ids([await tenants.take(), await tenants.take()]) == parked
    assert given_up.fence_awaited(TENANT) is None


async def test_parked_rows_nobody_feeds_are_poked_and_fed_once_loaded(lot: Lot) -> None:
    parked = await lot.park_rows(3)
    tenants = Tenants()
    parking = lot.parking(tenants)
    pokes = parking_module._pokes.labels().get()
    await parking.find_orphans()
    assert parking_module._pokes.labels().get() == pokes + 1
    [poke] = await lot.collector.wait_for(1)
    assert is_poke(poke) and poke.message_id.startswith(POKE_PREFIX)
    assert (poke.tenant_id, poke.body, poke.shard) == (TENANT, b"", SHARD), "into the shard of the rows"
    await poke.ack()

    await parking.load()
    await parking.find_orphans()
    assert parking_module._pokes.labels().get() == pokes + 1, "fed here: not an orphan"
    fed = [await tenants.take() for _ in parked]
    assert ids(fed) == parked
    await unparked(parking)
    # Fed, not yet settled: in this worker's hands, so neither an orphan nor fed a second time.
    await parking.find_orphans()
    assert parking_module._pokes.labels().get() == pokes + 1
    await parking.load(again=True)
    assert not parking.holds(TENANT)
    await tenants.nothing_more()
    for queue_message in fed:
        await queue_message.ack()
    await parking.find_orphans()
    assert parking_module._pokes.labels().get() == pokes + 1, "nothing left parked"


async def test_load_again_feeds_rows_parked_since_and_load_alone_loads_once(lot: Lot) -> None:
    tenants = Tenants()
    parking = lot.parking(tenants)
    await parking.load()
    assert parking.loaded
    parked = await lot.park_rows(2, tenant_id=OTHER)  # by a worker that held the shard meanwhile
    await parking.load()
    assert not parking.holds(OTHER), "loaded already: a poke is what says to look again"
    await parking.load(again=True)
    assert parking.holds(OTHER)
    fed = [await tenants.take(OTHER), await tenants.take(OTHER)]
    assert ids(fed) == parked
    await unparked(parking, OTHER)
    # One more row (its bury failed, say): fed once found, and only it; the two in the actor's hands are not fed again.
    [extra] = await lot.park_rows(1, first=2, tenant_id=OTHER)
    await parking.load(again=True)
    assert (await tenants.take(OTHER)).message_id == extra
    await tenants.nothing_more(OTHER)


async def test_close_finishes_the_write_under_way_and_leaves_the_rows_for_the_next_consumer(lot: Lot) -> None:
    taken = await lot.take(4)
    tenants = Tenants()
    parking = lot.parking(tenants)
    for queue_message in taken:
        parking.park(queue_message)
    await asyncio.sleep(0)  # the writer's first step: the write is under way
    await parking.close()
    assert all(d.settled.done() for d in taken[1:]), "written, so acked"
    assert await lot.rows() == [(d.message_id, 1) for d in taken], "every row left for the next consumer"
    assert await lot.store.parking_fences(SHARD) == {TENANT: taken[0].message_id}
    while not tenants.mailbox(TENANT).empty():
        tenants.mailbox(TENANT).get_nowait()  # what the feeder had handed over before the close
    await tenants.nothing_more()  # feeding stopped
    back = await lot.restart_consumer(expect=1)
    assert ids(back) == [taken[0].message_id], "the fence goes back to the queue, ahead of the rows"


async def test_close_before_a_write_began_leaves_its_deliveries_unacked_on_the_queue(lot: Lot) -> None:
    taken = await lot.take(3)
    parking = lot.parking(Tenants())
    for queue_message in taken:
        parking.park(queue_message)
    await parking.close()  # before the writer's first step
    assert await lot.store.parked_tenants(SHARD) == {} and await lot.store.parking_fences(SHARD) == {}
    back = await lot.restart_consumer(expect=3)
    assert [(d.message_id, d.attempt) for d in back] == [(d.message_id, 2) for d in taken], "all back, in order"


async def test_close_right_after_load_leaves_no_tenant_counted_as_parked(lot: Lot) -> None:
    await lot.park_rows(1)
    parking = lot.parking(Tenants())
    before = parking_module._parked_tenants.get()
    try:
        await parking.load()
        assert parking_module._parked_tenants.get() == before + 1
        await parking.close()  # in the same step: the feeder load started has not run yet
        assert parking_module._parked_tenants.get() == before
        assert not parking.holds(TENANT)
    finally:
        parking_module._parked_tenants.set(before)  # the gauge is the process's: later tests read it
