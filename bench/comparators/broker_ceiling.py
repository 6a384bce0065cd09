"""The durable ceiling: RabbitMQ's own confirmed-publish rate, persistent messages to a quorum queue, many in flight.

`python -m bench.comparators.broker_ceiling AMQP_URL QUEUE SECONDS [SHARDS]` prints one JSON line with three figures, measured
back to back: aiormq with 256 publishes in flight (`basic_publish` then each confirm awaited by its own task), and
aio-pika with 64 in flight on one channel (the alternative AMQP client, to say which wins), both to one quorum queue;
then aiormq again through the bridge's own topology: an x-consistent-hash exchange over SHARDS (4) quorum queues, routed by
10 tenant ids. The first is the ceiling the targets are judged against; the last tells what sharding itself costs the
broker (each shard is a Raft group of its own). A 499-byte body, the size of a text webhook. Everything declared
here is deleted here, the single queue by the bench.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

BODY = b'{"object":"whatsapp_business_account","entry":[]}'.ljust(499, b" ")


async def _aiormq(url: str, queue: str, seconds: float, in_flight: int = 256, *, shards: int = 0) -> float:
    """Confirmed publishes/s to `queue`, or with `shards` through a consistent-hash exchange over that many queues."""
    import aiormq
    from pamqp import commands as spec

    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    shard_queues = [f"{queue}.{n}" for n in range(shards)]
    if shards:
        await channel.exchange_declare(queue, exchange_type="x-consistent-hash", durable=True)
        for name in shard_queues:
            await channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
            await channel.queue_bind(name, queue, routing_key="1")
        exchange, keys = queue, [f"tenant-{n}" for n in range(10)]
    else:
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        exchange, keys = "", [queue]
    props = spec.Basic.Properties(delivery_mode=2)
    done = 0
    deadline = time.monotonic() + seconds

    async def publisher(n: int) -> None:
        nonlocal done
        key = keys[n % len(keys)]
        while time.monotonic() < deadline:
            await channel.basic_publish(BODY, exchange=exchange, routing_key=key, properties=props)  # on the confirm
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(publisher(n) for n in range(in_flight)))
    rate = done / (time.monotonic() - start)
    if shards:
        for name in shard_queues:
            await channel.queue_delete(name)
        await channel.exchange_delete(queue)
    await connection.close()
    return rate


async def _aio_pika(url: str, queue: str, seconds: float, in_flight: int = 64) -> float:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    done = 0
    deadline = time.monotonic() + seconds

    async def publisher() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await channel.default_exchange.publish(
                aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
            )
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(publisher() for _ in range(in_flight)))
    rate = done / (time.monotonic() - start)
    await connection.close()
    return rate


async def _main(url: str, queue: str, seconds: float, shards: int) -> dict[str, float]:
    return {"aiormq_256_in_flight": await _aiormq(url, queue, seconds),
            "aio_pika_64_in_flight": await _aio_pika(url, queue, seconds),
            "aiormq_256_in_flight_sharded": await _aiormq(url, f"{queue}_sharded", seconds, shards=shards)}  # fmt: skip


def main(argv: list[str]) -> int:
    import uvloop

    url, queue, seconds = argv[0], argv[1], float(argv[2])
    shards = int(argv[3]) if len(argv) > 3 else 4
    print(json.dumps(uvloop.run(_main(url, queue, seconds, shards))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
