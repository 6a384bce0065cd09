"""The Store port on PostgreSQL (asyncpg, one pool).

Schema (migrate() creates or upgrades it, under an advisory lock, recording each step in schema_version):
  tenant_credentials      one row per tenant; every secret encrypted at rest (SecretBox, context "<tenant>:<field>")
                          with the encrypting key id beside it, so reencrypt_secrets() finds rows to rotate
  tenant_phone_numbers    phone_number_id → tenant (primary key: a number belongs to one tenant at most)
  conversation_mappings   (tenant_id, wa_id) → conversation_id UUID, last_activity_at, created_at
  customer_aliases        (tenant_id, alias_id) → canonical_id: a customer's other id (phone or BSUID), insert-only
  message_tracking        (tenant_id, wamid) → status, attempts, error, …, payload; index for replay queries; where
                          it came from (webhook, shard, archive key, customer), indexed by Genesys id and webhook id
  customer_contacts       (tenant_id, customer_id) → the customer's latest inbound message (phone_number_id, wamid,
                          at): where an agent's answer is sent from; an older write never replaces a newer one
  message_events          the unusual steps of a message (retries, holds, hand-backs, parking, dead letters, replays)
  parked_messages         seq → a held-back tenant's queue message (shard, tenant, message id, body, attempt), kept
                          aside so its shard's other tenants go on; seq orders them and is never reused

Tracking upserts, the rule for "duplicate": a duplicate of a wamid we already track is a separate fact about a
redelivery, never a new state of the message, so a `duplicate` write inserts a row only when none exists and never
overwrites an existing one (a delivered message stays delivered). Any other status overwrites: the bridge writes
each message's states in order (one tenant, one shard, one worker). A `delivered` write without payload clears the
stored payload (it was kept only for replay); other writes without payload keep it.

Down: connection errors and timeouts become BackendUnavailable("store", …); the pool reconnects by itself later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import asyncpg

from wabridge.adapters.store.rules import (
    duplicate_counts,
    latest_per_key,
    needs_rotation,
    newest_contacts,
    open_tenant,
    seal_tenant,
)
from wabridge.engine.settings import Settings
from wabridge.ports import (
    BackendUnavailable,
    Contact,
    MessageEvent,
    ParkedMessage,
    PhoneNumberTaken,
    TenantConfig,
    TrackingRecord,
    TrackingStatus,
)

POOL_MAX = 16  # a worker's relays share it; waiting for a free connection is backpressure, not an outage
CONNECT_TIMEOUT = 2.0  # seconds; an unreachable database is reported, not waited for
# Waiting for a pooled connection while hundreds of relays share 16 is normal under load: a short wait here would
# read a busy pool as "PostgreSQL down" and send messages back to the queue (docs/decisions.md).
ACQUIRE_TIMEOUT = 30.0
COMMAND_TIMEOUT = 10.0
# Plan every execution for its own arguments. The pool's statements are prepared, and after five executions
# PostgreSQL may keep one generic plan for good, chosen while the tables were small (a sequential scan, kept as the
# tables grow; docs/decisions.md). Planning these statements is cheap next to that.
#
# Commits wait for their WAL, whatever the server's default: a queue message is acked once its tracking row is
# committed, and a server set to `synchronous_commit=off` (the throwaway test servers are) can lose such rows, of
# messages Genesys already has, when it is killed; a redelivery or a replay would send them again (docs/decisions.md).
# The tracking writes are batched, so the wait is paid per batch.
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan", "synchronous_commit": "on"}
MIGRATION_LOCK = 0x77616272  # "wabr": one migrator at a time across processes

# --- schema -------------------------------------------------------------------------------------------------------

_STATUSES = ", ".join(f"'{s}'" for s in TrackingStatus.ALL)

MIGRATIONS: tuple[str, ...] = (
    # 1: the whole first schema
    f"""
    CREATE TABLE tenant_credentials (
        tenant_id text PRIMARY KEY,
        phone_number_ids text[] NOT NULL,
        app_secret text NOT NULL,
        verify_token text NOT NULL,
        whatsapp_token text NOT NULL,
        genesys_api_url text NOT NULL,
        genesys_login_url text NOT NULL,
        genesys_integration_id text NOT NULL,
        credentials text NOT NULL,
        rate_limit_per_minute integer NOT NULL,
        key_id text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE tenant_phone_numbers (
        phone_number_id text PRIMARY KEY,
        tenant_id text NOT NULL REFERENCES tenant_credentials (tenant_id) ON DELETE CASCADE
    );
    CREATE INDEX tenant_phone_numbers_tenant ON tenant_phone_numbers (tenant_id);
    CREATE TABLE conversation_mappings (
        tenant_id text NOT NULL,
        wa_id text NOT NULL,
        conversation_id uuid NOT NULL,
        last_activity_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, wa_id)
    );
    CREATE INDEX conversation_mappings_conversation ON conversation_mappings (conversation_id);
    CREATE TABLE message_tracking (
        tenant_id text NOT NULL,
        wamid text NOT NULL,
        conversation_id text,
        direction text NOT NULL,
        type text NOT NULL,
        status text NOT NULL CHECK (status IN ({_STATUSES})),
        attempts integer NOT NULL DEFAULT 0,
        error text,
        genesys_message_id text,
        payload bytea,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, wamid)
    );
    CREATE INDEX message_tracking_replay ON message_tracking (tenant_id, status, created_at);
    CREATE INDEX message_tracking_created ON message_tracking (created_at);
    """,
    # 2: repeats of a settled message are counted on its row
    "ALTER TABLE message_tracking ADD COLUMN duplicates integer NOT NULL DEFAULT 0",
    # 3: the queue messages of held-back tenants, kept aside in order (Store.park)
    """
    CREATE TABLE parked_messages (
        seq bigserial PRIMARY KEY,
        shard integer NOT NULL,
        tenant_id text NOT NULL,
        message_id text NOT NULL,
        body bytea NOT NULL,
        attempt integer NOT NULL,
        parked_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX parked_messages_tenant ON parked_messages (shard, tenant_id, seq);
    CREATE TABLE parking_fences (
        shard integer NOT NULL,
        tenant_id text NOT NULL,
        message_id text NOT NULL,
        PRIMARY KEY (shard, tenant_id)
    );
    """,
    # 4: one customer known by two ids (a phone number and a BSUID): the alias names the id their conversation uses
    """
    CREATE TABLE customer_aliases (
        tenant_id text NOT NULL,
        alias_id text NOT NULL,
        canonical_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, alias_id)
    );
    """,
    # 5: where each message came from, and the unusual steps of its life (`wabridge trace`, `wabridge messages`).
    # Nullable columns without a default: added without rewriting the table.
    """
    ALTER TABLE message_tracking ADD COLUMN webhook_id text, ADD COLUMN shard integer, ADD COLUMN archive_key text,
        ADD COLUMN received_at timestamptz, ADD COLUMN customer_id text, ADD COLUMN media_key text;
    CREATE INDEX message_tracking_genesys ON message_tracking (genesys_message_id)
        WHERE genesys_message_id IS NOT NULL;
    CREATE INDEX message_tracking_webhook ON message_tracking (webhook_id) WHERE webhook_id IS NOT NULL;
    CREATE INDEX message_tracking_customer ON message_tracking (tenant_id, customer_id, created_at)
        WHERE customer_id IS NOT NULL;
    CREATE TABLE message_events (
        id bigserial PRIMARY KEY,
        tenant_id text NOT NULL,
        wamid text NOT NULL,
        webhook_id text NOT NULL,
        direction text NOT NULL,
        at timestamptz NOT NULL,
        event text NOT NULL,
        detail text NOT NULL
    );
    CREATE INDEX message_events_wamid ON message_events (tenant_id, wamid, at);
    CREATE INDEX message_events_webhook ON message_events (tenant_id, webhook_id, at);
    """,
    # 6: the outbound half: a tenant's Genesys webhook secret (sealed, NULL when none) and send settings;
    # the wamids Meta gave an agent's message and its delivery state; each customer's latest inbound message.
    # Nullable columns and constant defaults: added without rewriting the tables.
    """
    ALTER TABLE tenant_credentials ADD COLUMN genesys_webhook_secret text,
        ADD COLUMN send_rate_per_second integer NOT NULL DEFAULT 80,
        ADD COLUMN read_marks boolean NOT NULL DEFAULT true;
    ALTER TABLE message_tracking ADD COLUMN meta_ids text, ADD COLUMN meta_status text;
    CREATE TABLE customer_contacts (
        tenant_id text NOT NULL,
        customer_id text NOT NULL,
        phone_number_id text NOT NULL,
        wamid text NOT NULL,
        at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, customer_id)
    );
    """,
)

# Arrays in, one statement, one round trip (see bench/test_store_bench.py for the measured alternatives).
_UPSERT_TRACKING = """
INSERT INTO message_tracking AS t (tenant_id, wamid, conversation_id, direction, type, status, attempts, error,
                                   genesys_message_id, payload, created_at, updated_at, webhook_id, shard,
                                   archive_key, received_at, customer_id, media_key, meta_ids, meta_status)
