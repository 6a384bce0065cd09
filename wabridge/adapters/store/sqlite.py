"""The Store port on SQLite (stdlib sqlite3, WAL): what `wabridge serve` uses with no configuration.

Same schema, same rules as postgres.py (read its docstring: the duplicate rule, payload clearing, secrets sealed
per tenant+field). Timestamps are REAL Unix seconds. Several processes may open the same file: WAL lets readers run
beside the one writer, writes take the lock with BEGIN IMMEDIATE and wait up to BUSY_TIMEOUT for it, and a lock still
held after that is reported as BackendUnavailable (the caller retries later, as with a PostgreSQL outage).

Every call runs on one dedicated thread that owns the connection: the event loop never waits on the disk, and the
connection is never shared between threads. A large write inline would stall every other task; point reads cost more
through the thread but are rare (the cache answers hot keys), so one path for everything wins (docs/decisions.md). synchronous=FULL, because write_tracking promises durability on return
and a batch of hundreds of rows pays for one fsync.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec

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

T = TypeVar("T")

FILENAME = "wabridge.sqlite3"
BUSY_TIMEOUT = 5.0  # seconds another process may hold the write lock before we report the store unavailable

_STATUSES = ", ".join(f"'{s}'" for s in TrackingStatus.ALL)

MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE tenant_credentials (
        tenant_id TEXT PRIMARY KEY,
        phone_number_ids TEXT NOT NULL,  -- JSON array, in the tenant's order
        app_secret TEXT NOT NULL,
        verify_token TEXT NOT NULL,
        whatsapp_token TEXT NOT NULL,
        genesys_api_url TEXT NOT NULL,
        genesys_login_url TEXT NOT NULL,
        genesys_integration_id TEXT NOT NULL,
        credentials TEXT NOT NULL,
        rate_limit_per_minute INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE tenant_phone_numbers (
        phone_number_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenant_credentials (tenant_id) ON DELETE CASCADE
    );
    CREATE INDEX tenant_phone_numbers_tenant ON tenant_phone_numbers (tenant_id);
    CREATE TABLE conversation_mappings (
        tenant_id TEXT NOT NULL,
        wa_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        last_activity_at REAL NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, wa_id)
    );
    CREATE INDEX conversation_mappings_conversation ON conversation_mappings (conversation_id);
    CREATE TABLE message_tracking (
        tenant_id TEXT NOT NULL,
        wamid TEXT NOT NULL,
        conversation_id TEXT,
        direction TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        genesys_message_id TEXT,
        payload BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, wamid)
    );
    CREATE INDEX message_tracking_replay ON message_tracking (tenant_id, status, created_at);
    CREATE INDEX message_tracking_created ON message_tracking (created_at);
    """,
    # 2: repeats of a settled message are counted on its row (see rules.duplicate_counts)
    "ALTER TABLE message_tracking ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0",
    # 3: the queue messages of held-back tenants, kept aside in order (Store.park). AUTOINCREMENT: without it SQLite
    # hands the highest deleted seq out again, and a reader paging with `after` would skip the new row.
    """
    CREATE TABLE parked_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        shard INTEGER NOT NULL,
        tenant_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        attempt INTEGER NOT NULL,
        parked_at REAL NOT NULL
    );
    CREATE INDEX parked_messages_tenant ON parked_messages (shard, tenant_id, seq);
    CREATE TABLE parking_fences (
        shard INTEGER NOT NULL,
        tenant_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (shard, tenant_id)
    );
    """,
    # 4: one customer known by two ids (a phone number and a BSUID): the alias names the id their conversation uses
    """
    CREATE TABLE customer_aliases (
        tenant_id TEXT NOT NULL,
        alias_id TEXT NOT NULL,
        canonical_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, alias_id)
    );
    """,
    # 5: where each message came from, and the unusual steps of its life (`wabridge trace`, `wabridge messages`)
    """
    ALTER TABLE message_tracking ADD COLUMN webhook_id TEXT;
    ALTER TABLE message_tracking ADD COLUMN shard INTEGER;
    ALTER TABLE message_tracking ADD COLUMN archive_key TEXT;
    ALTER TABLE message_tracking ADD COLUMN received_at REAL;
    ALTER TABLE message_tracking ADD COLUMN customer_id TEXT;
    ALTER TABLE message_tracking ADD COLUMN media_key TEXT;
    CREATE INDEX message_tracking_genesys ON message_tracking (genesys_message_id)
        WHERE genesys_message_id IS NOT NULL;
    CREATE INDEX message_tracking_webhook ON message_tracking (webhook_id) WHERE webhook_id IS NOT NULL;
    CREATE INDEX message_tracking_customer ON message_tracking (tenant_id, customer_id, created_at)
        WHERE customer_id IS NOT NULL;
    CREATE TABLE message_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        wamid TEXT NOT NULL,
        webhook_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        at REAL NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX message_events_wamid ON message_events (tenant_id, wamid, at);
    CREATE INDEX message_events_webhook ON message_events (tenant_id, webhook_id, at);
    """,
    # 6: the outbound half, as postgres.py's migration 6. read_marks is 0/1.
    """
    ALTER TABLE tenant_credentials ADD COLUMN genesys_webhook_secret TEXT;
    ALTER TABLE tenant_credentials ADD COLUMN send_rate_per_second INTEGER NOT NULL DEFAULT 80;
    ALTER TABLE tenant_credentials ADD COLUMN read_marks INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE message_tracking ADD COLUMN meta_ids TEXT;
    ALTER TABLE message_tracking ADD COLUMN meta_status TEXT;
    CREATE TABLE customer_contacts (
        tenant_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        phone_number_id TEXT NOT NULL,
        wamid TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (tenant_id, customer_id)
    );
    """,
)

