"""Parking: a tenant held back does not hold up the other tenants of its shard.

A shard's queue messages come in one order (single active consumer) and its router (worker.py) hands them to their
tenants' actors one by one. When one tenant stops taking them — its Genesys rate budget spent by a campaign's burst
of replies, or its own Genesys org timing out — its mailbox fills and the router can only wait: every tenant behind
it in the shard waited too, for as long as that backlog took to drain (minutes, at 300 messages a minute per
credential). Instead the router parks that tenant: from then on its queue messages are written to the store in order
(`Store.park`, batched) and acked on the queue once durable, so the shard moves on; a feeder per parked tenant reads
them back in order and hands them to the tenant's actor as fast as it takes them. Once the feeder has handed over the
last one the tenant is unparked, and its queue messages go straight to its actor again, behind everything parked before.

    router ── its mailbox full, nothing taken for PARK_AFTER ──▶ park ──▶ store ──▶ feeder ──▶ tenant actor
                                                                 (ack on the queue)          (settle: unpark)

Only a tenant that is held back is parked: one whose actor took nothing from its full mailbox for PARK_AFTER. A
worker that is merely busy (every tenant's mailbox full, each draining at its share of the worker) keeps plain
backpressure: its tenants take a message now and then, the router's wait ends each time, and nobody pays a store
write and read per message. A budget spent holds a tenant for the rest of its minute, far longer than PARK_AFTER.

A parked message settles like a queue message (`FedMessage`): ack deletes its row; retry counts an attempt and
hands it to the actor again, ahead of the rest of its tenant's backlog (past the delivery limit: dead-lettered);
dead_letter moves it to the queue's dead letters (`Queue.bury`), where `wabridge replay` finds it. A row whose delete
fails (store down) stays, and is fed again after a restart, where its messages come out `duplicate`, never
posted twice.

A crash must not let parked messages overtake older ones. When a tenant is parked, the queue messages it had already
taken are still unacked in its actor; a worker killed then hands them back to the broker, and the next one would
get them only after the parked rows, which are newer. So each parking episode has a fence: its first parked
queue message is written with the rows but left unacked, and the fence is recorded in the same transaction
(`parking_fences`). Once everything the actor took before it is settled (a `Settled` mark through its mailbox),
the fence is cleared and acked. A worker that takes the shard over and finds a fence routes that tenant's
queue messages to its actor as before — they are the older ones, redelivered in queue order — until the fence itself
comes back from the queue; only then does it feed the parked rows (FENCE_WAIT bounds the wait, should the fence
never come).

A queue message the actor hands back while its tenant is parked (an outage that outlasted the hold) is older than
every parked row: the router hands a tenant's queue messages to its actor only while it is not parked. Through the queue
it would come back behind the rows, so the actor gives it to `take_back` instead, and it is fed again ahead of them,
in the order handed back, still unacked on the queue (`HeldBack`); the episode's fence stays until it is settled, so
a crash meanwhile returns it to the queue ahead of the fence. One this worker handed back to the queue just before
its tenant was parked is remembered (`returning`), and when the queue brings it back, the router gives it to
`take_back` as well (up to `hold_back_limit` at once: these had left the shard's window, and must not fill it). Not
every redelivery: after a crash or a lost channel the queue also redelivers messages that were never parked and are
newer than the rows; those are parked behind them as usual.

Ownership follows the shard: parked rows are fed by whichever worker is the shard's active consumer. A worker learns
it is active from a queue message, so the router loads the shard's parked tenants before routing its first queue
message. A shard with parked rows that nobody is feeding (its worker restarted, or was replaced, and no webhook came
since) is found by `find_orphans`, every POKE_EVERY seconds in each worker: it publishes a poke into that shard, and the
poke is a queue message like any other to whoever is active.

The two kinds of queue message a parked tenant's actor is handed, `FedMessage` and `HeldBack`, are in
fed_messages.py.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from wabridge.actors.fed_messages import FedMessage, HeldBack
from wabridge.actors.tenant import Settled
from wabridge.engine.history import webhook_of
from wabridge.engine.logs import get_logger
from wabridge.engine.mailbox import MailboxClosed
from wabridge.engine.metrics import REGISTRY
from wabridge.engine.outage import hold_through_outage
from wabridge.engine.registry import Registry
from wabridge.engine.tasks import Tasks
from wabridge.ports import (
    BackendUnavailable,
    MessageEvent,
    MessageToPark,
    ParkedMessage,
    ParkingFence,
    ParkingStore,
    Queue,
    QueueMessage,
)

log = get_logger("parking")

PARK_AFTER = 1.0  # s a tenant may take nothing from its full mailbox before it is parked
FENCE_WAIT = 60.0  # s a taking-over worker waits for a fence to come back from the queue before it feeds anyway
FEED_BATCH = 256  # parked rows read at once
PARK_BATCH = 1000  # rows written at once
POKE_EVERY = 30.0  # s between looks for parked rows nobody feeds
POKE_PREFIX = "wabridge-poke:"  # message id of a poke (the ingress's ids are `<webhook id>:<tenant id>`)
MAX_RETURNING = 10_000  # hand-backs remembered until the queue brings them back (the oldest forgotten first)

_parked = REGISTRY.counter("wabridge_parked_total", "Queue messages parked in the store for a held-back tenant.", [])
_pokes = REGISTRY.counter("wabridge_parking_pokes_total", "Pokes sent to shards with parked rows nobody fed.", [])
_parked_tenants = REGISTRY.gauge("wabridge_parked_tenants", "Tenants whose deliveries are being parked.", []).labels()

T = TypeVar("T")


def is_poke(queue_message: QueueMessage) -> bool:
    return queue_message.message_id.startswith(POKE_PREFIX)


async def _until_up(step: Callable[[], Awaitable[T]]) -> T:
    """`await step()` until the store answers: a parked tenant's order depends on it, so there is no giving up
    (cancellation, at a drain, ends the wait)."""
    return await hold_through_outage(step, hold_for=math.inf)


class ShardParking:
    """The parked tenants of one shard, in one worker: written by the shard's router, fed by one task per tenant."""

    def __init__(
        self,
        shard: int,
        store: ParkingStore,
        queue: Queue,
        tenants: Registry[str],
        *,
        delivery_limit: int,
        hold_back_limit: int = 1024,
        events: Callable[[MessageEvent], None] | None = None,
    ) -> None:
        self.shard = shard
        self._events = events  # the tracking writer's: steps of a webhook for `wabridge trace`, never awaited
        # Queue messages taken back from the queue's redeliveries stay unacked in memory, in the shard's window:
        # at most this many, so that they can never fill it and hold up the shard's other tenants.
        self._hold_back_limit = hold_back_limit
        self._store = store
        self._queue = queue
        self.tenants = tenants
        self._delivery_limit = delivery_limit
        self._backlog: dict[str, int] = {}  # parked tenant → its parked messages not yet handed to its actor
        self._feeders: dict[str, asyncio.Task[None]] = {}
        self._unsettled: dict[int, str] = {}  # seq → tenant: handed to the actor, row not yet deleted
        self._redo: dict[str, deque[FedMessage | HeldBack]] = {}  # handed back: fed again before the rest
        self._held_back: dict[str, set[HeldBack]] = {}  # tenant → its queue messages taken back, not yet settled
        self._back_settled = asyncio.Event()  # set whenever one of those is settled
        self._returning: dict[str, None] = {}  # message ids handed back to the queue from here, not yet back
        self._writing: list[QueueMessage] = []  # parked, not yet written; acked on the queue once written
        self._writer: asyncio.Task[None] | None = None
        self._more = asyncio.Event()  # set after each write and hand-back: a feeder that found nothing looks again
        # tenant → its episode's first queue message, unacked (module docstring)
        self._fences: dict[str, QueueMessage] = {}
        self._waiting_for: dict[str, tuple[str, int]] = {}  # taken over: tenant → (its fence, rows to feed after it)
        self._tasks = Tasks(f"parking of shard {shard}")  # the writer, feeders, fence lifts and waits: ended at a drain
        self.loaded = False
        self._closing = False

    # --- the router's side ------------------------------------------------------------------------------------------

    def holds(self, tenant_id: str) -> bool:
        """True while the tenant is parked: its queue messages must follow what is parked, not pass it."""
        return tenant_id in self._backlog

    def fence_awaited(self, tenant_id: str) -> str | None:
        """The fence this worker waits for before it feeds the tenant's parked rows (module docstring), if any. Until
        it comes, the tenant's queue messages go to its actor and are never parked."""
        waiting = self._waiting_for.get(tenant_id)
        return waiting[0] if waiting is not None else None

    def fence_came(self, queue_message: QueueMessage) -> None:
        """The awaited fence is back: everything older has been handed to the actor, and the parked rows follow.
        Its row stands for it; it stays this worker's fence, unacked, until those older ones are settled too."""
        tenant_id = queue_message.tenant_id
        self._fences[tenant_id] = queue_message
        self._spawn(self._lift(queue_message))
        self._stop_waiting(tenant_id)

    def take_back(self, queue_message: QueueMessage, *, redelivered: bool = False) -> bool:
        """A queue message its actor hands back (or, `redelivered`, one the queue brought back after such a
        hand-back): True if its tenant is parked here, and it is then fed again ahead of the parked rows (module
        docstring); False, and it goes back to the queue, remembered until it returns."""
        tenant_id = queue_message.tenant_id
        if isinstance(queue_message, FedMessage):
            return False
        full = redelivered and sum(map(len, self._held_back.values())) >= self._hold_back_limit
        if self._closing or tenant_id not in self._backlog or full:
            if not redelivered:
                self._returning[queue_message.message_id] = None
                if len(self._returning) > MAX_RETURNING:
                    del self._returning[next(iter(self._returning))]
            return False
        held = HeldBack(queue_message, self, queue_message.attempt if redelivered else queue_message.attempt + 1)
        self._held_back.setdefault(tenant_id, set()).add(held)
        self._redo.setdefault(tenant_id, deque()).append(held)
        self._more.set()
        return True

    def returned(self, queue_message: QueueMessage) -> bool:
        """True if this worker handed the queue message back to the queue (`take_back`); forgets it."""
        if not self._returning or queue_message.message_id not in self._returning:
            return False
        del self._returning[queue_message.message_id]
        return True

    def let_go(self, held: HeldBack) -> None:
        taken = self._held_back.get(held.tenant_id)
        if taken is not None:
            taken.discard(held)
            if not taken:
                del self._held_back[held.tenant_id]
        self._back_settled.set()

    def park(self, queue_message: QueueMessage) -> None:
        """Take the queue message off the shard: written to the store in this order, then acked. No await, so the
        router's order is the order parked."""
        tenant_id = queue_message.tenant_id
        if tenant_id not in self._backlog:
            log.warning("tenant %s held back: parking its deliveries of shard %d", tenant_id, self.shard)
            self._start_feeding(tenant_id, 0)
            self._fences.setdefault(tenant_id, queue_message)  # one fence at a time: an older one still covers this
        self._backlog[tenant_id] += 1
        self._writing.append(queue_message)
        _parked.inc()
        self._event(queue_message, "parked", f"shard {self.shard}, attempt {queue_message.attempt}")
        if self._writer is None:
            self._writer = self._tasks.start(self._write(), name=f"parking-{self.shard}-writer")

    async def load(self, *, again: bool = False) -> None:
        """Feed the shard's parked rows that this worker is not feeding: on the first queue message (this worker is the
        shard's active consumer now), and again on a poke."""
        if self.loaded and not again:
            return
        counts = await _until_up(lambda: self._store.parked_tenants(self.shard))
        fences = await _until_up(lambda: self._store.parking_fences(self.shard))
        orphans = self._orphans(counts)
        for tenant_id, fence in fences.items():
            if tenant_id in self._fences or tenant_id in self._waiting_for or tenant_id in self._backlog:
                continue  # our own, live
            log.warning(
                "waiting for the fence of tenant %s (shard %d) before feeding %d parked messages",
                tenant_id,
                self.shard,
                orphans.get(tenant_id, 0),
            )
            self._waiting_for[tenant_id] = (fence, orphans.pop(tenant_id, 0))
            self._spawn(self._give_up_waiting(tenant_id, fence))
        for tenant_id, count in orphans.items():
            log.warning("feeding %d parked messages of tenant %s (shard %d)", count, tenant_id, self.shard)
            self._start_feeding(tenant_id, count)
        self.loaded = True

    async def _give_up_waiting(self, tenant_id: str, fence: str) -> None:
        await asyncio.sleep(FENCE_WAIT)
        if self.fence_awaited(tenant_id) == fence:
            log.error(
                "the fence of tenant %s never came back (shard %d): feeding its parked messages", tenant_id, self.shard
            )
            self._stop_waiting(tenant_id)

    def _stop_waiting(self, tenant_id: str) -> None:
        """Feed the parked rows that waited for the tenant's fence."""
        _, backlog = self._waiting_for.pop(tenant_id)
        if backlog > 0 and tenant_id not in self._backlog:
            self._start_feeding(tenant_id, backlog)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.start(work)

    async def find_orphans(self) -> None:
        """Poke the shard if it has parked rows this worker does not feed (module docstring). Best effort."""
        try:
            orphans = self._orphans(await self._store.parked_tenants(self.shard))
            if orphans:
                poke = f"{POKE_PREFIX}{uuid.uuid4().hex}"
                await self._queue.publish(next(iter(orphans)), b"", message_id=poke, shard=self.shard)
                _pokes.inc()
        except BackendUnavailable as exc:
            log.debug("looking for parked rows of shard %d: %s", self.shard, exc)
        except Exception:
            log.exception("looking for parked rows of shard %d failed", self.shard)

    def _orphans(self, counts: dict[str, int]) -> dict[str, int]:
        in_hand: dict[str, int] = {}
        for tenant_id in self._unsettled.values():
            in_hand[tenant_id] = in_hand.get(tenant_id, 0) + 1
        owned = self._backlog.keys() | self._waiting_for.keys()  # fed here, or waiting for a fence here
        return {
            tenant_id: count - in_hand.get(tenant_id, 0)
            for tenant_id, count in counts.items()
            if tenant_id not in owned and count > in_hand.get(tenant_id, 0)
        }

    async def close(self, timeout: float = 10.0) -> None:
        """At a drain: finish the write under way (its queue messages are acked), stop feeding. What was never written
        goes back to the queue unacked; what was never fed stays parked for the next owner."""
        self._closing = True
        writer = self._writer
        if writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), timeout)
            except (TimeoutError, Exception):
                writer.cancel()
        await self._tasks.close()
        # A feeder cancelled before its first step never ran `_feed`'s `finally`: its tenant is forgotten here.
        for tenant_id in list(self._feeders):
            self._feeders.pop(tenant_id)
            self._backlog.pop(tenant_id, None)
            self._redo.pop(tenant_id, None)
            _parked_tenants.dec()

    # --- writing ----------------------------------------------------------------------------------------------------

    async def _write(self) -> None:
        try:
            while self._writing and not self._closing:
                batch = self._writing[:PARK_BATCH]
                rows = [MessageToPark(d.tenant_id, d.message_id, d.body, d.attempt) for d in batch]
                fenced = [d for d in batch if self._fences.get(d.tenant_id) is d]
                fences = [ParkingFence(d.tenant_id, d.message_id) for d in fenced]
                await _until_up(functools.partial(self._store.park, self.shard, rows, fences=fences))
                del self._writing[: len(batch)]
                self._more.set()
                for fence in fenced:
                    self._spawn(self._lift(fence))
                acks = await asyncio.gather(*(d.ack() for d in batch if d not in fenced), return_exceptions=True)
                for failed in (a for a in acks if isinstance(a, BaseException)):
                    # Parked and also redelivered: it comes again as a `duplicate`, never posted twice.
                    log.warning("parked delivery not acked on the queue: %r", failed)
        except Exception:
            # A bug, not an outage (those are waited out): the queue messages stay unacked, the queue keeps them.
            log.exception("parking the deliveries of shard %d failed", self.shard)
        finally:
            self._writer = None

    async def _lift(self, fence: QueueMessage) -> None:
        """Clear and ack the fence once everything the actor took before it is settled."""
        tenant_id = fence.tenant_id
        try:
            mark = Settled()
            await self.tenants.tell(tenant_id, mark)  # behind every queue message the actor took before
            await mark.passed
            while self._held_back.get(tenant_id):  # older ones taken back from the actor, not yet settled
                self._back_settled.clear()
                await self._back_settled.wait()
            await _until_up(lambda: self._store.clear_fence(self.shard, tenant_id))
            await fence.ack()
        except MailboxClosed:
            pass  # a drain: the fence stays, unacked, for the next owner
        finally:
            if self._fences.get(tenant_id) is fence:
                del self._fences[tenant_id]

    # --- feeding ----------------------------------------------------------------------------------------------------

    def _start_feeding(self, tenant_id: str, backlog: int) -> None:
        self._backlog[tenant_id] = backlog
        self._feeders[tenant_id] = self._tasks.start(self._feed(tenant_id), name=f"parking-{self.shard}-{tenant_id}")
        _parked_tenants.inc()

    async def _feed(self, tenant_id: str) -> None:
        after = 0
        try:
            while True:
                await self._feed_handed_back(tenant_id)
                if self._backlog[tenant_id] <= 0:
                    break
                self._more.clear()
                rows = await _until_up(
                    functools.partial(self._store.parked, self.shard, tenant_id, after=after, limit=FEED_BATCH)
                )
                if not rows:
                    await self._more.wait()  # counted, not yet written: the router's write is under way
                    continue
                for message in rows:
                    await self._feed_handed_back(tenant_id)
                    after = message.seq
                    if message.seq in self._unsettled:
                        continue  # already in the actor's hands (fed before a reload)
                    self._unsettled[message.seq] = tenant_id
                    await self.tenants.tell(tenant_id, FedMessage(message, self))
                    self._backlog[tenant_id] -= 1
                    self._event(message, "fed", f"shard {self.shard}, parked as #{message.seq}")
            log.info("tenant %s unparked (shard %d)", tenant_id, self.shard)
        except MailboxClosed:
            pass  # a drain: what was not fed stays parked
        except Exception:
            log.exception("feeding tenant %s failed; its parked rows wait for a poke", tenant_id)
        finally:
            # In the same step as the last hand-over (a done-callback would run a step later, and a queue message routed
            # in between would be parked with nobody to feed it): from here the router's queue messages go to the actor,
            # behind the last parked one.
            del self._backlog[tenant_id]
            del self._feeders[tenant_id]
            _parked_tenants.dec()
            for left in self._redo.pop(tenant_id, ()):
                if type(left) is FedMessage:
                    self._unsettled.pop(left.seq, None)  # a drain: it stays parked for the next owner
                # A HeldBack stays unacked: it returns to the queue when the consumer stops, ahead of the fence.

    async def _feed_handed_back(self, tenant_id: str) -> None:
        redo = self._redo.get(tenant_id)
        while redo:
            await self.tenants.tell(tenant_id, redo[0])
            redo.popleft()

    # --- settling ---------------------------------------------------------------------------------------------------

    async def unpark(self, queue_message: FedMessage) -> None:
        try:
            await self._store.unpark([queue_message.seq])
        except BackendUnavailable as exc:
            # The row stays: after a restart it is fed again and its messages come out `duplicate`.
            log.warning(
                "parked message %s settled but not deleted: %s",
                queue_message.message_id,
                exc,
                extra=_about(queue_message),
            )
        finally:
            self._unsettled.pop(queue_message.seq, None)

    async def bury(self, queue_message: FedMessage, reason: str) -> None:
        """To the queue's dead letters, where `wabridge replay` finds it as it finds any other; then unparked."""
        try:
            await self._queue.bury(
                queue_message.tenant_id,
                queue_message.body,
                message_id=queue_message.message_id,
                reason=reason,
                shard=self.shard,
            )
        except BackendUnavailable as exc:
            log.error(
                "parked message %s stays parked, its dead letter not written: %s",
                queue_message.message_id,
                exc,
                extra=_about(queue_message),
            )
            self._unsettled.pop(queue_message.seq, None)  # fed again once found (a poke), at its last attempt
            return
        log.error("parked message %s dead-lettered: %s", queue_message.message_id, reason, extra=_about(queue_message))
        self._event(queue_message, "buried", reason)
        await self.unpark(queue_message)

    async def hand_back(self, queue_message: FedMessage) -> None:
        """The actor could not finish it: one attempt more, and to the actor again (a queue would redeliver it);
        past the delivery limit, dead-lettered (the actor does that at the last attempt, but not after a crash)."""
        attempt = queue_message.attempt + 1
        if attempt > self._delivery_limit:
            await self.bury(queue_message, f"attempt {queue_message.attempt} of {self._delivery_limit}: handed back")
            return
        if self._closing:
            self._unsettled.pop(queue_message.seq, None)  # stays parked for the next owner
        else:
            # Through the tenant's feeder, not from here: this runs in the actor's own settling, and the tenant is
            # held (parked) meanwhile, so it goes back before anything the router takes for it after this. Queued
            # before the attempt's write below, so that the hand-backs of a customer keep their order.
            self._redo.setdefault(queue_message.tenant_id, deque()).append(
                FedMessage(queue_message.message(), self, attempt)
            )
            if queue_message.tenant_id not in self._feeders:
                self._start_feeding(queue_message.tenant_id, 0)
            self._more.set()
        try:
            await self._store.set_parked_attempt(queue_message.seq, attempt)
        except BackendUnavailable as exc:
            log.warning(
                "attempt of parked message %s not recorded: %s",
                queue_message.message_id,
                exc,
                extra=_about(queue_message),
            )

    def _event(self, queue_message: QueueMessage | ParkedMessage, event: str, detail: str) -> None:
        """A step of the whole webhook (its messages are not read here): `wabridge trace` finds it by webhook id."""
        if self._events is not None:
            self._events(
                MessageEvent(
                    tenant_id=queue_message.tenant_id,
                    webhook_id=webhook_of(queue_message.message_id),
                    at=time.time(),
                    event=event,
                    detail=detail[:500],
                )
            )


def _about(queue_message: QueueMessage) -> dict[str, str]:
    """A parking line's `extra`: grep on the tenant or the webhook id finds it."""
    return {"tenant_id": queue_message.tenant_id, "webhook_id": webhook_of(queue_message.message_id)}
