"""The Queue port: one contract for both adapters (SQLite embedded; RabbitMQ on the shared broker), then what only
the broker side has to show (a cut connection: fail fast, lose nothing confirmed, reconnect) and what only the file
side has to show (several writers on one file, a shard lease that a dead process gives up)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.contract.queue_harness import Collector, QueueKit, hold, take_dead_letters
from wabridge.ports import BackendUnavailable, QueueMessage, Queue
from wabridge.adapters.queue.sqlite import LEASE_TTL as LEASE_TTL_SECONDS
from wabridge.adapters.queue.sqlite import SqliteQueue, shard_of
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio

TENANTS = [f"tenant-{n}" for n in range(12)]


def amqp_settings(tmp_path: Path) -> Settings:
    return Settings(
        amqp_url=Secret(os.environ["WABRIDGE_AMQP_URL"]),
        queue_name=f"t{uuid.uuid4().hex[:10]}_INBOUND_WHATSAPP_MESSAGES",
        data_dir=tmp_path / "data",
    )


@pytest.fixture(params=["sqlite", pytest.param("amqp", marks=pytest.mark.servers)])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueKit]:
    settings = amqp_settings(tmp_path) if request.param == "amqp" else Settings(data_dir=tmp_path / "data")
    kit = QueueKit(request.param, settings)
    try:
        yield kit
    finally:
        await kit.clean_up()


@pytest.fixture
async def amqp_kit(tmp_path: Path) -> AsyncIterator[QueueKit]:
    kit = QueueKit("amqp", amqp_settings(tmp_path))
    try:
        yield kit
    finally:
        await kit.clean_up()


async def publish_all(queue: Queue, messages: list[tuple[str, str]]) -> None:
    """(tenant_id, message_id) pairs, all in flight at once; the body names the message."""
    await asyncio.gather(*(queue.publish(t, f"body of {m}".encode(), message_id=m) for t, m in messages))


# --- the contract ---------------------------------------------------------------------------------------------------


async def test_a_published_message_is_delivered_with_its_tenant_body_and_first_attempt(kit: QueueKit) -> None:
    queue = await kit.open()
    assert isinstance(queue, Queue)
    await queue.publish("tenant-a", b'{"hello": 1}', message_id="wamid.1")
    got = Collector()
    consumer = await queue.consume(got)
    (queue_message,) = await got.wait_for(1)
    assert (queue_message.tenant_id, queue_message.message_id, queue_message.body) == ("tenant-a", "wamid.1", b'{"hello": 1}')
    assert queue_message.attempt == 1
    assert 0 <= queue_message.shard < queue.shards
    await anyio.sleep(0.3)
    assert len(got.queue_messages) == 1, "an acked message must not come back"
    await consumer.stop()


async def test_an_acked_message_is_not_delivered_again_to_the_next_consumer(kit: QueueKit) -> None:
    queue = await kit.open()
    await queue.publish("tenant-a", b"x", message_id="m1")
    first = Collector()
    consumer = await queue.consume(first)
    await first.wait_for(1)
    await anyio.sleep(0.2)  # let the ack land
    await consumer.stop()
    await queue.publish("tenant-a", b"y", message_id="m2")
    second = Collector()
    consumer = await queue.consume(second)
    await second.wait_for(1)
    await anyio.sleep(0.3)
    assert second.message_ids == ["m2"]
    await consumer.stop()


async def test_each_tenants_messages_arrive_in_publish_order(kit: QueueKit) -> None:
    queue = await kit.open()
    # Publishes of one tenant awaited in sequence (its order is defined); tenants interleave concurrently.
    async def tenant_stream(tenant: str) -> None:
        for n in range(40):
            await queue.publish(tenant, b"x", message_id=f"{tenant}/{n}")

    await asyncio.gather(*(tenant_stream(t) for t in TENANTS))
    got = Collector()
    consumer = await queue.consume(got, prefetch=64)
    await got.wait_for(40 * len(TENANTS))
    for tenant in TENANTS:
        seen = [int(d.message_id.split("/")[1]) for d in got.queue_messages if d.tenant_id == tenant]
        assert seen == list(range(40)), tenant
    await consumer.stop()


async def test_a_tenant_always_maps_to_the_same_shard_and_tenants_spread_over_shards(kit: QueueKit) -> None:
    queue = await kit.open()
    tenants = [f"tenant-{n}" for n in range(60)]
    await publish_all(queue, [(t, f"{t}/{r}") for r in range(3) for t in tenants])
    got = Collector()
    consumer = await queue.consume(got)
    await got.wait_for(180)
    shards_of = {t: {d.shard for d in got.queue_messages if d.tenant_id == t} for t in tenants}
    assert all(len(s) == 1 for s in shards_of.values()), "a tenant's messages were split over shards"
    used = Counter(next(iter(s)) for s in shards_of.values())
    assert len(used) == queue.shards, f"60 tenants should reach all {queue.shards} shards: {used}"
    await consumer.stop()
    # Again after a restart: the mapping is stable, not a per-process accident.
    await queue.close()
    queue = await kit.open()
    await publish_all(queue, [(t, f"{t}/again") for t in tenants])
    again = Collector()
    consumer = await queue.consume(again)
    await again.wait_for(60)
    assert {d.tenant_id: d.shard for d in again.queue_messages} == {t: next(iter(s)) for t, s in shards_of.items()}
    await consumer.stop()


async def test_consuming_selected_shards_delivers_only_those(kit: QueueKit) -> None:
    queue = await kit.open()
    await publish_all(queue, [(t, f"{t}/0") for t in TENANTS])
    everything = Collector()
    consumer = await queue.consume(everything)
    await everything.wait_for(len(TENANTS))
    await consumer.stop()
    shard = everything.queue_messages[0].shard
    expected = sorted(d.message_id for d in everything.queue_messages if d.shard == shard)
    await publish_all(queue, [(t, f"{t}/1") for t in TENANTS])
    only = Collector()
    consumer = await queue.consume(only, shards=[shard])
    await only.wait_for(len(expected))
    await anyio.sleep(0.3)
    assert sorted(only.message_ids) == [m.replace("/0", "/1") for m in expected]
    await consumer.stop()


async def test_an_unsettled_message_comes_back_with_the_next_attempt_after_its_consumer_stops(kit: QueueKit) -> None:
    queue = await kit.open()
    await queue.publish("tenant-a", b"x", message_id="m1")
    crashed = Collector(settle=hold)
    consumer = await queue.consume(crashed)
    await crashed.wait_for(1)
    await consumer.stop()
    again = Collector()
    consumer = await queue.consume(again)
    (queue_message,) = await again.wait_for(1)
    assert (queue_message.message_id, queue_message.attempt) == ("m1", 2)
    await consumer.stop()


async def test_messages_held_by_a_closed_process_are_redelivered_to_the_next_one(kit: QueueKit) -> None:
    first = await kit.open()
    await publish_all(first, [("tenant-a", "m1"), ("tenant-b", "m2")])
    crashed = Collector(settle=hold)
    await first.consume(crashed)
    await crashed.wait_for(2)
    await first.close()  # the process goes away holding both
    second = await kit.open()
    again = Collector()
    consumer = await second.consume(again)
    await again.wait_for(2)
    assert sorted((d.message_id, d.attempt) for d in again.queue_messages) == [("m1", 2), ("m2", 2)]
    await consumer.stop()


async def test_a_message_retried_past_the_delivery_limit_becomes_a_dead_letter_with_the_reason(kit: QueueKit) -> None:
    queue = await kit.open()
    await queue.publish("tenant-a", b"poison", message_id="m1")

    async def always_retry(queue_message: QueueMessage) -> None:
        await queue_message.retry()

    got = Collector(settle=always_retry)
    consumer = await queue.consume(got)
    await got.wait_for(queue_limit := kit.settings.delivery_limit)
    (dead,) = await take_dead_letters(queue, 1)
    await anyio.sleep(0.3)
    assert [d.attempt for d in got.queue_messages] == list(range(1, queue_limit + 1)), "exactly delivery_limit attempts"
    assert (dead.message_id, dead.tenant_id, dead.body) == ("m1", "tenant-a", b"poison")
    assert dead.reason == "delivery_limit"  # type: ignore[attr-defined]
    await dead.ack()
    assert await queue.dead_letters() == []
    await consumer.stop()


async def test_dead_letter_keeps_the_reason_and_a_dead_letter_retried_is_delivered_again(kit: QueueKit) -> None:
    queue = await kit.open()
    await queue.publish("tenant-a", b"bad", message_id="m1")

    async def reject(queue_message: QueueMessage) -> None:
        await queue_message.dead_letter("genesys 400: missing text")

    got = Collector(settle=reject)
    consumer = await queue.consume(got)
    await got.wait_for(1)
    (dead,) = await take_dead_letters(queue, 1)
    assert dead.reason == "genesys 400: missing text"  # type: ignore[attr-defined]
    assert (dead.message_id, dead.tenant_id, dead.body) == ("m1", "tenant-a", b"bad")
    await consumer.stop()
    await dead.retry()  # replay: back into its tenant's shard
    replayed = Collector()
    consumer = await queue.consume(replayed)
    (queue_message,) = await replayed.wait_for(1)
    assert (queue_message.message_id, queue_message.body, queue_message.attempt) == ("m1", b"bad", 1)
    assert await queue.dead_letters() == []
    await consumer.stop()


async def test_a_buried_message_is_a_dead_letter_with_its_reason_and_replays_into_its_shard(kit: QueueKit) -> None:
    queue = await kit.open()
    await queue.bury("tenant-a", b"parked \x00 body", message_id="m9", reason="attempt 3 of 3: crashed")
    (dead,) = await take_dead_letters(queue, 1)
    assert (dead.message_id, dead.tenant_id, dead.body) == ("m9", "tenant-a", b"parked \x00 body")
    assert dead.reason == "attempt 3 of 3: crashed"  # type: ignore[attr-defined]
    await dead.retry()  # replay
    replayed = Collector()
    consumer = await queue.consume(replayed)
    (queue_message,) = await replayed.wait_for(1)
    assert (queue_message.tenant_id, queue_message.message_id, queue_message.body) == ("tenant-a", "m9", b"parked \x00 body")
    assert await queue.dead_letters() == []
    await consumer.stop()


async def test_a_named_queue_is_a_second_queue_its_messages_and_dead_letters_apart_from_the_main_one(
    kit: QueueKit,
) -> None:
    """Issue 17: the outbound queue is the same adapter under another name. Nothing published to one reaches the
    other's consumers or dead letters; its consumer holds its own shards (single active per queue, not per broker);
    a tenant goes to the same shard number in both."""
    main, outbound = await kit.open(), await kit.open(name="outbound")
    assert outbound.shards == main.shards
    await main.publish("tenant-a", b"customer", message_id="in-1")
    await outbound.publish("tenant-a", b"agent", message_id="out-1")
    await outbound.bury("tenant-b", b"agent, failed", message_id="out-2", reason="meta 400")
    inbound_got, outbound_got = Collector(), Collector()
    consumers = [await main.consume(inbound_got), await outbound.consume(outbound_got)]
    (customer,) = await inbound_got.wait_for(1)
    (agent,) = await outbound_got.wait_for(1)
    await anyio.sleep(0.3)
    assert [(d.message_id, d.body) for d in inbound_got.queue_messages] == [("in-1", b"customer")]
    assert [(d.message_id, d.body) for d in outbound_got.queue_messages] == [("out-1", b"agent")]
    assert customer.shard == agent.shard
    assert await main.dead_letters() == []
    (dead,) = await take_dead_letters(outbound, 1)
    assert (dead.message_id, dead.reason) == ("out-2", "meta 400")  # type: ignore[attr-defined]
    await dead.ack()
    for consumer in consumers:
        await consumer.stop()
    if isinstance(outbound, SqliteQueue):
        assert outbound.path != main.path and outbound.path.parent == main.path.parent


async def test_declaring_the_topology_twice_and_from_two_processes_is_fine(kit: QueueKit) -> None:
    first = await kit.open()
    await first.open()
    second = await kit.open()
    await second.publish("tenant-a", b"x", message_id="m1")
    got = Collector()
    consumer = await first.consume(got)
    assert [d.message_id for d in await got.wait_for(1)] == ["m1"]
    await consumer.stop()


async def test_only_one_consumer_of_a_shard_receives_and_the_other_takes_over_when_it_stops(kit: QueueKit) -> None:
    queue_a, queue_b = await kit.open(), await kit.open()
    active, standby = Collector(), Collector()
    consumer_a = await queue_a.consume(active)
    await queue_a.publish("tenant-a", b"x", message_id="warm-up")
    await active.wait_for(1)  # A holds every shard before B asks
    consumer_b = await queue_b.consume(standby)
    await publish_all(queue_a, [(t, f"{t}/1") for t in TENANTS])
    await active.wait_for(1 + len(TENANTS))
    await anyio.sleep(0.5)
    assert standby.queue_messages == []
    await consumer_a.stop()
    await publish_all(queue_a, [(t, f"{t}/2") for t in TENANTS])
    await standby.wait_for(len(TENANTS))
    assert sorted(standby.message_ids) == sorted(f"{t}/2" for t in TENANTS)
    assert len(active.queue_messages) == 1 + len(TENANTS)
    await consumer_b.stop()


async def test_a_handler_that_raises_hands_its_message_back_for_another_attempt(kit: QueueKit) -> None:
    queue = await kit.open()
    await queue.publish("tenant-a", b"x", message_id="m1")

    async def flaky(queue_message: QueueMessage) -> None:
        if queue_message.attempt == 1:
            raise RuntimeError("bug on first try")
        await queue_message.ack()

    got = Collector(settle=flaky)
    consumer = await queue.consume(got)
    await got.wait_for(2)
    assert [d.attempt for d in got.queue_messages] == [1, 2]
    await consumer.stop()


async def test_publishing_to_a_closed_queue_raises_backend_unavailable(kit: QueueKit) -> None:
    queue = await kit.open()
    await queue.close()
    with pytest.raises(BackendUnavailable):
        await queue.publish("tenant-a", b"x", message_id="m1")


# --- RabbitMQ: the connection to the broker is cut ------------------------------------------------------------------


@pytest.mark.servers
async def test_publishing_while_the_broker_is_unreachable_fails_fast(amqp_kit: QueueKit, proxy_factory) -> None:
    proxy, url = await proxy_factory(amqp_kit.settings.amqp_url.reveal())
    queue = await amqp_kit.open(amqp_url=url)
    await queue.publish("tenant-a", b"x", message_id="before")
    proxy.cut()
    for n in range(3):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await queue.publish("tenant-a", b"x", message_id=f"down-{n}")
        assert time.monotonic() - started < 1.0
    assert not await queue.ping()


@pytest.mark.servers
async def test_a_cut_mid_publish_loses_nothing_that_reported_success(amqp_kit: QueueKit, proxy_factory) -> None:
    proxy, url = await proxy_factory(amqp_kit.settings.amqp_url.reveal())
    queue = await amqp_kit.open(amqp_url=url)
    ids = [f"m{n}" for n in range(3000)]
    confirmed_so_far = 0

    async def publish(n: int, message_id: str) -> None:
        nonlocal confirmed_so_far
        await queue.publish(TENANTS[n % 12], b"x", message_id=message_id)
        confirmed_so_far += 1
        if confirmed_so_far == 300:  # cut with thousands still in flight
            proxy.cut()

    # Issued in waves, so that the cut falls inside the stream: some publishes confirmed, some written and awaiting
    # their confirm, some not issued yet. (All at once, a fresh broker could confirm all 3,000 in one read before
    # the 300th confirm's callback ran the cut: nothing left to test.)
    tasks = []
    for n, message_id in enumerate(ids):
        tasks.append(asyncio.ensure_future(publish(n, message_id)))
        if n % 50 == 49:
            await asyncio.sleep(0.002)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = dict(zip(ids, results))
    confirmed = {m for m, r in outcomes.items() if r is None}
    failed = {m for m, r in outcomes.items() if r is not None}
    assert all(isinstance(outcomes[m], BackendUnavailable) for m in failed), {type(outcomes[m]) for m in failed}
    assert failed and len(confirmed) >= 300, "the cut came too late to test anything"

    direct = await amqp_kit.open()
    got = Collector()
    consumer = await direct.consume(got)
    await got.wait_for(len(confirmed))
    await anyio.sleep(1.0)  # whatever landed unconfirmed arrives too
    await consumer.stop()
    delivered = Counter(got.message_ids)
    assert confirmed <= set(delivered), f"lost {len(confirmed - set(delivered))} confirmed messages"
    assert max(delivered.values()) == 1, "each message was published once: no duplicates expected"
    print(f"\ncut mid-publish: {len(confirmed)} confirmed, {len(failed)} failed, "
          f"{len(set(delivered) & failed)} of the failed landed anyway")


@pytest.mark.servers
async def test_publishing_and_consuming_resume_after_the_broker_comes_back(amqp_kit: QueueKit, proxy_factory) -> None:
    proxy, url = await proxy_factory(amqp_kit.settings.amqp_url.reveal())
    queue = await amqp_kit.open(amqp_url=url)
    got = Collector()
    consumer = await queue.consume(got)
    await queue.publish("tenant-a", b"x", message_id="before")
    await got.wait_for(1)
    proxy.cut()
    with pytest.raises(BackendUnavailable):
        await queue.publish("tenant-a", b"x", message_id="during")
    proxy.restore()
    with anyio.fail_after(10):
        while True:
            try:
                await queue.publish("tenant-a", b"x", message_id="after")
                break
            except BackendUnavailable:
                await anyio.sleep(0.2)
    with anyio.fail_after(15):  # the consumer re-subscribes by itself
        while "after" not in got.message_ids:
            await got.wait_for(len(got.queue_messages) + 1)
    # "before" may come twice if the cut beat its ack: at-least-once, never lost.
    assert set(got.message_ids) == {"before", "after"}
    await consumer.stop()


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_a_peer_that_closes_each_connection_at_once_reads_as_unavailable(anyio_backend, monkeypatch) -> None:
    """A broker still booting, or a proxy with no backend, accepts and closes at once. Under uvloop (as the bridge
    runs) aiormq then sometimes ends its handshake with a bare StopAsyncIteration (8 of 30 attempts, measured): it
    must read as BackendUnavailable, so the ingress answers 503 and the consumer keeps retrying, instead of a 500
    and a consumer task that died for good."""
    import socket
    import threading

    from wabridge.adapters.queue import amqp as queue_amqp

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept_and_close() -> None:  # in a thread: the close reaches the client as from another process
        with contextlib.suppress(OSError):
            while True:
                listener.accept()[0].close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    monkeypatch.setattr(queue_amqp, "RECONNECT_PAUSE", 0.0)  # dial on every attempt
    port = listener.getsockname()[1]
    queue = queue_amqp.AmqpQueue(Settings(amqp_url=Secret(f"amqp://guest:guest@127.0.0.1:{port}/")))
    try:
        for n in range(30):
            with pytest.raises(BackendUnavailable):
                await queue.publish("tenant-a", b"x", message_id=f"m{n}")
            await anyio.sleep(0.01)
    finally:
        listener.close()
        await queue.close()


# --- SQLite: one file, several processes ----------------------------------------------------------------------------


async def test_two_writers_on_one_file_publish_concurrently_without_loss(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    ingress_a, ingress_b, worker = SqliteQueue(settings), SqliteQueue(settings), SqliteQueue(settings)
    for q in (ingress_a, ingress_b, worker):
        await q.open()
    try:
        await asyncio.gather(
            *(ingress_a.publish(TENANTS[n % 12], b"a", message_id=f"a{n}") for n in range(500)),
            *(ingress_b.publish(TENANTS[n % 12], b"b", message_id=f"b{n}") for n in range(500)),
        )
        got = Collector()
        consumer = await worker.consume(got)
        await got.wait_for(1000)
        assert sorted(got.message_ids) == sorted([f"a{n}" for n in range(500)] + [f"b{n}" for n in range(500)])
        await consumer.stop()
    finally:
        for q in (ingress_a, ingress_b, worker):
            await q.close()


async def test_the_sqlite_shard_of_a_tenant_is_crc32_modulo_shards() -> None:
    import zlib

    assert [shard_of(t, 4) for t in TENANTS] == [zlib.crc32(t.encode()) % 4 for t in TENANTS]


async def test_a_shard_lease_left_by_a_dead_process_is_taken_over_after_it_expires(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wabridge.adapters.queue.sqlite as queue_sqlite

    monkeypatch.setattr(queue_sqlite, "LEASE_TTL", 0.5)
    settings = Settings(data_dir=tmp_path / "data")
    dead, alive = SqliteQueue(settings), SqliteQueue(settings)
    await dead.open()
    await alive.open()
    try:
        await dead.publish("tenant-a", b"x", message_id="m1")
        held = Collector(settle=hold)
        await dead.consume(held)
        await held.wait_for(1)
        # A crash: the writer stops renewing, nothing is released.
        for consumer in list(dead._consumers):
            consumer._stopping.set()
            await consumer._task
        dead._consumers.clear()
        got = Collector()
        consumer = await alive.consume(got)
        (queue_message,) = await got.wait_for(1, timeout=10)
        assert (queue_message.message_id, queue_message.attempt) == ("m1", 2)
        await consumer.stop()
    finally:
        await dead.close()
        await alive.close()


async def test_messages_held_by_a_killed_worker_process_are_redelivered_at_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    settings = Settings(data_dir=tmp_path / "data")
    queue = SqliteQueue(settings)
    await queue.open()
    try:
        await queue.publish("tenant-a", b"x", message_id="m1")
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.contract.queue_crash_worker", str(settings.data_dir),
            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
        assert worker.stdout is not None
        with anyio.fail_after(20):
            assert (await worker.stdout.readline()).split() == [b"holding", b"m1"]
        worker.kill()  # SIGKILL: no release, the lease row stays with a dead pid
        await worker.wait()
        started = time.monotonic()
        got = Collector()
        consumer = await queue.consume(got)
        (queue_message,) = await got.wait_for(1, timeout=5)
        assert (queue_message.message_id, queue_message.attempt) == ("m1", 2)
        assert time.monotonic() - started < LEASE_TTL_SECONDS
        await consumer.stop()
    finally:
        await queue.close()


# --- the batched publisher's frames (queue_amqp.publish_frames) ------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange", "tenant_id", "body", "max_content"),
    [
        ("q_INBOUND", "acme", b'{"object":"whatsapp_business_account"}', 131064),
        ("", "t\u00e9nant-\U0001f600", b"", 131064),  # UTF-8 names, an empty body: no body frame
        ("q", "acme", bytes(range(256)) * 40, 4096),  # a body over the frame size: split in order
    ],
)
def test_direct_publish_frames_are_byte_for_byte_what_pamqp_marshals(exchange, tenant_id, body, max_content) -> None:
    from pamqp import commands as spec

    from wabridge.adapters.queue.amqp import PERSISTENT, TENANT_HEADER, generic_publish_frames, publish_frames

    message_id = f"1a2149412ce8f7:{tenant_id}"
    direct = publish_frames(7, exchange, tenant_id, body, message_id=message_id, tenant_id=tenant_id,
                            max_content=max_content)
    properties = spec.Basic.Properties(delivery_mode=PERSISTENT, message_id=message_id,
                                       headers={TENANT_HEADER: tenant_id})
    assert direct == generic_publish_frames(7, exchange, tenant_id, body, properties, max_content=max_content)


def test_a_routing_key_over_255_bytes_is_refused_before_anything_is_written() -> None:
    from wabridge.adapters.queue.amqp import publish_frames

    with pytest.raises(ValueError):
        publish_frames(1, "q", "x" * 256, b"{}", message_id="m", tenant_id="x" * 256, max_content=131064)


@pytest.mark.servers
async def test_many_publishes_in_flight_with_large_bodies_arrive_whole_and_once(amqp_kit: QueueKit) -> None:
    queue = await amqp_kit.open()
    bodies = {f"m{n}": os.urandom(n * 997 % 300_000 + 1) for n in range(300)}  # some span several frames
    await asyncio.gather(*(queue.publish(TENANTS[n % 12], b, message_id=m) for n, (m, b) in enumerate(bodies.items())))
    got: dict[str, bytes] = {}
    done = asyncio.Event()

    async def handler(queue_message: QueueMessage) -> None:
        got[queue_message.message_id] = queue_message.body
        await queue_message.ack()
        if len(got) == len(bodies):
            done.set()

    consumer = await queue.consume(handler)
    try:
        await asyncio.wait_for(done.wait(), 60)
        await asyncio.sleep(0.3)  # nothing more comes
    finally:
        await consumer.stop()
    assert got == bodies


# --- the grouped settlements (queue_amqp.Settlements) ---------------------------------------------------------------


@pytest.mark.parametrize(("delivery_tag", "requeue"), [(1, None), (2**40 + 7, None), (300, True), (70_000, False)])
def test_direct_settlement_frames_are_byte_for_byte_what_pamqp_marshals(delivery_tag, requeue) -> None:
    from aiormq.abc import ChannelFrame
    from pamqp import commands as spec

    from wabridge.adapters.queue.amqp import settle_frame

    method = spec.Basic.Ack(delivery_tag=delivery_tag, multiple=False) if requeue is None else \
        spec.Basic.Nack(delivery_tag=delivery_tag, multiple=False, requeue=requeue)
    assert settle_frame(9, delivery_tag, requeue=requeue) == ChannelFrame.marshall(9, [method]).payload


@pytest.mark.servers
async def test_settlements_given_out_of_order_in_one_turn_settle_exactly_their_own_messages(amqp_kit: QueueKit) -> None:
    # One shard, so every queue message shares one channel and one settlement batch. Acking a high tag while lower ones
    # are unsettled must not ack those (no `multiple`), and a nack in the same batch must come back.
    queue = await amqp_kit.open(shards=1)
    ids = [f"m{n}" for n in range(40)]
    for message_id in ids:
        await queue.publish("tenant-a", b"x", message_id=message_id)
    held = Collector(settle=hold)
    consumer = await queue.consume(held, prefetch=64)
    queue_messages = {d.message_id: d for d in await held.wait_for(len(ids))}
    acked = ids[1::2][::-1]  # the odd ones, highest tag first: the even ones stay unsettled below each of them
    retried = ids[0:10:2]
    await asyncio.gather(*(queue_messages[m].ack() for m in acked), *(queue_messages[m].retry() for m in retried))
    comeback = (await held.wait_for(len(ids) + len(retried)))[len(ids):]  # the nacks were written: back at once
    assert sorted((d.message_id, d.attempt) for d in comeback) == sorted((m, 2) for m in retried)
    await consumer.stop()  # returns everything not acked (a return the broker counts too)

    again = Collector()
    consumer = await queue.consume(again)
    try:
        await again.wait_for(len(ids) - len(acked))
        await anyio.sleep(0.3)  # nothing more comes
    finally:
        await consumer.stop()
    assert sorted(again.message_ids) == sorted(set(ids) - set(acked))
    attempts = {d.message_id: d.attempt for d in again.queue_messages}
    assert {m: a for m, a in attempts.items() if a == 3} == {m: 3 for m in retried}


@pytest.mark.servers
async def test_acks_given_just_before_the_consumer_stops_are_written_not_redelivered(amqp_kit: QueueKit) -> None:
    queue = await amqp_kit.open(shards=1)
    ids = [f"m{n}" for n in range(20)]
    for message_id in ids:
        await queue.publish("tenant-a", b"x", message_id=message_id)
    held = Collector(settle=hold)
    consumer = await queue.consume(held, prefetch=64)
    queue_messages = await held.wait_for(len(ids))
    # Settled by tasks that have not run their flush yet when stop() begins: stop must write them first.
    settling = [asyncio.ensure_future(d.ack()) for d in queue_messages]
    await consumer.stop()
    await asyncio.gather(*settling)

    again = Collector()
    consumer = await queue.consume(again)
    try:
        await queue.publish("tenant-a", b"x", message_id="marker")
        await again.wait_for(1)
        await anyio.sleep(0.3)
    finally:
        await consumer.stop()
    assert again.message_ids == ["marker"]
