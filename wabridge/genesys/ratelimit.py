"""The delivery budget: stay under Genesys's per-OAuth-client rate limit instead of drawing 429s.

Genesys allows each client-credentials client 300 requests/min by default (reference.md §2). Each tenant credential
gets `TenantConfig.rate_limit_per_minute` deliveries per wall-clock minute, counted in the Cache port so every bridge
process shares one count:
  `ratelimit:{tenantId}:{minute}`              the tenant's first credential (the seed's key, unchanged)
  `ratelimit:{tenantId}:{minute}:{client_id}`  each further credential
`minute` is the Unix time divided by the window (60 s; injectable so tests need not wait a minute), and the key lives
one window (Cache.incr sets the TTL when it creates the key). `acquire` tries the credentials round-robin, starting
one further on each call, so deliveries spread over them; when all are spent it sleeps until the next window and
tries again: a tenant over budget waits, nothing is dropped. A budget of 0 means no limit.

Grants are reserved in blocks: one counter round trip takes up to `BLOCK_MAX` of them (a twentieth of the budget,
at least 1), which this process then hands out without asking again. Each reservation is granted only as far as the
shared count stays within the budget, so the tenant never gets more than its budget per window across processes;
what a process reserved and did not use is lost when the window ends (at most one block per credential and process
and window). A counter round trip per message was about a quarter of the worker's profile with a large budget.

Cache down (BackendUnavailable): the count falls back to a per-process counter for the same keys. Each process then
spends the whole budget on its own, so N processes may send up to N× the budget until the cache is back; the 429
path of the Open Messaging client (Retry-After honoured) is what catches that overshoot.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from wabridge.engine import keys
from wabridge.engine.budget import BLOCK_MAX, MAX_KEYS, Reservations, block_for  # noqa: F401  (tests name them here)
from wabridge.ports import Cache, GenesysCredential, TenantConfig

MAX_TENANTS = MAX_KEYS  # round-robin positions kept; past it they restart at 0 (harmless)


class BudgetStatistics(msgspec.Struct, frozen=True):
    granted: int
    waits: int  # times a caller found every credential spent and slept to the next window
    local_counts: int  # increments counted in process because the cache was down
    reservations: int = 0  # counter round trips (each reserving a block of grants)


def budget_key(tenant: TenantConfig, credential: GenesysCredential, window: int) -> str:
    """The seed's key for the first credential; the others named by client id (the Cache adapter adds the prefix)."""
    base = keys.rate_limit(tenant.tenant_id, window)
    if credential.client_id == tenant.credentials[0].client_id:
        return base
    return f"{base}:{credential.client_id}"


class RateBudget:
    """`credential = await budget.acquire(tenant)` before each Genesys request."""

    def __init__(
        self,
        cache: Cache | None,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._cache = cache
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._next: dict[str, int] = {}  # tenant → credential index to try first
        self._granted = self._waits = 0
        self._reservations = Reservations(cache, ttl=window_s)

    async def acquire(self, tenant: TenantConfig) -> GenesysCredential:
        credentials = tenant.credentials
        if not credentials:
            raise ValueError(f"tenant {tenant.tenant_id} has no Genesys credentials")
        limit = tenant.rate_limit_per_minute
        while True:
            start = self._next.get(tenant.tenant_id, 0)
            if len(self._next) >= MAX_TENANTS:
                self._next.clear()
            self._next[tenant.tenant_id] = start + 1
            if limit <= 0:
                self._granted += 1
                return credentials[start % len(credentials)]
            window = int(self._clock() // self.window_s)
            for i in range(len(credentials)):
                credential = credentials[(start + i) % len(credentials)]
                if await self._reservations.take(budget_key(tenant, credential, window), window, limit):
                    self._granted += 1
                    return credential
            self._waits += 1
            # A small margin past the boundary so the next count lands in the new window even with a coarse clock.
            await self._sleep(max(0.0, (window + 1) * self.window_s - self._clock()) + 0.001)

    def statistics(self) -> BudgetStatistics:
        reservations = self._reservations
        return BudgetStatistics(self._granted, self._waits, reservations.local_counts, reservations.reservations)