SELECT u.tenant_id, u.wamid, u.conversation_id, u.direction, u.type, u.status, u.attempts, u.error,
       u.genesys_message_id, u.payload, to_timestamp(u.created_at), to_timestamp(u.updated_at), u.webhook_id,
       u.shard, u.archive_key, to_timestamp(u.received_at), u.customer_id, u.media_key, u.meta_ids, u.meta_status
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[],
            $9::text[], $10::bytea[], $11::float8[], $12::float8[], $13::text[], $14::int[], $15::text[],
            $16::float8[], $17::text[], $18::text[], $19::text[], $20::text[])
     AS u(tenant_id, wamid, conversation_id, direction, type, status, attempts, error, genesys_message_id, payload,
          created_at, updated_at, webhook_id, shard, archive_key, received_at, customer_id, media_key, meta_ids,
          meta_status)
ON CONFLICT (tenant_id, wamid) DO UPDATE SET
    meta_ids = COALESCE(EXCLUDED.meta_ids, t.meta_ids),
    meta_status = COALESCE(EXCLUDED.meta_status, t.meta_status),
    webhook_id = COALESCE(EXCLUDED.webhook_id, t.webhook_id),
    shard = COALESCE(EXCLUDED.shard, t.shard),
    archive_key = COALESCE(EXCLUDED.archive_key, t.archive_key),
    received_at = COALESCE(EXCLUDED.received_at, t.received_at),
    customer_id = COALESCE(EXCLUDED.customer_id, t.customer_id),
    media_key = COALESCE(EXCLUDED.media_key, t.media_key),
    status = EXCLUDED.status,
    attempts = EXCLUDED.attempts,
    error = EXCLUDED.error,
    conversation_id = COALESCE(EXCLUDED.conversation_id, t.conversation_id),
    genesys_message_id = COALESCE(EXCLUDED.genesys_message_id, t.genesys_message_id),
    type = CASE WHEN EXCLUDED.type = '' THEN t.type ELSE EXCLUDED.type END,
    payload = CASE WHEN EXCLUDED.payload IS NOT NULL THEN EXCLUDED.payload
                   WHEN EXCLUDED.status = 'delivered' THEN NULL ELSE t.payload END,
    updated_at = EXCLUDED.updated_at
