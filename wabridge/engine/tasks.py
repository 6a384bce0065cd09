"""Who owns a task: the one concurrency style of wabridge.

A scope that starts tasks and ends with them is an `asyncio.TaskGroup` (the supervisor's children, the lanes' workers).
A task that outlives the call that starts it — a writer, a flusher, a consumer loop, a settlement the actor must not
wait for in its handler — is started by the `Tasks` of the object that owns it, which awaits it (`wait`) or cancels
and awaits it (`close`) when that object closes. Unlike a TaskGroup, one failing task never cancels its siblings: its
fault is logged and stays with it (no input may crash an actor or stop the process). A wait for the first of several
events is `first_of`, which ends its helper tasks before it returns. An object's single loop (a writer, a consumer)
kept in one attribute and awaited by that object's close is owned the same way.

    self._settling = Tasks("tenant-settling")
    self._settling.start(self._settle(delivery), name="settle")
    ...
    await self._settling.wait()   # or close(): cancel what is left, and wait for it
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from wabridge.engine.logs import get_logger

T = TypeVar("T")

log = get_logger("tasks")


class Tasks:
    """The running tasks of one owner, named `name` in the log line of a task that fails."""

    def __init__(self, name: str, *, log_failures: bool = True) -> None:
        self.name = name
        self._log_failures = log_failures  # False: the owner reads each failure itself (a done-callback)
        self._running: set[asyncio.Task[Any]] = set()

    def start(
        self, coroutine: Coroutine[Any, Any, T], *, name: str | None = None, context: contextvars.Context | None = None
    ) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name, context=context)
        self._running.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here: a failure is never "never retrieved"
        if exc is not None and self._log_failures:
            log.error("task %s of %s failed: %s: %s", task.get_name(), self.name, type(exc).__name__, exc, exc_info=exc)

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        """The tasks running now (a copy: they end while you look)."""
        return iter(list(self._running))

    async def wait(self) -> None:
        """Until every task has ended, those started meanwhile too; their failures stay theirs. Cancelled while
        waiting (a drain's deadline), it cancels them and waits for that, as a task group would."""
        try:
            while self._running:
                await asyncio.wait(list(self._running))
        except asyncio.CancelledError:
            await self.close()
            raise

    async def close(self) -> None:
        """Cancel every task and wait until all have ended."""
        while self._running:
            running = list(self._running)
            for task in running:
                task.cancel()
            await asyncio.wait(running)


async def first_of(*waits: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> None:
    """Until the first of `waits` is done (bound it with `asyncio.timeout`). The tasks made here for its coroutines
    (an event's `wait()`) are cancelled and awaited before it returns; its futures are the caller's, untouched."""
    mine = [asyncio.ensure_future(w) for w in waits if asyncio.iscoroutine(w)]
    theirs = [w for w in waits if not asyncio.iscoroutine(w)]
    try:
        await asyncio.wait([*mine, *theirs], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in mine:
            task.cancel()
        await asyncio.wait(mine)
