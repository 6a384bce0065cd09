"""PostgresStore's customers: conversation mappings, aliases (phone and BSUID) and contacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wabridge.adapters.store.rules import newest_contacts
from wabridge.ports import Contact


class PostgresCustomers:
    """The CustomerStore part of PostgresStore."""

    if TYPE_CHECKING:

        def _conn(self) -> Any: ...

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
