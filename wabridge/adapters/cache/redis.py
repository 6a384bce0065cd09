"""The Cache port on Redis (redis.asyncio).

Every key is `settings.key_prefix + key` (see keys.py). Timeouts are short on purpose: when Redis is down the caller
must learn it within about a second and fall back to the store, not hang on a socket; every connection or timeout
error becomes `BackendUnavailable("cache", …)`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wabridge.engine.settings import Settings
from wabridge.ports import BackendUnavailable

T = TypeVar("T")

SOCKET_TIMEOUT = 1.0  # seconds per command; a healthy loopback Redis answers in ~0.1 ms
CONNECT_TIMEOUT = 0.5
MAX_CONNECTIONS = 64

_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
# A command written on a connection the server just dropped fails in the event loop's transport with
# RuntimeError("unable to perform operation on <TCPTransport closed=True ...>; the handler is closed") — seen under
# uvloop when the Redis link was cut (tests/e2e/test_backend_outages.py). That is the server going away too.
_CLOSED_TRANSPORT = "handler is closed"


class RedisCache:
    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("RedisCache needs settings.redis_url")
        self._prefix = settings.key_prefix
        # One immediate retry: a pooled connection may have died with a Redis restart; the second try opens a
        # fresh one. No backoff: an outage is reported, not waited out.
        self._redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
            max_connections=MAX_CONNECTIONS,
        )

    def __repr__(self) -> str:  # the URL may hold a password
        return f"RedisCache(prefix={self._prefix!r})"

    async def _call(self, op: Awaitable[T]) -> T:
        try:
            return await op
        except _DOWN as exc:
            raise BackendUnavailable("cache", f"redis: {type(exc).__name__}") from exc
        except RuntimeError as exc:
            if _CLOSED_TRANSPORT not in str(exc):
                raise
            raise BackendUnavailable("cache", "redis: connection closed under the command") from exc

    async def get(self, key: str) -> bytes | None:
        return await self._call(self._redis.get(self._prefix + key))

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        values = await self._call(self._redis.mget([self._prefix + key for key in keys]))
        return {key: value for key, value in zip(keys, values, strict=True) if value is not None}

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(self._redis.set(self._prefix + key, value, px=_ms(ttl)))

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        if not items:
            return
        px = _ms(ttl)

        async def pipelined() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(self._prefix + key, value, px=px)
                await pipe.execute()

        await self._call(pipelined())

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(await self._call(self._redis.set(self._prefix + key, value, px=_ms(ttl), nx=True)))

    async def delete(self, key: str) -> None:
        await self._call(self._redis.delete(self._prefix + key))

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        full = self._prefix + key

        # INCRBY and PEXPIRE NX in one MULTI: one round trip, and the window starts when the key is created.
        async def both() -> list:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(full, amount)
                pipe.pexpire(full, _ms(ttl), nx=True)
                return await pipe.execute()

        count, _ = await self._call(both())
        return int(count)

    async def open(self) -> None:
        """Nothing to open: redis-py connects on first use, so a Redis still booting does not stop start-up."""

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (*_DOWN, RuntimeError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def _ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
    return max(1, int(ttl * 1000))
