"""The tenant actor: one per tenant, supervised, found by tenant id in a registry (worker.py).

It takes the queue messages of its tenant in shard order, turns each webhook into per-message results
(codecs.transform) and puts every customer message into that customer's ordering lane (engine.lanes): one
customer's messages reach Genesys strictly in the order they were sent, different customers in parallel up to
`tenant_concurrency`. A queue message is acked once all of its messages are tracked. A backend outage holds the message
in place for as long as it lasts (engine/outage.py: retried, still unacked, its customer's lane waiting behind it)
rather than spend one of the queue's few attempts on it, or send it behind its customer's newer messages; a message
that fails otherwise (a bug), or a drain, hands its queue message back to the queue and it comes again — the relay's
de-duplication makes the already-delivered ones `duplicate`s instead of being posted twice.

On the queue's last attempt (`delivery_limit`) a queue message with unfinished messages is not handed back: each
unfinished message is tracked `dead-lettered` with its payload, so it shows in tracking and `wabridge replay` can
send it, and the webhook goes to the dead-letter queue with the reason. Handed back, the broker would have
dead-lettered it just the same, but without a row: the messages would have looked never received.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from wabridge.actors.directory import TenantDirectory
from wabridge.actors.identity import CustomerIdentity, customer_ids
from wabridge.actors.relay import Relay
from wabridge.actors.tracking import TrackingWriter
from wabridge.codecs.results import Inbound, Skipped, StatusUpdate, pack_result
from wabridge.codecs.routing import decode_queued
from wabridge.codecs.transform import transform
from wabridge.engine.actor import Actor
from wabridge.engine.history import Origin, Trail, origin_fields, webhook_of
from wabridge.engine.lanes import Lanes
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.engine.outage import hold_through_outage
from wabridge.engine.tasks import Tasks
from wabridge.ports import (
    BackendUnavailable,
    MessageEvent,
    MessageEventKind,
    QueueMessage,
    TenantConfig,
    TrackingRecord,
    TrackingStatus,
)

if TYPE_CHECKING:
    from wabridge.actors.statuses import StatusReceipts

_items = REGISTRY.counter("wabridge_webhook_items_total", "Webhook items seen by the workers, by kind.", ["kind"])
_inbound, _skipped, _statuses = (_items.labels(k) for k in ("message", "skipped", "status"))
_handed_back = REGISTRY.counter("wabridge_queue_retries_total", "Queue messages handed back for redelivery.", [])
DEAD_LETTERS = REGISTRY.counter("wabridge_dead_letters_total", "Queue messages moved to the dead-letter queue.", [])


class MessageJob(msgspec.Struct, frozen=True):
    """A customer's message in its customer's lane."""

    tenant: TenantConfig | BackendUnavailable  # or the outage that kept its lookup from answering
    inbound: Inbound
    received_at: float
    message_id: str  # of the queue message it came in
    attempt: int  # the queue message's
    origin: Origin  # where its webhook came from, for the tracking row and the trail (engine/history.py)


class StatusJob(msgspec.Struct, frozen=True):
    """A status of an agent's message, in its customer's lane: a receipt to Genesys (statuses.py)."""

    tenant: TenantConfig | BackendUnavailable
    status: StatusUpdate


Job = MessageJob | StatusJob

ADMITTING = 256  # queue messages of one tenant whose customers are being named by the store at once

# A customer blocked by a failure waits for the failed queue message and the ones sent back behind it to come back (see
# `_relay_job`): from the queue in milliseconds to seconds (behind what the worker prefetched), from parking at once.
# Each message of the customer taken meanwhile goes back too, spending one of its attempts; should the next awaited
# one not come back (the shard moved to another worker, say, or it came back behind them), the lane runs again after
# this long, or as soon as one of them is on its last attempt while the awaited one is not, rather than wear out the
# customer's next messages.
BLOCK_FOR = 60.0  # s


class Settled:
    """A mark told to a tenant actor: `passed` resolves once every queue message it received before the mark is settled
    (parking.py lifts a fence with it)."""

    def __init__(self) -> None:
        self.passed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _pass(self, _: object = None) -> None:
        if not self.passed.done():
            self.passed.set_result(None)


class SentBack:
    """A blocked customer's messages that went back to the queue, in the order they must run again: the one that
    failed first, then each one sent back behind it (`_relay_job`)."""

    __slots__ = ("order", "until")

    def __init__(self) -> None:
        self.order: dict[tuple[str, str], int] = {}  # (queue message's message id, wamid) → the attempt it went back at
        self.until = 0.0  # waiting for them ends then (BLOCK_FOR)


class CustomerBlocked(Exception):
    """An earlier message of this customer failed: this one is handed back with it, to keep their order."""


class TenantActor(Actor):
    def __init__(
        self,
        tenant_id: str,
        *,
        directory: TenantDirectory,
        relay: Relay,
        tracker: TrackingWriter,
        concurrency: int,
        max_pending: int,
        delivery_limit: int,
        outage_hold: float,
        take_back: Callable[[QueueMessage], bool] | None = None,
        identity: CustomerIdentity | None = None,
        statuses: StatusReceipts | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._statuses = statuses  # statuses.py: Meta's statuses of the agents' messages become Genesys receipts
        self._identity = identity  # identity.py: a customer's messages under one id, phone or BSUID
        self._take_back = take_back  # parking.py: a queue message handed back while its tenant is parked
        self._delivery_limit = delivery_limit
        self._outage_hold = outage_hold
        self._directory = directory
        self._relay = relay
        self._tracker = tracker
        self._lanes: Lanes[str, Job, str] = Lanes(self._traced_job, concurrency=concurrency, max_pending=max_pending)
        # each queue message's ack or retry, once its messages end
        self._settling = Tasks(f"tenant:{tenant_id} settling")
        # sender → its messages sent back to the queue by a failure, which the lane waits for (`_relay_job`)
        self._blocked: dict[str, SentBack] = {}
        self._stopping = False  # a drain: stop holding messages through an outage, hand them back instead
        # Queue messages whose customers the store must name (identity.py) are resolved concurrently and admitted to the
        # lanes in the order received: each waits for the one before (`_admitted`, the last link of that chain).
        # Awaited in turn here, first contacts were one store round trip each, one at a time: a burst of new
        # customers was capped near 400/s per tenant (bench, warm-up at 500/s).
        self._admitted: asyncio.Future[None] | None = None
        # Counted beside the lanes' own bound in what the worker holds of one tenant: an eighth of it at most.
        self._admitting = asyncio.Semaphore(min(ADMITTING, max(1, max_pending // 8)))
        self._admissions = Tasks(f"tenant:{tenant_id} admissions")
        # customer id → the resolution under way that names it: a later one naming it too waits for it, so that
        # resolutions of related ids happen one after the other (one records the alias the other must see)
        self._resolving: dict[str, asyncio.Future[None]] = {}
        self.log = get_logger("tenant", tenant_id=tenant_id, actor=f"tenant:{tenant_id}")

    async def on_start(self) -> None:
        await self._lanes.__aenter__()

    async def on_stop(self) -> None:
        self._stopping = True
        if self._admitted is not None:  # every queue message taken reaches the lanes (a drain stops its holds)
            await asyncio.wait([self._admitted])
        # Admitted messages finish (the drain deadline bounds this); then every queue message gets its ack or retry.
        await self._lanes.__aexit__(None, None, None)
        await self._settling.wait()
        await self._admissions.wait()  # the marks passed once the queue messages before them are settled

    async def on_receive(self, queue_message: QueueMessage) -> None:
        if type(queue_message) is Settled:
            if self._admitted is None or self._admitted.done():
                before = asyncio.gather(*self._settling, return_exceptions=True)
                before.add_done_callback(queue_message._pass)
            else:  # behind the queue messages still being admitted: the mark is a link of the chain too
                self._spawn(self._pass_after_admitted(queue_message, *self._link()))
            return
        try:
            queued = decode_queued(queue_message.body)
            results = transform(queued.body)
        except Exception as exc:
            # The ingress verified and decoded this body: a queue message we cannot read will never become readable.
            # Not only the decoders' errors: the transform is total (codecs/transform.py), so anything else it raises
            # is a bug that this body triggers, and would again on every redelivery — dead-lettered now, with the
            # reason, rather than crash this actor three times.
            DEAD_LETTERS.inc()
            self.log.error(
                "unreadable queue message %s dead-lettered: %s: %s",
                queue_message.message_id,
                type(exc).__name__,
                str(exc)[:200],
            )
            await queue_message.dead_letter(f"unreadable: {type(exc).__name__}: {exc}"[:300])
            return
        tenant: TenantConfig | BackendUnavailable | None
        try:
            tenant = await hold_through_outage(
                lambda: self._directory.by_id(self.tenant_id),
                hold_for=math.inf,
                give_up=self._giving_up,
                report_after=self._outage_hold,
            )
        except BackendUnavailable as exc:
            # A drain while the store is down. Each message fails in its customer's lane (`_relay_job`), behind the
            # customer's earlier ones, and the queue message goes back like any unfinished one: raised from here, it
            # would crash this actor; handed back from here, it would go back ahead of older messages still in the
            # lanes.
            tenant = exc
        if tenant is None:
            await self._unrouted(queue_message, results)
            return
        if self._admitted is None or self._admitted.done():  # nothing before it still being admitted
            known: list[Any] | None = results
            if self._identity is not None and not isinstance(tenant, BackendUnavailable):
                known = self._identity.known(self.tenant_id, results)  # the usual message: known here, no await
            if known is not None:
                await self._admit(queue_message, queued, known, tenant)
                return
        # Behind queue messages still being admitted, or naming a customer the store must name: `_resolve_and_admit`
        # looks its customers up (again: what it waits for may teach this process the answer) once its turn comes.
        await self._admitting.acquire()  # bounded: past it the actor takes no more (backpressure, as the lanes)
        ids = customer_ids(results)
        related = {self._resolving[i] for i in ids if i in self._resolving}
        resolved = asyncio.get_running_loop().create_future()
        for i in ids:
            self._resolving[i] = resolved
        self._spawn(
            self._resolve_and_admit(queue_message, queued, results, tenant, related, ids, resolved, *self._link())
        )

    def _link(self) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """(the last link of the admission chain, a new last link)."""
        before, this = self._admitted, asyncio.get_running_loop().create_future()
        self._admitted = this
        return before, this

    def _spawn(self, coroutine: Any) -> None:
        self._admissions.start(coroutine)

    async def _pass_after_admitted(
        self, mark: Settled, before: asyncio.Future[None] | None, this: asyncio.Future[None]
    ) -> None:
        try:
            if before is not None:
                await before
            settling = list(self._settling)
        finally:
            this.set_result(None)
        await asyncio.gather(*settling, return_exceptions=True)
        mark._pass()

    async def _resolve_and_admit(
        self,
        queue_message: QueueMessage,
        queued: Any,
        results: list[Any],
        tenant: TenantConfig | BackendUnavailable,
        related: set[asyncio.Future[None]],
        ids: set[str],
        resolved: asyncio.Future[None],
        before: asyncio.Future[None] | None,
        this: asyncio.Future[None],
    ) -> None:
        """Name each message's customer — after the resolutions under way that name one of its ids, locally if
        they taught this process enough, else by the store, through the hold — then, once the queue message received
        before this one is admitted, admit this one."""
        try:
            try:
                if related:
                    await asyncio.wait(related)
                known: list[Any] = results
                identity = self._identity
                if identity is not None and not isinstance(tenant, BackendUnavailable):
                    here = identity.known(self.tenant_id, results)
                    if here is not None:
                        known = here
                    else:
                        known = await hold_through_outage(
                            lambda: identity.resolve(self.tenant_id, results),
                            hold_for=math.inf,
                            give_up=self._giving_up,
                            report_after=self._outage_hold,
                        )
            except BackendUnavailable as exc:
                known, tenant = results, exc  # a drain, as for the tenant lookup: each message fails in its lane
            except Exception:
                self.log.exception(
                    "naming the customers of %s failed: they go under the ids they came with", queue_message.message_id
                )
                known = results
            finally:
                resolved.set_result(None)
                for i in ids:
                    if self._resolving.get(i) is resolved:
                        del self._resolving[i]
            if before is not None:
                await before
            try:
                await self._admit(queue_message, queued, known, tenant)
            except Exception:
                self.log.exception("admitting %s failed: handed back", queue_message.message_id)
                await queue_message.retry()
        finally:
            this.set_result(None)
            self._admitting.release()

    async def _admit(
        self, queue_message: QueueMessage, queued: Any, results: list[Any], tenant: TenantConfig | BackendUnavailable
    ) -> None:
        """Each message of the queue message into its customer's lane, in payload order; its settlement once all are
        tracked."""
        pending: list[tuple[asyncio.Future[Any], Inbound | None]] = []  # and the message each one relays
        origin = Origin(webhook_of(queue_message.message_id), queue_message.shard, queued.archive_key or None)
        for result in results:
            match result:
                case Inbound(route=route):
                    _inbound.inc()
                    job = MessageJob(
                        tenant, result, queued.received_at, queue_message.message_id, queue_message.attempt, origin
                    )
                    future = await self._lanes.submit(route.sender_id, job)
                    pending.append((future, result))
                case Skipped(wamid=str() as wamid, reason=reason, detail=detail):
                    # A customer message we could not read: visible in tracking, nothing to deliver.
                    _skipped.inc()
                    tracked = self._track(
                        wamid,
                        TrackingStatus.FAILED,
                        error=f"{reason}: {detail}",
                        origin=origin,
                        received_at=queued.received_at,
                    )
                    pending.append((asyncio.ensure_future(tracked), None))
                case Skipped():
                    _skipped.inc()
                case StatusUpdate():
                    _statuses.inc()
                    if self._statuses is not None:  # the agents' messages: a receipt to Genesys (statuses.py)
                        status = StatusJob(tenant, result)
                        future = await self._lanes.submit(self._statuses.lane_of(result), status)
                        pending.append((future, None))
        self._settling.start(self._settle(queue_message, pending, origin, queued.received_at))

    async def _traced_job(self, sender_id: str, job: Job) -> str:
        """`_relay_job` in the message's trail: every line logged about it meanwhile names it, and its unusual
        steps are kept for `wabridge trace` (history.py). A status runs in its customer's lane too, so its receipt
        never passes the customer's earlier messages."""
        if isinstance(job, StatusJob):
            return await self._status_job(job)
        with Trail(self.tenant_id, job.inbound.route.wamid, job.origin, self._tracker):
            return await self._relay_job(sender_id, job)

    async def _relay_job(self, sender_id: str, job: MessageJob) -> str:
        """One message of a customer's lane. After a failure the customer's later messages fail too, and go back
        behind the one that failed; the lane then runs only the messages it sent back, each at a later attempt, in
        the order they went back (the queue returns them so, and parking feeds them so: parking.py), and sends
        back any other until the last of them has run: unblocking once the failed one alone is back would let a
        message taken between its return and its followers' (their hand-backs reach the queue later, behind newer
        messages the worker already holds) overtake them."""
        tenant, inbound, message_id, attempt = job.tenant, job.inbound, job.message_id, job.attempt
        key = (message_id, inbound.route.wamid)
        blocked = self._blocked.get(sender_id)
        if blocked is not None:
            first, first_attempt = next(iter(blocked.order.items()))
            if key == first and attempt > first_attempt:
                del blocked.order[key]  # its turn: the next one sent back is awaited after it
                blocked.until = time.monotonic() + BLOCK_FOR
                if not blocked.order:
                    del self._blocked[sender_id]
            elif time.monotonic() < blocked.until and (attempt < self._delivery_limit or first_attempt >= attempt):
                # Waits (one sent back before keeps its place); on its last attempt only beside a failed one on its
                # own last attempt: both are then dead-lettered, and `wabridge replay` sends them again in order.
                blocked.order[key] = attempt
                raise CustomerBlocked("an earlier message of this customer is unfinished")  # no wa_id in logs
            else:
                # The ones sent back will come, but after this one's last attempt: delivered out of order beats
                # dead-lettered for waiting.
                del self._blocked[sender_id]
                self.log.warning(
                    "delivery %s did not come back (%s at attempt %d): its customer's lane runs again",
                    first[0],
                    message_id,
                    attempt,
                )
        try:
            if isinstance(tenant, BackendUnavailable):
                raise BackendUnavailable(tenant.port, "a drain cut the tenant's lookup short") from tenant
            return await hold_through_outage(
                lambda: self._relay.relay(tenant, inbound, job.received_at),
                hold_for=math.inf,
                report_after=self._outage_hold,
                give_up=self._giving_up,
            )
        except BaseException:
            blocked = self._blocked.setdefault(sender_id, SentBack())
            blocked.order = {key: attempt, **blocked.order}  # it runs again before the ones still on their way back
            blocked.until = time.monotonic() + BLOCK_FOR
            raise

    async def _status_job(self, job: StatusJob) -> str:
        tenant, statuses = job.tenant, self._statuses
        if isinstance(tenant, BackendUnavailable):
            raise BackendUnavailable(tenant.port, "a drain cut the tenant's lookup short") from tenant
        assert statuses is not None  # a StatusJob is made only when there are statuses to apply
        return await hold_through_outage(
            lambda: statuses.apply(tenant, job.status),
            hold_for=math.inf,
            report_after=self._outage_hold,
            give_up=self._giving_up,
        )

    def _giving_up(self) -> bool:
        return self._stopping

    async def _settle(
        self,
        queue_message: QueueMessage,
        pending: list[tuple[asyncio.Future[Any], Inbound | None]],
        origin: Origin,
        received_at: float,
    ) -> None:
        outcomes = await asyncio.gather(*(future for future, _ in pending), return_exceptions=True)
        unfinished = [
            (o, inbound) for o, (_, inbound) in zip(outcomes, pending, strict=True) if isinstance(o, BaseException)
        ]
        if not unfinished:
            await queue_message.ack()
            return
        first = unfinished[0][0]
        # The lines below name the webhook and its unfinished messages, so grep on either finds them.
        context = {"webhook_id": origin.webhook_id, "wamids": [i.route.wamid for _, i in unfinished if i]}
        if queue_message.attempt < self._delivery_limit:
            _handed_back.inc()
            self._events(
                unfinished,
                origin,
                MessageEventKind.HANDED_BACK,
                f"attempt {queue_message.attempt} of {self._delivery_limit}",
            )
            self.log.warning(
                "delivery %s handed back (attempt %d): %d of %d messages unfinished, first: %s: %s",
                queue_message.message_id,
                queue_message.attempt,
                len(unfinished),
                len(outcomes),
                type(first).__name__,
                first,
                extra=context,
            )
            if self._take_back is None or not self._take_back(queue_message):
                await queue_message.retry()
            return
        reason = f"attempt {queue_message.attempt} of {self._delivery_limit}: {type(first).__name__}: {first}"[:300]
        for sender_id, blocked in list(self._blocked.items()):
            for key, attempt in list(blocked.order.items()):
                if (key[0], attempt) == (queue_message.message_id, queue_message.attempt):
                    del blocked.order[key]  # it will not come back: the messages behind it go on
            if not blocked.order:
                del self._blocked[sender_id]
        marked = await self._mark_dead_lettered(
            [inbound for _, inbound in unfinished if inbound], queue_message, reason, origin, received_at
        )
        self._events(unfinished, origin, MessageEventKind.DEAD_LETTERED, reason)
        DEAD_LETTERS.inc()
        self.log.error(
            "delivery %s dead-lettered: %d of %d messages unfinished (%d tracked dead-lettered), %s",
            queue_message.message_id,
            len(unfinished),
            len(outcomes),
            marked,
            reason,
            extra=context,
        )
        await queue_message.dead_letter(reason)

    def _events(
        self, unfinished: list[tuple[BaseException, Inbound | None]], origin: Origin, event: str, detail: str
    ) -> None:
        """One event per unfinished message, with why it did not finish (`wabridge trace`; not awaited)."""
        now = time.time()
        for error, inbound in unfinished:
            if inbound is not None:
                self._tracker.event(
                    MessageEvent(
                        tenant_id=self.tenant_id,
                        wamid=inbound.route.wamid,
                        webhook_id=origin.webhook_id,
                        at=now,
                        event=event,
                        detail=f"{detail}: {type(error).__name__}: {error}"[:500],
                    )
                )

    async def _mark_dead_lettered(
        self,
        inbounds: list[Inbound],
        queue_message: QueueMessage,
        reason: str,
        origin: Origin | None = None,
        received_at: float | None = None,
    ) -> int:
        """Track each message `dead-lettered`, payload kept for replay. Best effort: the store may be the very
        thing that is down, and the webhook in the dead-letter queue still holds every message. Returns the rows
        written."""
        now = time.time()
        records = [
            TrackingRecord(
                wamid=inbound.route.wamid,
                tenant_id=self.tenant_id,
                status=TrackingStatus.DEAD_LETTERED,
                type=inbound.route.type,
                attempts=queue_message.attempt,
                error=reason,
                payload=pack_result(inbound),
                created_at=now + i * 1e-6,
                updated_at=now,  # distinct times: replay goes by created_at, in order
                customer_id=inbound.route.sender_id,
                received_at=received_at,
                webhook_id=origin.webhook_id if origin else None,
                shard=origin.shard if origin else None,
                archive_key=origin.archive_key if origin else None,
            )
            for i, inbound in enumerate(inbounds)
        ]
        written = await asyncio.gather(*(self._tracker.record(r) for r in records), return_exceptions=True)
        failed = [w for w in written if isinstance(w, BaseException)]
        if failed and not all(isinstance(w, BackendUnavailable) for w in failed):
            self.log.error("tracking dead-lettered messages failed: %r", failed[0])
        return len(written) - len(failed)

    async def _track(
        self,
        wamid: str,
        status: str,
        *,
        error: str | None = None,
        origin: Origin | None = None,
        received_at: float | None = None,
    ) -> None:
        where = {} if origin is None else origin_fields(origin, received_at)
        await self._tracker.record(
            TrackingRecord(wamid=wamid, tenant_id=self.tenant_id, status=status, error=error, **where)
        )

    async def _unrouted(self, queue_message: QueueMessage, results: list[Any]) -> None:
        """The tenant was removed after the ingress accepted the webhook: nothing to deliver to."""
        self.log.warning("tenant %s no longer exists: %d items unrouted", self.tenant_id, len(results))
        for result in results:
            if isinstance(result, Inbound):
                await self._track(result.route.wamid, TrackingStatus.UNROUTED, error="tenant removed")
        await queue_message.ack()
