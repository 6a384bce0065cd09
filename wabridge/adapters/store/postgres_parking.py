"""PostgresStore's parked messages: a held-back tenant's queue messages kept aside, and the shards' fences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wabridge.ports import MessageToPark, ParkedMessage, ParkingFence

# The rows are numbered by the sequence as the sorted SELECT yields them, so seq follows the caller's order.
_PARK = """
INSERT INTO parked_messages (shard, tenant_id, message_id, body, attempt)
SELECT $1, u.tenant_id, u.message_id, u.body, u.attempt
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::int[]) WITH ORDINALITY
     AS u(tenant_id, message_id, body, attempt, n)
ORDER BY u.n
"""


class PostgresParking:
    """The ParkingStore part of PostgresStore."""

    if TYPE_CHECKING:

        def _conn(self) -> Any: ...

    # --- parked messages ---

    async def park(self, shard: int, messages: Sequence[MessageToPark], *, fences: Sequence[ParkingFence] = ()) -> None:
        if not messages and not fences:
            return
        async with self._conn() as conn, conn.transaction():
            if fences:
                await conn.executemany(
                    "INSERT INTO parking_fences (shard, tenant_id, message_id) VALUES ($1, $2, $3)"
                    " ON CONFLICT (shard, tenant_id) DO NOTHING",
                    [(shard, f.tenant_id, f.message_id) for f in fences],
                )
            if messages:
                await conn.execute(
                    _PARK,
                    shard,
                    [m.tenant_id for m in messages],
                    [m.message_id for m in messages],
                    [m.body for m in messages],
                    [m.attempt for m in messages],
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
