"""SqliteStore's customers: conversation mappings, aliases (phone and BSUID) and contacts."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from wabridge.adapters.store.rules import newest_contacts
from wabridge.ports import Contact

T = TypeVar("T")


class SqliteCustomers:
    """The CustomerStore part of SqliteStore."""

    if TYPE_CHECKING:

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

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
