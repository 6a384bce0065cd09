"""The queue messages a parked tenant's actor is handed (parking.py's docstring): a parked message (`FedMessage`,
settled as its store row) and a queue message taken back while its tenant is parked (`HeldBack`)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from wabridge.ports import ParkedMessage, QueueMessage

if TYPE_CHECKING:
    from wabridge.actors.parking import ShardParking


class FedMessage:
    """A parked message handed to its tenant's actor: a `QueueMessage` whose settlement is a store row's."""

    __slots__ = ("_lot", "_settled", "attempt", "body", "message_id", "seq", "shard", "tenant_id")

    def __init__(self, message: ParkedMessage, lot: ShardParking, attempt: int | None = None) -> None:
        self.tenant_id = message.tenant_id
        self.message_id = message.message_id
        self.body = message.body
        self.shard = message.shard
        self.attempt = message.attempt if attempt is None else attempt
        self.seq = message.seq
        self._lot = lot
        self._settled = False

    def __repr__(self) -> str:
        return f"FedMessage(tenant_id={self.tenant_id!r}, message_id={self.message_id!r}, seq={self.seq})"

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            await self._lot.unpark(self)

    async def dead_letter(self, reason: str) -> None:
        if not self._settled:
            self._settled = True
            await self._lot.bury(self, reason)

    async def retry(self) -> None:
        if self._settled:
            return
        self._settled = True
        await self._lot.hand_back(self)

    def message(self) -> ParkedMessage:
        return ParkedMessage(
            seq=self.seq,
            shard=self.shard,
            tenant_id=self.tenant_id,
            message_id=self.message_id,
            body=self.body,
            attempt=self.attempt,
        )


class HeldBack:
    """A queue message handed back while its tenant is parked (`ShardParking.take_back`): fed to the actor again at
    its next attempt, settled on the queue like the queue message it wraps."""

    __slots__ = ("_lot", "_queue_message", "attempt", "body", "message_id", "shard", "tenant_id")

    def __init__(self, queue_message: QueueMessage, lot: ShardParking, attempt: int) -> None:
        self.tenant_id = queue_message.tenant_id
        self.message_id = queue_message.message_id
        self.body = queue_message.body
        self.shard = queue_message.shard
        self.attempt = attempt
        self._queue_message = queue_message
        self._lot = lot

    def __repr__(self) -> str:
        return f"HeldBack({self._queue_message!r}, attempt={self.attempt})"

    async def ack(self) -> None:
        await self._settled_by(self._queue_message.ack())

    async def dead_letter(self, reason: str) -> None:
        await self._settled_by(self._queue_message.dead_letter(reason))

    async def retry(self) -> None:
        """No longer parked (`take_back` refused it): back to the queue."""
        await self._settled_by(self._queue_message.retry())

    async def _settled_by(self, settling: Awaitable[None]) -> None:
        try:
            await settling
        finally:
            self._lot.let_go(self)
