"""Conversation state: which Genesys conversation a WhatsApp customer of a tenant belongs to.

Read path: local LRU → Redis (`mapping:wa:{tenantId}:{waId}`, 1 h) → PostgreSQL `conversation_mappings` → a new
UUID, written to the store first (insert-if-absent: when two workers race, both end with the store's winner) and then
to the cache in both directions. A cache that is down only costs speed: the store answers.
When Genesys answers with the conversation id it really uses, `adopt` overwrites the mapping.
"""

from __future__ import annotations

import uuid

from wabridge.engine import keys
from wabridge.engine.logs import get_logger
from wabridge.engine.ports import BackendUnavailable, Cache, Store

log = get_logger("state")


class ConversationState:
    def __init__(self, cache: Cache, store: Store) -> None:
        self._cache = cache
        self._store = store

    async def conversation_for(self, tenant_id: str, sender_id: str) -> str:
        key = keys.mapping_wa(tenant_id, sender_id)
        cached = await self._cache_get(key)
        if cached is not None:
            return cached
        conversation_id = await self._store.get_conversation(tenant_id, sender_id)
        if conversation_id is None:
            conversation_id = await self._store.put_conversation(tenant_id, sender_id, str(uuid.uuid4()))
        await self._remember(tenant_id, sender_id, conversation_id)
        return conversation_id

    async def adopt(self, tenant_id: str, sender_id: str, conversation_id: str) -> None:
        """Genesys named the conversation: that id wins from now on."""
        await self._store.set_conversation(tenant_id, sender_id, conversation_id)
        await self._remember(tenant_id, sender_id, conversation_id)

    async def _cache_get(self, key: str) -> str | None:
        try:
            value = await self._cache.get(key)
        except BackendUnavailable:
            return None
        return value.decode() if value is not None else None

    async def _remember(self, tenant_id: str, sender_id: str, conversation_id: str) -> None:
        try:
            await self._cache.set(keys.mapping_wa(tenant_id, sender_id), conversation_id.encode(), keys.MAPPING_TTL)
            await self._cache.set(
                keys.mapping_conv(conversation_id), f"{tenant_id}:{sender_id}".encode(), keys.MAPPING_TTL
            )
        except BackendUnavailable as exc:
            log.warning("mapping not cached: %s", exc)
