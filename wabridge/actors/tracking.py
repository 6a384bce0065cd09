"""The tracking writer: group commit for message_tracking, and coalesced last-activity touches.

Every message writes one or more tracking rows, and a worker must not ack a message before its row is durable.
One INSERT per message costs a round trip each; instead `record()` parks the caller on a future, one flusher task
gathers whatever is pending (up to `max_batch` rows, or what arrived within `max_delay` of the first), writes it with
one `Store.write_tracking` call, and wakes every caller of that batch. Rows arriving during a write form the next
batch, so under load batches grow by themselves and latency stays near one write.

Bounds: at most `max_pending` rows wait; a caller beyond that waits for room (backpressure on the workers, which is
what we want: their messages stay unacked in the queue). Touches (`touch()`) are coalesced per (tenant, wa_id), the
latest time wins, at most `max_pending` keys; they are best-effort (a failed flush drops them: last_activity_at is a
hint) and written at most once per `touch_interval` (and at close). Written with every batch, they were a second
statement per batch: at 1,000 msgs/s that is ~150 UPDATEs a second to move timestamps that are read by people.

Events (`event()`, engine/history.py): the unusual steps of a message, for `wabridge trace`. Never awaited by the
message: buffered (at most `max_pending`, the newest dropped beyond), written after the batch they came with; a write
that fails puts them back for the next one once, then they are dropped (diagnostics, not state).

If the store is down, every caller of the failed batch gets BackendUnavailable (it leaves its message unacked; the
broker redelivers it later). `aclose()` flushes what is pending, then fails any caller still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Sequence

import msgspec

from wabridge.engine.grouping import Grouped
from wabridge.ports import BackendUnavailable, MessageEvent, TrackingRecord, TrackingStore

log = logging.getLogger(__name__)


class TrackingWriterStatistics(msgspec.Struct, frozen=True):
    pending: int
    batches: int
    rows: int
    failed_batches: int
    touches_dropped: int
    events_dropped: int = 0


class TrackingWriter:
    def __init__(
        self,
        store: TrackingStore,
        *,
        max_batch: int = 500,
        max_delay: float = 0.005,
        max_pending: int = 10_000,
        touch_interval: float = 1.0,
    ) -> None:
        if max_batch < 1 or max_pending < max_batch:
            raise ValueError("need 1 <= max_batch <= max_pending")
        self.store = store
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_pending = max_pending
        self.touch_interval = touch_interval
        self._pending: list[tuple[TrackingRecord, asyncio.Future[None]]] = []
        self._touches: dict[tuple[str, str], float] = {}
        self._events: list[MessageEvent] = []
        self._events_retried = False  # the buffered events failed once already
        self._events_dropped = 0
        self._touches_due = False  # the interval since the last touch write has passed
        self._touch_timer: asyncio.TimerHandle | None = None
        self._touches_written_at = float("-inf")  # loop time
        self._wake = asyncio.Event()  # something is pending
        self._full = asyncio.Event()  # a whole batch is pending: stop waiting for more
        self._room = asyncio.Event()  # the buffer has room again
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._batches = self._rows = self._failed = self._dropped = 0

    def __repr__(self) -> str:
        return f"TrackingWriter(pending={len(self._pending)}, store={self.store!r})"

    # --- lifecycle ---

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(),
                name="tracking-writer",
                context=contextvars.Context(),  # it writes for every message
            )

    async def aclose(self) -> None:
        """Flush what is pending, then stop. Callers still waiting afterwards get BackendUnavailable."""
        self._closing = True
        self._wake.set()
        self._full.set()  # cut short a flusher waiting for its batch to fill
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None
        self._fail_all(BackendUnavailable("store", "tracking writer closed"))

    async def __aenter__(self) -> TrackingWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def statistics(self) -> TrackingWriterStatistics:
        return TrackingWriterStatistics(
            len(self._pending), self._batches, self._rows, self._failed, self._dropped, self._events_dropped
        )

    # --- callers ---

    async def record(self, rec: TrackingRecord) -> None:
        """Returns once `rec` is durable in the store; raises BackendUnavailable if it could not be written."""
        while len(self._pending) >= self.max_pending:
            self._room.clear()
            await self._room.wait()
        if self._closing or self._task is None:
            raise BackendUnavailable("store", "tracking writer is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rec, done))
        self._wake.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        await done

    async def touch(self, tenant_id: str, wa_id: str, at: float) -> None:
        """Note that the conversation of (tenant_id, wa_id) was active at `at`; written with a later batch."""
        key = (tenant_id, wa_id)
        if key not in self._touches and len(self._touches) >= self.max_pending:
            self._dropped += 1  # full of distinct keys: this hint is the one that gives way
            return
        if at > self._touches.get(key, 0.0):
            self._touches[key] = at
        if self._touch_timer is None and not self._touches_due:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._touches_written_at + self.touch_interval - loop.time())
            self._touch_timer = loop.call_later(delay, self._touches_now)

    def event(self, event: MessageEvent) -> None:
        """An unusual step of a message (module docstring): written with the next batch, never awaited."""
        if len(self._events) >= self.max_pending or self._closing:
            self._events_dropped += 1
            return
        self._events.append(event)
        self._wake.set()

    def _touches_now(self) -> None:
        self._touch_timer = None
        self._touches_due = True
        self._wake.set()

    # --- the flusher ---

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing and len(self._pending) < self.max_batch:
                # Let the batch fill: callers arriving within max_delay share this write. (Rows arriving while a
                # write is in flight need no such wait: the loop below takes them as soon as it returns.)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_delay)
            self._wake.clear()
            self._full.clear()
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._room.set()
                await self._write(batch)
            if self._touches and (self._touches_due or self._closing):
                touches, self._touches, self._touches_due = self._touches, {}, False
                self._touches_written_at = asyncio.get_running_loop().time()
                await self._write_touches(touches)
            if self._events:
                events, self._events = self._events, []
                await self._write_events(events)
            if self._closing and not self._pending and not self._events:
                if self._touch_timer is not None:
                    self._touch_timer.cancel()
                    self._touch_timer = None
                return

    async def _write(self, batch: Sequence[tuple[TrackingRecord, asyncio.Future[None]]]) -> None:
        try:
            await self.store.write_tracking([rec for rec, _ in batch])
        except Exception as exc:
            self._failed += 1
            error = exc if isinstance(exc, BackendUnavailable) else BackendUnavailable("store", repr(exc))
            if not isinstance(exc, BackendUnavailable):
                log.exception("tracking batch of %d rows failed", len(batch))
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
            return
        self._batches += 1
        self._rows += len(batch)
        for _, done in batch:
            if not done.done():
                done.set_result(None)

    async def _write_touches(self, touches: dict[tuple[str, str], float]) -> None:
        try:
            await self.store.touch_conversations([(t, w, at) for (t, w), at in touches.items()])
        except Exception as exc:  # best-effort by design (module docstring)
            self._dropped += len(touches)
            log.warning("dropped %d conversation touches: %s", len(touches), type(exc).__name__)

    async def _write_events(self, events: list[MessageEvent]) -> None:
        try:
            await self.store.write_events(events)
        except Exception as exc:  # best-effort by design (module docstring)
            if self._events_retried or self._closing:
                self._events_retried = False
                self._events_dropped += len(events)
                log.warning("dropped %d message events: %s", len(events), type(exc).__name__)
            else:
                self._events_retried = True  # once more, with the next batch
                self._events[:0] = events[: self.max_pending - len(self._events)]
            return
        self._events_retried = False

    def _fail_all(self, error: BaseException) -> None:
        pending, self._pending = self._pending, []
        for _, done in pending:
            if not done.done():
                done.set_exception(error)
        self._room.set()


class TrackingLookups:
    """The relay's "seen this wamid before?" reads, grouped (engine/grouping.py): one `Store.get_tracking_many`
    answers every read that is waiting, across tenants.

    Under load this is one round trip per batch of up to `max_batch` instead of one per message. A read waits
    `max_delay` (2 ms) before it starts, so the reads of that moment share it (docs/decisions.md).
    """

    def __init__(self, store: TrackingStore, *, max_batch: int = 1000, max_delay: float = 0.002) -> None:
        self._grouped: Grouped[tuple[str, str], TrackingRecord] = Grouped(
            store.get_tracking_many, name="tracking-lookups", max_batch=max_batch, max_delay=max_delay
        )

    async def get(self, tenant_id: str, wamid: str) -> TrackingRecord | None:
        return await self._grouped.get((tenant_id, wamid))

    @property
    def reads(self) -> int:
        return self._grouped.calls
