"""Ordering lanes: per-key FIFO, different keys in parallel up to a limit.

Inside a tenant, a customer's messages (key = the sender's wa_id) must reach the agent in the order sent, while
different customers proceed in parallel. `submit(key, item)` waits for room (backpressure), queues the item on its
key's lane and returns a future of the handler's result; the queue consumer acks its message once all of its
futures are done.

- One lane per active key: a FIFO deque and one worker task; the lane is removed when it empties, so memory is
  bounded by the items admitted (`max_pending`), not by the number of customers ever seen.
- Admission is one FIFO gate across all keys: items enter their lanes in the order `submit` was called, so two
  calls for the same key are handled in call order even when both had to wait for room.
- `concurrency` bounds the handlers running at once; a lane takes the semaphore per item so one busy customer
  cannot starve the others.
- A handler exception goes to that item's future only; the lane moves on to the key's next item (the caller decides
  about the failed one: retry or dead-letter).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class LanesFull(Exception):
    """`submit_nowait` when `max_pending` items are already admitted."""


class LanesClosed(Exception):
    """Submitting after `close()` (the bridge is draining)."""


class LanesStatistics(NamedTuple):
    lanes: int
    pending: int  # admitted and not finished (queued + running)
    running: int
    submitters_waiting: int
    max_pending: int
    concurrency: int


class _Lane:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: deque[tuple[Any, asyncio.Future]] = deque()


class Lanes(Generic[K, T, R]):
    def __init__(
        self, handler: Callable[[K, T], Awaitable[R]], *, concurrency: int = 32, max_pending: int = 1024
    ) -> None:
        if concurrency < 1 or max_pending < 1:
            raise ValueError("concurrency and max_pending must be at least 1")
        self._handler = handler
        self.concurrency = concurrency
        self.max_pending = max_pending
        self._running_limit = asyncio.Semaphore(concurrency)
        self._lanes: dict[K, _Lane] = {}
        self._pending = 0
        self._running = 0
        self._gate: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._tg: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> Lanes[K, T, R]:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        """A clean exit lets every admitted item finish; an exception or cancellation cancels the lanes (their
        pending futures are cancelled: the caller hands those messages back)."""
        self.close()
        assert self._tg is not None
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
            return None
        finally:
            self._tg = None
            for lane in self._lanes.values():
                for _, future in lane.items:
                    future.cancel()
            self._lanes.clear()

    def close(self) -> None:
        """Refuse new items; admitted ones still finish. Waiting submitters get LanesClosed."""
        self._closed = True
        while self._gate:
            waiter = self._gate.popleft()
            if not waiter.done():
                waiter.set_exception(LanesClosed("lanes are closed"))

    # --- submitting -----------------------------------------------------------------------------------------------

    def submit_nowait(self, key: K, item: T) -> asyncio.Future[R]:
        if self._closed:
            raise LanesClosed("lanes are closed")
        if self._gate or self._pending >= self.max_pending:
            raise LanesFull(f"{self._pending} items pending (max {self.max_pending})")
        self._pending += 1
        return self._enqueue(key, item)

    async def submit(self, key: K, item: T) -> asyncio.Future[R]:
        """Wait for room, queue `item` behind the key's earlier items, return the future of its result."""
        if self._closed:
            raise LanesClosed("lanes are closed")
        if self._gate or self._pending >= self.max_pending:
            waiter = asyncio.get_running_loop().create_future()
            self._gate.append(waiter)
            try:
                await waiter  # resolved by _finish: a slot was handed to us (_pending already counts it)
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._finish()  # we were given a slot we will not use: pass it on
                elif waiter in self._gate:
                    self._gate.remove(waiter)
                raise
        else:
            self._pending += 1
        return self._enqueue(key, item)

    async def run(self, key: K, item: T) -> R:
        """Submit and wait for the result."""
        return await (await self.submit(key, item))

    def _enqueue(self, key: K, item: T) -> asyncio.Future[R]:
        if self._tg is None:
            self._finish()
            raise RuntimeError("Lanes must be used inside `async with`")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
            lane.items.append((item, future))
            self._tg.create_task(self._work(key, lane))
        else:
            lane.items.append((item, future))
        return future

    def _finish(self) -> None:
        """One admitted item is done: hand its slot to the first waiting submitter, or free it."""
        while self._gate:
            waiter = self._gate.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._pending -= 1

    # --- working --------------------------------------------------------------------------------------------------

    async def _work(self, key: K, lane: _Lane) -> None:
        handler = self._handler
        try:
            while lane.items:
                item, future = lane.items[0]
                try:
                    if future.cancelled():
                        continue  # the submitter gave up on it before it started
                    async with self._running_limit:
                        self._running += 1
                        try:
                            result = await handler(key, item)
                        except Exception as exc:
                            if not future.done():
                                future.set_exception(exc)
                        else:
                            if not future.done():
                                future.set_result(result)
                        finally:
                            self._running -= 1
                finally:
                    if not future.done():
                        future.cancel()  # the lane was cancelled mid-item: the submitter hands it back
                    lane.items.popleft()
                    self._finish()
        finally:
            # No await between the emptiness check and this removal: a concurrent submit either saw the lane
            # (and its item was handled above) or will create a new one.
            if self._lanes.get(key) is lane and not lane.items:
                del self._lanes[key]

    def statistics(self) -> LanesStatistics:
        return LanesStatistics(
            lanes=len(self._lanes),
            pending=self._pending,
            running=self._running,
            submitters_waiting=sum(1 for w in self._gate if not w.done()),
            max_pending=self.max_pending,
            concurrency=self.concurrency,
        )