WHERE EXCLUDED.status <> 'duplicate'
"""

_COUNT_DUPLICATES = """
UPDATE message_tracking AS t SET duplicates = t.duplicates + u.n
FROM unnest($1::text[], $2::text[], $3::int[]) AS u(tenant_id, wamid, n)
WHERE t.tenant_id = u.tenant_id AND t.wamid = u.wamid
"""

_TRACKING_COLUMNS = """wamid, tenant_id, status, direction, type, conversation_id, genesys_message_id, attempts, error,
    payload, duplicates, extract(epoch FROM created_at)::float8 AS created_at, extract(epoch FROM updated_at)::float8 AS updated_at,
    webhook_id, shard, archive_key, extract(epoch FROM received_at)::float8 AS received_at, customer_id, media_key,
    meta_ids, meta_status"""
_EVENT_COLUMNS = "tenant_id, wamid, webhook_id, direction, extract(epoch FROM at)::float8 AS at, event, detail"

# The rows are numbered by the sequence as the sorted SELECT yields them, so seq follows the caller's order.
_PARK = """
INSERT INTO parked_messages (shard, tenant_id, message_id, body, attempt)
SELECT $1, u.tenant_id, u.message_id, u.body, u.attempt
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::int[]) WITH ORDINALITY
     AS u(tenant_id, message_id, body, attempt, n)
