"""The Store contract, run against PostgreSQL (real server) and SQLite (embedded)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import asyncpg
import pytest

from wabridge.adapters.store.postgres import MIGRATIONS

from wabridge.ports import (
    BackendUnavailable,
    GenesysCredential,
    MessageToPark,
    ParkedMessage,
    ParkingFence,
    PhoneNumberTaken,
    Store,
    TenantConfig,
    TrackingRecord,
    TrackingStatus,
)
from wabridge.engine.secrets import Secret, generate_key
from wabridge.adapters.store.postgres import PostgresStore
from wabridge.adapters.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

PLAINTEXTS = ("meta-app-secret-XYZ", "verify-token-XYZ", "wa-token-XYZ", "genesys-secret-1-XYZ", "genesys-secret-2-XYZ")


def tenant(tenant_id: str = "acme", phones: tuple[str, ...] = ("106540352242922",)) -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id,
        phone_number_ids=phones,
        app_secret=Secret(PLAINTEXTS[0]),
        verify_token=Secret(PLAINTEXTS[1]),
        whatsapp_token=Secret(PLAINTEXTS[2]),
        genesys_api_url="https://api.mypurecloud.ie",
        genesys_login_url="https://login.mypurecloud.ie",
        genesys_integration_id="5f1c7a52-0000-4000-8000-000000000001",
        credentials=(
            GenesysCredential("client-1", Secret(PLAINTEXTS[3])),
            GenesysCredential("client-2", Secret(PLAINTEXTS[4])),
        ),
        rate_limit_per_minute=600,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def store_settings(request, tmp_path):
    if request.param == "sqlite":
        return request.getfixturevalue("embedded_settings")
    return request.getfixturevalue("server_settings")


def make_store(settings) -> Store:
    return PostgresStore(settings) if settings.database_url is not None else SqliteStore(settings)


@pytest.fixture
async def store(store_settings):
    s = make_store(store_settings)
    await s.open()
    await s.migrate()
    yield s
    await s.close()


async def raw_tenant_rows(store: Store) -> list[str]:
    """Every tenant row as text, read past the adapter."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            return [repr(tuple(r)) for r in db.execute("SELECT * FROM tenant_credentials")]
    conn = await asyncpg.connect(store._url.reveal())
    try:
        return [repr(tuple(r.values())) for r in await conn.fetch("SELECT * FROM tenant_credentials")]
    finally:
        await conn.close()


# --- schema ---


@pytest.mark.servers
async def test_postgres_commits_wait_for_their_wal_even_on_a_server_that_would_not(server_settings):
    """A tracking row's commit is what the queue ack waits for: it must survive the server being killed. The test
    server runs with `synchronous_commit=off`; the store's own sessions turn it back on."""
    import asyncpg

    assert server_settings.database_url is not None
    plain = await asyncpg.connect(server_settings.database_url.reveal())
    try:
        server_default = await plain.fetchval("SHOW synchronous_commit")
    finally:
        await plain.close()
    if server_default != "off":
        pytest.skip(f"this server commits synchronously already ({server_default}): nothing to show")
    store = PostgresStore(server_settings)
    await store.open()
    try:
        async with store._conn() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await store.close()


async def test_migrate_twice_keeps_the_schema_and_the_data(store):
    await store.put_tenant(tenant())
    latest = len(MIGRATIONS)
    assert latest >= 2
    assert await store.migrate() == latest
    assert await store.migrate() == latest
    assert (await store.get_tenant("acme")).phone_number_ids == ("106540352242922",)


# --- tenants ---


async def test_a_tenant_reads_back_as_written_by_id_and_by_phone_number(store):
    t = tenant(phones=("111", "222"))
    await store.put_tenant(t)
    assert await store.get_tenant("acme") == t
    assert await store.tenant_for_phone_number("222") == t
    assert await store.tenant_for_phone_number("999") is None
    assert await store.list_tenants() == [t]


async def test_updating_a_tenant_replaces_its_phone_numbers(store):
    await store.put_tenant(tenant(phones=("111", "222")))
    await store.put_tenant(tenant(phones=("222", "333")))
    assert await store.tenant_for_phone_number("111") is None
    assert (await store.tenant_for_phone_number("333")).tenant_id == "acme"
    # the released number is free for another tenant now
    await store.put_tenant(tenant("globex", phones=("111",)))
    assert (await store.tenant_for_phone_number("111")).tenant_id == "globex"


