"""The Queue port on RabbitMQ: quorum queues sharded by tenant through a consistent-hash exchange.

Topology (declared idempotently by `open()` and again after every reconnect):

    exchange  {queue_name}         x-consistent-hash, durable; routing key = tenant id (a tenant placed on a shard,
                                   TenantConfig.shard, is published straight to that shard's queue instead)
    queues    {queue_name}.0 … .N-1 quorum, single-active-consumer, x-delivery-limit, dead-letter → .dead
    queue     {queue_name}.dead    quorum, not single-active (basic.get is refused on SAC queues)

Attempts: quorum queues count every return (nack with requeue, or a consumer that died holding the message) in
`x-delivery-count`, so `attempt = x-delivery-count + 1`. `x-delivery-limit` counts *re*deliveries, hence it is set
to `delivery_limit - 1`: with the default 3 a message is handled at most 3 times, then dead-lettered by the broker
with x-death reason `delivery_limit`. `dead_letter(reason)` publishes a copy to the dead queue with the
`x-wabridge-reason` header (confirmed) and then acks the original.

Publishing is batched on top of aiormq. A caller puts its message in an outbox and awaits its own confirm; one
writer task takes everything the outbox holds (up to PUBLISH_BATCH), numbers the messages with the channel's
delivery tags, registers each caller's confirm future with aiormq, and hands the frames of the whole batch to the
connection as ONE write. Many publishes stay in flight and the broker confirms them in groups (`multiple=True`).
Per message this skips aiormq's channel lock, its timeout and drain futures, its 10-frame write queue (where 64
concurrent `basic_publish` calls queued one frame per loop turn) and one socket write; the frames of our one
message shape are encoded directly (`publish_frames`, byte-for-byte pamqp's output, tested). The writer is the only
publisher on its channel, so delivery tags and the order frames reach the socket agree. A caller never hears
success for a message the broker did not confirm: a nack, a timeout or a lost connection raise
`BackendUnavailable`.

Settlements (ack, nack-requeue) are grouped the same way, per consume channel (`Settlements`): a caller appends
its 21-byte frame to the channel's pending list and awaits the batch's drain future; one flush task per channel
(started by the first pending frame, gone when none is left) writes everything pending as ONE socket write. Frames
keep the callers' order, each acks exactly its own tag (never `multiple=True`: handlers settle out of order, and a
multiple ack of tag N would also ack unsettled tags below N). A settlement on a channel that died is a no-op: the
broker redelivers what the channel held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, ChannelFrame, ConsumerCallback, DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.common import FieldTable
from pamqp.header import ContentHeader

from wabridge.adapters.queue import amqp_wire
from wabridge.adapters.queue.placement import placed_shard
from wabridge.engine.backoff import Backoff
from wabridge.engine.settings import Settings
from wabridge.engine.tasks import first_of
from wabridge.ports import BackendUnavailable, QueueMessage

log = logging.getLogger(__name__)

PORT = "queue"
TENANT_HEADER = "tenant_id"
REASON_HEADER = "x-wabridge-reason"
SHARD_HEADER = "x-wabridge-shard"  # on a dead letter we wrote: the shard it came from, where a retry puts it back
PERSISTENT = 2

CONNECT_TIMEOUT = 3.0  # s: a broker that does not answer by then is down for the ingress (503)
CONFIRM_TIMEOUT = 10.0  # s: an unconfirmed publish after this is reported failed (it may still land: at-least-once)
RECONNECT_PAUSE = 0.5  # s: after a failed connect, publishes fail fast this long instead of each dialling again
MAX_IN_FLIGHT = 4096  # publishes awaiting their confirm; more callers wait (bounded, then time out)
PUBLISH_BATCH = 512  # messages per socket write at most (~300 KB of 560-byte webhooks)
CONSUMER_BACKOFF = Backoff(0.2, 5.0, jitter=None)  # s between consumer re-subscriptions while the broker is away

_BROKER_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError, RuntimeError)


def shard_queue(queue_name: str, shard: int) -> str:
    return f"{queue_name}.{shard}"


def dead_queue(queue_name: str) -> str:
    return f"{queue_name}.dead"


# --- frames of one published message ------------------------------------------------------------------------------

_FRAME_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_FRAME_END = b"\xce"
_PUBLISH_METHOD = struct.pack(">HHH", 60, 40, 0)  # Basic.Publish, reserved short
# content header: class 60, weight 0, body size; property flags = headers | delivery_mode | message_id
_HEADER_HEAD = struct.Struct(">HHQH")
_HEADER_FLAGS = 0x2000 | 0x1000 | 0x0080
_TENANT_FIELD = bytes([len(TENANT_HEADER)]) + TENANT_HEADER.encode() + b"S"


def publish_frames(
    channel: int, exchange: str, routing_key: str, body: bytes, *, message_id: str, tenant_id: str, max_content: int
) -> bytes:
    """Basic.Publish + content header + body frames of a persistent message with our two properties (message_id,
    headers {tenant_id}), encoded directly: pamqp's generic marshal of the same frames cost more than the rest of
    the publish. Byte-for-byte pamqp's output (tests/contract/test_queue.py); short strings over 255 bytes are
    refused (ValueError) as pamqp would."""
    ex, rk, mid, tid = exchange.encode(), routing_key.encode(), message_id.encode(), tenant_id.encode()
    if max(len(ex), len(rk), len(mid)) > 255:
        raise ValueError("AMQP short string over 255 bytes")
    method = b"".join((_PUBLISH_METHOD, bytes([len(ex)]), ex, bytes([len(rk)]), rk, b"\x00"))
    table = b"".join((_TENANT_FIELD, struct.pack(">I", len(tid)), tid))
    header = b"".join(
        (
            _HEADER_HEAD.pack(60, 0, len(body), _HEADER_FLAGS),
            struct.pack(">I", len(table)),
            table,
            bytes([PERSISTENT, len(mid)]),
            mid,
        )
    )
    parts = [
        _FRAME_HEAD.pack(1, channel, len(method)),
        method,
        _FRAME_END,
        _FRAME_HEAD.pack(2, channel, len(header)),
        header,
        _FRAME_END,
    ]
    for start in range(0, len(body), max_content):
        chunk = body[start : start + max_content]
        parts += (_FRAME_HEAD.pack(3, channel, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)


def generic_publish_frames(
    channel: int, exchange: str, routing_key: str, body: bytes, properties: spec.Basic.Properties, *, max_content: int
) -> bytes:
    """The same through pamqp, for any properties (dead-lettering copies the broker's x-death headers)."""
    frames: list = [
        spec.Basic.Publish(exchange=exchange, routing_key=routing_key),
        ContentHeader(0, len(body), properties),
    ]
    frames += [ContentBody(body[i : i + max_content]) for i in range(0, len(body), max_content)]
    return ChannelFrame.marshall(channel, frames).payload


_SETTLE_FRAME = struct.Struct(">BHIHHQBB")  # frame head, class, method, delivery tag, bits, frame end
_SETTLE_SIZE = _SETTLE_FRAME.size - 8  # payload size: all but the 7-byte frame head and the frame end
_ACK, _NACK = 80, 120  # Basic.Ack, Basic.Nack method ids
_REQUEUE = 0x02  # Basic.Nack bits: multiple (0x01, never set here), requeue


def settle_frame(channel: int, delivery_tag: int, *, requeue: bool | None) -> bytes:
    """Basic.Ack (requeue None) or Basic.Nack of one tag, never `multiple`; byte-for-byte pamqp's output (tested)."""
    if requeue is None:
        return _SETTLE_FRAME.pack(1, channel, _SETTLE_SIZE, 60, _ACK, delivery_tag, 0, 0xCE)
    return _SETTLE_FRAME.pack(1, channel, _SETTLE_SIZE, 60, _NACK, delivery_tag, _REQUEUE if requeue else 0, 0xCE)


class Settlements:
    """The settlement writer of one consume channel. Pending frames are bounded by what the channel holds unacked
    (its prefetch, or the dead letters taken), since each queue message settles once."""

    __slots__ = ("_drained", "_flushing", "_frames", "channel")

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._frames: list[bytes] = []
        self._drained: asyncio.Future[Any] | None = None
        self._flushing: asyncio.Task[None] | None = None

    def settle(self, frame: bytes) -> asyncio.Future[Any]:
        """Queue one frame; the future resolves once its batch is written (aiormq rejects it if the channel
        closes first). The flush starts one loop turn later, so the settlements of that turn share one write."""
        if self._drained is None:
            self._drained = self.channel.create_future()
        self._frames.append(frame)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush(), name="amqp-settle")
        return self._drained

    async def flush(self) -> None:
        """Wait until everything settled so far is written (or failed): before the channel is closed on purpose."""
        while self._flushing is not None:
            await asyncio.gather(asyncio.shield(self._flushing), return_exceptions=True)

    async def _flush(self) -> None:
        # The only writer of settlements on this channel, one batch at a time: the order of the frames is kept.
        try:
            while self._frames:
                frames, drained = self._frames, self._drained
                self._frames, self._drained = [], None
                assert drained is not None
                if drained.done():
                    continue  # aiormq rejected it: the channel closed, the broker takes the messages back
                try:
                    await amqp_wire.write(self.channel, b"".join(frames), drained)
                except BaseException as exc:
                    if not drained.done():
                        drained.set_exception(aiormq.exceptions.ChannelInvalidStateError("settlement not written"))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    log.warning("settlement batch not written: %s", type(exc).__name__)
        finally:
            self._flushing = None


