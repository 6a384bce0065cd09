"""The tenant actor: one per tenant, supervised, found by tenant id in a registry (worker.py).

It takes the queue deliveries of its tenant in shard order, turns each webhook into per-message results
(codecs.transform) and puts every customer message into that customer's ordering lane (engine.lanes): one
customer's messages reach Genesys strictly in the order they were sent, different customers in parallel up to
`tenant_concurrency`. A delivery is acked once all of its messages are tracked. A backend outage holds the message
in place (engine/outage.py: retried, still unacked) rather than spend one of the queue's few attempts on it; if a
message still cannot be tracked (the outage outlasts the hold, the process is draining), its delivery is handed back
to the queue and comes again — the relay's de-duplication makes the already-delivered ones `duplicate`s instead of
second deliveries.

On the queue's last attempt (`delivery_limit`) a delivery with unfinished messages is not handed back: each
unfinished message is tracked `dead-lettered` with its payload, so it shows in tracking and `wabridge replay` can
send it, and the webhook goes to the dead-letter queue with the reason. Handed back, the broker would have
dead-lettered it just the same, but without a row: the messages would have looked never received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from wabridge.actors.relay import Relay
from wabridge.actors.tenants import TenantDirectory
from wabridge.actors.tracking import TrackingWriter
from wabridge.codecs.results import Inbound, Skipped, StatusUpdate, pack_result
from wabridge.codecs.routing import decode_queued
from wabridge.codecs.transform import transform
from wabridge.engine.actor import Actor
from wabridge.engine.lanes import Lanes
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.engine.outage import hold_through_outage
from wabridge.engine.ports import BackendUnavailable, Delivery, TenantConfig, TrackingRecord, TrackingStatus

_items = REGISTRY.counter("wabridge_webhook_items_total", "Webhook items seen by the workers, by kind.", ["kind"])
_inbound, _skipped, _statuses = (_items.labels(k) for k in ("message", "skipped", "status"))
_handed_back = REGISTRY.counter("wabridge_queue_retries_total", "Queue messages handed back for redelivery.", [])
DEAD_LETTERS = REGISTRY.counter("wabridge_dead_letters_total", "Queue messages moved to the dead-letter queue.", [])

# (the tenant, or the outage that kept its lookup from answering; the message; received at; the delivery's message id
# and attempt)
Job = tuple["TenantConfig | BackendUnavailable", Inbound, float, str, int]

# A customer blocked by a failure waits for the failed delivery to come back (see `_relay_job`): from the queue in
# milliseconds to seconds (behind what the worker prefetched), from parking at once. Each message of the customer
# taken meanwhile goes back too, spending one of its attempts; should the failed one not come back (the shard moved
# to another worker, say, or it came back behind them), the lane runs again after this long, or as soon as one of
# them is on its last attempt while the failed one is not, rather than wear out the customer's next messages.
BLOCK_FOR = 60.0  # s


class Settled:
    """A mark told to a tenant actor: `passed` resolves once every delivery it received before the mark is settled
    (parking.py lifts a fence with it)."""

    def __init__(self) -> None:
        self.passed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _pass(self, _: object = None) -> None:
        if not self.passed.done():
            self.passed.set_result(None)


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
        take_back: Callable[[Delivery], bool] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._take_back = take_back  # parking.py: a delivery handed back while its tenant is parked
        self._delivery_limit = delivery_limit
        self._outage_hold = outage_hold
        self._directory = directory
        self._relay = relay
        self._tracker = tracker
        self._lanes: Lanes[str, Job, str] = Lanes(self._relay_job, concurrency=concurrency, max_pending=max_pending)
        self._settling: set[asyncio.Task[None]] = set()
        # sender → (message id, attempt) of the delivery whose failure blocked it, and until when (`_relay_job`)
        self._blocked: dict[str, tuple[str, int, float]] = {}
        self._stopping = False  # a drain: stop holding messages through an outage, hand them back instead
        self.log = get_logger("tenant", tenant_id=tenant_id, actor=f"tenant:{tenant_id}")

    async def on_start(self) -> None:
        await self._lanes.__aenter__()

    async def on_stop(self) -> None:
        self._stopping = True
        # Admitted messages finish (the drain deadline bounds this); then every delivery gets its ack or retry.
        await self._lanes.__aexit__(None, None, None)
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def on_receive(self, delivery: Delivery) -> None:
        if type(delivery) is Settled:
            before = asyncio.gather(*self._settling, return_exceptions=True)
            before.add_done_callback(delivery._pass)
            return
        try:
            queued = decode_queued(delivery.body)
            results = transform(queued.body)
        except Exception as exc:
            # The ingress verified and decoded this body: a queue message we cannot read will never become readable.
            # Not only the decoders' errors: the transform is total (codecs/transform.py), so anything else it raises
            # is a bug that this body triggers, and would again on every redelivery — dead-lettered now, with the
            # reason, rather than crash this actor three times.
            DEAD_LETTERS.inc()
            self.log.error("unreadable queue message %s dead-lettered: %s: %s", delivery.message_id,
                           type(exc).__name__, str(exc)[:200])  # fmt: skip
            await delivery.dead_letter(f"unreadable: {type(exc).__name__}: {exc}"[:300])
            return
        tenant: TenantConfig | BackendUnavailable | None
        try:
            tenant = await hold_through_outage(
                lambda: self._directory.by_id(self.tenant_id), hold_for=self._outage_hold, give_up=self._giving_up
            )
        except BackendUnavailable as exc:
            # The store stayed down past the hold. Each message fails in its customer's lane (`_relay_job`), behind
            # the customer's earlier ones, and the delivery goes back like any unfinished one. Raised from here, it
            # crashed this actor, and a few such crashes in a row made the worker's supervisor give up and stop the
            # process; handed back from here, it went back to the queue ahead of older messages still in the lanes
            # (chaos runs, session 7).
            tenant = exc
        if tenant is None:
            await self._unrouted(delivery, results)
            return
        pending: list[tuple[asyncio.Future[Any], Inbound | None]] = []  # and the message each one relays
        for result in results:
            match result:
                case Inbound(route=route):
                    _inbound.inc()
                    job = (tenant, result, queued.received_at, delivery.message_id, delivery.attempt)
                    future = await self._lanes.submit(route.sender_id, job)
                    pending.append((future, result))
                case Skipped(wamid=str() as wamid, reason=reason, detail=detail):
                    # A customer message we could not read: visible in tracking, nothing to deliver.
                    _skipped.inc()
                    tracked = self._track(wamid, TrackingStatus.FAILED, error=f"{reason}: {detail}")
                    pending.append((asyncio.ensure_future(tracked), None))
                case Skipped():
                    _skipped.inc()
                case StatusUpdate():
                    _statuses.inc()  # receipts for the business's own messages: not forwarded inbound
        task = asyncio.create_task(self._settle(delivery, pending))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _relay_job(self, sender_id: str, job: Job) -> str:
        """One message of a customer's lane. After a failure the customer's later messages fail too, and go back
        behind the one that failed, until that one comes back (its delivery's message id at a later attempt): the
        queue returns it ahead of them, and parking feeds it ahead of them (parking.py). Unblocking when the lane
        was merely empty let messages the actor took meanwhile overtake it."""
        tenant, inbound, received_at, message_id, attempt = job
        blocked = self._blocked.get(sender_id)
        if blocked is not None:
            if message_id == blocked[0] and attempt > blocked[1]:
                del self._blocked[sender_id]  # the failed one is back: the lane runs again from it
            elif time.monotonic() < blocked[2] and (attempt < self._delivery_limit or blocked[1] >= attempt):
                # Waits; on its last attempt only beside a failed one on its own last attempt: both are then
                # dead-lettered, and `wabridge replay` sends them again in order.
                raise CustomerBlocked("an earlier message of this customer is unfinished")  # no wa_id in logs
            else:
                # The failed one will come back, but after this one's last attempt: delivered out of order beats
                # dead-lettered for waiting.
                del self._blocked[sender_id]
                self.log.warning("delivery %s did not come back (%s at attempt %d): its customer's lane runs again",
                                 blocked[0], message_id, attempt)  # fmt: skip
        try:
            if isinstance(tenant, BackendUnavailable):
                raise BackendUnavailable(tenant.port, "the tenant's lookup outlasted the outage hold") from tenant
            return await hold_through_outage(
                lambda: self._relay.relay(tenant, inbound, received_at), hold_for=self._outage_hold,
                give_up=self._giving_up,
            )
        except BaseException:
            self._blocked[sender_id] = (message_id, attempt, time.monotonic() + BLOCK_FOR)
            raise

    def _giving_up(self) -> bool:
        return self._stopping

    async def _settle(self, delivery: Delivery, pending: list[tuple[asyncio.Future[Any], Inbound | None]]) -> None:
        outcomes = await asyncio.gather(*(future for future, _ in pending), return_exceptions=True)
        unfinished = [(o, inbound) for o, (_, inbound) in zip(outcomes, pending) if isinstance(o, BaseException)]
        if not unfinished:
            await delivery.ack()
            return
        first = unfinished[0][0]
        if delivery.attempt < self._delivery_limit:
            _handed_back.inc()
            self.log.warning(
                "delivery %s handed back (attempt %d): %d of %d messages unfinished, first: %s: %s",
                delivery.message_id, delivery.attempt, len(unfinished), len(outcomes), type(first).__name__, first,
            )  # fmt: skip
            if self._take_back is None or not self._take_back(delivery):
                await delivery.retry()
            return
        reason = f"attempt {delivery.attempt} of {self._delivery_limit}: {type(first).__name__}: {first}"[:300]
        for sender_id, blocked in list(self._blocked.items()):
            if blocked[:2] == (delivery.message_id, delivery.attempt):
                del self._blocked[sender_id]  # it will not come back: the messages behind it go on
        marked = await self._mark_dead_lettered([inbound for _, inbound in unfinished if inbound], delivery, reason)
        DEAD_LETTERS.inc()
        self.log.error(
            "delivery %s dead-lettered: %d of %d messages unfinished (%d tracked dead-lettered), %s",
            delivery.message_id, len(unfinished), len(outcomes), marked, reason,
        )  # fmt: skip
        await delivery.dead_letter(reason)

    async def _mark_dead_lettered(self, inbounds: list[Inbound], delivery: Delivery, reason: str) -> int:
        """Track each message `dead-lettered`, payload kept for replay. Best effort: the store may be the very
        thing that is down, and the webhook in the dead-letter queue still holds every message. Returns the rows
        written."""
        now = time.time()
        records = [
            TrackingRecord(
                wamid=inbound.route.wamid, tenant_id=self.tenant_id, status=TrackingStatus.DEAD_LETTERED,
                type=inbound.route.type, attempts=delivery.attempt, error=reason, payload=pack_result(inbound),
                created_at=now + i * 1e-6, updated_at=now,  # distinct times: replay goes by created_at, in order
            )
            for i, inbound in enumerate(inbounds)
        ]  # fmt: skip
        written = await asyncio.gather(*(self._tracker.record(r) for r in records), return_exceptions=True)
        failed = [w for w in written if isinstance(w, BaseException)]
        if failed and not all(isinstance(w, BackendUnavailable) for w in failed):
            self.log.error("tracking dead-lettered messages failed: %r", failed[0])
        return len(written) - len(failed)

    async def _track(self, wamid: str, status: str, *, error: str | None = None) -> None:
        await self._tracker.record(TrackingRecord(wamid=wamid, tenant_id=self.tenant_id, status=status, error=error))

    async def _unrouted(self, delivery: Delivery, results: list[Any]) -> None:
        """The tenant was removed after the ingress accepted the webhook: nothing to deliver to."""
        self.log.warning("tenant %s no longer exists: %d items unrouted", self.tenant_id, len(results))
        for result in results:
            if isinstance(result, Inbound):
                await self._track(result.route.wamid, TrackingStatus.UNROUTED, error="tenant removed")
        await delivery.ack()