async def test_a_phone_number_owned_by_another_tenant_raises_phone_number_taken(store):
    await store.put_tenant(tenant("acme", phones=("111",)))
    with pytest.raises(PhoneNumberTaken, match="111"):
        await store.put_tenant(tenant("globex", phones=("222", "111")))
    assert await store.get_tenant("globex") is None  # nothing of the refused write remains
    assert await store.tenant_for_phone_number("222") is None


async def test_removing_a_tenant_frees_its_phone_numbers(store):
    await store.put_tenant(tenant(phones=("111",)))
    assert await store.remove_tenant("acme") is True
    assert await store.remove_tenant("acme") is False
    assert await store.tenant_for_phone_number("111") is None
    assert await store.list_tenants() == []


async def test_secrets_are_encrypted_in_the_database_and_hidden_in_reprs(store):
    await store.put_tenant(tenant())
    rows = await raw_tenant_rows(store)
    assert len(rows) == 1
    for plaintext in PLAINTEXTS:
        assert plaintext not in rows[0]
        assert plaintext not in repr(await store.get_tenant("acme"))
    assert "v1:" in rows[0]


async def test_reencrypt_secrets_moves_every_tenant_to_the_new_primary_key(store_settings):
    old = make_store(store_settings)
    await old.open()
    await old.migrate()
    await old.put_tenant(tenant())
    await old.close()
    rotated_settings = store_settings.replace(
        secret_key=Secret(f"{generate_key()},{store_settings.secret_key.reveal()}")
    )
    rotated = make_store(rotated_settings)
    await rotated.open()
    try:
        assert await rotated.reencrypt_secrets() == 1
        assert await rotated.reencrypt_secrets() == 0
        assert await rotated.get_tenant("acme") == tenant()
        new_key_id = rotated_settings.secret_box().primary_key_id
        assert all(f"v1:{new_key_id}:" in row for row in await raw_tenant_rows(rotated))
    finally:
        await rotated.close()


# --- conversation mappings ---


async def test_concurrent_put_conversation_agree_on_one_id(store):
    ids = [str(uuid.uuid4()) for _ in range(8)]
    results = await asyncio.gather(*(store.put_conversation("acme", "16505551234", i) for i in ids))
    assert len(set(results)) == 1
    assert results[0] in ids
    assert await store.get_conversation("acme", "16505551234") == results[0]


async def test_mappings_are_per_tenant_and_set_conversation_overwrites(store):
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    assert await store.put_conversation("acme", "1650", a) == a
    assert await store.put_conversation("globex", "1650", b) == b
    await store.set_conversation("acme", "1650", c)
    assert await store.get_conversation("acme", "1650") == c
    assert await store.get_conversation("globex", "1650") == b
    assert await store.get_conversation("acme", "unknown") is None


async def test_conversations_are_read_and_set_many_at_once_the_last_row_of_a_key_winning(store):
    a, b, c, d = (str(uuid.uuid4()) for _ in range(4))
    assert await store.get_conversations([]) == {}
    await store.set_conversations([])
    await store.set_conversations([("acme", "1650", a), ("globex", "1650", b), ("acme", "1651", c), ("acme", "1650", d)])
    keys = [("acme", "1650"), ("globex", "1650"), ("acme", "1651"), ("acme", "unknown"), ("initech", "1650")]
    assert await store.get_conversations(keys) == {("acme", "1650"): d, ("globex", "1650"): b, ("acme", "1651"): c}
    await store.set_conversations([("globex", "1650", a)])  # overwrites, as set_conversation
    assert await store.get_conversation("globex", "1650") == a
    assert await store.put_conversation("acme", "1651", b) == c  # the set row is the stored one


async def test_touch_conversations_accepts_many_touches_at_once(store):
    conv = str(uuid.uuid4())
    await store.put_conversation("acme", "1650", conv)
    later = time.time() + 60
    await store.touch_conversations([("acme", "1650", later - 30), ("acme", "1650", later), ("acme", "none", later)])
    assert await store.get_conversation("acme", "1650") == conv


# --- customer aliases ---


