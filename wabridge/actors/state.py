"""Conversation state: which Genesys conversation a WhatsApp customer of a tenant belongs to.

Read path: this process's memo (`MEMO_SECONDS`) → local LRU → Redis (`mapping:wa:{tenantId}:{waId}`, 1 h) → PostgreSQL
`conversation_mappings` → a new UUID, written to the store first (insert-if-absent: when two workers race, both end with
the store's winner) and then to the cache in both directions. A cache that is down only costs speed: the store answers.
When Genesys answers with the conversation id it really uses, `adopt` overwrites the mapping.

The memo: a customer writes again within seconds, and the shared LocalCache keeps a copy only 1 s, so without it most
messages would cost a Redis GET (docs/decisions.md). The id only names the conversation
in the tracking row (Genesys routes by the customer, and answers the id it used, which `adopt` takes), so a copy up
to `MEMO_SECONDS` old costs nothing worse than a tracking row naming the previous id until the next answer fixes it.
Bounded to `MEMO_ENTRIES`, least recently used dropped.

Round trips are grouped across customers (engine/grouping.py): a first contact costs a cache read, a store read, a
store write and two cache writes, and a burst of new customers (replies to a campaign) arrives together. Store
calls wait 2 ms to gather a group, as the tracking reads do; cache calls start at once (Redis answers fast enough:
under load, the calls that arrive while one is in flight form the next group).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence

from wabridge.engine import keys
from wabridge.engine.grouping import Grouped
from wabridge.engine.logs import get_logger
from wabridge.ports import BackendUnavailable, Cache, CustomerStore

log = get_logger("state")

MEMO_SECONDS = 60.0
MEMO_ENTRIES = 100_000  # ~200 bytes each


class ConversationState:
    def __init__(self, cache: Cache, store: CustomerStore) -> None:
        self._cache = cache
        self._store = store
        self._memo: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()  # → (conversation id, until)
        self._reads: Grouped[tuple[str, str], str] = Grouped(store.get_conversations, name="conversation-reads")
        self._adoptions: Grouped[tuple[str, str, str], None] = Grouped(self._write_adoptions, name="adoptions")
        self._cache_reads: Grouped[str, bytes] = Grouped(cache.get_many, name="mapping-cache-reads", max_delay=0)
        self._cache_writes: Grouped[tuple[tuple[str, bytes], ...], None] = Grouped(
            self._write_cache, name="mapping-cache-writes", max_delay=0
        )

    async def conversation_for(self, tenant_id: str, sender_id: str) -> str:
        """The customer's conversation id; a new one (stored, then cached) when they have none yet."""
        conversation_id = await self.known(tenant_id, sender_id)
        if conversation_id is None:
            conversation_id = await self._store.put_conversation(tenant_id, sender_id, str(uuid.uuid4()))
            await self._remember(tenant_id, sender_id, conversation_id)
        return conversation_id

    async def known(self, tenant_id: str, sender_id: str) -> str | None:
        """The customer's conversation id if they have one, without making one: the relay lets Genesys's answer
        name a new customer's conversation (`adopt`), which saves the store insert and cache writes of an id that
        would be replaced at once."""
        memo = self._memo.get((tenant_id, sender_id))
        if memo is not None:
            if memo[1] > time.monotonic():
                self._memo.move_to_end((tenant_id, sender_id))
                return memo[0]
            del self._memo[(tenant_id, sender_id)]
        key = keys.mapping_wa(tenant_id, sender_id)
        cached = await self._cache_get(key)
        if cached is not None:
            self._note(tenant_id, sender_id, cached)
            return cached
        conversation_id = await self._reads.get((tenant_id, sender_id))
        if conversation_id is not None:
            await self._remember(tenant_id, sender_id, conversation_id)
        return conversation_id

    async def adopt(self, tenant_id: str, sender_id: str, conversation_id: str) -> None:
        """Genesys named the conversation: that id wins from now on."""
        await self._adoptions.get((tenant_id, sender_id, conversation_id))
        await self._remember(tenant_id, sender_id, conversation_id)

    async def _write_adoptions(self, rows: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], None]:
        await self._store.set_conversations(rows)
        return {}

    async def _cache_get(self, key: str) -> str | None:
        try:
            value = await self._cache_reads.get(key)
        except BackendUnavailable:
            return None
        return value.decode() if value is not None else None

    async def _write_cache(
        self, groups: Sequence[tuple[tuple[str, bytes], ...]]
    ) -> dict[tuple[tuple[str, bytes], ...], None]:
        await self._cache.set_many([item for group in groups for item in group], keys.MAPPING_TTL)
        return {}

    def _note(self, tenant_id: str, sender_id: str, conversation_id: str) -> None:
        self._memo[(tenant_id, sender_id)] = (conversation_id, time.monotonic() + MEMO_SECONDS)
        self._memo.move_to_end((tenant_id, sender_id))
        if len(self._memo) > MEMO_ENTRIES:
            self._memo.popitem(last=False)

    async def _remember(self, tenant_id: str, sender_id: str, conversation_id: str) -> None:
        self._note(tenant_id, sender_id, conversation_id)
        try:
            await self._cache_writes.get(
                (
                    (keys.mapping_wa(tenant_id, sender_id), conversation_id.encode()),
                    (keys.mapping_conv(conversation_id), f"{tenant_id}:{sender_id}".encode()),
                )
            )
        except BackendUnavailable as exc:
            log.warning("mapping not cached: %s", exc)
