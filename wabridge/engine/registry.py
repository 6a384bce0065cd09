"""Actors found by key (a tenant id), started on first use, stopped when idle, at most `max_live` at once.

At the bound, the least-recently-used *spare* actor (nothing queued, nothing in hand) is stopped to make room; if
none is spare, the least-recently-used one is drained and stopped (the caller waits: backpressure, not growth).
A key never has two actors alive at once: a `get` for a key being stopped waits until that actor has finished,
which keeps the per-key ordering the bridge relies on.

    async with Registry(root, lambda tenant_id: TenantActor(tenant_id), kind="tenant", max_live=1000) as tenants:
        await (await tenants.get("t1")).tell(message)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from wabridge.engine.actor import Actor, ActorRef, FailureCallback
from wabridge.engine.logs import get_logger
from wabridge.engine.supervisor import Supervisor

K = TypeVar("K", bound=Hashable)


class Registry(Generic[K]):
    def __init__(
        self,
        supervisor: Supervisor,
        factory: Callable[[K], Actor],
        *,
        kind: str,
        max_live: int = 1000,
        idle_timeout: float = 300.0,
        capacity: int = 1024,
        retries: int = 1,
        on_failed: FailureCallback | None = None,
    ) -> None:
        if max_live < 1 or idle_timeout <= 0:
            raise ValueError("max_live must be at least 1 and idle_timeout positive")
        self.kind = kind
        self.max_live = max_live
        self.idle_timeout = idle_timeout
        self._supervisor = supervisor
        self._factory = factory
        self._spawn_options: dict[str, Any] = {"capacity": capacity, "retries": retries, "on_failed": on_failed}
        self._live: OrderedDict[K, ActorRef] = OrderedDict()  # least recently used first
        self._last_used: dict[K, float] = {}
        self._stopping: dict[K, ActorRef] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.log = get_logger("registry", kind=kind)
        self.stopped_idle = 0
        self.stopped_for_room = 0

    async def __aenter__(self) -> Registry[K]:
        self._reaper = asyncio.create_task(self._reap_forever(), name=f"registry:{self.kind}:reaper")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass
            self._reaper = None
        if exc[0] is None:
            await asyncio.gather(*(self._stop(key) for key in list(self._live)))

    def __len__(self) -> int:
        """Actors alive, counting those still stopping (the bound covers both)."""
        self._forget_stopped()
        return len(self._live) + len(self._stopping)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    async def get(self, key: K) -> ActorRef:
        while True:
            stopping = self._stopping.get(key)
            if stopping is not None:
                await stopping.wait_stopped()
                self._forget_stopped()
                continue
            ref = self._live.get(key)
            if ref is not None and not ref.mailbox.closed:
                self._live.move_to_end(key)
                self._last_used[key] = time.monotonic()
                return ref
            if ref is not None:  # closed under us (its supervisor is stopping): let it finish first
                self._live.pop(key)
                self._stopping[key] = ref
                continue
            if len(self) >= self.max_live:
                await self._make_room()
                continue
            ref = self._supervisor.spawn(
                lambda: self._factory(key), name=f"{self.kind}:{key}", kind=self.kind, **self._spawn_options
            )
            self._live[key] = ref
            self._last_used[key] = time.monotonic()
            return ref

    async def tell(self, key: K, message: Any) -> None:
        await (await self.get(key)).tell(message)

    async def _make_room(self) -> None:
        victim = next((k for k, r in self._live.items() if r.idle), None)
        if victim is None:
            victim = next(iter(self._live), None)
        if victim is None:  # everything is already stopping: wait for the oldest
            await next(iter(self._stopping.values())).wait_stopped()
            return
        self.stopped_for_room += 1
        await self._stop(victim)

    async def _stop(self, key: K) -> None:
        ref = self._live.pop(key, None)
        self._last_used.pop(key, None)
        if ref is None:
            return
        self._stopping[key] = ref
        await ref.stop()
        self._forget_stopped()

    def _forget_stopped(self) -> None:
        for key in [k for k, r in self._stopping.items() if r.stopped]:
            del self._stopping[key]

    async def reap_idle(self) -> int:
        """Stop every actor unused for `idle_timeout` seconds that has nothing to do; return how many."""
        deadline = time.monotonic() - self.idle_timeout
        idle = [k for k, r in self._live.items() if r.idle and self._last_used.get(k, 0.0) <= deadline]
        for key in idle:
            await self._stop(key)
        self.stopped_idle += len(idle)
        return len(idle)

    async def _reap_forever(self) -> None:
        # Checking 4 times per timeout bounds the overshoot to a quarter of it; never more often than 20 Hz.
        interval = min(max(self.idle_timeout / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                stopped = await self.reap_idle()
            except Exception:
                self.log.exception("idle reaper failed")
                continue
            if stopped:
                self.log.debug("stopped %d idle %s actors", stopped, self.kind)
