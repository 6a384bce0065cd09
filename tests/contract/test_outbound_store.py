"""The Store contract for the outbound half (issue 17, migration 6), run against PostgreSQL and SQLite: a tenant's
Genesys webhook secret and send settings, the Meta side of an outbound tracking row, and each customer's latest
inbound message (the contact an agent's answer is sent from)."""

from __future__ import annotations

import msgspec
import pytest

from tests.contract.test_store import make_store, raw_tenant_rows, tenant
from wabridge.adapters.store import sqlite as store_sqlite
from wabridge.adapters.store import postgres as store_postgres
from wabridge.adapters.store import rules
from wabridge.ports import Contact, Store, TenantConfig, TrackingRecord
from wabridge.engine.secrets import Secret, generate_key
from wabridge.adapters.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

WEBHOOK_SECRET = "genesys-webhook-secret-XYZ"


def outbound_tenant(tenant_id: str = "acme", phones: tuple[str, ...] = ("106540352242922",)) -> TenantConfig:
    return msgspec.structs.replace(
        tenant(tenant_id, phones), genesys_webhook_secret=Secret(WEBHOOK_SECRET), send_rate_per_second=20,
        read_marks=False,
    )  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def store_settings(request):
    return request.getfixturevalue("embedded_settings" if request.param == "sqlite" else "server_settings")


@pytest.fixture
async def store(store_settings):
    s = make_store(store_settings)
    await s.open()
    await s.migrate()
    yield s
    await s.close()


async def raw_column(store: Store, sql: str, *args):
    """One value read past the adapter (the store's own connection, so the test sees what the row holds)."""
    if isinstance(store, SqliteStore):
        return await store._run(lambda db: db.execute(sql.replace("$1", "?"), args).fetchone()[0])
    async with store._conn() as conn:
        return await conn.fetchval(sql, *args)


# --- tenants ---


async def test_a_tenant_with_a_webhook_secret_and_send_settings_reads_back_as_written(store):
    t = outbound_tenant(phones=("111", "222"))
    await store.put_tenant(t)
    assert await store.get_tenant("acme") == t
    assert await store.tenant_for_phone_number("222") == t
    assert await store.list_tenants() == [t]
    back = await store.get_tenant("acme")
    assert back.genesys_webhook_secret.reveal() == WEBHOOK_SECRET
    assert (back.send_rate_per_second, back.read_marks) == (20, False)


async def test_a_tenant_without_a_webhook_secret_reads_back_with_none_and_the_defaults(store):
    await store.put_tenant(tenant())
    back = await store.get_tenant("acme")
    assert back == tenant()
    assert (back.genesys_webhook_secret, back.send_rate_per_second, back.read_marks) == (None, 80, True)
    assert await raw_column(store, "SELECT genesys_webhook_secret FROM tenant_credentials WHERE tenant_id = $1",
                            "acme") is None  # fmt: skip


async def test_updating_a_tenant_sets_changes_and_removes_its_webhook_secret(store):
    await store.put_tenant(tenant())
    await store.put_tenant(outbound_tenant())
    assert (await store.get_tenant("acme")).genesys_webhook_secret == Secret(WEBHOOK_SECRET)
    changed = msgspec.structs.replace(outbound_tenant(), genesys_webhook_secret=Secret("another"), read_marks=True)
    await store.put_tenant(changed)
    assert await store.get_tenant("acme") == changed
    await store.put_tenant(tenant())  # put_tenant stores the tenant whole: no secret given, none kept
    assert await store.get_tenant("acme") == tenant()


async def test_the_webhook_secret_is_sealed_for_its_tenant_and_field_and_hidden_in_reprs(store, store_settings):
    await store.put_tenant(outbound_tenant())
    [row] = await raw_tenant_rows(store)
    assert WEBHOOK_SECRET not in row
    assert WEBHOOK_SECRET not in repr(await store.get_tenant("acme"))
    assert WEBHOOK_SECRET not in repr(await store.list_tenants())
    sealed = await raw_column(store, "SELECT genesys_webhook_secret FROM tenant_credentials WHERE tenant_id = $1",
                              "acme")  # fmt: skip
    box = store_settings.secret_box()
    assert sealed.startswith(f"v1:{box.primary_key_id}:")
    # Bound to tenant and field, like the other secrets: copied into another row or column it does not open.
    assert box.decrypt(sealed, context="acme:genesys_webhook_secret") == WEBHOOK_SECRET
    with pytest.raises(ValueError):
        box.decrypt(sealed, context="acme:app_secret")