class AmqpQueueMessage:
    """One message from a shard (or the dead queue). Settlement on a channel that died is a no-op: the broker
    has already put the message back and will deliver it again (at-least-once)."""

    __slots__ = (
        "_message",
        "_queue",
        "_settled",
        "_settlements",
        "attempt",
        "body",
        "message_id",
        "reason",
        "shard",
        "tenant_id",
    )

    def __init__(self, queue: AmqpQueue, message: DeliveredMessage, shard: int, settlements: Settlements) -> None:
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
        self._settlements = settlements
        self._settled = False

    def __repr__(self) -> str:
        return f"AmqpQueueMessage(tenant_id={self.tenant_id!r}, message_id={self.message_id!r}, shard={self.shard})"

    async def ack(self) -> None:
        await self._settle(None)

    async def retry(self) -> None:
        if self.shard < 0:  # from the dead queue: put it back in its shard, then drop the dead copy
            shard = _origin_shard(self._message.header.properties.headers or {}, self._queue.queue_name)
            await self._queue.publish(self.tenant_id, self.body, message_id=self.message_id, shard=shard)
            await self.ack()
            return
        await self._settle(True)

    async def dead_letter(self, reason: str) -> None:
        if self.shard >= 0:
            await self._queue._publish_dead(self, reason)
        await self.ack()

    async def _settle(self, requeue: bool | None) -> None:
        if self._settled:
            return
        self._settled = True
        settlements = self._settlements
        channel = settlements.channel
        if channel.is_closed:
            return
        # The frame is queued at once, so a cancelled handler cannot leave a half-sent settlement behind; only the
        # wait for the write is given up (shielded: the batch's future is shared with other callers).
        tag = self._message.delivery_tag
        if tag is None:  # only a basic.return lacks a tag, and the bridge never consumes those
            return
        drained = settlements.settle(settle_frame(channel.number, tag, requeue=requeue))
        try:
            await asyncio.shield(drained)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancelled the batch's future because the channel closed: the broker redelivers.
        except _BROKER_ERRORS:
            pass  # the channel died under the write: the broker redelivers


