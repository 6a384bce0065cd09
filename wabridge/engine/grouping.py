"""Grouped calls: many concurrent one-key calls to a server answered by one many-key call.

A store round trip costs the worker far more than the work inside it (a pooled connection, a statement, a wake-up
of both processes), so calls that wait at the same moment share one: `await grouped.get(key)` joins the group
being gathered, or starts one. The first call when no group is in flight starts a group after `max_delay`; calls
that arrive while a group is in flight form the next one. Each answer therefore comes from a call started after it
was asked: a row committed before `get()` is always seen. A failure of the shared call reaches every caller of
that group; the next group calls again.

Writes group the same way: a `call_many` that writes and returns no rows makes `get` resolve once its write is
done (None).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Grouped(Generic[K, V]):
    def __init__(
        self,
        call_many: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        name: str,
        max_batch: int = 1000,
        max_delay: float = 0.002,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._call_many = call_many
        self.name = name
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._caller: asyncio.Task[None] | None = None  # the group in flight
        self.calls = 0  # shared calls made

    async def get(self, key: K) -> V | None:
        done: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, done))
        if self._caller is None:
            # A context of its own: the group serves many messages, and its log lines must not name the first one
            # (engine/logs.py MESSAGE_CONTEXT, set by the caller's trail).
            self._caller = asyncio.get_running_loop().create_task(
                self._call(), name=self.name, context=contextvars.Context()
            )
        return await done

    async def _call(self) -> None:
        try:
            if self.max_delay:
                await asyncio.sleep(self.max_delay)  # let the calls of the next moment share this one
            while self._waiting:
                group = [(k, f) for k, f in self._waiting[: self.max_batch] if not f.done()]  # skip cancelled callers
                del self._waiting[: self.max_batch]
                if not group:
                    continue
                try:
                    answers = await self._call_many([k for k, _ in group])
                except Exception as exc:
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                except BaseException:
                    for _, done in group:
                        done.cancel()
                    raise
                self.calls += 1
                for key, done in group:
                    if not done.done():
                        done.set_result(answers.get(key))
        finally:
            self._caller = None
            waiting, self._waiting = self._waiting, []
            for _, done in waiting:  # only when this task itself was cancelled
                done.cancel()
