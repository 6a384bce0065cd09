"""The one in-process TTL-LRU map (ExpiringLRU), and LocalCache: a bounded in-process LRU in front of a remote Cache,
for hot keys read on every message (tenant config, tokens, conversation mappings).

The staleness bound: a local copy lives at most `max_staleness` seconds (and never past the TTL it was set with), so a
key changed in Redis by another process is seen here within `max_staleness`. A change made through this LocalCache
(set, delete, incr, set_if_absent) updates or drops the local copy at once. Misses are remembered too, under the same
bound: an unknown phone_number_id flooding the ingress costs one Redis GET per `max_staleness`, not one per request.
`incr` and `set_if_absent` always go to the remote: rate counters and de-duplication must be shared by processes.
Past `max_entries` the least recently used key is dropped.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from wabridge.ports import Cache

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class Missing(enum.Enum):
    """What `ExpiringLRU.get` answers for a key it does not hold, when None is a value worth keeping."""

    MISSING = enum.auto()


MISSING = Missing.MISSING


class ExpiringLRU(Generic[K, V]):
    """A bounded map whose entries expire, each at its own deadline (`clock` seconds): a read moves an entry to the
    recent end, and past `max_entries` the least recently used entry goes. An expired entry is dropped when touched.
    The in-process tier of the Cache port (LocalCache, MemoryCache) and of the tenant directory: on the hot path, so
    an OrderedDict (C) does the work; cachetools' TLRUCache took 7x as long per read (bench/test_cache_bench.py)."""

    __slots__ = ("_clock", "_entries", "max_entries")

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key → (deadline, value)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, default: D) -> V | D:
        """The live value of `key` (now the most recently used), else `default`."""
        entry = self._entries.get(key)
        if entry is None:
            return default
        if entry[0] <= self._clock():
            del self._entries[key]
            return default
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        """`value` under `key` for `ttl` seconds, most recently used; past the bound the least recently used goes."""
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def replace(self, key: K, value: V) -> None:
        """A new value for a held `key`, under its old deadline (a counter's window keeps its first expiry)."""
        self._entries[key] = (self._entries[key][0], value)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


class LocalCache:
    def __init__(self, remote: Cache, *, max_entries: int = 10_000, max_staleness: float = 1.0) -> None:
        if max_staleness <= 0:
            raise ValueError("max_staleness must be > 0 seconds")
        self.remote = remote
        self.max_entries = max_entries
        self.max_staleness = max_staleness
        self._entries: ExpiringLRU[str, bytes | None] = ExpiringLRU(max_entries)  # None: a remembered miss
        # Bumped by every write through this cache: a get whose remote read overlapped a write must not
        # remember what it read (it may be the value from before the write).
        self._writes = 0

    def __repr__(self) -> str:
        return f"LocalCache(entries={len(self._entries)}, max_staleness={self.max_staleness}, remote={self.remote!r})"

    def _remember(self, key: str, value: bytes | None, lifetime: float) -> None:
        self._entries.put(key, value, min(lifetime, self.max_staleness))

    async def get(self, key: str) -> bytes | None:
        value = self._entries.get(key, MISSING)
        if value is not MISSING:
            return value
        return (await self.get_many([key])).get(key)  # the miss path, shared: asked remotely, then remembered

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        missing: list[str] = []
        for key in keys:
            value = self._entries.get(key, MISSING)
            if value is MISSING:
                missing.append(key)
            elif value is not None:
                found[key] = value
        if missing:
            writes = self._writes
            remote = await self.remote.get_many(missing)
            if writes == self._writes:
                for key in missing:
                    self._remember(key, remote.get(key), self.max_staleness)
            found.update(remote)
        return found

    def _forget(self, key: str) -> None:
        self._writes += 1
        self._entries.pop(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._forget(key)  # if the remote write fails, no local copy may claim it succeeded
        await self.remote.set(key, value, ttl)
        self._remember(key, value, ttl)

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        for key, _ in items:
            self._forget(key)
        await self.remote.set_many(items, ttl)
        for key, value in items:
            self._remember(key, value, ttl)

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        self._forget(key)
        return await self.remote.set_if_absent(key, value, ttl)

    async def delete(self, key: str) -> None:
        self._forget(key)
        await self.remote.delete(key)

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        self._forget(key)
        return await self.remote.incr(key, ttl, amount)

    def invalidate(self, key: str) -> None:
        """Forget the local copy (the next get asks the remote)."""
        self._forget(key)

    async def open(self) -> None:
        await self.remote.open()

    async def ping(self) -> bool:
        return await self.remote.ping()

    async def close(self) -> None:
        self._entries.clear()
        await self.remote.close()
