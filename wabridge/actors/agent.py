"""The agent actor: one per tenant, supervised, found by tenant id in the worker's second registry (worker.py).

It takes the queue messages of the tenant's outbound queue (the agents' webhooks, queued by the ingress) in shard order,
decodes each (codecs/outbound.py) and puts it into its customer's ordering lane (engine.lanes): one customer's
answers reach WhatsApp in the order the agents wrote them, different customers in parallel up to
`tenant_concurrency`. A queue message is acked once its message is tracked (outbound.py).

A backend outage before anything was sent holds the message in place (engine/outage.py), its customer's lane
waiting behind it; Meta or Genesys being down is held inside the send (far_end.py). A drain hands unfinished
queue messages back to the queue. A body the codec cannot read, or a bug it triggers, is dead-lettered at once with the
reason (and tracked `dead-lettered` when its id is known): it would fail again on every redelivery. On the queue's
last attempt an unfinished queue message is dead-lettered too, so `wabridge replay` and the dead-letter queue both see
it.
"""

from __future__ import annotations

import asyncio
import math
import time

import msgspec

from wabridge.actors.directory import TenantDirectory
from wabridge.actors.outbound import OUTBOUND, OutboundSender
from wabridge.actors.tracking import TrackingWriter
from wabridge.codecs.outbound import decode_outbound
from wabridge.codecs.outbound_results import OutboundResult
from wabridge.codecs.routing import decode_queued
from wabridge.engine.actor import Actor
from wabridge.engine.history import Origin, Trail, webhook_of
from wabridge.engine.lanes import Lanes
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.engine.outage import hold_through_outage
from wabridge.engine.tasks import Tasks
from wabridge.ports import BackendUnavailable, QueueMessage, TenantConfig, TrackingRecord, TrackingStatus

_dead_letters = REGISTRY.counter(
    "wabridge_outbound_dead_letters_total", "Agent webhooks moved to the outbound dead-letter queue.", []
)
_handed_back = REGISTRY.counter("wabridge_outbound_retries_total", "Agent webhooks handed back for redelivery.", [])


class Job(msgspec.Struct, frozen=True):
    """An agent's message in its customer's lane."""

    tenant: TenantConfig
    result: OutboundResult  # the decoded webhook
    raw: bytes  # its body as the agent's webhook carried it
    received_at: float
    origin: Origin  # where it came from, for the tracking row and the trail (engine/history.py)


class AgentActor(Actor):
    def __init__(
        self,
        tenant_id: str,
        *,
        directory: TenantDirectory,
        sender: OutboundSender,
        tracker: TrackingWriter,
        concurrency: int,
        max_pending: int,
        delivery_limit: int,
        outage_hold: float,
    ) -> None:
        self.tenant_id = tenant_id
        self._directory = directory
        self._sender = sender
        self._tracker = tracker
        self._delivery_limit = delivery_limit
        self._outage_hold = outage_hold
        self._lanes: Lanes[str, Job, str] = Lanes(self._job, concurrency=concurrency, max_pending=max_pending)
        self._settling = Tasks(f"agent:{tenant_id} settling")  # each queue message's ack, retry or dead letter
        self._stopping = False
        self.log = get_logger("agent", tenant_id=tenant_id, actor=f"agent:{tenant_id}")

    async def on_start(self) -> None:
        await self._lanes.__aenter__()

    async def on_stop(self) -> None:
        self._stopping = True
        await self._lanes.__aexit__(None, None, None)
        await self._settling.wait()

    async def on_receive(self, queue_message: QueueMessage) -> None:
        try:
            queued = decode_queued(queue_message.body)
            result = decode_outbound(queued.body)
        except Exception as exc:
            # The ingress checked this body is a JSON object; one we cannot read now never will be.
            await self._dead_letter(queue_message, f"unreadable: {type(exc).__name__}: {exc}")
            return
        try:
            tenant = await hold_through_outage(
                lambda: self._directory.by_id(self.tenant_id),
                hold_for=math.inf,
                give_up=self._giving_up,
                report_after=self._outage_hold,
            )
        except BackendUnavailable:
            await queue_message.retry()  # a drain while the store is down: it comes back to whoever consumes next
            return
        if tenant is None:
            self.log.warning(
                "tenant %s no longer exists: agent message %s dropped", self.tenant_id, queue_message.message_id
            )
            await queue_message.ack()
            return
        origin = Origin(webhook_of(queue_message.message_id), queue_message.shard, queued.archive_key or None)
        customer = getattr(result, "to_id", None) or getattr(result, "id", None) or queue_message.message_id
        future = await self._lanes.submit(customer, Job(tenant, result, queued.body, queued.received_at, origin))
        self._settling.start(self._settle(queue_message, future, result))

    async def _job(self, customer: str, job: Job) -> str:
        genesys_id = getattr(job.result, "id", None) or ""
        with Trail(self.tenant_id, genesys_id, job.origin, self._tracker, direction=OUTBOUND):
            return await hold_through_outage(
                lambda: self._sender.handle(job.tenant, job.result, job.raw, job.received_at, origin=job.origin),
                hold_for=math.inf,
                give_up=self._giving_up,
                report_after=self._outage_hold,
            )

    def _giving_up(self) -> bool:
        return self._stopping

    async def _settle(self, queue_message: QueueMessage, future: asyncio.Future[str], result: OutboundResult) -> None:
        try:
            await future
        except BackendUnavailable as exc:
            if queue_message.attempt < self._delivery_limit:
                _handed_back.inc()
                self.log.warning(
                    "agent message %s handed back (attempt %d): %s",
                    queue_message.message_id,
                    queue_message.attempt,
                    exc,
                )
                await queue_message.retry()
            else:
                await self._dead_letter(
                    queue_message, f"attempt {queue_message.attempt} of {self._delivery_limit}: {exc}", result
                )
            return
        except Exception as exc:
            self.log.exception("agent message %s failed", queue_message.message_id)
            await self._dead_letter(queue_message, f"{type(exc).__name__}: {exc}", result)
            return
        await queue_message.ack()

    async def _dead_letter(
        self, queue_message: QueueMessage, reason: str, result: OutboundResult | None = None
    ) -> None:
        reason = reason[:300]
        _dead_letters.inc()
        self.log.error("agent message %s dead-lettered: %s", queue_message.message_id, reason)
        genesys_id = getattr(result, "id", None)
        if genesys_id:  # best effort: the dead-letter queue holds the webhook whatever happens here
            now = time.time()
            record = TrackingRecord(
                wamid=genesys_id,
                tenant_id=self.tenant_id,
                status=TrackingStatus.DEAD_LETTERED,
                direction=OUTBOUND,
                genesys_message_id=genesys_id,
                attempts=queue_message.attempt,
                error=reason,
                customer_id=getattr(result, "to_id", None),
                created_at=now,
                updated_at=now,
                payload=_payload(queue_message),
            )
            try:
                await self._tracker.record(record)
            except Exception as exc:
                self.log.warning("tracking dead-lettered agent message %s failed: %r", genesys_id, exc)
        await queue_message.dead_letter(reason)


def _payload(queue_message: QueueMessage) -> bytes | None:
    try:
        return decode_queued(queue_message.body).body
    except Exception:
        return None