async def test_an_alias_is_per_tenant_read_many_at_once_and_never_overwritten(store):
    bsuid = "US.13491208655302741918"
    assert await store.get_aliases([]) == {}
    assert await store.put_alias("acme", bsuid, "16505551234") == "16505551234"
    assert await store.put_alias("globex", bsuid, "US.88120455318710220415") == "US.88120455318710220415"
    # A second writer (another id chosen in a race) gets the stored one back; the row keeps it.
    assert await store.put_alias("acme", bsuid, "16505559999") == "16505551234"
    keys = [("acme", bsuid), ("globex", bsuid), ("acme", "16505551234"), ("initech", bsuid)]
    assert await store.get_aliases(keys) == {("acme", bsuid): "16505551234", ("globex", bsuid): "US.88120455318710220415"}


async def test_concurrent_put_alias_agree_on_one_canonical_id(store):
    canonicals = [f"1650555{n:04d}" for n in range(8)]
    results = await asyncio.gather(*(store.put_alias("acme", "US.1", c) for c in canonicals))
    assert len(set(results)) == 1 and results[0] in canonicals
    assert await store.get_aliases([("acme", "US.1")]) == {("acme", "US.1"): results[0]}


# --- tracking ---


async def test_tracking_rows_upsert_and_later_states_win(store):
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="received", type="text",
                                               payload=b"work")])  # fmt: skip
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="failed", attempts=2,
                                               error="genesys 503")])  # fmt: skip
    row = await store.get_tracking("acme", "w1")
    assert (row.status, row.attempts, row.error, row.type, row.payload) == ("failed", 2, "genesys 503", "text", b"work")
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="delivered", attempts=3,
                                               genesys_message_id="g-1", conversation_id="c-1")])  # fmt: skip
    row = await store.get_tracking("acme", "w1")
    assert (row.status, row.attempts, row.error, row.genesys_message_id, row.payload) == ("delivered", 3, None, "g-1", None)
    assert row.created_at <= row.updated_at


async def test_a_duplicate_never_overwrites_a_delivered_row(store):
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="delivered")])
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="duplicate")])
    await store.write_tracking([
        TrackingRecord(wamid="w2", tenant_id="acme", status="received"),
        TrackingRecord(wamid="w2", tenant_id="acme", status="duplicate"),
        TrackingRecord(wamid="w3", tenant_id="acme", status="duplicate"),
    ])  # fmt: skip
    assert (await store.get_tracking("acme", "w1")).status == "delivered"
    assert (await store.get_tracking("acme", "w2")).status == "received"
    assert (await store.get_tracking("acme", "w3")).status == "duplicate"  # a first sighting is still recorded


async def test_many_tracking_rows_read_at_once_come_back_by_tenant_and_wamid_leaving_out_the_untracked(store):
    await store.write_tracking([
        TrackingRecord(wamid="w1", tenant_id="acme", status="delivered", genesys_message_id="g-1"),
        TrackingRecord(wamid="w2", tenant_id="acme", status="failed", error="genesys 400"),
        TrackingRecord(wamid="w1", tenant_id="other", status="received"),
        TrackingRecord(wamid="w3", tenant_id="other", status="delivered"),
    ])  # fmt: skip
    rows = await store.get_tracking_many([("acme", "w1"), ("acme", "w2"), ("acme", "w3"), ("other", "w1"),
                                          ("acme", "w-unknown"), ("acme", "w1")])  # fmt: skip
    assert {k: r.status for k, r in rows.items()} == {
        ("acme", "w1"): "delivered", ("acme", "w2"): "failed", ("other", "w1"): "received"
    }  # fmt: skip
    assert rows[("acme", "w1")] == await store.get_tracking("acme", "w1")
    assert await store.get_tracking_many([]) == {}
    many = [("acme", f"x{n}") for n in range(1200)]  # more than one statement's worth of parameters on SQLite
    await store.write_tracking([TrackingRecord(wamid=w, tenant_id=t, status="received") for t, w in many[::2]])
    assert sorted(await store.get_tracking_many(many)) == sorted(many[::2])


async def test_each_repeat_of_a_settled_message_is_counted_on_its_row(store):
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="delivered")])
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="duplicate")])
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="duplicate")] * 2)
    row = await store.get_tracking("acme", "w1")
    assert (row.status, row.duplicates) == ("delivered", 3)
    assert (await store.list_tracking(tenant_id="acme"))[0].duplicates == 3


