"""The SQLite schema, as the steps migrate() applies in order (the same tables as postgres_schema.py)."""

from __future__ import annotations

from wabridge.ports import TrackingStatus

_STATUSES = ", ".join(f"'{s}'" for s in tuple(TrackingStatus))

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
    # 7: the queue shard a tenant is placed on, as postgres.py's migration 7
    "ALTER TABLE tenant_credentials ADD COLUMN shard INTEGER",
)