class AmqpConsumer:
    """Subscriptions to some shards on one channel; re-subscribes after the broker comes back."""

    def __init__(
        self, queue: AmqpQueue, handler: Callable[[QueueMessage], Awaitable[None]], shards: Sequence[int], prefetch: int
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._shards = tuple(shards)
        self._prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self._settlements: Settlements | None = None
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
        settlements = Settlements(channel)
        for shard in self._shards:
            await channel.basic_consume(
                shard_queue(self._queue.queue_name, shard), self._on_message(shard, settlements)
            )
        self._channel, self._settlements = channel, settlements

    def _on_message(self, shard: int, settlements: Settlements) -> ConsumerCallback:
        # aiormq starts one task per queue message in arrival order, so handler invocations keep the shard's order.
        async def deliver(message: DeliveredMessage) -> None:
            queue_message = AmqpQueueMessage(self._queue, message, shard, settlements)
            try:
                await self._handler(queue_message)
            except Exception:
                log.exception("queue handler failed on %r; handing it back", queue_message)
                await queue_message.retry()

        return deliver

    async def _keep_subscribed(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            channel = self._channel
            if channel is not None:
                closed = channel.closing
                await first_of(self._stopping.wait(), closed)
                if closed.done() and not closed.cancelled():
                    closed.exception()  # retrieved: the cause is the broker going away, already handled here
                closed.cancel()
                if self._stopping.is_set():
                    return
                self._channel = None
            pause = CONSUMER_BACKOFF.delay(failures + 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            if self._stopping.is_set():
                return
            try:
                await self._subscribe()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("queue consumer re-subscription failed: %s", type(exc).__name__)  # no URL in logs

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        channel, self._channel = self._channel, None
        settlements, self._settlements = self._settlements, None
        if settlements is not None:
            # Acks already given are written, not turned into redeliveries; bounded, for a connection stuck on write.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await settlements.flush()
        if channel is not None and not channel.is_closed:
            # Closing the channel cancels the handler tasks aiormq runs for it and returns every unacked message.
            with contextlib.suppress(*_BROKER_ERRORS):
                await channel.close()


class AmqpQueue:
    """`name` makes a second, independent queue on the same broker (the outbound one: `{queue_name}.outbound`, its
    exchange, shards `.outbound.0..N-1` and `.outbound.dead`), with its own connection; None is the main queue."""

    def __init__(self, settings: Settings, *, name: str | None = None) -> None:
        if settings.amqp_url is None:
            raise ValueError("AmqpQueue needs settings.amqp_url")
        self._url = settings.amqp_url  # a Secret: the URL may hold a password
        self.queue_name = settings.queue_name if name is None else f"{settings.queue_name}.{name}"
        self.shards = settings.shards
        self.delivery_limit = settings.delivery_limit
        self._connection: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._dead_reader: Settlements | None = None  # the basic.get channel of dead letters, and its settlements
        self._connect_lock = asyncio.Lock()
        self._failed_at = 0.0
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        # (channel, exchange, routing key, body, message id, tenant id or None, properties or None, confirm future)
        self._outbox: list[tuple[Any, ...]] = []
        self._outbox_ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._consumers: set[AmqpConsumer] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"AmqpQueue(queue_name={self.queue_name!r}, shards={self.shards})"

    # --- connection -------------------------------------------------------------------------------------------

    async def open(self) -> None:
        amqp_wire.check()  # the aiormq internals the batching uses are the ones proven (refuses with one line)
        self._closed = False
        await self._connected()

    async def _connected(self) -> AbstractConnection:
        connection = self._connection
        if (
            connection is not None
            and not connection.is_closed
            and self._publisher is not None
            and not self._publisher.is_closed
        ):
            return connection
        async with self._connect_lock:
            if (
                self._connection is not None
                and not self._connection.is_closed
                and self._publisher is not None
                and not self._publisher.is_closed
            ):
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
            except Exception as exc:
                # Not only AMQPError/OSError: a peer that accepts and at once closes the socket (a broker still
                # booting, a proxy with no backend) ends aiormq's handshake with a bare StopAsyncIteration.
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
            await channel.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-single-active-consumer": True,
                    "x-delivery-limit": max(self.delivery_limit - 1, 0),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": dead,
                },
            )
            await channel.queue_bind(name, self.queue_name, routing_key="1")  # equal weight per shard

    async def _drop_connection(self) -> None:
        connection, self._connection, self._publisher, self._dead_reader = self._connection, None, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*_BROKER_ERRORS, TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await connection.close()

    # --- publishing -------------------------------------------------------------------------------------------

    async def publish(self, tenant_id: str, body: bytes, *, message_id: str, shard: int | None = None) -> None:
        placed = placed_shard(self.queue_name, shard, self.shards)
        if placed is None:
            await self._confirmed(self.queue_name, tenant_id, body, message_id, tenant_id, None)
        else:  # straight into the shard's queue through the default exchange
            await self._confirmed("", shard_queue(self.queue_name, placed), body, message_id, tenant_id, None)

    async def _publish_dead(self, queue_message: AmqpQueueMessage, reason: str) -> None:
        headers = dict(queue_message._message.header.properties.headers or {})
        headers[REASON_HEADER] = reason
        headers[SHARD_HEADER] = queue_message.shard
        properties = spec.Basic.Properties(
            delivery_mode=PERSISTENT, message_id=queue_message.message_id, headers=headers
        )
        await self._confirmed(
            "", dead_queue(self.queue_name), queue_message.body, queue_message.message_id, None, properties
        )

    async def bury(
        self, tenant_id: str, body: bytes, *, message_id: str, reason: str, shard: int | None = None
    ) -> None:
        headers: FieldTable = {TENANT_HEADER: tenant_id, REASON_HEADER: reason}
        if shard is not None:
            headers[SHARD_HEADER] = shard
        properties = spec.Basic.Properties(delivery_mode=PERSISTENT, message_id=message_id, headers=headers)
        await self._confirmed("", dead_queue(self.queue_name), body, message_id, None, properties)

    async def _confirmed(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        tenant_id: str | None,
        properties: spec.Basic.Properties | None,
    ) -> None:
        await self._connected()
        channel = self._publisher
        if channel is None:
            raise BackendUnavailable(PORT, "no channel")
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                async with self._in_flight:
                    # aiormq's future: rejected by aiormq itself when the channel closes under it
                    confirm = channel.create_future()
                    self._outbox.append(
                        (channel, exchange, routing_key, body, message_id, tenant_id, properties, confirm)
                    )
                    if self._writer is None or self._writer.done():
                        self._writer = asyncio.get_running_loop().create_task(self._write_outbox(), name="amqp-publish")
                    self._outbox_ready.set()
                    frame = await confirm
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels pending confirms when the channel closes under them: not our cancellation.
            raise BackendUnavailable(PORT, "connection lost before the confirm") from None
        except ValueError:
            raise  # this caller's bad input (set by the writer for it alone)
        except Exception as exc:
            # aiormq fails pending confirms with whatever the connection died of — seen: a bare `Exception` when the
            # connection was cut mid-publish. Any of them means "not confirmed", never success.
            raise BackendUnavailable(PORT, f"publish not confirmed: {type(exc).__name__}") from None
        if not isinstance(frame, spec.Basic.Ack):
            raise BackendUnavailable(PORT, f"broker refused the message ({type(frame).__name__})")

    async def _write_outbox(self) -> None:
        """The one publisher of the channel: each wake-up writes what the outbox holds, PUBLISH_BATCH at a time.
        Wakes up one loop turn after the first caller, so the requests of that turn share one write."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = self._outbox[:PUBLISH_BATCH]
                del self._outbox[:PUBLISH_BATCH]
                await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[Any, ...]]) -> None:
        channel = batch[0][0]
        parts: list[bytes] = []
        numbered: list[asyncio.Future[Any]] = []
        for item in batch:
            item_channel, exchange, routing_key, body, message_id, tenant_id, properties, confirm = item
            if confirm.done():
                continue  # its caller gave up (timeout, cancelled), or aiormq rejected it when its channel closed
            if item_channel is not channel or channel.is_closed:
                confirm.set_exception(aiormq.exceptions.ChannelInvalidStateError("publisher channel replaced"))
                continue
            try:
                if properties is None:
                    frames = publish_frames(
                        channel.number,
                        exchange,
                        routing_key,
                        body,
                        message_id=message_id,
                        tenant_id=tenant_id,
                        max_content=channel.max_content_size,
                    )
                else:
                    frames = generic_publish_frames(
                        channel.number, exchange, routing_key, body, properties, max_content=channel.max_content_size
                    )
            except ValueError as exc:  # a caller's bad input (e.g. a routing key over 255 bytes): that caller only
                confirm.set_exception(exc)
                continue
            amqp_wire.next_tag(channel, confirm)
            parts.append(frames)
            numbered.append(confirm)
        if not parts:
            return
        try:
            await amqp_wire.write(channel, b"".join(parts))
        except BaseException as exc:
            # Tags were taken but the frames never left: this channel's numbering is broken, so it must go.
            for confirm in numbered:
                if not confirm.done():
                    confirm.set_exception(aiormq.exceptions.ChannelInvalidStateError("publish not written"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("publish batch not written: %s", type(exc).__name__)
            with contextlib.suppress(*_BROKER_ERRORS, TimeoutError):
                await channel.close()

    # --- consuming --------------------------------------------------------------------------------------------

    async def consume(
        self,
        handler: Callable[[QueueMessage], Awaitable[None]],
        *,
        shards: Sequence[int] | None = None,
        prefetch: int = 256,
    ) -> AmqpConsumer:
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

    async def dead_letters(self, limit: int = 100) -> list[AmqpQueueMessage]:
        """basic.get from the dead queue; the queue messages stay unacked on one channel until settled."""
        connection = await self._connected()
        taken: list[AmqpQueueMessage] = []
        try:
            if self._dead_reader is None or self._dead_reader.channel.is_closed:
                self._dead_reader = Settlements(await connection.channel(publisher_confirms=False))
            reader = self._dead_reader
            for _ in range(limit):
                message = await reader.channel.basic_get(dead_queue(self.queue_name), no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                taken.append(AmqpQueueMessage(self, message, shard=-1, settlements=reader))
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
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        for item in self._outbox:  # never written: their callers hear it now rather than at their timeout
            if not item[-1].done():
                item[-1].set_exception(aiormq.exceptions.ChannelInvalidStateError("queue closed"))
        self._outbox.clear()
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


def _origin_shard(headers: dict[str, Any], queue_name: str) -> int | None:
    """The shard a dead letter came from: ours (SHARD_HEADER), else the queue the broker dead-lettered it from
    (x-death); None when neither tells (then the hash of the tenant id routes it)."""
    shard = headers.get(SHARD_HEADER)
    if isinstance(shard, int) and not isinstance(shard, bool):
        return shard
    for death in headers.get("x-death") or ():
        origin = _text(death.get("queue", "")) if isinstance(death, dict) else ""
        prefix, _, number = origin.rpartition(".")
        if prefix == queue_name and number.isdigit():
            return int(number)
    return None
