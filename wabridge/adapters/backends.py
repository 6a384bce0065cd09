"""The backend factory: one adapter per port, chosen from the settings, opened together and closed in reverse.

A port whose server URL is set gets its real adapter; otherwise its embedded one (so `wabridge` runs with no servers
at all, and a deployment can mix: e.g. real PostgreSQL with a directory for objects). Adapter modules are imported
only when chosen, so an embedded deployment never imports aio-pika or miniopy, and a broken adapter module breaks
only the deployments that use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from wabridge.engine.backoff import Backoff
from wabridge.engine.logs import get_logger
from wabridge.engine.settings import Settings
from wabridge.ports import BackendUnavailable, Cache, Objects, Queue, Store

log = get_logger("backends")

_A = "wabridge.adapters"
# port → (the setting that selects the real adapter, real adapter, embedded adapter)
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "store": ("database_url", f"{_A}.store.postgres:PostgresStore", f"{_A}.store.sqlite:SqliteStore"),
    "cache": ("redis_url", f"{_A}.cache.redis:RedisCache", f"{_A}.cache.memory:MemoryCache"),
    "queue": ("amqp_url", f"{_A}.queue.amqp:AmqpQueue", f"{_A}.queue.sqlite:SqliteQueue"),
    "objects": ("s3_endpoint", f"{_A}.objects.s3:S3Objects", f"{_A}.objects.directory:DirectoryObjects"),
}
# A second queue on the queue port's adapter, under its own name: the agents' messages to customers wait
# in their own shards, never behind the customers' webhooks nor in front of them. Port → the queue's name (None: main).
QUEUE_NAMES: dict[str, str | None] = {"queue": None, "outbound": "outbound"}
# Opened in this order, closed in the reverse: consumers on the queue stop before the store they write to closes.
OPEN_ORDER = ("store", "cache", "queue", "outbound", "objects")

# The local LRU in front of the cache (see lru.py for what the staleness bound means).
LOCAL_CACHE_ENTRIES = 10_000
LOCAL_CACHE_STALENESS = 1.0  # seconds
PING_TIMEOUT = 1.0  # seconds per backend in readiness(): /readyz must answer even when a server hangs
# A process starting while a server is down waits for it: first retry after FIRST_RETRY s, doubling up to MAX_RETRY.
FIRST_RETRY = 0.5
MAX_RETRY = 10.0


@dataclass
class Backends:
    queue: Queue
    outbound: Queue  # Genesys → customer webhooks (see QUEUE_NAMES)
    cache: Cache
    store: Store
    objects: Objects
    settings: Settings

    async def readiness(self) -> dict[str, bool]:
        """`readiness(self)`: every backend pinged at once."""
        return await readiness(self)


def adapter_path(settings: Settings, port: str) -> str:
    """`module:Class` of the adapter `settings` selects for `port` (the outbound queue: the queue's adapter)."""
    setting, real, embedded = ADAPTERS["queue" if port in QUEUE_NAMES else port]
    return real if getattr(settings, setting) else embedded


def adapter_kinds(settings: Settings) -> dict[str, str]:
    """Which adapter each port gets, e.g. {"queue": "AmqpQueue", …}: for the start-up log line (the outbound queue
    is the queue port's adapter, not listed twice)."""
    return {port: adapter_path(settings, port).rpartition(":")[2] for port in ADAPTERS}


def make_adapter(settings: Settings, port: str) -> Any:
    module, _, name = adapter_path(settings, port).partition(":")
    cls = getattr(importlib.import_module(module), name)
    adapter = cls(settings, name=QUEUE_NAMES[port]) if port in QUEUE_NAMES else cls(settings)
    if port == "cache":
        from wabridge.engine.lru import LocalCache

        adapter = LocalCache(adapter, max_entries=LOCAL_CACHE_ENTRIES, max_staleness=LOCAL_CACHE_STALENESS)
    return adapter


@asynccontextmanager
async def open_backends(
    settings: Settings, *, migrate: bool = True, ports: Sequence[str] = OPEN_ORDER
) -> AsyncIterator[Backends]:
    """Open every port's adapter (and bring the store's schema up to date unless `migrate=False`); on exit, or when
    one fails to open, close those already made in reverse order. Opening errors (BackendUnavailable when a server
    is down) propagate to the caller. `ports` limits what is opened (a CLI command that needs only the store does
    not need the broker up); the others are None."""
    async with AsyncExitStack() as stack:
        opened: dict[str, Any] = dict.fromkeys(OPEN_ORDER)
        for port in (p for p in OPEN_ORDER if p in ports):
            adapter = make_adapter(settings, port)
            # Registered before open(): an adapter that fails half-way (a session made, a bucket refused) still
            # releases what it holds.
            stack.push_async_callback(adapter.close)
            await adapter.open()
            if port == "store" and migrate:
                await adapter.migrate()
            opened[port] = adapter
        yield Backends(settings=settings, **opened)


@asynccontextmanager
async def open_backends_when_up(
    settings: Settings, stopping: asyncio.Event, *, first_retry: float = FIRST_RETRY, max_retry: float = MAX_RETRY
) -> AsyncIterator[Backends | None]:
    """`open_backends`, retried while a server is down: the bridge's processes start in any order beside their
    servers (a deployment restarting together, a broker still booting) instead of exiting for a supervisor to
    restart. Only BackendUnavailable is retried, with a warning per attempt; a misconfiguration (bad credentials, a
    refused bucket) still fails at once. Yields None when `stopping` is set before every backend is up."""
    pauses = Backoff(first_retry, max_retry, jitter=None)
    attempt = 1
    while not stopping.is_set():
        stack = AsyncExitStack()
        try:
            backends = await stack.enter_async_context(open_backends(settings))
        except BackendUnavailable as down:
            delay = pauses.delay(attempt)
            log.warning("start-up: %s; retrying in %.1f s (attempt %d)", down, delay, attempt)
            with contextlib.suppress(TimeoutError):  # a stop ends the wait at once
                await asyncio.wait_for(stopping.wait(), delay)
            attempt += 1
            continue
        async with stack:
            if attempt > 1:
                log.warning("start-up: every backend is up after %d attempts", attempt)
            yield backends
        return
    yield None


async def readiness(backends: Backends, *, timeout: float = PING_TIMEOUT) -> dict[str, bool]:
    """Ping every backend at once, each bounded by `timeout`: {"store": True, "cache": True, …}. A ping that
    raises or overruns counts as not ready."""
    results = dict.fromkeys(OPEN_ORDER, False)

    async def ping(port: str) -> None:
        with anyio.move_on_after(timeout):
            try:
                results[port] = bool(await getattr(backends, port).ping())
            except Exception:  # readiness reports; it never fails the probe itself
                results[port] = False

    async with anyio.create_task_group() as tg:
        for port in OPEN_ORDER:
            tg.start_soon(ping, port)
    return results