async def test_a_batch_with_several_states_of_one_message_keeps_the_last(store):
    await store.write_tracking([
        TrackingRecord(wamid="w1", tenant_id="acme", status="received"),
        TrackingRecord(wamid="w1", tenant_id="acme", status="delivered", attempts=1),
    ])  # fmt: skip
    assert (await store.get_tracking("acme", "w1")).status == "delivered"


async def test_list_tracking_filters_by_tenant_status_and_time(store):
    t0 = 1_700_000_000.0
    await store.write_tracking([
        TrackingRecord(wamid=f"w{i}", tenant_id="acme" if i % 2 else "globex",
                       status=tuple(TrackingStatus)[i % 4], created_at=t0 + i)
        for i in range(20)
    ])  # fmt: skip
    everything = await store.list_tracking()
    assert len(everything) == 20
    assert [r.created_at for r in everything] == sorted(r.created_at for r in everything)
    acme_failed = await store.list_tracking(tenant_id="acme", statuses=["failed", "dead-lettered"])
    assert {r.wamid for r in acme_failed} == {f"w{i}" for i in range(20) if i % 2 and i % 4 in (2, 3)}
    window = await store.list_tracking(since=t0 + 5, until=t0 + 8)
    assert [r.wamid for r in window] == ["w5", "w6", "w7"]
    assert len(await store.list_tracking(limit=3)) == 3


async def test_an_unknown_tracking_status_is_refused(store):
    with pytest.raises(Exception):
        await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="read")])
    assert await store.get_tracking("acme", "w1") is None


# --- parked messages ---


async def all_parked(store: Store, shard: int, tenant_id: str) -> list[ParkedMessage]:
    return await store.parked(shard, tenant_id, limit=10_000)


async def test_parked_messages_come_back_in_the_order_parked_byte_exact(store):
    await store.park(3, [MessageToPark("acme", "m1", b"\x00\xff", 1), MessageToPark("acme", "m2", b"", 2)])
    await store.park(3, [MessageToPark("acme", "m3", b"third", 5)])
    rows = await all_parked(store, 3, "acme")
    assert [(r.message_id, r.body, r.attempt) for r in rows] == [
        ("m1", b"\x00\xff", 1), ("m2", b"", 2), ("m3", b"third", 5)
    ]  # fmt: skip
    assert all((r.shard, r.tenant_id) == (3, "acme") for r in rows)
    assert [r.seq for r in rows] == sorted({r.seq for r in rows})  # strictly ascending


async def test_a_large_park_keeps_the_given_order(store):
    # Ids whose sort order differs from the given one, so an unordered insert would show.
    ids = [f"m{(n * 7919) % 500:03d}" for n in range(500)]
    assert sorted(ids) != ids and len(set(ids)) == 500
    await store.park(0, [MessageToPark("acme", i, i.encode(), 1) for i in ids])
    rows = await all_parked(store, 0, "acme")
    assert [r.message_id for r in rows] == ids
    assert [r.body for r in rows] == [i.encode() for i in ids]


async def test_park_with_no_messages_parks_nothing(store):
    await store.park(0, [])
    assert await store.parked_tenants(0) == {}


async def test_parked_is_per_shard_and_tenant_and_pages_with_after_and_limit(store):
    await store.park(1, [MessageToPark("acme", f"a{n}", b"x", 1) for n in range(250)])
    await store.park(1, [MessageToPark("globex", "g1", b"x", 1)])
    await store.park(2, [MessageToPark("acme", "other-shard", b"x", 1)])
    pages, after = [], 0
    for _ in range(4):
        page = await store.parked(1, "acme", after=after, limit=100)
        pages.append(page)
        after = page[-1].seq if page else after
    assert [len(p) for p in pages] == [100, 100, 50, 0]
    ids = [r.message_id for p in pages for r in p]
    assert ids == [f"a{n}" for n in range(250)]
    assert [r.message_id for r in await store.parked(1, "globex")] == ["g1"]
    assert [r.message_id for r in await store.parked(2, "acme")] == ["other-shard"]
    assert await store.parked(2, "globex") == []
    assert len(await store.parked(1, "acme")) == 100  # the default limit


async def test_parked_tenants_counts_per_tenant_in_the_given_shard_only(store):
    assert await store.parked_tenants(1) == {}
    await store.park(1, [MessageToPark("acme", "a1", b"", 1), MessageToPark("globex", "g1", b"", 1),
                         MessageToPark("acme", "a2", b"", 1)])
    await store.park(2, [MessageToPark("acme", "a3", b"", 1), MessageToPark("initech", "i1", b"", 1)])
    assert await store.parked_tenants(1) == {"acme": 2, "globex": 1}
    assert await store.parked_tenants(2) == {"acme": 1, "initech": 1}
    assert await store.parked_tenants(3) == {}