_UPSERT_TRACKING = """
INSERT INTO message_tracking AS t (tenant_id, wamid, conversation_id, direction, type, status, attempts, error,
                                   genesys_message_id, payload, created_at, updated_at, webhook_id, shard,
                                   archive_key, received_at, customer_id, media_key, meta_ids, meta_status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, wamid) DO UPDATE SET
    meta_ids = COALESCE(excluded.meta_ids, t.meta_ids),
    meta_status = COALESCE(excluded.meta_status, t.meta_status),
    webhook_id = COALESCE(excluded.webhook_id, t.webhook_id),
    shard = COALESCE(excluded.shard, t.shard),
    archive_key = COALESCE(excluded.archive_key, t.archive_key),
    received_at = COALESCE(excluded.received_at, t.received_at),
    customer_id = COALESCE(excluded.customer_id, t.customer_id),
    media_key = COALESCE(excluded.media_key, t.media_key),
    status = excluded.status,
    attempts = excluded.attempts,
    error = excluded.error,
    conversation_id = COALESCE(excluded.conversation_id, t.conversation_id),
    genesys_message_id = COALESCE(excluded.genesys_message_id, t.genesys_message_id),
    type = CASE WHEN excluded.type = '' THEN t.type ELSE excluded.type END,
    payload = CASE WHEN excluded.payload IS NOT NULL THEN excluded.payload
                   WHEN excluded.status = 'delivered' THEN NULL ELSE t.payload END,
    updated_at = excluded.updated_at
WHERE excluded.status <> 'duplicate'
"""

_TRACKING_COLUMNS = (
    "wamid, tenant_id, status, direction, type, conversation_id, genesys_message_id, attempts, error, payload,"
    " duplicates, created_at, updated_at, webhook_id, shard, archive_key, received_at, customer_id, media_key,"
    " meta_ids, meta_status"
)
_EVENT_COLUMNS = "tenant_id, wamid, webhook_id, direction, at, event, detail"
_TENANT_COLUMNS = (
    "tenant_id",
    "phone_number_ids",
    "app_secret",
    "verify_token",
    "whatsapp_token",
    "genesys_api_url",
    "genesys_login_url",
    "genesys_integration_id",
    "credentials",
    "rate_limit_per_minute",
    "key_id",
    "genesys_webhook_secret",
    "send_rate_per_second",
    "read_marks",
)


