"""SqliteStore's message tracking (the duplicate rule: postgres.py's docstring) and events."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from wabridge.adapters.store.rules import duplicate_counts, latest_per_key
from wabridge.ports import MessageEvent, TrackingRecord

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


T = TypeVar("T")


class SqliteTracking:
    """The TrackingStore part of SqliteStore."""

    if TYPE_CHECKING:

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

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
