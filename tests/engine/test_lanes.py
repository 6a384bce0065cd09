"""Ordering lanes: a customer's messages in arrival order, different customers in parallel, bounded memory."""

from __future__ import annotations

import asyncio
import random

import pytest

from wabridge.engine.lanes import Lanes, LanesClosed, LanesFull

pytestmark = pytest.mark.anyio


async def test_a_thousand_messages_across_fifty_customers_arrive_in_order_per_customer_and_overlap() -> None:
    rng = random.Random(7)
    arrived: dict[str, list[int]] = {}
    running: set[str] = set()
    peak = 0
    overlapping_customers = 0

    async def deliver(customer: str, seq: int) -> int:
        nonlocal peak, overlapping_customers
        assert customer not in running, "two messages of one customer ran at once"
        running.add(customer)
        peak = max(peak, len(running))
        if len(running) > 1:
            overlapping_customers += 1
        await asyncio.sleep(rng.uniform(0, 0.004))
        arrived.setdefault(customer, []).append(seq)
        running.discard(customer)
        return seq

    sent: dict[str, list[int]] = {}
    futures = []
    async with Lanes(deliver, concurrency=16, max_pending=128) as lanes:
        for seq in range(1000):
            customer = f"wa{rng.randrange(50)}"
            sent.setdefault(customer, []).append(seq)
            futures.append(await lanes.submit(customer, seq))
            assert lanes.statistics().pending <= 128
        results = await asyncio.gather(*futures)
        assert lanes.statistics().lanes == 0  # empty lanes are removed
    assert results == list(range(1000))
    assert arrived == sent
    assert peak > 1 and peak <= 16  # customers ran in parallel, within the limit
    assert overlapping_customers > 100


async def test_a_failing_item_fails_only_its_own_future_and_the_lane_continues() -> None:
    async def handle(key: str, item: int) -> int:
        if item == 1:
            raise ValueError("bad item")
        return item

    async with Lanes(handle, concurrency=2) as lanes:
        futures = [await lanes.submit("wa1", i) for i in range(3)]
        done = await asyncio.gather(*futures, return_exceptions=True)
    assert done[0] == 0 and isinstance(done[1], ValueError) and done[2] == 2


async def test_submit_waits_when_max_pending_is_reached_and_submit_nowait_raises() -> None:
    gate = asyncio.Event()

    async def handle(key: str, item: int) -> int:
        await gate.wait()
        return item

    async with Lanes(handle, concurrency=4, max_pending=2) as lanes:
        first = [await lanes.submit("a", 0), await lanes.submit("b", 1)]
        with pytest.raises(LanesFull):
            lanes.submit_nowait("c", 2)
        third = asyncio.ensure_future(lanes.submit("a", 3))
        await asyncio.sleep(0.01)
        assert not third.done()
        assert lanes.statistics().submitters_waiting == 1
        gate.set()
        assert await (await third) == 3
        assert await asyncio.gather(*first) == [0, 1]


async def test_waiting_submitters_for_one_key_keep_their_call_order() -> None:
    order: list[int] = []
    gate = asyncio.Event()

    async def handle(key: str, item: int) -> None:
        await gate.wait()
        order.append(item)

    async with Lanes(handle, max_pending=1) as lanes:
        futures = [await lanes.submit("wa1", 0)]
        waiters = [asyncio.ensure_future(lanes.submit("wa1", i)) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        gate.set()
        futures += [await w for w in waiters]
        await asyncio.gather(*futures)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_closed_lanes_refuse_new_items_but_finish_admitted_ones() -> None:
    async def handle(key: str, item: int) -> int:
        await asyncio.sleep(0.01)
        return item

    async with Lanes(handle) as lanes:
        future = await lanes.submit("wa1", 1)
        lanes.close()
        with pytest.raises(LanesClosed):
            await lanes.submit("wa1", 2)
    assert future.result() == 1


async def test_cancelling_the_lanes_cancels_unfinished_futures_so_the_caller_can_hand_them_back() -> None:
    async def handle(key: str, item: int) -> int:
        await asyncio.sleep(10)
        return item

    futures = []

    async def consume() -> None:
        async with Lanes(handle) as lanes:
            for i in range(4):
                futures.append(await lanes.submit(f"wa{i % 2}", i))
            await asyncio.sleep(10)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(f.cancelled() for f in futures)