async def test_unpark_deletes_exactly_the_given_seqs_and_ignores_unknown_ones(store):
    await store.park(1, [MessageToPark("acme", f"a{n}", b"", 1) for n in range(5)])
    await store.park(2, [MessageToPark("acme", "b0", b"", 1)])
    seqs = [r.seq for r in await all_parked(store, 1, "acme")]
    other = (await all_parked(store, 2, "acme"))[0].seq
    await store.unpark([])
    assert len(await all_parked(store, 1, "acme")) == 5
    await store.unpark([seqs[1], seqs[3], max(seqs + [other]) + 1000])
    assert [r.message_id for r in await all_parked(store, 1, "acme")] == ["a0", "a2", "a4"]
    assert [r.message_id for r in await all_parked(store, 2, "acme")] == ["b0"]
    assert await store.parked_tenants(1) == {"acme": 3}


async def test_set_parked_attempt_changes_only_that_row(store):
    await store.park(1, [MessageToPark("acme", "a0", b"", 1), MessageToPark("acme", "a1", b"", 1)])
    first, second = await all_parked(store, 1, "acme")
    await store.set_parked_attempt(second.seq, 4)
    await store.set_parked_attempt(second.seq + 1000, 9)  # unknown: nothing happens
    await store.set_parked_attempt(second.seq, 3)  # an earlier hand-back's write, arriving late: the count stays
    assert [r.attempt for r in await all_parked(store, 1, "acme")] == [1, 4]
    assert await all_parked(store, 1, "acme") == [first, ParkedMessage(
        seq=second.seq, shard=1, tenant_id="acme", message_id="a1", body=b"", attempt=4
    )]  # fmt: skip


async def test_a_seq_is_never_handed_out_again_after_unpark(store):
    await store.park(1, [MessageToPark("acme", f"a{n}", b"", 1) for n in range(3)])
    old = [r.seq for r in await all_parked(store, 1, "acme")]
    await store.unpark(old)
    assert await all_parked(store, 1, "acme") == []
    await store.park(1, [MessageToPark("acme", f"b{n}", b"", 1) for n in range(3)])
    new = await all_parked(store, 1, "acme")
    assert [r.message_id for r in new] == ["b0", "b1", "b2"]
    assert min(r.seq for r in new) > max(old)


async def test_a_fence_is_written_with_its_rows_kept_until_cleared_and_one_per_tenant(store):
    assert await store.parking_fences(1) == {}
    await store.park(1, [MessageToPark("acme", "f1", b"x", 1), MessageToPark("acme", "f2", b"y", 1)],
                     fences=[ParkingFence("acme", "f1")])
    # acme's first fence stands
    await store.park(1, [MessageToPark("acme", "f3", b"z", 1)], fences=[ParkingFence("acme", "f3")])
    await store.park(2, [MessageToPark("globex", "g1", b"", 1)], fences=[ParkingFence("globex", "g1")])
    assert await store.parking_fences(1) == {"acme": "f1"}
    assert await store.parking_fences(2) == {"globex": "g1"}
    assert [r.message_id for r in await all_parked(store, 1, "acme")] == ["f1", "f2", "f3"]
    await store.clear_fence(1, "acme")
    await store.clear_fence(1, "nobody")  # nothing to clear: nothing happens
    assert await store.parking_fences(1) == {}
    assert await store.parking_fences(2) == {"globex": "g1"}
    assert [r.message_id for r in await all_parked(store, 1, "acme")] == ["f1", "f2", "f3"], "rows untouched"


# --- outages ---


@pytest.mark.servers
async def test_postgres_down_raises_backend_unavailable_and_recovers_after_restore(server_settings, proxy_factory):
    proxy, url = await proxy_factory(server_settings.database_url.reveal())
    store = PostgresStore(server_settings.replace(database_url=Secret(url)))
    await store.open()
    try:
        await store.migrate()
        await store.put_tenant(tenant())
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="received")])
        with pytest.raises(BackendUnavailable):
            await store.get_tenant("acme")
        with pytest.raises(BackendUnavailable):
            await store.park(0, [MessageToPark("acme", "m1", b"body", 1)])
        assert time.monotonic() - started < 10
        assert await store.ping() is False
        proxy.restore()
        await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="received")])
        assert (await store.get_tracking("acme", "w1")).status == "received"
        await store.park(0, [MessageToPark("acme", "m2", b"body", 1)])
        assert [r.message_id for r in await store.parked(0, "acme")] == ["m2"]
        assert await store.ping() is True
    finally:
        await store.close()


