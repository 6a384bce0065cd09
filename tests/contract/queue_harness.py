"""What the Queue contract tests share: building either adapter on isolated settings, collecting queue messages, and
cleaning the shared broker afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from wabridge.ports import QueueMessage, Queue
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
    """A handler that records queue messages and settles them with `settle` (ack by default)."""

    def __init__(self, settle: Callable[[QueueMessage], Awaitable[None]] | None = None) -> None:
        self.queue_messages: list[QueueMessage] = []
        self._settle = settle
        self._changed = asyncio.Event()

    async def __call__(self, queue_message: QueueMessage) -> None:
        self.queue_messages.append(queue_message)
        self._changed.set()
        if self._settle is None:
            await queue_message.ack()
        else:
            await self._settle(queue_message)

    @property
    def message_ids(self) -> list[str]:
        return [d.message_id for d in self.queue_messages]

    async def wait_for(self, count: int, timeout: float = 20) -> list[QueueMessage]:
        with anyio.fail_after(timeout):
            while len(self.queue_messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.queue_messages


async def hold(queue_message: QueueMessage) -> None:
    """Leave the queue message unsettled, as a consumer that crashes mid-work would."""


async def take_dead_letters(queue: Queue, count: int, timeout: float = 20) -> list[QueueMessage]:
    """Dead-lettering by the broker is asynchronous: poll until `count` dead letters are there."""
    taken: list[QueueMessage] = []
    with anyio.fail_after(timeout):
        while len(taken) < count:
            taken += await queue.dead_letters(count - len(taken))
            if len(taken) < count:
                await anyio.sleep(0.05)
    return taken
