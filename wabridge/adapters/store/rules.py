"""What both stores keep the same way, whatever their SQL: the sealed form of a tenant (every secret a SecretBox
ciphertext bound to its tenant and field), and which of a batch's tracking writes and contacts win. Only the SQL
dialects differ between postgres.py and sqlite.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from wabridge.engine.secrets import Secret, SecretBox
from wabridge.ports import Contact, GenesysCredential, TenantConfig, TrackingRecord, TrackingStatus

# --- tenants: the sealed form both stores keep --------------------------------------------------------------------

SECRET_FIELDS = ("app_secret", "verify_token", "whatsapp_token")
OPTIONAL_SECRET_FIELDS = ("genesys_webhook_secret",)  # NULL when the tenant has none


class _SealedCredential(msgspec.Struct, frozen=True):
    client_id: str
    client_secret: str  # ciphertext


_credentials_codec = (msgspec.json.Encoder(), msgspec.json.Decoder(list[_SealedCredential]))


def seal_tenant(box: SecretBox, tenant: TenantConfig) -> dict[str, Any]:
    """The row form of a tenant: plain fields as they are, secrets as SecretBox ciphertexts bound to tenant+field."""
    t = tenant.tenant_id
    row: dict[str, Any] = {
        "tenant_id": t,
        "phone_number_ids": list(tenant.phone_number_ids),
        "genesys_api_url": tenant.genesys_api_url,
        "genesys_login_url": tenant.genesys_login_url,
        "genesys_integration_id": tenant.genesys_integration_id,
        "rate_limit_per_minute": tenant.rate_limit_per_minute,
        "send_rate_per_second": tenant.send_rate_per_second,
        "read_marks": tenant.read_marks,
        "shard": tenant.shard,
        "key_id": box.primary_key_id,
    }
    for field in SECRET_FIELDS:
        row[field] = box.encrypt(getattr(tenant, field).reveal(), context=f"{t}:{field}")
    for field in OPTIONAL_SECRET_FIELDS:
        secret = getattr(tenant, field)
        row[field] = None if secret is None else box.encrypt(secret.reveal(), context=f"{t}:{field}")
    sealed = [
        _SealedCredential(
            c.client_id, box.encrypt(c.client_secret.reveal(), context=f"{t}:client_secret:{c.client_id}")
        )
        for c in tenant.credentials
    ]
    row["credentials"] = _credentials_codec[0].encode(sealed).decode()
    return row


def open_tenant(box: SecretBox, row: Any) -> TenantConfig:
    t = row["tenant_id"]
    credentials = tuple(
        GenesysCredential(c.client_id, Secret(box.decrypt(c.client_secret, context=f"{t}:client_secret:{c.client_id}")))
        for c in _credentials_codec[1].decode(row["credentials"])
    )
    phones = row["phone_number_ids"]
    webhook_secret = row["genesys_webhook_secret"]
    return TenantConfig(
        tenant_id=t,
        phone_number_ids=tuple(phones if isinstance(phones, list) else msgspec.json.decode(phones)),
        app_secret=Secret(box.decrypt(row["app_secret"], context=f"{t}:app_secret")),
        verify_token=Secret(box.decrypt(row["verify_token"], context=f"{t}:verify_token")),
        whatsapp_token=Secret(box.decrypt(row["whatsapp_token"], context=f"{t}:whatsapp_token")),
        genesys_api_url=row["genesys_api_url"],
        genesys_login_url=row["genesys_login_url"],
        genesys_integration_id=row["genesys_integration_id"],
        credentials=credentials,
        rate_limit_per_minute=row["rate_limit_per_minute"],
        genesys_webhook_secret=None
        if webhook_secret is None
        else Secret(box.decrypt(webhook_secret, context=f"{t}:genesys_webhook_secret")),
        send_rate_per_second=row["send_rate_per_second"],
        read_marks=bool(row["read_marks"]),  # SQLite keeps it as 0/1
        shard=row["shard"],
    )


def needs_rotation(box: SecretBox, row: Any) -> bool:
    if any(box.needs_rotation(row[f]) for f in SECRET_FIELDS):
        return True
    if any(row[f] is not None and box.needs_rotation(row[f]) for f in OPTIONAL_SECRET_FIELDS):
        return True
    return any(box.needs_rotation(c.client_secret) for c in _credentials_codec[1].decode(row["credentials"]))


def newest_contacts(rows: Sequence[tuple[str, str, str, str, float]]) -> dict[tuple[str, str], Contact]:
    """One Contact per (tenant, customer), the newest of the batch (the later of equals), for a one-statement
    upsert."""
    latest: dict[tuple[str, str], Contact] = {}
    for tenant_id, customer_id, phone_number_id, wamid, at in rows:
        key = (tenant_id, customer_id)
        if key not in latest or latest[key].at <= at:
            latest[key] = Contact(phone_number_id, wamid, at)
    return latest


def duplicate_counts(records: Sequence[TrackingRecord]) -> dict[tuple[str, str], int]:
    """(tenant, wamid) → how many `duplicate` writes the batch holds: added to the row's `duplicates` counter, the
    one trace a repeat leaves on a row whose status it must not change."""
    counts: dict[tuple[str, str], int] = {}
    for rec in records:
        if rec.status == TrackingStatus.DUPLICATE:
            key = (rec.tenant_id, rec.wamid)
            counts[key] = counts.get(key, 0) + 1
    return counts


def latest_per_key(records: Sequence[TrackingRecord]) -> list[TrackingRecord]:
    """One record per (tenant, wamid) for a single-statement upsert, applying the duplicate rule within the batch:
    the last non-duplicate write wins; a duplicate counts only for a key nothing else in the batch wrote."""
    latest: dict[tuple[str, str], TrackingRecord] = {}
    for rec in records:
        key = (rec.tenant_id, rec.wamid)
        if rec.status == TrackingStatus.DUPLICATE and key in latest:
            continue
        latest[key] = rec
    return list(latest.values())