@pytest.mark.servers
async def test_postgres_unreachable_at_open_raises_backend_unavailable(server_settings, proxy_factory):
    proxy, url = await proxy_factory(server_settings.database_url.reveal())
    proxy.cut()
    store = PostgresStore(server_settings.replace(database_url=Secret(url)))
    with pytest.raises(BackendUnavailable):
        await store.open()


async def test_two_sqlite_stores_on_one_file_see_each_others_writes(embedded_settings):
    first, second = SqliteStore(embedded_settings), SqliteStore(embedded_settings)
    await first.open()
    await second.open()
    try:
        await first.migrate()
        await second.migrate()
        ids = await asyncio.gather(
            first.put_conversation("acme", "1650", "a"), second.put_conversation("acme", "1650", "b")
        )
        assert ids[0] == ids[1]
        await first.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="received")])
        assert (await second.get_tracking("acme", "w1")).status == "received"
    finally:
        await first.close()
        await second.close()


def test_wabridge_migrate_prints_one_line_and_can_run_twice(tmp_path, monkeypatch, capsys):
    from wabridge.cli import main

    for var in ("WABRIDGE_DATABASE_URL", "WABRIDGE_REDIS_URL", "WABRIDGE_AMQP_URL", "WABRIDGE_S3_ENDPOINT",
                "WABRIDGE_CONFIG", "WABRIDGE_SECRET_KEY"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WABRIDGE_DATA_DIR", str(tmp_path))
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"schema at version {len(MIGRATIONS)} (SqliteStore({str(tmp_path / 'wabridge.sqlite3')!r}))"] * 2


