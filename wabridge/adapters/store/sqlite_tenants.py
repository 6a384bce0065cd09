"""SqliteStore's tenants: their sealed rows, phone numbers and the rotation of their secrets."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec

from wabridge.adapters.store.rules import needs_rotation, open_tenant, seal_tenant
from wabridge.engine.secrets import SecretBox
from wabridge.ports import PhoneNumberTaken, TenantConfig

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
    "shard",
)


T = TypeVar("T")


class SqliteTenants:
    """The TenantStore part of SqliteStore."""

    if TYPE_CHECKING:
        _box: SecretBox

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

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
            updates = ", ".join(f"{c} = excluded.{c}" for c in _TENANT_COLUMNS[1:-1])
            updates += ", shard = coalesce(excluded.shard, tenant_credentials.shard)"
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