class SqliteStore:
    def __init__(self, settings: Settings) -> None:
        self.path = settings.data_dir / FILENAME
        self._box = settings.secret_box()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wabridge-sqlite")
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise RuntimeError("SqliteStore.open() was not called")
            try:
                return work(self._db)
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                if "locked" in str(exc) or "busy" in str(exc):
                    raise BackendUnavailable("store", f"sqlite: {exc}") from exc
                raise
            except BaseException:
                if self._db.in_transaction:
                    self._db.rollback()
                raise

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    # --- lifecycle ---

    async def open(self) -> None:
        def connect() -> None:
            if self._db is not None:
                return
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds tenant data: owner only
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    async def close(self) -> None:
        def disconnect() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, disconnect)
        self._thread.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._run(lambda db: db.execute("SELECT 1").fetchone()[0] == 1)
        except (BackendUnavailable, RuntimeError):
            return False

    async def migrate(self) -> int:
        def work(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")  # one migrator at a time across processes
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            for version, ddl in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in ddl.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))
            db.execute("COMMIT")
            return len(MIGRATIONS)

        return await self._run(work)

    # --- tenants ---

    async def put_tenant(self, tenant: TenantConfig) -> None:
        row = seal_tenant(self._box, tenant)
        row["phone_number_ids"] = msgspec.json.encode(row["phone_number_ids"]).decode()
        phones = list(tenant.phone_number_ids)

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            marks = ", ".join("?" for _ in phones)
            taken = db.execute(
                f"SELECT phone_number_id, tenant_id FROM tenant_phone_numbers"
                f" WHERE phone_number_id IN ({marks}) AND tenant_id <> ? LIMIT 1",
                (*phones, tenant.tenant_id),
            ).fetchone()
            if taken is not None:
                raise PhoneNumberTaken(
                    f"phone_number_id {taken['phone_number_id']} belongs to tenant {taken['tenant_id']}"
                )
            columns = ", ".join(_TENANT_COLUMNS)
            marks_row = ", ".join("?" * (len(_TENANT_COLUMNS) + 1))
            updates = ", ".join(f"{c} = excluded.{c}" for c in _TENANT_COLUMNS[1:])
            db.execute(
                f"INSERT INTO tenant_credentials ({columns}, updated_at) VALUES ({marks_row})"
                f" ON CONFLICT (tenant_id) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
                (*(row[c] for c in _TENANT_COLUMNS), time.time()),
            )
            db.execute(
                f"DELETE FROM tenant_phone_numbers WHERE tenant_id = ? AND phone_number_id NOT IN ({marks})",
                (tenant.tenant_id, *phones),
            )
            db.executemany(
                "INSERT OR IGNORE INTO tenant_phone_numbers (phone_number_id, tenant_id) VALUES (?, ?)",
                [(p, tenant.tenant_id) for p in phones],
            )
            db.execute("COMMIT")

        await self._run(work)

    async def _tenants(self, sql: str, args: tuple = ()) -> list[TenantConfig]:
        rows = await self._run(lambda db: db.execute(sql, args).fetchall())
        return [open_tenant(self._box, r) for r in rows]

    async def get_tenant(self, tenant_id: str) -> TenantConfig | None:
        found = await self._tenants("SELECT * FROM tenant_credentials WHERE tenant_id = ?", (tenant_id,))
        return found[0] if found else None

    async def tenant_for_phone_number(self, phone_number_id: str) -> TenantConfig | None:
        found = await self._tenants(
            "SELECT c.* FROM tenant_phone_numbers p JOIN tenant_credentials c USING (tenant_id)"
            " WHERE p.phone_number_id = ?",
            (phone_number_id,),
        )
        return found[0] if found else None

    async def list_tenants(self) -> list[TenantConfig]:
        return await self._tenants("SELECT * FROM tenant_credentials ORDER BY tenant_id")

    async def remove_tenant(self, tenant_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM tenant_credentials WHERE tenant_id = ?", (tenant_id,)).rowcount == 1

        return await self._run(work)

    async def reencrypt_secrets(self) -> int:
        """Re-encrypt tenants sealed with a key other than the primary one; returns how many were rewritten."""

        def work(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            stale = [r for r in db.execute("SELECT * FROM tenant_credentials") if needs_rotation(self._box, r)]
            for r in stale:
                sealed = seal_tenant(self._box, open_tenant(self._box, r))
                db.execute(
                    "UPDATE tenant_credentials SET app_secret = ?, verify_token = ?, whatsapp_token = ?,"
                    " credentials = ?, key_id = ?, genesys_webhook_secret = ?, updated_at = ? WHERE tenant_id = ?",
                    (
                        sealed["app_secret"],
                        sealed["verify_token"],
                        sealed["whatsapp_token"],
                        sealed["credentials"],
                        sealed["key_id"],
                        sealed["genesys_webhook_secret"],
                        time.time(),
                        sealed["tenant_id"],
                    ),
                )
            db.execute("COMMIT")
            return len(stale)

        return await self._run(work)

    # --- conversation mappings ---

    async def get_conversation(self, tenant_id: str, wa_id: str) -> str | None:
        def work(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT conversation_id FROM conversation_mappings WHERE tenant_id = ? AND wa_id = ?",
                (tenant_id, wa_id),
            ).fetchone()
            return None if row is None else row[0]

        return await self._run(work)

    async def put_conversation(self, tenant_id: str, wa_id: str, conversation_id: str) -> str:
        def work(db: sqlite3.Connection) -> str:
            now = time.time()
            db.execute(
                "INSERT INTO conversation_mappings VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, wa_id) DO NOTHING",
                (tenant_id, wa_id, conversation_id, now, now),
            )
            return db.execute(
                "SELECT conversation_id FROM conversation_mappings WHERE tenant_id = ? AND wa_id = ?",
                (tenant_id, wa_id),
            ).fetchone()[0]

        return await self._run(work)

    async def get_conversations(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        def work(db: sqlite3.Connection) -> dict[tuple[str, str], str]:
            found = {}
            for tenant_id, wa_id in keys:
                row = db.execute(
                    "SELECT conversation_id FROM conversation_mappings WHERE tenant_id = ? AND wa_id = ?",
                    (tenant_id, wa_id),
                ).fetchone()
                if row is not None:
                    found[(tenant_id, wa_id)] = row[0]
            return found

        return await self._run(work) if keys else {}

    async def set_conversation(self, tenant_id: str, wa_id: str, conversation_id: str) -> None:
        await self.set_conversations([(tenant_id, wa_id, conversation_id)])

    async def set_conversations(self, rows: Sequence[tuple[str, str, str]]) -> None:
        def work(db: sqlite3.Connection) -> None:
            now = time.time()
            db.executemany(
                "INSERT INTO conversation_mappings VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, wa_id) DO UPDATE"
                " SET conversation_id = excluded.conversation_id, last_activity_at = excluded.last_activity_at",
                [(tenant_id, wa_id, conversation_id, now, now) for tenant_id, wa_id, conversation_id in rows],
            )

        await self._run(work)

    async def touch_conversations(self, touches: Sequence[tuple[str, str, float]]) -> None:
        rows = [(at, tenant_id, wa_id, at) for tenant_id, wa_id, at in touches]
        if not rows:
            return

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE conversation_mappings SET last_activity_at = ?"
                " WHERE tenant_id = ? AND wa_id = ? AND last_activity_at < ?",
                rows,
            )
            db.execute("COMMIT")

        await self._run(work)

    # --- customer aliases ---

    async def get_aliases(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        def work(db: sqlite3.Connection) -> dict[tuple[str, str], str]:
            found = {}
            for tenant_id, alias_id in keys:
                row = db.execute(
                    "SELECT canonical_id FROM customer_aliases WHERE tenant_id = ? AND alias_id = ?",
                    (tenant_id, alias_id),
                ).fetchone()
                if row is not None:
                    found[(tenant_id, alias_id)] = row[0]
            return found

        return await self._run(work) if keys else {}

    async def put_alias(self, tenant_id: str, alias_id: str, canonical_id: str) -> str:
        def work(db: sqlite3.Connection) -> str:
            db.execute(
                "INSERT INTO customer_aliases VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, alias_id) DO NOTHING",
                (tenant_id, alias_id, canonical_id, time.time()),
            )
            return db.execute(
                "SELECT canonical_id FROM customer_aliases WHERE tenant_id = ? AND alias_id = ?", (tenant_id, alias_id)
            ).fetchone()[0]

        return await self._run(work)

    # --- customer contacts ---

    async def set_contacts(self, rows: Sequence[tuple[str, str, str, str, float]]) -> None:
        latest = [
            (t, c, contact.phone_number_id, contact.wamid, contact.at)
            for (t, c), contact in newest_contacts(rows).items()
        ]
        if not latest:
            return

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")  # one commit (one fsync) for the lot
            # `<=`: of two writes at the same instant the later wins (one customer's messages are written in order).
            db.executemany(
                "INSERT INTO customer_contacts AS c (tenant_id, customer_id, phone_number_id, wamid, at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, customer_id) DO UPDATE SET"
                " phone_number_id = excluded.phone_number_id, wamid = excluded.wamid, at = excluded.at"
                " WHERE c.at <= excluded.at",
                latest,
            )
            db.execute("COMMIT")

        await self._run(work)

    async def get_contacts(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Contact]:
        def work(db: sqlite3.Connection) -> dict[tuple[str, str], Contact]:
            found = {}
            for tenant_id, customer_id in keys:
                row = db.execute(
                    "SELECT phone_number_id, wamid, at FROM customer_contacts WHERE tenant_id = ? AND customer_id = ?",
                    (tenant_id, customer_id),
                ).fetchone()
                if row is not None:
                    found[(tenant_id, customer_id)] = Contact(row[0], row[1], row[2])
            return found

        return await self._run(work) if keys else {}

    # --- message tracking ---

    async def write_tracking(self, records: Sequence[TrackingRecord]) -> None:
        if not records:
            return
        now = time.time()
        rows = [
            (
                r.tenant_id,
                r.wamid,
                r.conversation_id,
                r.direction,
                r.type,
                r.status,
                r.attempts,
                r.error,
                r.genesys_message_id,
                r.payload,
                r.created_at or now,
                r.updated_at or now,
                r.webhook_id,
                r.shard,
                r.archive_key,
                r.received_at,
                r.customer_id,
                r.media_key,
                r.meta_ids,
                r.meta_status,
            )
            for r in latest_per_key(records)
        ]

        duplicates = [(n, tenant, wamid) for (tenant, wamid), n in duplicate_counts(records).items()]

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_UPSERT_TRACKING, rows)
            db.executemany(
                "UPDATE message_tracking SET duplicates = duplicates + ? WHERE tenant_id = ? AND wamid = ?", duplicates
            )
            db.execute("COMMIT")

        await self._run(work)

    async def get_tracking(self, tenant_id: str, wamid: str) -> TrackingRecord | None:
        def work(db: sqlite3.Connection) -> Any:
            return db.execute(
                f"SELECT {_TRACKING_COLUMNS} FROM message_tracking WHERE tenant_id = ? AND wamid = ?",
                (tenant_id, wamid),
            ).fetchone()

        row = await self._run(work)
        return None if row is None else TrackingRecord(**dict(row))

    async def get_tracking_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TrackingRecord]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}

        def work(db: sqlite3.Connection) -> Any:
            rows = []
            for start in range(0, len(wanted), 400):  # SQLite caps the bound parameters of one statement
                chunk = wanted[start : start + 400]
                rows += db.execute(
                    f"SELECT {_TRACKING_COLUMNS} FROM message_tracking"
                    f" WHERE (tenant_id, wamid) IN (VALUES {', '.join(['(?, ?)'] * len(chunk))})",
                    [part for key in chunk for part in key],
                ).fetchall()
            return rows

        return {(row["tenant_id"], row["wamid"]): TrackingRecord(**dict(row)) for row in await self._run(work)}

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
        where: list[str] = []
        args: list[Any] = []
        if tenant_id is not None:
            where.append("tenant_id = ?")
            args.append(tenant_id)
        if customer_id is not None:
            where.append("customer_id = ?")
            args.append(customer_id)
        if direction is not None:
            where.append("direction = ?")
            args.append(direction)
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            args.extend(statuses)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at < ?")
            args.append(until)
        sql = (
            f"SELECT {_TRACKING_COLUMNS} FROM message_tracking {'WHERE ' + ' AND '.join(where) if where else ''}"
            f" ORDER BY {'created_at DESC, wamid DESC' if newest_first else 'created_at, wamid'} LIMIT ?"
        )
        rows = await self._run(lambda db: db.execute(sql, (*args, limit)).fetchall())
        return [TrackingRecord(**dict(r)) for r in rows]

    async def find_tracking(self, message_id: str, *, limit: int = 1000) -> list[TrackingRecord]:
        # By wamid: one primary-key probe per tenant (the key starts with the tenant; '' holds the unrouted rows).
        sql = (
            f"SELECT {_TRACKING_COLUMNS} FROM message_tracking"
            " WHERE tenant_id IN (SELECT tenant_id FROM tenant_credentials UNION SELECT '') AND wamid = ?"
            f" UNION SELECT {_TRACKING_COLUMNS} FROM message_tracking WHERE genesys_message_id = ?"
            f" UNION SELECT {_TRACKING_COLUMNS} FROM message_tracking WHERE webhook_id = ?"
            " ORDER BY created_at, wamid LIMIT ?"
        )
        rows = await self._run(lambda db: db.execute(sql, (message_id, message_id, message_id, limit)).fetchall())
        return [TrackingRecord(**dict(r)) for r in rows]

    # --- message events ---

    async def write_events(self, events: Sequence[MessageEvent]) -> None:
        rows = [(e.tenant_id, e.wamid, e.webhook_id, e.direction, e.at, e.event, e.detail) for e in events]
        if not rows:
            return

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(f"INSERT INTO message_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")

        await self._run(work)

    async def list_events(
        self, *, tenant_id: str, wamids: Sequence[str] = (), webhook_ids: Sequence[str] = (), limit: int = 1000
    ) -> list[MessageEvent]:
        wamids, webhook_ids = [w for w in wamids if w], [w for w in webhook_ids if w]
        if not wamids and not webhook_ids:
            return []
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM message_events WHERE tenant_id = ?"
            f" AND (wamid IN ({', '.join('?' * len(wamids)) or 'NULL'})"
            f" OR webhook_id IN ({', '.join('?' * len(webhook_ids)) or 'NULL'})) ORDER BY at, id LIMIT ?"
        )
        rows = await self._run(lambda db: db.execute(sql, (tenant_id, *wamids, *webhook_ids, limit)).fetchall())
        return [MessageEvent(**dict(r)) for r in rows]

    # --- parked messages ---

    async def park(
        self, shard: int, messages: Sequence[tuple[str, str, bytes, int]], *, fences: Sequence[tuple[str, str]] = ()
    ) -> None:
        if not messages and not fences:
            return
        now = time.time()
        rows = [(shard, tenant_id, message_id, body, attempt, now) for tenant_id, message_id, body, attempt in messages]

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR IGNORE INTO parking_fences (shard, tenant_id, message_id) VALUES (?, ?, ?)",
                [(shard, tenant_id, message_id) for tenant_id, message_id in fences],
            )
            # Inserted one by one in the given order, so AUTOINCREMENT numbers them in that order.
            db.executemany(
                "INSERT INTO parked_messages (shard, tenant_id, message_id, body, attempt, parked_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("COMMIT")

        await self._run(work)

    async def parked(self, shard: int, tenant_id: str, *, after: int = 0, limit: int = 100) -> list[ParkedMessage]:
        def work(db: sqlite3.Connection) -> Any:
            return db.execute(
                "SELECT seq, shard, tenant_id, message_id, body, attempt FROM parked_messages"
                " WHERE shard = ? AND tenant_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (shard, tenant_id, after, limit),
            ).fetchall()

        return [ParkedMessage(**dict(row)) for row in await self._run(work)]

    async def parked_tenants(self, shard: int) -> dict[str, int]:
        def work(db: sqlite3.Connection) -> Any:
            return db.execute(
                "SELECT tenant_id, count(*) FROM parked_messages WHERE shard = ? GROUP BY tenant_id", (shard,)
            ).fetchall()

        return {tenant_id: n for tenant_id, n in await self._run(work)}

    async def unpark(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        rows = [(seq,) for seq in seqs]

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")  # one commit (one fsync) for the lot
            db.executemany("DELETE FROM parked_messages WHERE seq = ?", rows)
            db.execute("COMMIT")

        await self._run(work)

    async def set_parked_attempt(self, seq: int, attempt: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("UPDATE parked_messages SET attempt = MAX(attempt, ?) WHERE seq = ?", (attempt, seq))

        await self._run(work)

    async def parking_fences(self, shard: int) -> dict[str, str]:
        def work(db: sqlite3.Connection) -> Any:
            return db.execute("SELECT tenant_id, message_id FROM parking_fences WHERE shard = ?", (shard,)).fetchall()

        return {row[0]: row[1] for row in await self._run(work)}

    async def clear_fence(self, shard: int, tenant_id: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM parking_fences WHERE shard = ? AND tenant_id = ?", (shard, tenant_id))

        await self._run(work)
