"""A bounded in-process LRU in front of a remote Cache, for hot keys read on every message (tenant config, tokens,
conversation mappings).

The staleness bound: a local copy lives at most `max_staleness` seconds (and never past the TTL it was set with), so a
key changed in Redis by another process is seen here within `max_staleness`. A change made through this LocalCache
(set, delete, incr, set_if_absent) updates or drops the local copy at once. Misses are remembered too, under the same
bound: an unknown phone_number_id flooding the ingress costs one Redis GET per `max_staleness`, not one per request.
`incr` and `set_if_absent` always go to the remote: rate counters and de-duplication must be shared by processes.
Past `max_entries` the least recently used key is dropped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from wabridge.ports import Cache


class LocalCache:
    def __init__(self, remote: Cache, *, max_entries: int = 10_000, max_staleness: float = 1.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_staleness <= 0:
            raise ValueError("max_staleness must be > 0 seconds")
        self.remote = remote
        self.max_entries = max_entries
        self.max_staleness = max_staleness
        self._entries: OrderedDict[str, tuple[bytes | None, float]] = OrderedDict()  # key → (value, deadline)
        # Bumped by every write through this cache: a get whose remote read overlapped a write must not
        # remember what it read (it may be the value from before the write).
        self._writes = 0

    def __repr__(self) -> str:
        return f"LocalCache(entries={len(self._entries)}, max_staleness={self.max_staleness}, remote={self.remote!r})"

    def _remember(self, key: str, value: bytes | None, lifetime: float) -> None:
        self._entries[key] = (value, time.monotonic() + min(lifetime, self.max_staleness))
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is not None:
            if entry[1] > time.monotonic():
                self._entries.move_to_end(key)
                return entry[0]
            del self._entries[key]
        return (await self.get_many([key])).get(key)  # the miss path, shared: asked remotely, then remembered

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        missing: list[str] = []
        now = time.monotonic()
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and entry[1] > now:
                self._entries.move_to_end(key)
                if entry[0] is not None:
                    found[key] = entry[0]
            else:
                missing.append(key)
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
        self._entries.pop(key, None)

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

    async def ping(self) -> bool:
        return await self.remote.ping()

    async def close(self) -> None:
        self._entries.clear()
        await self.remote.close()