async def test_reencrypt_secrets_reseals_the_webhook_secret_too(store_settings):
    old = make_store(store_settings)
    await old.open()
    await old.migrate()
    await old.put_tenant(outbound_tenant())
    old_key_id = store_settings.secret_box().primary_key_id
    await old.close()
    new_key = generate_key()
    rotated = make_store(store_settings.replace(secret_key=Secret(f"{new_key},{store_settings.secret_key.reveal()}")))
    await rotated.open()
    try:
        assert await rotated.reencrypt_secrets() == 1
        assert all(f"v1:{old_key_id}:" not in row for row in await raw_tenant_rows(rotated))
    finally:
        await rotated.close()
    alone = make_store(store_settings.replace(secret_key=Secret(new_key)))  # the old key dropped
    await alone.open()
    try:
        assert await alone.get_tenant("acme") == outbound_tenant()
    finally:
        await alone.close()


async def test_a_row_whose_only_stale_secret_is_the_webhook_secret_needs_rotation(store_settings):
    box = store_settings.secret_box()
    rotated_box = store_settings.replace(
        secret_key=Secret(f"{generate_key()},{store_settings.secret_key.reveal()}")
    ).secret_box()
    row = rules.seal_tenant(rotated_box, outbound_tenant())
    assert not rules.needs_rotation(rotated_box, row)
    row["genesys_webhook_secret"] = box.encrypt(WEBHOOK_SECRET, context="acme:genesys_webhook_secret")
    assert rules.needs_rotation(rotated_box, row)


# --- outbound tracking: the Meta side ---


async def test_meta_ids_and_meta_status_are_kept_by_later_writes_that_do_not_know_them(store):
    key = ("acme", "genesys-msg-1")
    await store.put_tenant(tenant())
    await store.write_tracking([TrackingRecord(
        wamid=key[1], tenant_id="acme", status="delivered", direction="outbound", type="text",
        genesys_message_id=key[1], customer_id="15550001", meta_ids="wamid.A wamid.B", created_at=1_700_000_000,
    )])  # fmt: skip
    await store.write_tracking([TrackingRecord(wamid=key[1], tenant_id="acme", status="delivered",
                                               direction="outbound", meta_status='{"wamid.A":"sent"}')])  # fmt: skip
    await store.write_tracking([TrackingRecord(wamid=key[1], tenant_id="acme", status="delivered",
                                               direction="outbound")])  # knows neither: keeps both  # fmt: skip
    row = await store.get_tracking(*key)
    assert (row.meta_ids, row.meta_status) == ("wamid.A wamid.B", '{"wamid.A":"sent"}')
    # Every read of tracking rows carries them.
    assert (await store.get_tracking_many([key]))[key] == row
    assert await store.list_tracking(tenant_id="acme", direction="outbound") == [row]
    assert await store.list_tracking(customer_id="15550001", newest_first=True) == [row]
    assert await store.find_tracking(key[1]) == [row]
    # A later write that knows a new state replaces it.
    await store.write_tracking([TrackingRecord(wamid=key[1], tenant_id="acme", status="delivered",
                                               direction="outbound", meta_status='{"wamid.A":"read"}')])  # fmt: skip
    assert (await store.get_tracking(*key)).meta_status == '{"wamid.A":"read"}'
    assert (await store.get_tracking(*key)).meta_ids == "wamid.A wamid.B"


async def test_an_inbound_row_has_no_meta_side(store):
    await store.write_tracking([TrackingRecord(wamid="wamid.in", tenant_id="acme", status="delivered")])
    row = await store.get_tracking("acme", "wamid.in")
    assert (row.meta_ids, row.meta_status) == (None, None)


# --- customer contacts ---


async def test_contacts_are_set_and_read_many_at_once_per_tenant(store):
    assert await store.get_contacts([]) == {}
    await store.set_contacts([])
    await store.set_contacts([
        ("acme", "15550001", "111", "wamid.a1", 1_700_000_001.5),
        ("acme", "15550002", "222", "wamid.a2", 1_700_000_002.0),
        ("globex", "15550001", "333", "wamid.g1", 1_700_000_003.25),
    ])  # fmt: skip
    found = await store.get_contacts([("acme", "15550001"), ("acme", "15550002"), ("globex", "15550001"),
                                      ("acme", "unknown"), ("initech", "15550001")])  # fmt: skip
    assert found == {
        ("acme", "15550001"): Contact("111", "wamid.a1", 1_700_000_001.5),
        ("acme", "15550002"): Contact("222", "wamid.a2", 1_700_000_002.0),
        ("globex", "15550001"): Contact("333", "wamid.g1", 1_700_000_003.25),
    }


