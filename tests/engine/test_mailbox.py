"""Mailbox: bounded, backpressure on send, a clear error on send_nowait, close drains."""

from __future__ import annotations

import asyncio

import pytest

from wabridge.engine.actor import Actor
from wabridge.engine.mailbox import Mailbox, MailboxClosed, MailboxEmpty, MailboxFull
from wabridge.engine.supervisor import Supervisor

pytestmark = pytest.mark.anyio


async def test_send_nowait_raises_mailbox_full_at_capacity() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    mailbox.send_nowait(1)
    mailbox.send_nowait(2)
    with pytest.raises(MailboxFull, match="2 items"):
        mailbox.send_nowait(3)
    assert mailbox.statistics().size == 2


async def test_send_waits_while_full_and_resumes_when_an_item_is_received() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.send_nowait(1)
    sender = asyncio.create_task(mailbox.send(2))
    await asyncio.sleep(0.01)
    assert not sender.done()
    assert mailbox.statistics().senders_waiting == 1
    assert await mailbox.receive() == 1
    await asyncio.wait_for(sender, 1)
    assert await mailbox.receive() == 2
    stats = mailbox.statistics()
    assert (stats.total_sent, stats.total_received, stats.senders_waiting) == (2, 2, 0)


async def test_close_refuses_senders_and_lets_the_receiver_drain() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    mailbox.send_nowait(1)
    mailbox.send_nowait(2)
    waiting = asyncio.create_task(mailbox.send(3))
    await asyncio.sleep(0)
    mailbox.close()
    with pytest.raises(MailboxClosed):
        await waiting
    with pytest.raises(MailboxClosed):
        mailbox.send_nowait(4)
    assert [await mailbox.receive(), await mailbox.receive()] == [1, 2]
    with pytest.raises(MailboxClosed):
        await mailbox.receive()


async def test_receive_nowait_on_an_empty_open_mailbox_raises_mailbox_empty() -> None:
    with pytest.raises(MailboxEmpty):
        Mailbox(1).receive_nowait()


async def test_a_cancelled_waiting_sender_does_not_steal_the_next_senders_turn() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    mailbox.send_nowait(0)
    first = asyncio.create_task(mailbox.send(1))
    second = asyncio.create_task(mailbox.send(2))
    await asyncio.sleep(0)
    mailbox.receive_nowait()  # wakes `first`…
    first.cancel()  # …which is cancelled before it runs
    await asyncio.wait_for(second, 1)
    assert mailbox.receive_nowait() == 2


class Slow(Actor):
    def __init__(self, handled: list[int]) -> None:
        self.handled = handled

    async def on_receive(self, message: int) -> None:
        await asyncio.sleep(0.001)
        self.handled.append(message)


async def test_a_slow_actor_makes_tell_wait_and_its_mailbox_never_exceeds_capacity() -> None:
    handled: list[int] = []
    peak = 0
    async with Supervisor() as root:
        ref = root.spawn(lambda: Slow(handled), name="slow", capacity=8)
        started = asyncio.get_running_loop().time()
        for i in range(100):
            await ref.tell(i)
            peak = max(peak, len(ref.mailbox))
        elapsed = asyncio.get_running_loop().time() - started
        with pytest.raises(MailboxFull):
            for i in range(100, 120):
                ref.tell_nowait(i)
    # 100 messages through a 1 ms handler and an 8-slot mailbox: the producer was held back by the consumer.
    assert elapsed >= 0.05
    assert peak <= 8
    assert handled[:100] == list(range(100))
