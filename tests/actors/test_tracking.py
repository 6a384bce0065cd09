"""The tracking writer: group commit over a real store (SQLite embedded, PostgreSQL with servers)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from wabridge.actors.tracking import TrackingLookups, TrackingWriter
from wabridge.ports import BackendUnavailable, TrackingRecord
from wabridge.engine.secrets import Secret
from wabridge.adapters.store.postgres import PostgresStore
from wabridge.adapters.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


class CountingStore:
    """A real store, with its write_tracking calls counted (what group commit is about)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batch_sizes: list[int] = []
        self.touch_batches: list[list[tuple[str, str, float]]] = []
        self.read_batches: list[list[tuple[str, str]]] = []

    async def write_tracking(self, records):
        self.batch_sizes.append(len(records))
        await self.inner.write_tracking(records)

    async def touch_conversations(self, touches):
        self.touch_batches.append(list(touches))
        await self.inner.touch_conversations(touches)

    async def get_tracking_many(self, keys):
        self.read_batches.append(list(keys))
        return await self.inner.get_tracking_many(keys)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def store_settings(request):
    return request.getfixturevalue("embedded_settings" if request.param == "sqlite" else "server_settings")


@pytest.fixture
async def store(store_settings):
    inner = PostgresStore(store_settings) if store_settings.database_url else SqliteStore(store_settings)
    await inner.open()
    await inner.migrate()
    yield CountingStore(inner)
    await inner.close()


def rec(i: int, status: str = "received") -> TrackingRecord:
    return TrackingRecord(wamid=f"wamid.{i}", tenant_id="acme", status=status, type="text")


async def test_many_concurrent_records_share_few_writes_and_all_are_durable_on_return(store):
    async with TrackingWriter(store, max_batch=100, max_delay=0.01) as writer:
        await asyncio.gather(*(writer.record(rec(i)) for i in range(250)))
        stats = writer.statistics()
    assert len(await store.list_tracking(limit=1000)) == 250
    assert sum(store.batch_sizes) == 250
    assert max(store.batch_sizes) <= 100
    assert len(store.batch_sizes) <= 5  # 250 callers, batches of at most 100: three writes, a little slack
    assert (stats.rows, stats.failed_batches) == (250, 0)


async def test_a_lone_record_is_written_after_about_max_delay(store):
    async with TrackingWriter(store, max_delay=0.005) as writer:
        started = time.monotonic()
        await writer.record(rec(1))
        assert time.monotonic() - started < 1.0
    assert (await store.get_tracking("acme", "wamid.1")).status == "received"


async def test_later_records_of_one_message_update_its_row(store):
    async with TrackingWriter(store) as writer:
        await writer.record(rec(1))
        await writer.record(TrackingRecord(wamid="wamid.1", tenant_id="acme", status="delivered", attempts=1))
        await writer.record(rec(1, "duplicate"))
    row = await store.get_tracking("acme", "wamid.1")
    assert (row.status, row.attempts) == ("delivered", 1)


async def test_touches_are_coalesced_and_written_with_a_later_batch(store):
    conv = str(uuid.uuid4())
    await store.put_conversation("acme", "1650", conv)
    later = time.time() + 2
    async with TrackingWriter(store) as writer:
        for at in (later, later - 1, later - 2):
            await writer.touch("acme", "1650", at)
        await writer.record(rec(1))
        assert writer.statistics().touches_dropped == 0
    assert store.touch_batches == [[("acme", "1650", later)]]  # three touches, one row, the latest time
    assert await store.get_conversation("acme", "1650") == conv