async def test_an_older_contact_never_replaces_a_newer_one(store):
    key = ("acme", "15550001")
    await store.set_contacts([(*key, "111", "wamid.2", 1_700_000_002.0)])
    await store.set_contacts([(*key, "999", "wamid.1", 1_700_000_001.0)])  # arrives late: ignored
    assert await store.get_contacts([key]) == {key: Contact("111", "wamid.2", 1_700_000_002.0)}
    await store.set_contacts([(*key, "222", "wamid.3", 1_700_000_003.0)])  # newer: wins, number and all
    assert await store.get_contacts([key]) == {key: Contact("222", "wamid.3", 1_700_000_003.0)}
    # Within one batch too, whatever the order; of two at the same instant the later row wins.
    await store.set_contacts([(*key, "333", "wamid.5", 1_700_000_005.0), (*key, "444", "wamid.4", 1_700_000_004.0)])
    assert await store.get_contacts([key]) == {key: Contact("333", "wamid.5", 1_700_000_005.0)}
    await store.set_contacts([(*key, "555", "wamid.5b", 1_700_000_005.0)])
    assert await store.get_contacts([key]) == {key: Contact("555", "wamid.5b", 1_700_000_005.0)}
    await store.set_contacts([(*key, "666", "wamid.6a", 1_700_000_006.0), (*key, "777", "wamid.6b", 1_700_000_006.0)])
    assert await store.get_contacts([key]) == {key: Contact("777", "wamid.6b", 1_700_000_006.0)}


# --- migration 6 on a database at version 5 ---

_OLD_TENANT_COLUMNS = (
    "tenant_id", "phone_number_ids", "app_secret", "verify_token", "whatsapp_token", "genesys_api_url",
    "genesys_login_url", "genesys_integration_id", "credentials", "rate_limit_per_minute", "key_id",
)  # fmt: skip


async def test_migrating_a_version_5_database_keeps_its_tenants_and_rows_readable_with_the_defaults(
    store_settings, monkeypatch
):
    module = store_sqlite if store_settings.database_url is None else store_postgres
    latest = module.MIGRATIONS
    monkeypatch.setattr(module, "MIGRATIONS", latest[:5])
    store = make_store(store_settings)
    await store.open()
    try:
        assert await store.migrate() == 5
        # A tenant and an inbound row as version 5 wrote them.
        sealed = rules.seal_tenant(store_settings.secret_box(), tenant())
        values = [sealed[c] for c in _OLD_TENANT_COLUMNS]
        if isinstance(store, SqliteStore):
            values[1] = msgspec.json.encode(values[1]).decode()
            await store._run(lambda db: (
                db.execute(f"INSERT INTO tenant_credentials ({', '.join(_OLD_TENANT_COLUMNS)}, updated_at)"
                           f" VALUES ({', '.join('?' * 12)})", (*values, 1_700_000_000.0)),
                db.execute("INSERT INTO message_tracking (tenant_id, wamid, direction, type, status, created_at,"
                           " updated_at) VALUES ('acme', 'wamid.old', 'inbound', 'text', 'delivered', 1, 1)"),
            ))  # fmt: skip
        else:
            async with store._conn() as conn:
                await conn.execute(
                    f"INSERT INTO tenant_credentials ({', '.join(_OLD_TENANT_COLUMNS)})"
                    f" VALUES ({', '.join(f'${n}' for n in range(1, 12))})", *values)
                await conn.execute(
                    "INSERT INTO message_tracking (tenant_id, wamid, direction, type, status, created_at, updated_at)"
                    " VALUES ('acme', 'wamid.old', 'inbound', 'text', 'delivered', now(), now())")  # fmt: skip
        monkeypatch.setattr(module, "MIGRATIONS", latest)
        assert await store.migrate() == len(latest) >= 6
        back = await store.get_tenant("acme")
        assert back == tenant()
        assert (back.genesys_webhook_secret, back.send_rate_per_second, back.read_marks) == (None, 80, True)
        old = await store.get_tracking("acme", "wamid.old")
        assert (old.status, old.meta_ids, old.meta_status) == ("delivered", None, None)
        # The new parts work on the upgraded database.
        await store.put_tenant(outbound_tenant())
        assert await store.get_tenant("acme") == outbound_tenant()
        await store.set_contacts([("acme", "15550001", "111", "wamid.old", 1.0)])
        contact = {("acme", "15550001"): Contact("111", "wamid.old", 1.0)}
        assert await store.get_contacts([("acme", "15550001")]) == contact
    finally:
        await store.close()
