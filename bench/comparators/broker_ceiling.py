"""The durable ceiling: RabbitMQ's own confirmed-publish rate, persistent messages to a quorum queue, many in flight.

`python -m bench.comparators.broker_ceiling AMQP_URL QUEUE SECONDS` prints one JSON line with both clients, measured
back to back: aiormq with 256 publishes in flight (`basic_publish` then each confirm awaited by its own task), and
aio-pika with 64 in flight on one channel (the alternative AMQP client, to say which wins). A 499-byte body, the size
of a text webhook. The queue is declared here and deleted by the bench.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

BODY = b'{"object":"whatsapp_business_account","entry":[]}'.ljust(499, b" ")


async def _aiormq(url: str, queue: str, seconds: float, in_flight: int = 256) -> float:
    import aiormq
    from pamqp import commands as spec

    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    props = spec.Basic.Properties(delivery_mode=2)
    done = 0
    deadline = time.monotonic() + seconds

    async def publisher() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await channel.basic_publish(BODY, routing_key=queue, properties=props)  # returns on the confirm
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(publisher() for _ in range(in_flight)))
    rate = done / (time.monotonic() - start)
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


async def _main(url: str, queue: str, seconds: float) -> dict[str, float]:
    return {"aiormq_256_in_flight": await _aiormq(url, queue, seconds),
            "aio_pika_64_in_flight": await _aio_pika(url, queue, seconds)}  # fmt: skip


def main(argv: list[str]) -> int:
    import uvloop

    url, queue, seconds = argv[0], argv[1], float(argv[2])
    print(json.dumps(uvloop.run(_main(url, queue, seconds))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
