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

The tables' DDL is in postgres_schema.py; the queries in postgres_tenants.py, postgres_customers.py,
postgres_tracking.py and postgres_parking.py, one mixin of the store each.
"""

from __future__ import annotations

import asyncio

import asyncpg

from wabridge.adapters.store.postgres_customers import PostgresCustomers
from wabridge.adapters.store.postgres_parking import PostgresParking
from wabridge.adapters.store.postgres_schema import MIGRATIONS
from wabridge.adapters.store.postgres_tenants import PostgresTenants
from wabridge.adapters.store.postgres_tracking import PostgresTracking
from wabridge.engine.settings import Settings
from wabridge.ports import BackendUnavailable

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

_DOWN = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
)


class PostgresStore(PostgresTenants, PostgresCustomers, PostgresTracking, PostgresParking):
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
