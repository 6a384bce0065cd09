"""PostgresStore's message tracking (the batched upsert, the duplicate rule: postgres.py's docstring) and events."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wabridge.adapters.store.rules import duplicate_counts, latest_per_key
from wabridge.ports import MessageEvent, TrackingRecord

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
    payload, duplicates, extract(epoch FROM created_at)::float8 AS created_at,
    extract(epoch FROM updated_at)::float8 AS updated_at,
    webhook_id, shard, archive_key, extract(epoch FROM received_at)::float8 AS received_at, customer_id, media_key,
    meta_ids, meta_status"""
_EVENT_COLUMNS = "tenant_id, wamid, webhook_id, direction, extract(epoch FROM at)::float8 AS at, event, detail"


class PostgresTracking:
    """The TrackingStore part of PostgresStore."""

    if TYPE_CHECKING:

        def _conn(self) -> Any: ...

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
        where: list[str] = []
        args: list[Any] = []
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
