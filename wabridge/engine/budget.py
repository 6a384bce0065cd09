"""What the two shared rate budgets have in common (genesys/ratelimit.py: Genesys requests per OAuth client and
minute; meta/graph.py: Meta sends per phone number and second): a grant is taken from a count every process shares
in the Cache, per key and window, reserved in blocks so that a grant normally costs no round trip.

Each reservation raises the shared count by a block (a twentieth of the budget, 1 to BLOCK_MAX) and is granted only
as far as the count stays within the budget: never more than the budget in all, per window, across processes; what a
process reserved and did not use is lost when the window ends. Cache down (BackendUnavailable): counted in process,
so N processes may grant up to N× the budget until it is back (the far end's own throttling answers catch that).
"""

from __future__ import annotations

from wabridge.ports import BackendUnavailable, Cache

MAX_KEYS = 100_000  # per-key state kept in process (round-robin positions, reserved blocks); past it, it restarts
BLOCK_MAX = 16  # grants one counter round trip reserves at most


def block_for(limit: int) -> int:
    """Grants one reservation takes: a twentieth of the budget, between 1 and BLOCK_MAX (a small budget keeps its
    exact per-message count)."""
    return max(1, min(BLOCK_MAX, limit // 20))


class Reservations:
    """`await reservations.take(key, window, limit)`: one grant of `key`'s budget in `window`, or False when it is
    spent. `key` names its window (the Cache's TTL, `ttl`, only bounds memory)."""

    def __init__(self, cache: Cache | None, *, ttl: float) -> None:
        self._cache = cache
        self._ttl = ttl
        self._blocks: dict[str, tuple[int, int]] = {}  # key → (window, grants left of this process's block)
        self._local: dict[str, int] = {}  # key → count, this window only (while the cache is down)
        self._local_window = -1
        self.reservations = self.local_counts = 0

    async def take(self, key: str, window: int, limit: int) -> bool:
        held = self._blocks.get(key)
        if held is not None and held[0] == window and held[1] > 0:
            self._blocks[key] = (window, held[1] - 1)
            return True
        block = block_for(limit)
        count = await self._count(key, window, block)  # the shared count, this block included
        granted = min(block, limit - (count - block))  # the part of the block within the budget
        if granted <= 0:
            return False
        if len(self._blocks) >= MAX_KEYS:
            self._blocks.clear()
        self._blocks[key] = (window, granted - 1)
        return True

    async def _count(self, key: str, window: int, amount: int) -> int:
        self.reservations += 1
        if self._cache is not None:
            try:
                return await self._cache.incr(key, self._ttl, amount)
            except BackendUnavailable:
                pass
        if window != self._local_window:  # a new window: the old counts can never matter again
            self._local.clear()
            self._local_window = window
        self.local_counts += 1
        self._local[key] = count = self._local.get(key, 0) + amount
        return count
