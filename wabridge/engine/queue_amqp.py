"""The Queue port on RabbitMQ: quorum queues sharded by tenant through a consistent-hash exchange.

Topology (declared idempotently by `open()` and again after every reconnect):

    exchange  {queue_name}         x-consistent-hash, durable; routing key = tenant id
    queues    {queue_name}.0 … .N-1 quorum, single-active-consumer, x-delivery-limit, dead-letter → .dead
    queue     {queue_name}.dead    quorum, not single-active (basic.get is refused on SAC queues)

Attempts: quorum queues count every return (nack with requeue, or a consumer that died holding the message) in
`x-delivery-count`, so `attempt = x-delivery-count + 1`. `x-delivery-limit` counts *re*deliveries, hence it is set
to `delivery_limit - 1`: with the default 3 a message is handled at most 3 times, then dead-lettered by the broker
with x-death reason `delivery_limit`. `dead_letter(reason)` publishes a copy to the dead queue with the
`x-wabridge-reason` header (confirmed) and then acks the original.

Publishing uses aiormq directly: `basic_publish(..., wait=False)` queues the frames without waiting for the socket
drain, so many publishes are in flight and each caller awaits only its own confirm (group commit by the broker).
aio-pika's `publish` holds the channel lock until its frame is drained, which serialises the writers; see
bench/test_queue_bench.py for the figures of both in the same run. A caller never hears success for a message the
broker did not confirm: a nack, a timeout or a lost connection raise `BackendUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp import commands as spec

from wabridge.engine.ports import BackendUnavailable, Delivery
from wabridge.engine.settings import Settings

log = logging.getLogger(__name__)

PORT = "queue"
TENANT_HEADER = "tenant_id"
REASON_HEADER = "x-wabridge-reason"
PERSISTENT = 2

CONNECT_TIMEOUT = 3.0  # s: a broker that does not answer by then is down for the ingress (503)
CONFIRM_TIMEOUT = 10.0  # s: an unconfirmed publish after this is reported failed (it may still land: at-least-once)
RECONNECT_PAUSE = 0.5  # s: after a failed connect, publishes fail fast this long instead of each dialling again
MAX_IN_FLIGHT = 4096  # publishes awaiting their confirm; more callers wait (bounded, then time out)
CONSUMER_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # s between consumer re-subscriptions while the broker is away

_BROKER_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError, RuntimeError)


def shard_queue(queue_name: str, shard: int) -> str:
    return f"{queue_name}.{shard}"


def dead_queue(queue_name: str) -> str:
    return f"{queue_name}.dead"


class AmqpDelivery:
    """One message from a shard (or the dead queue). Settlement on a channel that died is a no-op: the broker
    has already put the message back and will deliver it again (at-least-once)."""

    __slots__ = ("tenant_id", "message_id", "body", "shard", "attempt", "reason", "_queue", "_message", "_settled")

    def __init__(self, queue: AmqpQueue, message: DeliveredMessage, shard: int) -> None:
        props = message.header.properties
        headers: dict[str, Any] = props.headers or {}
        self.tenant_id = _text(headers.get(TENANT_HEADER, ""))
        self.message_id = props.message_id or ""
        self.body = message.body
        self.shard = shard
        self.attempt = int(headers.get("x-delivery-count", 0) or 0) + 1
        self.reason = _dead_reason(headers)
        self._queue = queue
        self._message = message
        self._settled = False

    def __repr__(self) -> str:
        return f"AmqpDelivery(tenant_id={self.tenant_id!r}, message_id={self.message_id!r}, shard={self.shard})"

    async def ack(self) -> None:
        await self._settle(lambda ch, tag: ch.basic_ack(tag))

    async def retry(self) -> None:
        if self.shard < 0:  # from the dead queue: put it back in its shard, then drop the dead copy
            await self._queue.publish(self.tenant_id, self.body, message_id=self.message_id)
            await self.ack()
            return
        await self._settle(lambda ch, tag: ch.basic_nack(tag, requeue=True))

    async def dead_letter(self, reason: str) -> None:
        if self.shard >= 0:
            await self._queue._publish_dead(self, reason)
        await self.ack()

    async def _settle(self, action: Callable[[AbstractChannel, int], Awaitable[None]]) -> None:
        if self._settled:
            return
        self._settled = True
        channel = self._message.channel
        if channel.is_closed:
            return
        # Shielded: a cancelled handler must not leave a half-sent ack behind. The settlement may then fail
        # unobserved (the channel died): its error is read here so it is not reported as never retrieved.
        settling = asyncio.ensure_future(action(channel, self._message.delivery.delivery_tag))
        settling.add_done_callback(_read_error)
        with contextlib.suppress(*_BROKER_ERRORS):
            await asyncio.shield(settling)


class AmqpConsumer:
    """Subscriptions to some shards on one channel; re-subscribes after the broker comes back."""

    def __init__(self, queue: AmqpQueue, handler: Callable[[Delivery], Awaitable[None]], shards: Sequence[int],
                 prefetch: int) -> None:
        self._queue = queue
        self._handler = handler
        self._shards = tuple(shards)
        self._prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self._stopping = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._subscribe()  # the first subscription fails loudly; later ones retry in the background
        self._task = asyncio.create_task(self._keep_subscribed(), name="amqp-consumer")

    async def _subscribe(self) -> None:
        connection = await self._queue._connected()
        channel = await connection.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=self._prefetch)
        for shard in self._shards:
            await channel.basic_consume(shard_queue(self._queue.queue_name, shard), self._on_message(shard))
        self._channel = channel

    def _on_message(self, shard: int) -> Callable[[DeliveredMessage], Awaitable[None]]:
        # aiormq starts one task per delivery in arrival order, so handler invocations keep the shard's order.
        async def deliver(message: DeliveredMessage) -> None:
            delivery = AmqpDelivery(self._queue, message, shard)
            try:
                await self._handler(delivery)
            except Exception:
                log.exception("queue handler failed on %r; handing it back", delivery)
                await delivery.retry()

        return deliver

    async def _keep_subscribed(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            channel = self._channel
            if channel is not None:
                stop, closed = asyncio.ensure_future(self._stopping.wait()), channel.closing
                await asyncio.wait([stop, closed], return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if closed.done() and not closed.cancelled():
                    closed.exception()  # retrieved: the cause is the broker going away, already handled here
                closed.cancel()
                if self._stopping.is_set():
                    return
                self._channel = None
            pause = CONSUMER_BACKOFF[min(failures, len(CONSUMER_BACKOFF) - 1)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            if self._stopping.is_set():
                return
            try:
                await self._subscribe()
                failures = 0
            except (*_BROKER_ERRORS, BackendUnavailable, TimeoutError) as exc:
                failures += 1
                log.warning("queue consumer re-subscription failed: %s", type(exc).__name__)  # no URL in logs

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            # Closing the channel cancels the handler tasks aiormq runs for it and returns every unacked message.
            with contextlib.suppress(*_BROKER_ERRORS):
                await channel.close()


class AmqpQueue:
    def __init__(self, settings: Settings) -> None:
        if settings.amqp_url is None:
            raise ValueError("AmqpQueue needs settings.amqp_url")
        self._url = settings.amqp_url  # a Secret: the URL may hold a password
        self.queue_name = settings.queue_name
        self.shards = settings.shards
        self.delivery_limit = settings.delivery_limit
        self._connection: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._dead_reader: AbstractChannel | None = None
        self._connect_lock = asyncio.Lock()
        self._failed_at = 0.0
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._consumers: set[AmqpConsumer] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"AmqpQueue(queue_name={self.queue_name!r}, shards={self.shards})"

    # --- connection -------------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._closed = False
        await self._connected()

    async def _connected(self) -> AbstractConnection:
        connection = self._connection
        if connection is not None and not connection.is_closed and self._publisher is not None \
                and not self._publisher.is_closed:
            return connection
        async with self._connect_lock:
            if self._connection is not None and not self._connection.is_closed and self._publisher is not None \
                    and not self._publisher.is_closed:
                return self._connection
            if self._closed:
                raise BackendUnavailable(PORT, "queue closed")
            if time.monotonic() - self._failed_at < RECONNECT_PAUSE:
                raise BackendUnavailable(PORT, "broker unreachable (retrying shortly)")
            await self._drop_connection()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    connection = await aiormq.connect(self._url.reveal())
                    try:
                        publisher = await connection.channel(publisher_confirms=True)
                        await self._declare(publisher)
                    except BaseException:
                        await connection.close()
                        raise
            except (*_BROKER_ERRORS, TimeoutError) as exc:
                self._failed_at = time.monotonic()
                raise BackendUnavailable(PORT, f"cannot connect: {type(exc).__name__}") from None
            self._connection, self._publisher = connection, publisher
            return connection

    async def _declare(self, channel: AbstractChannel) -> None:
        """Idempotent: the same arguments every time (other arguments would fail with PRECONDITION_FAILED)."""
        dead = dead_queue(self.queue_name)
        await channel.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.exchange_declare(self.queue_name, exchange_type="x-consistent-hash", durable=True)
        for shard in range(self.shards):
            name = shard_queue(self.queue_name, shard)
            await channel.queue_declare(name, durable=True, arguments={
                "x-queue-type": "quorum",
                "x-single-active-consumer": True,
                "x-delivery-limit": max(self.delivery_limit - 1, 0),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            })
            await channel.queue_bind(name, self.queue_name, routing_key="1")  # equal weight per shard

    async def _drop_connection(self) -> None:
        connection, self._connection, self._publisher, self._dead_reader = self._connection, None, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*_BROKER_ERRORS, TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await connection.close()

    # --- publishing -------------------------------------------------------------------------------------------

    async def publish(self, tenant_id: str, body: bytes, *, message_id: str) -> None:
        properties = spec.Basic.Properties(
            delivery_mode=PERSISTENT, message_id=message_id, headers={TENANT_HEADER: tenant_id})
        await self._confirmed(self.queue_name, tenant_id, body, properties)

    async def _publish_dead(self, delivery: AmqpDelivery, reason: str) -> None:
        headers = dict(delivery._message.header.properties.headers or {})
        headers[REASON_HEADER] = reason
        properties = spec.Basic.Properties(delivery_mode=PERSISTENT, message_id=delivery.message_id, headers=headers)
        await self._confirmed("", dead_queue(self.queue_name), delivery.body, properties)

    async def _confirmed(self, exchange: str, routing_key: str, body: bytes, properties: spec.Basic.Properties) -> None:
        await self._connected()
        channel = self._publisher
        if channel is None:
            raise BackendUnavailable(PORT, "no channel")
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                async with self._in_flight:
                    confirm = await channel.basic_publish(
                        body, exchange=exchange, routing_key=routing_key, properties=properties, wait=False)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels pending confirms when the channel closes under them: not our cancellation.
            raise BackendUnavailable(PORT, "connection lost before the confirm") from None
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            raise BackendUnavailable(PORT, f"publish not confirmed: {type(exc).__name__}") from None
        if not isinstance(confirm, spec.Basic.Ack):
            raise BackendUnavailable(PORT, f"broker refused the message ({type(confirm).__name__})")

    # --- consuming --------------------------------------------------------------------------------------------

    async def consume(self, handler: Callable[[Delivery], Awaitable[None]], *, shards: Sequence[int] | None = None,
                      prefetch: int = 256) -> AmqpConsumer:
        selected = tuple(range(self.shards)) if shards is None else tuple(shards)
        if any(not 0 <= s < self.shards for s in selected):
            raise ValueError(f"shards must be within 0..{self.shards - 1}, got {selected}")
        consumer = AmqpConsumer(self, handler, selected, prefetch)
        try:
            await consumer.start()
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            raise BackendUnavailable(PORT, f"cannot subscribe: {type(exc).__name__}") from None
        self._consumers.add(consumer)
        return consumer

    async def dead_letters(self, limit: int = 100) -> list[AmqpDelivery]:
        """basic.get from the dead queue; the deliveries stay unacked on one channel until settled."""
        connection = await self._connected()
        taken: list[AmqpDelivery] = []
        try:
            if self._dead_reader is None or self._dead_reader.is_closed:
                self._dead_reader = await connection.channel(publisher_confirms=False)
            for _ in range(limit):
                message = await self._dead_reader.basic_get(dead_queue(self.queue_name), no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                taken.append(AmqpDelivery(self, message, shard=-1))
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            raise BackendUnavailable(PORT, f"cannot read dead letters: {type(exc).__name__}") from None
        return taken

    async def ping(self) -> bool:
        try:
            await self._connected()
        except BackendUnavailable:
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.stop()
        self._consumers.clear()
        await self._drop_connection()

    async def delete_topology(self) -> None:
        """Remove the exchange and every queue (tests, and `wabridge` tear-down of a test deployment)."""
        connection = await self._connected()
        channel = await connection.channel(publisher_confirms=False)
        try:
            for shard in range(self.shards):
                # Quorum queues refuse if-unused / if-empty deletes.
                await channel.queue_delete(shard_queue(self.queue_name, shard), if_unused=False, if_empty=False)
            await channel.queue_delete(dead_queue(self.queue_name), if_unused=False, if_empty=False)
            await channel.exchange_delete(self.queue_name)
        finally:
            with contextlib.suppress(*_BROKER_ERRORS):
                await channel.close()


def _read_error(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dead_reason(headers: dict[str, Any]) -> str | None:
    """Ours (x-wabridge-reason) wins; else the broker's x-death reason, e.g. `delivery_limit`."""
    if REASON_HEADER in headers:
        return _text(headers[REASON_HEADER])
    deaths = headers.get("x-death")
    if deaths:
        return _text(deaths[0].get("reason", "")) or None
    return None
