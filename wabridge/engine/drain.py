"""Graceful drain: the first SIGTERM/SIGINT stops new work, in-flight work finishes or is handed back within a
deadline, and the process exits 0; a second signal exits at once.

The main coroutine gets a `Shutdown` and owns the policy: when `shutdown.stopping` is set it stops consuming,
lets what is in flight finish, and returns. If it has not returned by the deadline it is cancelled: its cancellation
handlers hand unfinished messages back to the queue (nack/requeue), which the broker redelivers — nothing accepted
is lost, it may run twice (at-least-once; every side effect is idempotent by message id).

    def serve(args) -> int:
        return drain.run(lambda shutdown: bridge_main(settings, shutdown), deadline=settings_deadline)

Exit statuses: 0 after a drain or a normal return; 1 when the main coroutine failed (a supervisor gave up: one
clear log line); 128 + signal number on a second signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence

from wabridge.engine.logs import get_logger
from wabridge.engine.supervisor import SupervisorGaveUp
from wabridge.engine.tasks import first_of

log = get_logger("drain")

# After the deadline cancels the main coroutine, how long its cancellation handlers get to hand work back.
HAND_BACK_GRACE = 5.0


class Shutdown:
    """The stop request shared by everything in the process: `stopping` is set on the first signal."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.reason = ""

    def request(self, reason: str = "requested") -> None:
        if not self.stopping.is_set():
            self.reason = reason
            self.stopping.set()

    @property
    def is_stopping(self) -> bool:
        return self.stopping.is_set()

    async def wait(self) -> None:
        await self.stopping.wait()


async def run_until_signalled(
    main: Callable[[Shutdown], Awaitable[None]],
    *,
    deadline: float = 30.0,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    shutdown: Shutdown | None = None,
) -> int:
    """Run `main(shutdown)` until it returns; drain on the first signal; return the exit status."""
    loop = asyncio.get_running_loop()
    shutdown = shutdown or Shutdown()

    def on_signal(signum: signal.Signals) -> None:
        if shutdown.is_stopping:
            log.error("second %s: exiting now without draining", signum.name)
            for handler in logging.getLogger("wabridge").handlers:
                handler.flush()
            os._exit(128 + signum)
        log.warning("%s: draining (deadline %g s)", signum.name, deadline)
        shutdown.request(signum.name)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    task = asyncio.ensure_future(main(shutdown))
    try:
        await first_of(task, shutdown.wait())
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=deadline)
            if not done:
                log.warning("drain deadline of %g s passed: cancelling, unfinished work is handed back", deadline)
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=HAND_BACK_GRACE)
                if not done:
                    log.error("work still running %g s after cancellation: exiting anyway", HAND_BACK_GRACE)
                    return 1
        return _status(task, shutdown)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        if not task.done():
            task.cancel()


def _status(task: asyncio.Future, shutdown: Shutdown) -> int:
    if task.cancelled():
        return 0 if shutdown.is_stopping else 1
    exc = task.exception()
    if exc is None:
        if shutdown.is_stopping:
            log.info("drained after %s", shutdown.reason)
        return 0
    if isinstance(exc, SupervisorGaveUp):
        log.error("wabridge stopping: %s", exc)
    else:
        log.error("wabridge stopping: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return 1


def run(main: Callable[[Shutdown], Awaitable[None]], *, deadline: float = 30.0) -> int:
    """Entry point for a command: a fresh uvloop event loop (asyncio's where uvloop is missing)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_until_signalled(main, deadline=deadline))
