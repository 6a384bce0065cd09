"""Cache keys and their lifetimes: the seed's key names, built in one place.

The Redis adapter prepends `Settings.key_prefix` to every key (`WABRIDGE_KEY_PREFIX`, e.g. `wabridge:`), so several
deployments or tests can share one Redis; left empty, the keys below are exactly the seed's names.

One deliberate difference from the seed: `mapping:wa:` carries the tenant (`mapping:wa:{tenantId}:{waId}`). Mappings
are per tenant in the store, and one WhatsApp user may write to two businesses on the same bridge; keyed by wa_id
alone, the second tenant would read the first tenant's conversation id. `mapping:conv:{conversationId}` needs no
tenant: Genesys conversation ids are UUIDs, unique across organisations.
"""

from __future__ import annotations

MAPPING_TTL = 3600.0  # seconds; both mapping directions
ALIAS_TTL = 3600.0  # an alias never changes once stored: the TTL only bounds Redis's memory
TENANT_CONFIG_TTL = 3600.0
WHATSAPP_TOKEN_TTL = 24 * 3600.0
RATE_LIMIT_TTL = 60.0  # one fixed one-minute window per key
OAUTH_TOKEN_MARGIN = 300.0  # a cached token is dropped this long before Genesys expires it


def mapping_wa(tenant_id: str, wa_id: str) -> str:
    """WhatsApp user → Genesys conversation id, for one tenant."""
    return f"mapping:wa:{tenant_id}:{wa_id}"


def customer_alias(tenant_id: str, alias_id: str) -> str:
    """A customer id (phone number or BSUID) → the canonical id of that customer, for one tenant (identity.py).
    Only aliases are cached: an id that is no alias is remembered by the process alone, for a short while."""
    return f"mapping:alias:{tenant_id}:{alias_id}"


def mapping_conv(conversation_id: str) -> str:
    """Genesys conversation id → WhatsApp user (agent replies travel this way)."""
    return f"mapping:conv:{conversation_id}"


def tenant_config(phone_number_id: str) -> str:
    return f"tenant:{phone_number_id}:config"


def oauth_token(tenant_id: str, client_id: str | None = None) -> str:
    """A tenant may hold several Genesys OAuth clients, each with its own token: name the client to keep them
    apart. Without a client id this is the seed's key (one credential per tenant)."""
    key = f"tenant:{tenant_id}:oauth:token"
    return key if client_id is None else f"{key}:{client_id}"


def oauth_token_ttl(expires_in: float) -> float:
    """`expires_in − 300 s`, as the seed does. Genesys allows lifetimes down to 300 s, where that would be nothing:
    below 600 s the token is kept for half its life instead, so it is still refreshed well before it expires."""
    if expires_in >= 2 * OAUTH_TOKEN_MARGIN:
        return expires_in - OAUTH_TOKEN_MARGIN
    return max(expires_in / 2, 1.0)


def whatsapp_token(tenant_id: str) -> str:
    return f"tenant:{tenant_id}:whatsapp:token"


def rate_limit(tenant_id: str, minute: int) -> str:
    """`minute` = whole minutes since the Unix epoch (`int(time.time() // 60)`)."""
    return f"ratelimit:{tenant_id}:{minute}"


def current_minute(now: float) -> int:
    return int(now // 60)
