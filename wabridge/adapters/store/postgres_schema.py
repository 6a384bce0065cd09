"""The PostgreSQL schema, as the steps migrate() applies in order (the tables: postgres.py's docstring)."""

from __future__ import annotations

from wabridge.ports import TrackingStatus

_STATUSES = ", ".join(f"'{s}'" for s in tuple(TrackingStatus))

MIGRATIONS: tuple[str, ...] = (
    # 1: the whole first schema
    f"""
    CREATE TABLE tenant_credentials (
        tenant_id text PRIMARY KEY,
        phone_number_ids text[] NOT NULL,
        app_secret text NOT NULL,
        verify_token text NOT NULL,
        whatsapp_token text NOT NULL,
        genesys_api_url text NOT NULL,
        genesys_login_url text NOT NULL,
        genesys_integration_id text NOT NULL,
        credentials text NOT NULL,
        rate_limit_per_minute integer NOT NULL,
        key_id text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE tenant_phone_numbers (
        phone_number_id text PRIMARY KEY,
        tenant_id text NOT NULL REFERENCES tenant_credentials (tenant_id) ON DELETE CASCADE
    );
    CREATE INDEX tenant_phone_numbers_tenant ON tenant_phone_numbers (tenant_id);
    CREATE TABLE conversation_mappings (
        tenant_id text NOT NULL,
        wa_id text NOT NULL,
        conversation_id uuid NOT NULL,
        last_activity_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, wa_id)
    );
    CREATE INDEX conversation_mappings_conversation ON conversation_mappings (conversation_id);
    CREATE TABLE message_tracking (
        tenant_id text NOT NULL,
        wamid text NOT NULL,
        conversation_id text,
        direction text NOT NULL,
        type text NOT NULL,
        status text NOT NULL CHECK (status IN ({_STATUSES})),
        attempts integer NOT NULL DEFAULT 0,
        error text,
        genesys_message_id text,
        payload bytea,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, wamid)
    );
    CREATE INDEX message_tracking_replay ON message_tracking (tenant_id, status, created_at);
    CREATE INDEX message_tracking_created ON message_tracking (created_at);
    """,
    # 2: repeats of a settled message are counted on its row
    "ALTER TABLE message_tracking ADD COLUMN duplicates integer NOT NULL DEFAULT 0",
    # 3: the queue messages of held-back tenants, kept aside in order (Store.park)
    """
    CREATE TABLE parked_messages (
        seq bigserial PRIMARY KEY,
        shard integer NOT NULL,
        tenant_id text NOT NULL,
        message_id text NOT NULL,
        body bytea NOT NULL,
        attempt integer NOT NULL,
        parked_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX parked_messages_tenant ON parked_messages (shard, tenant_id, seq);
    CREATE TABLE parking_fences (
        shard integer NOT NULL,
        tenant_id text NOT NULL,
        message_id text NOT NULL,
        PRIMARY KEY (shard, tenant_id)
    );
    """,
    # 4: one customer known by two ids (a phone number and a BSUID): the alias names the id their conversation uses
    """
    CREATE TABLE customer_aliases (
        tenant_id text NOT NULL,
        alias_id text NOT NULL,
        canonical_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, alias_id)
    );
    """,
    # 5: where each message came from, and the unusual steps of its life (`wabridge trace`, `wabridge messages`).
    # Nullable columns without a default: added without rewriting the table.
    """
    ALTER TABLE message_tracking ADD COLUMN webhook_id text, ADD COLUMN shard integer, ADD COLUMN archive_key text,
        ADD COLUMN received_at timestamptz, ADD COLUMN customer_id text, ADD COLUMN media_key text;
    CREATE INDEX message_tracking_genesys ON message_tracking (genesys_message_id)
        WHERE genesys_message_id IS NOT NULL;
    CREATE INDEX message_tracking_webhook ON message_tracking (webhook_id) WHERE webhook_id IS NOT NULL;
    CREATE INDEX message_tracking_customer ON message_tracking (tenant_id, customer_id, created_at)
        WHERE customer_id IS NOT NULL;
    CREATE TABLE message_events (
        id bigserial PRIMARY KEY,
        tenant_id text NOT NULL,
        wamid text NOT NULL,
        webhook_id text NOT NULL,
        direction text NOT NULL,
        at timestamptz NOT NULL,
        event text NOT NULL,
        detail text NOT NULL
    );
    CREATE INDEX message_events_wamid ON message_events (tenant_id, wamid, at);
    CREATE INDEX message_events_webhook ON message_events (tenant_id, webhook_id, at);
    """,
    # 6: the outbound half: a tenant's Genesys webhook secret (sealed, NULL when none) and send settings;
    # the wamids Meta gave an agent's message and its delivery state; each customer's latest inbound message.
    # Nullable columns and constant defaults: added without rewriting the tables.
    """
    ALTER TABLE tenant_credentials ADD COLUMN genesys_webhook_secret text,
        ADD COLUMN send_rate_per_second integer NOT NULL DEFAULT 80,
        ADD COLUMN read_marks boolean NOT NULL DEFAULT true;
    ALTER TABLE message_tracking ADD COLUMN meta_ids text, ADD COLUMN meta_status text;
    CREATE TABLE customer_contacts (
        tenant_id text NOT NULL,
        customer_id text NOT NULL,
        phone_number_id text NOT NULL,
        wamid text NOT NULL,
        at timestamptz NOT NULL,
        PRIMARY KEY (tenant_id, customer_id)
    );
    """,
    # 7: the queue shard a tenant is placed on (TenantConfig.shard); NULL for the tenants stored before, which keep
    # the hash routing they had
    "ALTER TABLE tenant_credentials ADD COLUMN shard integer",
)
