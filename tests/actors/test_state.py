"""Conversation state: a customer's conversation id from the memo, the cache or the store; Genesys's id adopted.
A burst of new customers shares its store reads and its adoptions (one round trip each per group, not per
customer), and each customer still gets exactly their own id."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from wabridge.actors.state import ConversationState
from wabridge.engine import keys
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.ports import BackendUnavailable
from wabridge.adapters.store.postgres import PostgresStore
from wabridge.adapters.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


class CountingStore:
    """A real store whose grouped conversation calls are recorded."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.reads: list[list[tuple[str, str]]] = []
        self.writes: list[list[tuple[str, str, str]]] = []
        self.fail_writes = 0

    async def get_conversations(self, keys):
        self.reads.append(list(keys))
        return await self.inner.get_conversations(keys)

    async def set_conversations(self, rows):
        self.writes.append(list(rows))
        if self.fail_writes:
            self.fail_writes -= 1
            raise BackendUnavailable("store", "postgresql: ConnectionRefusedError")
        await self.inner.set_conversations(rows)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class CountingCache(MemoryCache):
    """The embedded cache, its grouped calls recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []
        self.writes: list[list[tuple[str, bytes]]] = []

    async def get_many(self, keys):
        self.reads.append(list(keys))
        return await super().get_many(keys)

    async def set_many(self, items, ttl):
        self.writes.append(list(items))
        await super().set_many(items, ttl)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.servers)])
def store_settings(request):
    return request.getfixturevalue("embedded_settings" if request.param == "sqlite" else "server_settings")


@pytest.fixture
async def store(store_settings):
    settings = store_settings
    inner = PostgresStore(settings) if settings.database_url else SqliteStore(settings)
    await inner.open()
    await inner.migrate()
    yield CountingStore(inner)
    await inner.close()


async def test_a_burst_of_new_customers_shares_one_store_read_and_one_write(store) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    returning = {f"1555{n:04d}": str(uuid.uuid4()) for n in range(0, 40, 4)}  # every 4th customer wrote before
    await store.inner.set_conversations([(tenant, wa, conv) for wa, conv in returning.items()])
    cache = CountingCache()
    state = ConversationState(cache, store)
    customers = [f"1555{n:04d}" for n in range(40)]

    found = await asyncio.gather(*(state.known(tenant, wa) for wa in customers))
    assert found == [returning.get(wa) for wa in customers]
    assert len(cache.reads) == 1 and len(cache.reads[0]) == len(customers)  # one MGET for the burst
    assert len(store.reads) == 1 and sorted(store.reads[0]) == sorted((tenant, wa) for wa in customers)
    assert len(cache.writes) == 1 and len(cache.writes[0]) == 2 * len(returning)  # both directions, one pipeline

    named = {wa: str(uuid.uuid4()) for wa in customers if wa not in returning}  # Genesys's answers
    await asyncio.gather(*(state.adopt(tenant, wa, conv) for wa, conv in named.items()))
    assert len(store.writes) == 1 and len(store.writes[0]) == len(named)
    assert len(cache.writes) == 2 and len(cache.writes[1]) == 2 * len(named)
    stored = await store.inner.get_conversations([(tenant, wa) for wa in customers])
    assert stored == {(tenant, wa): conv for wa, conv in (returning | named).items()}
    # Cached both ways, and remembered: asking again costs no store read.
    wa, conv = next(iter(named.items()))
    assert await cache.get(keys.mapping_wa(tenant, wa)) == conv.encode()
    assert await cache.get(keys.mapping_conv(conv)) == f"{tenant}:{wa}".encode()
    assert await asyncio.gather(*(state.known(tenant, wa) for wa in customers)) == [
        (returning | named)[wa] for wa in customers
    ]
    assert len(store.reads) == 1


async def test_a_failed_grouped_adoption_fails_each_caller_and_the_next_one_writes(store) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    state = ConversationState(MemoryCache(), store)
    store.fail_writes = 1
    first = [(f"1666{n:04d}", str(uuid.uuid4())) for n in range(3)]
    outcomes = await asyncio.gather(*(state.adopt(tenant, wa, conv) for wa, conv in first), return_exceptions=True)
    assert all(isinstance(o, BackendUnavailable) for o in outcomes)
    assert await store.inner.get_conversations([(tenant, wa) for wa, _ in first]) == {}
    await state.adopt(tenant, *first[0])  # the relay holds through the outage and adopts again
    assert await store.inner.get_conversation(tenant, first[0][0]) == first[0][1]