async def test_touches_are_written_at_most_once_per_interval(store):
    for n in range(3):
        await store.put_conversation("acme", f"165{n}", str(uuid.uuid4()))
    async with TrackingWriter(store, touch_interval=0.3) as writer:
        await writer.touch("acme", "1650", 1.0)
        await asyncio.sleep(0.05)  # the first touch goes out at once (nothing written yet in this interval)
        assert store.touch_batches == [[("acme", "1650", 1.0)]]
        await writer.touch("acme", "1651", 2.0)
        await writer.record(rec(1))  # a batch inside the interval: the touch waits for the interval's end
        await asyncio.sleep(0.05)
        await writer.touch("acme", "1652", 3.0)
        assert len(store.touch_batches) == 1
        await asyncio.sleep(0.35)  # the interval is over: both touches in one write, no record needed
        assert store.touch_batches[1:] == [[("acme", "1651", 2.0), ("acme", "1652", 3.0)]]
        await writer.touch("acme", "1650", 4.0)
    assert store.touch_batches[2:] == [[("acme", "1650", 4.0)]]  # pending at close: written by aclose


async def test_aclose_flushes_what_is_pending(store):
    writer = TrackingWriter(store, max_delay=10)  # would wait 10 s for more rows
    await writer.start()
    waiting = [asyncio.ensure_future(writer.record(rec(i))) for i in range(3)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await writer.aclose()
    await asyncio.gather(*waiting)
    assert time.monotonic() - started < 5
    assert len(await store.list_tracking()) == 3


async def test_record_on_a_closed_writer_raises_backend_unavailable(store):
    writer = TrackingWriter(store)
    with pytest.raises(BackendUnavailable):
        await writer.record(rec(1))


async def test_the_pending_buffer_is_bounded_and_full_callers_wait_for_room(store):
    async with TrackingWriter(store, max_batch=10, max_pending=20) as writer:
        calls = [asyncio.ensure_future(writer.record(rec(i))) for i in range(100)]
        high_water = 0
        while not all(c.done() for c in calls):
            high_water = max(high_water, writer.statistics().pending)
            await asyncio.sleep(0)
        await asyncio.gather(*calls)
    assert high_water <= 20
    assert len(await store.list_tracking()) == 100


@pytest.mark.servers
async def test_with_the_store_down_callers_get_backend_unavailable_and_later_writes_succeed(
    server_settings, proxy_factory
):
    proxy, url = await proxy_factory(server_settings.database_url.reveal())
    store = PostgresStore(server_settings.replace(database_url=Secret(url)))
    await store.open()
    await store.migrate()
    try:
        async with TrackingWriter(store) as writer:
            proxy.cut()
            results = await asyncio.gather(*(writer.record(rec(i)) for i in range(10)), return_exceptions=True)
            assert all(isinstance(r, BackendUnavailable) for r in results)
            assert writer.statistics().failed_batches >= 1
            proxy.restore()
            await writer.record(rec(99))
        assert (await store.get_tracking("acme", "wamid.99")).status == "received"
        assert await store.get_tracking("acme", "wamid.1") is None
    finally:
        await store.close()


# --- the de-duplication reads ---


async def test_concurrent_lookups_of_all_tenants_share_few_reads_and_each_gets_its_own_row(store):
    await store.write_tracking([rec(i, "delivered") for i in range(0, 300, 2)])
    await store.write_tracking([TrackingRecord(wamid="wamid.1", tenant_id="other", status="failed")])
    lookups = TrackingLookups(store, max_batch=100)
    rows = await asyncio.gather(*(lookups.get("acme", f"wamid.{i}") for i in range(300)),
                                lookups.get("other", "wamid.1"))  # fmt: skip
    assert [r is not None and r.status == "delivered" for r in rows[:300]] == [i % 2 == 0 for i in range(300)]
    assert rows[300].status == "failed" and rows[300].tenant_id == "other"
    assert sorted(len(keys) for keys in store.read_batches) == [1, 100, 100, 100]


async def test_a_lookup_asked_during_a_read_sees_a_row_committed_before_it_was_asked(store):
    lookups = TrackingLookups(store, max_delay=0)  # the first read starts at once: the second comes during it
    first = asyncio.ensure_future(lookups.get("acme", "wamid.1"))
    await asyncio.sleep(0)  # the read for the first lookup is under way
    await store.write_tracking([rec(1, "delivered")])
    assert (await lookups.get("acme", "wamid.1")).status == "delivered"
    assert (await first) is None or (await first).status == "delivered"
    assert len(store.read_batches) == 2


async def test_lookups_within_the_delay_share_one_read_and_see_rows_written_before_it(store):
    lookups = TrackingLookups(store, max_delay=0.05)
    first = asyncio.ensure_future(lookups.get("acme", "wamid.1"))
    await asyncio.sleep(0.01)  # inside the delay: no read has started yet
    await store.write_tracking([rec(1, "delivered")])
    second = asyncio.ensure_future(lookups.get("acme", "wamid.2"))
    assert (await first).status == "delivered" and await second is None
    assert [sorted(k[1] for k in keys) for keys in store.read_batches] == [["wamid.1", "wamid.2"]]


async def test_a_store_failure_reaches_every_lookup_of_the_batch_and_the_next_one_reads_again(store):
    class Down(CountingStore):
        fail = True

        async def get_tracking_many(self, keys):
            if self.fail:
                self.fail = False
                raise BackendUnavailable("store", "postgresql: ConnectionRefusedError")
            return await super().get_tracking_many(keys)

    flaky = Down(store.inner)
    await store.write_tracking([rec(2, "delivered")])
    lookups = TrackingLookups(flaky)
    outcomes = await asyncio.gather(*(lookups.get("acme", f"wamid.{i}") for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, BackendUnavailable) for o in outcomes)
    assert (await lookups.get("acme", "wamid.2")).status == "delivered"



async def test_events_are_written_with_the_next_batch_never_awaited_and_flushed_at_close(store):
    """A message's unusual steps (`wabridge trace`) ride with the writer: `event()` returns at once, the events are
    in the store once the batch they came with is, and what is left is written at close."""
    from wabridge.ports import MessageEvent

    writer = TrackingWriter(store, max_delay=0.001)
    await writer.start()
    writer.event(MessageEvent(tenant_id="acme", wamid="wamid.1", webhook_id="h1", at=1.0, event="retried"))
    await writer.record(rec(1, "failed"))
    writer.event(MessageEvent(tenant_id="acme", wamid="wamid.1", webhook_id="h1", at=2.0, event="failed"))
    await writer.aclose()
    events = await store.list_events(tenant_id="acme", wamids=["wamid.1"])
    assert [e.event for e in events] == ["retried", "failed"]
    writer.event(MessageEvent(tenant_id="acme", wamid="wamid.1", at=3.0, event="late"))  # closed: dropped, counted
    assert writer.statistics().events_dropped == 1


async def test_a_trail_names_its_message_on_every_log_line_and_hands_its_notes_to_the_writer(store):
    import io
    import json
    import logging

    from wabridge.engine import history
    from wabridge.engine.logs import configure, get_logger

    stream = io.StringIO()
    handler = configure("INFO", stream=stream)
    try:
        async with TrackingWriter(store, max_delay=0.001) as writer:
            origin = history.Origin("0194abc", 1, "acme/d/s.ndjson#2")
            with history.Trail("acme", "wamid.7", origin, writer):
                logging.getLogger("wabridge.delivery").warning("a line from code that never sees the message")
                history.note("held", "genesys down")
                history.note("held", "genesys down")  # the same step again: kept once
                assert history.current().origin is origin
            get_logger("relay").warning("after the trail")
            history.note("held", "outside any trail: nothing")
    finally:
        logging.getLogger("wabridge").removeHandler(handler)
    first, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["tenant_id"], first["wamid"], first["webhook_id"]) == ("acme", "wamid.7", "0194abc")
    assert "wamid" not in after
    events = await store.list_events(tenant_id="acme", webhook_ids=["0194abc"])
    assert [(e.wamid, e.event, e.detail) for e in events] == [("wamid.7", "held", "genesys down")]