ORDER BY u.n
"""

_DOWN = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
)


class PostgresStore:
    def __init__(self, settings: Settings) -> None:
        if settings.database_url is None:
            raise ValueError("PostgresStore needs settings.database_url")
        self._url = settings.database_url
        self._box = settings.secret_box()
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:  # host and database only: the URL may hold a password
        from urllib.parse import urlsplit

        url = urlsplit(self._url.reveal())
        return f"PostgresStore({url.hostname}:{url.port or 5432}{url.path})"

    # --- lifecycle ---

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._url.reveal(),
                min_size=1,
                max_size=POOL_MAX,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                reset=_session_unchanged,
                server_settings=SESSION_SETTINGS,
            )
        except _DOWN as exc:
            raise BackendUnavailable("store", f"postgresql: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _conn(self):
        if self._pool is None:
            raise RuntimeError("PostgresStore.open() was not called")
        return _Guarded(self._pool)

    async def ping(self) -> bool:
        try:
            async with self._conn() as conn:
                return await conn.fetchval("SELECT 1") == 1
        except BackendUnavailable:
            return False

    async def migrate(self) -> int:
        """Returns the schema version now in place."""
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for version, ddl in enumerate(MIGRATIONS[current:], start=current + 1):
                await conn.execute(ddl)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            return len(MIGRATIONS)

    # --- tenants ---

    async def put_tenant(self, tenant: TenantConfig) -> None:
        row = seal_tenant(self._box, tenant)
        async with self._conn() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO tenant_credentials (tenant_id, phone_number_ids, app_secret, verify_token,
                       whatsapp_token, genesys_api_url, genesys_login_url, genesys_integration_id, credentials,
                       rate_limit_per_minute, key_id, genesys_webhook_secret, send_rate_per_second, read_marks)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                   ON CONFLICT (tenant_id) DO UPDATE SET phone_number_ids = EXCLUDED.phone_number_ids,
                       app_secret = EXCLUDED.app_secret, verify_token = EXCLUDED.verify_token,
                       whatsapp_token = EXCLUDED.whatsapp_token, genesys_api_url = EXCLUDED.genesys_api_url,
                       genesys_login_url = EXCLUDED.genesys_login_url,
                       genesys_integration_id = EXCLUDED.genesys_integration_id,
                       credentials = EXCLUDED.credentials, rate_limit_per_minute = EXCLUDED.rate_limit_per_minute,
                       key_id = EXCLUDED.key_id, genesys_webhook_secret = EXCLUDED.genesys_webhook_secret,
                       send_rate_per_second = EXCLUDED.send_rate_per_second, read_marks = EXCLUDED.read_marks,
                       updated_at = now()""",
                row["tenant_id"],
                row["phone_number_ids"],
                row["app_secret"],
                row["verify_token"],
                row["whatsapp_token"],
                row["genesys_api_url"],
                row["genesys_login_url"],
                row["genesys_integration_id"],
                row["credentials"],
                row["rate_limit_per_minute"],
                row["key_id"],
                row["genesys_webhook_secret"],
                row["send_rate_per_second"],
                row["read_marks"],
            )
            phones = list(tenant.phone_number_ids)
            await conn.execute(
                "DELETE FROM tenant_phone_numbers WHERE tenant_id = $1 AND NOT (phone_number_id = ANY($2))",
                tenant.tenant_id,
                phones,
            )
            # The primary key serialises concurrent claims: DO NOTHING waits for a competing insert to commit.
            await conn.execute(
                "INSERT INTO tenant_phone_numbers (phone_number_id, tenant_id) SELECT p, $2 FROM unnest($1::text[]) p"
                " ON CONFLICT (phone_number_id) DO NOTHING",
                phones,
                tenant.tenant_id,
            )
            taken = await conn.fetchrow(
                "SELECT phone_number_id, tenant_id FROM tenant_phone_numbers"
                " WHERE phone_number_id = ANY($1) AND tenant_id <> $2 LIMIT 1",
                phones,
                tenant.tenant_id,
            )
            if taken is not None:
                raise PhoneNumberTaken(
                    f"phone_number_id {taken['phone_number_id']} belongs to tenant {taken['tenant_id']}"
                )

    async def get_tenant(self, tenant_id: str) -> TenantConfig | None:
        async with self._conn() as conn:
            row = await conn.fetchrow("SELECT * FROM tenant_credentials WHERE tenant_id = $1", tenant_id)
        return None if row is None else open_tenant(self._box, row)

    async def tenant_for_phone_number(self, phone_number_id: str) -> TenantConfig | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT c.* FROM tenant_phone_numbers p JOIN tenant_credentials c USING (tenant_id)"
                " WHERE p.phone_number_id = $1",
                phone_number_id,
            )
        return None if row is None else open_tenant(self._box, row)

    async def list_tenants(self) -> list[TenantConfig]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT * FROM tenant_credentials ORDER BY tenant_id")
        return [open_tenant(self._box, r) for r in rows]

    async def remove_tenant(self, tenant_id: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute("DELETE FROM tenant_credentials WHERE tenant_id = $1", tenant_id)
        return status == "DELETE 1"

    async def reencrypt_secrets(self) -> int:
        """Re-encrypt every tenant whose secrets were sealed with a key other than the primary one (key rotation:
        configure `new,old`, run this, then drop the old key). Returns the number of tenants rewritten."""
        async with self._conn() as conn, conn.transaction():
            rows = await conn.fetch("SELECT * FROM tenant_credentials FOR UPDATE")
            stale = [r for r in rows if needs_rotation(self._box, r)]
            for r in stale:
                sealed = seal_tenant(self._box, open_tenant(self._box, r))
                await conn.execute(
                    "UPDATE tenant_credentials SET app_secret = $2, verify_token = $3, whatsapp_token = $4,"
                    " credentials = $5, key_id = $6, genesys_webhook_secret = $7, updated_at = now()"
                    " WHERE tenant_id = $1",
                    sealed["tenant_id"],
                    sealed["app_secret"],
                    sealed["verify_token"],
                    sealed["whatsapp_token"],
                    sealed["credentials"],
                    sealed["key_id"],
                    sealed["genesys_webhook_secret"],
                )
        return len(stale)

    # --- conversation mappings ---

    async def get_conversation(self, tenant_id: str, wa_id: str) -> str | None:
        async with self._conn() as conn:
            value = await conn.fetchval(
                "SELECT conversation_id FROM conversation_mappings WHERE tenant_id = $1 AND wa_id = $2",
                tenant_id,
                wa_id,
            )
        return None if value is None else str(value)

    async def get_conversations(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        if not keys:
            return {}
        async with self._conn() as conn:
            # One primary-key probe per key, as get_tracking_many.
            rows = await conn.fetch(
                "SELECT m.tenant_id, m.wa_id, m.conversation_id FROM unnest($1::text[], $2::text[]) AS k(tenant, wa),"
                " LATERAL (SELECT tenant_id, wa_id, conversation_id FROM conversation_mappings"
                " WHERE tenant_id = k.tenant AND wa_id = k.wa) m",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        return {(r["tenant_id"], r["wa_id"]): str(r["conversation_id"]) for r in rows}

    async def put_conversation(self, tenant_id: str, wa_id: str, conversation_id: str) -> str:
        async with self._conn() as conn:
            won = await conn.fetchval(
                "INSERT INTO conversation_mappings (tenant_id, wa_id, conversation_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant_id, wa_id) DO NOTHING RETURNING conversation_id",
                tenant_id,
                wa_id,
                conversation_id,
            )
            if won is not None:
                return str(won)
            # Another writer won; a new statement (new snapshot) sees its committed row.
            existing = await conn.fetchval(
                "SELECT conversation_id FROM conversation_mappings WHERE tenant_id = $1 AND wa_id = $2",
                tenant_id,
                wa_id,
            )
        return str(existing)

    async def set_conversation(self, tenant_id: str, wa_id: str, conversation_id: str) -> None:
        await self.set_conversations([(tenant_id, wa_id, conversation_id)])

    async def set_conversations(self, rows: Sequence[tuple[str, str, str]]) -> None:
        # One row per key, the last: ON CONFLICT DO UPDATE refuses to touch a row twice in one statement.
        latest = {(t, w): c for t, w, c in rows}
        if not latest:
            return
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO conversation_mappings (tenant_id, wa_id, conversation_id)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[])"
                " ON CONFLICT (tenant_id, wa_id) DO UPDATE SET conversation_id = EXCLUDED.conversation_id,"
                " last_activity_at = now()",
                [k[0] for k in latest],
                [k[1] for k in latest],
                list(latest.values()),
            )

    async def touch_conversations(self, touches: Sequence[tuple[str, str, float]]) -> None:
        latest: dict[tuple[str, str], float] = {}
        for tenant_id, wa_id, at in touches:
            latest[(tenant_id, wa_id)] = max(at, latest.get((tenant_id, wa_id), at))
        if not latest:
            return
        keys = list(latest)
        async with self._conn() as conn:
            await conn.execute(
                """UPDATE conversation_mappings m SET last_activity_at = to_timestamp(u.at)
                   FROM unnest($1::text[], $2::text[], $3::float8[]) AS u(tenant_id, wa_id, at)
                   WHERE m.tenant_id = u.tenant_id AND m.wa_id = u.wa_id AND m.last_activity_at < to_timestamp(u.at)""",
                [k[0] for k in keys],
                [k[1] for k in keys],
                list(latest.values()),
            )

    # --- customer aliases ---

    async def get_aliases(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        if not keys:
            return {}
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT a.tenant_id, a.alias_id, a.canonical_id FROM unnest($1::text[], $2::text[]) AS k(tenant, id),"
                " LATERAL (SELECT tenant_id, alias_id, canonical_id FROM customer_aliases"
                " WHERE tenant_id = k.tenant AND alias_id = k.id) a",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        return {(r["tenant_id"], r["alias_id"]): r["canonical_id"] for r in rows}

    async def put_alias(self, tenant_id: str, alias_id: str, canonical_id: str) -> str:
        async with self._conn() as conn:
            won = await conn.fetchval(
                "INSERT INTO customer_aliases (tenant_id, alias_id, canonical_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant_id, alias_id) DO NOTHING RETURNING canonical_id",
                tenant_id,
                alias_id,
                canonical_id,
            )
            if won is not None:
                return won
            return await conn.fetchval(  # another writer won: a new statement sees its committed row
                "SELECT canonical_id FROM customer_aliases WHERE tenant_id = $1 AND alias_id = $2", tenant_id, alias_id
            )

    # --- customer contacts ---

    async def set_contacts(self, rows: Sequence[tuple[str, str, str, str, float]]) -> None:
        latest = newest_contacts(rows)
        if not latest:
            return
        keys = list(latest)
        async with self._conn() as conn:
            # `<=`: of two writes at the same instant the later wins (one customer's messages are written in order).
            await conn.execute(
                "INSERT INTO customer_contacts AS c (tenant_id, customer_id, phone_number_id, wamid, at)"
                " SELECT u.tenant_id, u.customer_id, u.phone_number_id, u.wamid, to_timestamp(u.at)"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[])"
                " AS u(tenant_id, customer_id, phone_number_id, wamid, at)"
                " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET phone_number_id = EXCLUDED.phone_number_id,"
                " wamid = EXCLUDED.wamid, at = EXCLUDED.at WHERE c.at <= EXCLUDED.at",
                [k[0] for k in keys],
                [k[1] for k in keys],
                [latest[k].phone_number_id for k in keys],
                [latest[k].wamid for k in keys],
                [latest[k].at for k in keys],
            )

    async def get_contacts(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Contact]:
        if not keys:
            return {}
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT c.* FROM unnest($1::text[], $2::text[]) AS k(tenant, id), LATERAL"
                " (SELECT tenant_id, customer_id, phone_number_id, wamid, extract(epoch FROM at)::float8 AS at"
                " FROM customer_contacts WHERE tenant_id = k.tenant AND customer_id = k.id) c",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        return {(r["tenant_id"], r["customer_id"]): Contact(r["phone_number_id"], r["wamid"], r["at"]) for r in rows}

    # --- message tracking ---

    async def write_tracking(self, records: Sequence[TrackingRecord]) -> None:
        rows = latest_per_key(records)
        if not rows:
            return
        now = time.time()
        duplicates = duplicate_counts(records)
        async with self._conn() as conn, conn.transaction() if duplicates else contextlib.nullcontext():
            # One statement is atomic on its own: BEGIN and COMMIT only when the duplicate counts come with it (two
            # round trips fewer per batch; docs/decisions.md).
            await conn.execute(
                _UPSERT_TRACKING,
                [r.tenant_id for r in rows],
                [r.wamid for r in rows],
                [r.conversation_id for r in rows],
                [r.direction for r in rows],
                [r.type for r in rows],
                [r.status for r in rows],
                [r.attempts for r in rows],
                [r.error for r in rows],
                [r.genesys_message_id for r in rows],
                [r.payload for r in rows],
                [r.created_at or now for r in rows],
                [r.updated_at or now for r in rows],
                [r.webhook_id for r in rows],
                [r.shard for r in rows],
                [r.archive_key for r in rows],
                [r.received_at for r in rows],
                [r.customer_id for r in rows],
                [r.media_key for r in rows],
                [r.meta_ids for r in rows],
                [r.meta_status for r in rows],
            )
            if duplicates:
                await conn.execute(
                    _COUNT_DUPLICATES,
                    [k[0] for k in duplicates],
                    [k[1] for k in duplicates],
                    list(duplicates.values()),
                )

    async def get_tracking(self, tenant_id: str, wamid: str) -> TrackingRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_TRACKING_COLUMNS} FROM message_tracking WHERE tenant_id = $1 AND wamid = $2",
                tenant_id,
                wamid,
            )
        return None if row is None else TrackingRecord(**dict(row))

    async def get_tracking_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TrackingRecord]:
        if not keys:
            return {}
        async with self._conn() as conn:
            # One primary-key probe per key, without de-duplicating the keys first: cheaper to plan and to run than
            # `IN (SELECT * FROM unnest(...))`, for the worker's most frequent query (docs/decisions.md).
            rows = await conn.fetch(
                "SELECT t.* FROM unnest($1::text[], $2::text[]) AS k(tenant, id), LATERAL"
                f" (SELECT {_TRACKING_COLUMNS} FROM message_tracking WHERE tenant_id = k.tenant AND wamid = k.id) t",
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        return {(r["tenant_id"], r["wamid"]): TrackingRecord(**dict(r)) for r in rows}

    async def list_tracking(
        self,
        *,
        tenant_id: str | None = None,
        statuses: Sequence[str] = (),
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        customer_id: str | None = None,
        direction: str | None = None,
        newest_first: bool = False,
    ) -> list[TrackingRecord]:
        where, args = [], []
        if tenant_id is not None:
            args.append(tenant_id)
            where.append(f"tenant_id = ${len(args)}")
        if customer_id is not None:
            args.append(customer_id)
            where.append(f"customer_id = ${len(args)}")
        if direction is not None:
            args.append(direction)
            where.append(f"direction = ${len(args)}")
        if statuses:
            args.append(list(statuses))
            where.append(f"status = ANY(${len(args)})")
        if since is not None:
            args.append(since)
            where.append(f"created_at >= to_timestamp(${len(args)})")
        if until is not None:
            args.append(until)
            where.append(f"created_at < to_timestamp(${len(args)})")
        args.append(limit)
        sql = (
            f"SELECT {_TRACKING_COLUMNS} FROM message_tracking"
            f" {'WHERE ' + ' AND '.join(where) if where else ''}"
            f" ORDER BY {'created_at DESC, wamid DESC' if newest_first else 'created_at, wamid'} LIMIT ${len(args)}"
        )
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *args)
        return [TrackingRecord(**dict(r)) for r in rows]

    async def find_tracking(self, message_id: str, *, limit: int = 1000) -> list[TrackingRecord]:
        # By wamid: one primary-key probe per tenant (the key starts with the tenant; '' holds the unrouted rows),
        # rather than an index on wamid alone that every tracking insert would pay for.
        sql = f"""
            SELECT * FROM (
                SELECT m.* FROM (SELECT tenant_id FROM tenant_credentials UNION SELECT '') AS k,
                    LATERAL (SELECT {_TRACKING_COLUMNS} FROM message_tracking
                             WHERE tenant_id = k.tenant_id AND wamid = $1) m
                UNION
                SELECT {_TRACKING_COLUMNS} FROM message_tracking WHERE genesys_message_id = $1
                UNION
                SELECT {_TRACKING_COLUMNS} FROM message_tracking WHERE webhook_id = $1
            ) found ORDER BY created_at, wamid LIMIT $2"""
        async with self._conn() as conn:
            rows = await conn.fetch(sql, message_id, limit)
        return [TrackingRecord(**dict(r)) for r in rows]

    # --- message events ---

    async def write_events(self, events: Sequence[MessageEvent]) -> None:
        if not events:
            return
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO message_events (tenant_id, wamid, webhook_id, direction, at, event, detail)"
                " SELECT u.tenant_id, u.wamid, u.webhook_id, u.direction, to_timestamp(u.at), u.event, u.detail"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], $7::text[])"
                " AS u(tenant_id, wamid, webhook_id, direction, at, event, detail)",
                [e.tenant_id for e in events],
                [e.wamid for e in events],
                [e.webhook_id for e in events],
                [e.direction for e in events],
                [e.at for e in events],
                [e.event for e in events],
                [e.detail for e in events],
            )

    async def list_events(
        self, *, tenant_id: str, wamids: Sequence[str] = (), webhook_ids: Sequence[str] = (), limit: int = 1000
    ) -> list[MessageEvent]:
        wamids, webhook_ids = [w for w in wamids if w], [w for w in webhook_ids if w]
        if not wamids and not webhook_ids:
            return []
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_EVENT_COLUMNS} FROM message_events WHERE tenant_id = $1"
                " AND (wamid = ANY($2::text[]) OR webhook_id = ANY($3::text[]))"
                " ORDER BY message_events.at, id LIMIT $4",
                tenant_id,
                wamids,
                webhook_ids,
                limit,
            )
        return [MessageEvent(**dict(r)) for r in rows]

    # --- parked messages ---

    async def park(
        self, shard: int, messages: Sequence[tuple[str, str, bytes, int]], *, fences: Sequence[tuple[str, str]] = ()
    ) -> None:
        if not messages and not fences:
            return
        async with self._conn() as conn, conn.transaction():
            if fences:
                await conn.executemany(
                    "INSERT INTO parking_fences (shard, tenant_id, message_id) VALUES ($1, $2, $3)"
                    " ON CONFLICT (shard, tenant_id) DO NOTHING",
                    [(shard, tenant_id, message_id) for tenant_id, message_id in fences],
                )
            if messages:
                await conn.execute(
                    _PARK,
                    shard,
                    [m[0] for m in messages],
                    [m[1] for m in messages],
                    [m[2] for m in messages],
                    [m[3] for m in messages],
                )

    async def parking_fences(self, shard: int) -> dict[str, str]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT tenant_id, message_id FROM parking_fences WHERE shard = $1", shard)
        return {r["tenant_id"]: r["message_id"] for r in rows}

    async def clear_fence(self, shard: int, tenant_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute("DELETE FROM parking_fences WHERE shard = $1 AND tenant_id = $2", shard, tenant_id)

    async def parked(self, shard: int, tenant_id: str, *, after: int = 0, limit: int = 100) -> list[ParkedMessage]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT seq, shard, tenant_id, message_id, body, attempt FROM parked_messages"
                " WHERE shard = $1 AND tenant_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                shard,
                tenant_id,
                after,
                limit,
            )
        return [ParkedMessage(**dict(r)) for r in rows]

    async def parked_tenants(self, shard: int) -> dict[str, int]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT tenant_id, count(*) AS n FROM parked_messages WHERE shard = $1 GROUP BY tenant_id", shard
            )
        return {r["tenant_id"]: r["n"] for r in rows}

    async def unpark(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        async with self._conn() as conn:
            await conn.execute("DELETE FROM parked_messages WHERE seq = ANY($1::bigint[])", list(seqs))

    async def set_parked_attempt(self, seq: int, attempt: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE parked_messages SET attempt = GREATEST(attempt, $2) WHERE seq = $1", seq, attempt
            )


async def _session_unchanged(conn: asyncpg.Connection) -> None:
    """The pool's reset hook. asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release: one more round trip per query (docs/decisions.md). This
    store never changes session state (no SET, LISTEN, cursors or session advisory locks: the migration lock is
    transaction-scoped), and asyncpg still rolls back an open transaction before calling this."""


class _Guarded:
    """Acquire a pooled connection; connection failures anywhere inside become BackendUnavailable."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT)
        except _DOWN as exc:
            raise BackendUnavailable("store", f"postgresql: {type(exc).__name__}") from exc
        return self._conn

    async def __aexit__(self, kind, exc, tb) -> None:
        try:
            await self._pool.release(self._conn)
        except _DOWN:
            pass  # the pool drops a broken connection itself
        if exc is not None and isinstance(exc, _DOWN) and not isinstance(exc, BackendUnavailable):
            raise BackendUnavailable("store", f"postgresql: {type(exc).__name__}") from exc
