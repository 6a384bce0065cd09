"""A bounded mailbox: the one queue between actors, after trio's memory channels.

Contract, the whole of it:
- `send` waits while the mailbox is full (backpressure); `send_nowait` raises `MailboxFull` instead.
- `close()` refuses further sends (`MailboxClosed`, and waiting senders are woken with it); the receiver still gets
  everything already inside, then `receive` raises `MailboxClosed`.
- One receiver at a time (the actor that owns it); any number of senders.
- Nothing grows without bound: items are at most `capacity`, waiting senders are the callers themselves.

Hot path: a deque plus one waiter future for the receiver, so a `send_nowait` to a busy receiver allocates nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class MailboxFull(Exception):
    """`send_nowait` to a mailbox at capacity: the caller decides (wait with `send`, shed, or fail)."""


class MailboxClosed(Exception):
    """Sending to a closed mailbox, or receiving from a closed and empty one."""


class MailboxEmpty(Exception):
    """`receive_nowait` found nothing."""


class MailboxStatistics(NamedTuple):
    size: int
    capacity: int
    senders_waiting: int
    total_sent: int
    total_received: int
    closed: bool


class Mailbox(Generic[T]):
    __slots__ = ("_closed", "_items", "_received", "_receiver", "_senders", "_sent", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._receiver: asyncio.Future[None] | None = None
        self._senders: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._sent = 0
        self._received = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- sending --------------------------------------------------------------------------------------------------

    def send_nowait(self, item: T) -> None:
        if self._closed:
            raise MailboxClosed("mailbox is closed")
        if len(self._items) >= self.capacity:
            raise MailboxFull(f"mailbox full ({self.capacity} items)")
        self._items.append(item)
        self._sent += 1
        waiter = self._receiver
        if waiter is not None:
            self._receiver = None
            if not waiter.done():
                waiter.set_result(None)

    async def send(self, item: T) -> None:
        # Fast path first: no future, no suspension when there is room (the common case).
        while len(self._items) >= self.capacity and not self._closed:
            waiter = asyncio.get_running_loop().create_future()
            self._senders.append(waiter)
            try:
                await waiter
            except BaseException:
                # A cancelled sender must not swallow the wake-up meant for the next one.
                if waiter.done() and not waiter.cancelled():
                    self._wake_sender()
                raise
            finally:
                try:
                    self._senders.remove(waiter)
                except ValueError:
                    pass
        self.send_nowait(item)

    def _wake_sender(self) -> None:
        for waiter in self._senders:
            if not waiter.done():
                waiter.set_result(None)
                return

    # --- receiving ------------------------------------------------------------------------------------------------

    def receive_nowait(self) -> T:
        if not self._items:
            if self._closed:
                raise MailboxClosed("mailbox is closed and empty")
            raise MailboxEmpty
        item = self._items.popleft()
        self._received += 1
        if self._senders:
            self._wake_sender()
        return item

    async def receive(self) -> T:
        while not self._items:
            if self._closed:
                raise MailboxClosed("mailbox is closed and empty")
            await self.wait_nonempty()
        return self.receive_nowait()

    async def wait_nonempty(self) -> None:
        """Wait until there is an item or the mailbox is closed (the actor loop's single suspension point)."""
        if self._items or self._closed:
            return
        if self._receiver is not None:
            raise RuntimeError("a mailbox has one receiver; another is already waiting")
        waiter = asyncio.get_running_loop().create_future()
        self._receiver = waiter
        try:
            await waiter
        finally:
            if self._receiver is waiter:
                self._receiver = None

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new items; what is inside stays for the receiver. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for waiter in self._senders:
            if not waiter.done():
                waiter.set_result(None)  # they re-check, see closed, and raise MailboxClosed
        if self._receiver is not None and not self._receiver.done():
            self._receiver.set_result(None)

    def take_all(self) -> list[T]:
        """Empty the mailbox at once (teardown: fail what can no longer be handled)."""
        items = list(self._items)
        self._items.clear()
        self._received += len(items)
        for _ in items:
            if not self._senders:
                break
            self._wake_sender()
        return items

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            size=len(self._items),
            capacity=self.capacity,
            senders_waiting=sum(1 for w in self._senders if not w.done()),
            total_sent=self._sent,
            total_received=self._received,
            closed=self._closed,
        )
