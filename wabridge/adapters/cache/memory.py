"""The Cache port in process: the embedded adapter (no Redis), for `wabridge serve` without configuration.

Shared by the tasks of one process only. Bounded: past `max_entries` the least recently used key is dropped, which
for a cache is the documented behaviour (a miss, then the store answers). Expired keys are dropped when touched.
"""

from __future__ import annotations

from collections.abc import Sequence

from wabridge.engine.lru import ExpiringLRU
from wabridge.engine.settings import Settings

DEFAULT_MAX_ENTRIES = 100_000


class MemoryCache:
    def __init__(self, settings: Settings | None = None, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: ExpiringLRU[str, bytes] = ExpiringLRU(max_entries)

    def __repr__(self) -> str:
        return f"MemoryCache(entries={len(self._entries)}, max_entries={self.max_entries})"

    def _store(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
        self._entries.put(key, value, ttl)

    async def get(self, key: str) -> bytes | None:
        return self._entries.get(key, None)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {key: value for key in keys if (value := self._entries.get(key, None)) is not None}

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._store(key, value, ttl)

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        for key, value in items:
            self._store(key, value, ttl)

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        if self._entries.get(key, None) is not None:
            return False
        self._store(key, value, ttl)
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key)

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        current = self._entries.get(key, None)
        if current is None:
            self._store(key, str(amount).encode(), ttl)
            return amount
        count = int(current) + amount
        self._entries.replace(key, str(count).encode())  # the window keeps its first deadline
        return count

    async def open(self) -> None:
        """Nothing to open: the map lives in this process."""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()
