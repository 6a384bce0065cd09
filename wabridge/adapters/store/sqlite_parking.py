"""SqliteStore's parked messages: a held-back tenant's queue messages kept aside, and the shards' fences."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from wabridge.ports import MessageToPark, ParkedMessage, ParkingFence

T = TypeVar("T")


class SqliteParking:
    """The ParkingStore part of SqliteStore."""

    if TYPE_CHECKING:

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

    # --- parked messages ---

    async def park(self, shard: int, messages: Sequence[MessageToPark], *, fences: Sequence[ParkingFence] = ()) -> None:
        if not messages and not fences:
            return
        now = time.time()
        rows = [(shard, m.tenant_id, m.message_id, m.body, m.attempt, now) for m in messages]

        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR IGNORE INTO parking_fences (shard, tenant_id, message_id) VALUES (?, ?, ?)",
                [(shard, f.tenant_id, f.message_id) for f in fences],
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