def test_wabridge_migrate_reencrypt_secrets_rotates_tenants_to_the_new_key(tmp_path, monkeypatch, capsys):
    import anyio

    from wabridge.cli import main
    from wabridge.engine.settings import load_settings

    for var in ("WABRIDGE_DATABASE_URL", "WABRIDGE_REDIS_URL", "WABRIDGE_AMQP_URL", "WABRIDGE_S3_ENDPOINT",
                "WABRIDGE_CONFIG"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    old, new = generate_key(), generate_key()
    monkeypatch.setenv("WABRIDGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("WABRIDGE_SECRET_KEY", old)

    async def put() -> None:
        store = SqliteStore(load_settings())
        await store.open()
        await store.migrate()
        await store.put_tenant(tenant())
        await store.close()

    anyio.run(put)
    monkeypatch.setenv("WABRIDGE_SECRET_KEY", f"{new},{old}")
    assert main(["migrate", "--reencrypt-secrets"]) == 0
    assert capsys.readouterr().out.strip().endswith("1 tenant(s) re-encrypted with the primary key")

    monkeypatch.setenv("WABRIDGE_SECRET_KEY", new)  # the old key is gone: the rows must open with the new one alone

    async def read() -> TenantConfig | None:
        store = SqliteStore(load_settings())
        await store.open()
        try:
            return await store.get_tenant("acme")
        finally:
            await store.close()

    assert anyio.run(read).app_secret == tenant().app_secret


# --- where a message came from, and its unusual steps (issue 19: `wabridge trace`, `wabridge messages`) ------------


async def test_where_a_message_came_from_is_kept_by_later_writes_that_do_not_know_it(store):
    await store.write_tracking([TrackingRecord(
        wamid="w1", tenant_id="acme", status="failed", webhook_id="0194abc", shard=2, archive_key="acme/d/s.ndjson#3",
        received_at=1_700_000_000.25, customer_id="15550001", media_key="acme/image/d/w1.jpg",
    )])  # fmt: skip
    # A replay knows none of it: its `delivered` write must not erase where the message came from.
    await store.write_tracking([TrackingRecord(wamid="w1", tenant_id="acme", status="delivered", attempts=1,
                                               genesys_message_id="g-1")])  # fmt: skip
    row = await store.get_tracking("acme", "w1")
    assert (row.status, row.webhook_id, row.shard, row.archive_key, row.customer_id, row.media_key) == (
        "delivered", "0194abc", 2, "acme/d/s.ndjson#3", "15550001", "acme/image/d/w1.jpg")
    assert row.received_at == pytest.approx(1_700_000_000.25, abs=1e-3)
    assert (await store.list_tracking(tenant_id="acme"))[0] == row


async def test_find_tracking_by_wamid_in_any_tenant_by_genesys_id_or_by_webhook(store):
    await store.put_tenant(tenant("acme", ("1",)))
    await store.put_tenant(tenant("globex", ("2",)))
    await store.write_tracking([
        TrackingRecord(wamid="w1", tenant_id="acme", status="delivered", genesys_message_id="g-1", webhook_id="h1",
                       created_at=1_700_000_001),
        TrackingRecord(wamid="w2", tenant_id="acme", status="failed", webhook_id="h1", created_at=1_700_000_002),
        TrackingRecord(wamid="w1", tenant_id="globex", status="received", webhook_id="h2", created_at=1_700_000_003),
        TrackingRecord(wamid="w9", tenant_id="", status="unrouted", created_at=1_700_000_004),
    ])  # fmt: skip
    assert [(r.tenant_id, r.wamid) for r in await store.find_tracking("w1")] == [("acme", "w1"), ("globex", "w1")]
    assert [(r.tenant_id, r.wamid) for r in await store.find_tracking("g-1")] == [("acme", "w1")]
    assert [r.wamid for r in await store.find_tracking("h1")] == ["w1", "w2"], "every message of the webhook"
    assert [r.status for r in await store.find_tracking("w9")] == ["unrouted"]
    assert await store.find_tracking("nothing-like-it") == []
    found = (await store.find_tracking("w2"))[0]
    assert found == await store.get_tracking("acme", "w2")


async def test_list_tracking_by_customer_and_direction_newest_first(store):
    t0 = 1_700_000_000.0
    await store.write_tracking([
        TrackingRecord(wamid=f"w{i}", tenant_id="acme", status="delivered", customer_id="c1" if i % 2 else "c2",
                       direction="outbound" if i == 5 else "inbound", created_at=t0 + i)
        for i in range(8)
    ])  # fmt: skip
    rows = await store.list_tracking(tenant_id="acme", customer_id="c1", newest_first=True)
    assert [r.wamid for r in rows] == ["w7", "w5", "w3", "w1"]
    rows = await store.list_tracking(customer_id="c1", direction="inbound", newest_first=True, limit=2)
    assert [r.wamid for r in rows] == ["w7", "w3"]
    assert [r.wamid for r in await store.list_tracking(customer_id="c2", since=t0 + 3)] == ["w4", "w6"]


async def test_message_events_come_back_in_time_order_by_wamid_or_by_webhook_within_the_tenant(store):
    from wabridge.ports import MessageEvent

    t0 = 1_700_000_000.0
    await store.write_events([
        MessageEvent(tenant_id="acme", wamid="w1", webhook_id="h1", at=t0 + 2, event="retried", detail="HTTP 500"),
        MessageEvent(tenant_id="acme", wamid="w1", webhook_id="h1", at=t0 + 1, event="held", detail="genesys down"),
        MessageEvent(tenant_id="acme", webhook_id="h1", at=t0 + 3, event="parked", detail="shard 1"),
        MessageEvent(tenant_id="acme", wamid="w2", webhook_id="h2", at=t0 + 4, event="failed"),
        MessageEvent(tenant_id="globex", wamid="w1", webhook_id="h1", at=t0, event="replayed"),
    ])  # fmt: skip
    await store.write_events([])
    events = await store.list_events(tenant_id="acme", wamids=["w1"], webhook_ids=["h1"])
    assert [(e.wamid, e.event) for e in events] == [("w1", "held"), ("w1", "retried"), ("", "parked")]
    assert events[0] == MessageEvent(tenant_id="acme", wamid="w1", webhook_id="h1", direction="inbound",
                                     at=pytest.approx(t0 + 1, abs=1e-3), event="held", detail="genesys down")
    assert [e.event for e in await store.list_events(tenant_id="acme", wamids=["w2"])] == ["failed"]
    assert [e.event for e in await store.list_events(tenant_id="acme", webhook_ids=["h1"], limit=1)] == ["held"]
    assert await store.list_events(tenant_id="acme") == []
