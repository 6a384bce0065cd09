"""PostgresStore's tenants: their sealed rows, phone numbers and the rotation of their secrets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wabridge.adapters.store.rules import needs_rotation, open_tenant, seal_tenant
from wabridge.engine.secrets import SecretBox
from wabridge.ports import PhoneNumberTaken, TenantConfig


class PostgresTenants:
    """The TenantStore part of PostgresStore."""

    if TYPE_CHECKING:
        _box: SecretBox

        def _conn(self) -> Any: ...

    # --- tenants ---

    async def put_tenant(self, tenant: TenantConfig) -> None:
        row = seal_tenant(self._box, tenant)
        async with self._conn() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO tenant_credentials (tenant_id, phone_number_ids, app_secret, verify_token,
                       whatsapp_token, genesys_api_url, genesys_login_url, genesys_integration_id, credentials,
                       rate_limit_per_minute, key_id, genesys_webhook_secret, send_rate_per_second, read_marks,
                       shard)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                   ON CONFLICT (tenant_id) DO UPDATE SET phone_number_ids = EXCLUDED.phone_number_ids,
                       app_secret = EXCLUDED.app_secret, verify_token = EXCLUDED.verify_token,
                       whatsapp_token = EXCLUDED.whatsapp_token, genesys_api_url = EXCLUDED.genesys_api_url,
                       genesys_login_url = EXCLUDED.genesys_login_url,
                       genesys_integration_id = EXCLUDED.genesys_integration_id,
                       credentials = EXCLUDED.credentials, rate_limit_per_minute = EXCLUDED.rate_limit_per_minute,
                       key_id = EXCLUDED.key_id, genesys_webhook_secret = EXCLUDED.genesys_webhook_secret,
                       send_rate_per_second = EXCLUDED.send_rate_per_second, read_marks = EXCLUDED.read_marks,
                       shard = coalesce(EXCLUDED.shard, tenant_credentials.shard), updated_at = now()""",
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
                row["shard"],
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
