"""The tenant actor: one per tenant, supervised, found by tenant id in a registry (worker.py).

It takes the queue deliveries of its tenant in shard order, turns each webhook into per-message results
(codecs.transform) and puts every customer message into that customer's ordering lane (engine.lanes): one
customer's messages reach Genesys strictly in the order they were sent, different customers in parallel up to
`tenant_concurrency`. A delivery is acked once all of its messages are tracked. A backend outage holds the message
in place (relay.hold_through_outage: retried, still unacked) rather than spend one of the queue's few attempts on
it; if a message still cannot be tracked (the outage outlasts the hold, the process is draining), its delivery is
handed back to the queue and comes again — the relay's
de-duplication makes the already-delivered ones `duplicate`s instead of second deliveries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from wabridge.actors.relay import Relay, hold_through_outage
from wabridge.actors.tenants import TenantDirectory
from wabridge.actors.tracking import TrackingWriter
from wabridge.codecs.results import Inbound, Skipped, StatusUpdate
from wabridge.codecs.routing import decode_queued
from wabridge.codecs.transform import WebhookDecodeError, transform
from wabridge.engine.actor import Actor
from wabridge.engine.lanes import Lanes
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.engine.ports import Delivery, TenantConfig, TrackingRecord, TrackingStatus

_items = REGISTRY.counter("wabridge_webhook_items_total", "Webhook items seen by the workers, by kind.", ["kind"])
_inbound, _skipped, _statuses = (_items.labels(k) for k in ("message", "skipped", "status"))
_handed_back = REGISTRY.counter("wabridge_queue_retries_total", "Queue messages handed back for redelivery.", [])
_dead = REGISTRY.counter("wabridge_dead_letters_total", "Queue messages moved to the dead-letter queue.", [])

Job = tuple[TenantConfig, Inbound, float]


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
    ) -> None:
        self.tenant_id = tenant_id
        self._directory = directory
        self._relay = relay
        self._tracker = tracker
        self._lanes: Lanes[str, Job, str] = Lanes(self._relay_job, concurrency=concurrency, max_pending=max_pending)
        self._settling: set[asyncio.Task[None]] = set()
        self._queued: dict[str, int] = {}  # sender → messages in its lane (bounded by the lanes' max_pending)
        self._blocked: set[str] = set()  # senders whose lane had a failure: the rest of the lane goes back too
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
        try:
            queued = decode_queued(delivery.body)
            results = transform(queued.body)
        except (msgspec.DecodeError, msgspec.ValidationError, WebhookDecodeError) as exc:
            # The ingress verified and decoded this body: a queue message we cannot read will never become readable.
            _dead.inc()
            self.log.error("unreadable queue message %s dead-lettered: %s", delivery.message_id, exc)
            await delivery.dead_letter(f"unreadable: {exc}")
            return
        tenant = await hold_through_outage(lambda: self._directory.by_id(self.tenant_id), give_up=self._giving_up)
        if tenant is None:
            await self._unrouted(delivery, results)
            return
        pending: list[asyncio.Future[str]] = []
        for result in results:
            match result:
                case Inbound(route=route):
                    _inbound.inc()
                    future = await self._lanes.submit(route.sender_id, (tenant, result, queued.received_at))
                    self._queued[route.sender_id] = self._queued.get(route.sender_id, 0) + 1
                    pending.append(future)
                case Skipped(wamid=str() as wamid, reason=reason, detail=detail):
                    # A customer message we could not read: visible in tracking, nothing to deliver.
                    _skipped.inc()
                    pending.append(asyncio.ensure_future(self._track(wamid, TrackingStatus.FAILED,
                                                                     error=f"{reason}: {detail}")))
                case Skipped():
                    _skipped.inc()
                case StatusUpdate():
                    _statuses.inc()  # receipts for the business's own messages: not forwarded inbound
        task = asyncio.create_task(self._settle(delivery, pending))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _relay_job(self, sender_id: str, job: Job) -> str:
        """One message of a customer's lane. After a failure the customer's later messages fail too, until the lane
        is empty: they all go back to the queue together, so none overtakes the one that failed."""
        try:
            if sender_id in self._blocked:
                raise CustomerBlocked(sender_id)
            tenant, inbound, received_at = job
            try:
                return await hold_through_outage(
                    lambda: self._relay.relay(tenant, inbound, received_at), give_up=self._giving_up
                )
            except BaseException:
                self._blocked.add(sender_id)
                raise
        finally:
            left = self._queued.get(sender_id, 1) - 1
            if left:
                self._queued[sender_id] = left
            else:
                del self._queued[sender_id]
                self._blocked.discard(sender_id)

    def _giving_up(self) -> bool:
        return self._stopping

    async def _settle(self, delivery: Delivery, pending: list[asyncio.Future[Any]]) -> None:
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        problems = [o for o in outcomes if isinstance(o, BaseException)]
        if not problems:
            await delivery.ack()
            return
        _handed_back.inc()
        first = problems[0]
        self.log.warning(
            "delivery %s handed back (attempt %d): %d of %d messages unfinished, first: %s: %s",
            delivery.message_id, delivery.attempt, len(problems), len(outcomes), type(first).__name__, first,
        )  # fmt: skip
        await delivery.retry()

    async def _track(self, wamid: str, status: str, *, error: str | None = None) -> None:
        await self._tracker.record(TrackingRecord(wamid=wamid, tenant_id=self.tenant_id, status=status, error=error))

    async def _unrouted(self, delivery: Delivery, results: list[Any]) -> None:
        """The tenant was removed after the ingress accepted the webhook: nothing to deliver to."""
        self.log.warning("tenant %s no longer exists: %d items unrouted", self.tenant_id, len(results))
        for result in results:
            if isinstance(result, Inbound):
                await self._track(result.route.wamid, TrackingStatus.UNROUTED, error="tenant removed")
        await delivery.ack()
