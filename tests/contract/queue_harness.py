"""What the Queue contract tests share: building either adapter on isolated settings, collecting deliveries, and
cleaning the shared broker afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from wabridge.ports import Delivery, Queue
from wabridge.adapters.queue.amqp import AmqpQueue
from wabridge.adapters.queue.sqlite import SqliteQueue
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings


@dataclass
class QueueKit:
    """Makes queues of one kind (`amqp` or `sqlite`) on one test's settings and closes them all at the end."""

    kind: str
    settings: Settings
    made: list[Queue] = field(default_factory=list)
    names: set[str | None] = field(default_factory=lambda: {None})  # the queues' names (None: the main queue)

    async def open(self, *, amqp_url: str | None = None, name: str | None = None, **changes: object) -> Queue:
        settings = self.settings.replace(**changes)
        if self.kind == "amqp":
            if amqp_url is not None:
                settings = settings.replace(amqp_url=Secret(amqp_url))
            queue: Queue = AmqpQueue(settings, name=name)
        else:
            queue = SqliteQueue(settings, name=name)
        self.made.append(queue)
        self.names.add(name)
        await queue.open()
        return queue

    async def clean_up(self) -> None:
        for queue in reversed(self.made):
            await queue.close()
        if self.kind == "amqp":
            for name in self.names:
                queue = AmqpQueue(self.settings, name=name)
                await queue.open()
                await queue.delete_topology()
                await queue.close()


class Collector:
    """A handler that records deliveries and settles them with `settle` (ack by default)."""

    def __init__(self, settle: Callable[[Delivery], Awaitable[None]] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self._settle = settle
        self._changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._changed.set()
        if self._settle is None:
            await delivery.ack()
        else:
            await self._settle(delivery)

    @property
    def message_ids(self) -> list[str]:
        return [d.message_id for d in self.deliveries]

    async def wait_for(self, count: int, timeout: float = 20) -> list[Delivery]:
        with anyio.fail_after(timeout):
            while len(self.deliveries) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.deliveries


async def hold(delivery: Delivery) -> None:
    """Leave the delivery unsettled, as a consumer that crashes mid-work would."""


async def take_dead_letters(queue: Queue, count: int, timeout: float = 20) -> list[Delivery]:
    """Dead-lettering by the broker is asynchronous: poll until `count` dead letters are there."""
    taken: list[Delivery] = []
    with anyio.fail_after(timeout):
        while len(taken) < count:
            taken += await queue.dead_letters(count - len(taken))
            if len(taken) < count:
                await anyio.sleep(0.05)
    return taken
