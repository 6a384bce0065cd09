"""Holding a step through a backend outage: tried again while its server is down, rather than failed at once.

The relay and the tenant actor hold a message in place this way (bounded: see HOLD_FOR), parking waits on the store
with it for as long as it takes, and the ingress's archive holds a segment put with it until S3 answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.engine.ports import BackendUnavailable

log = get_logger("outage")

_holds = REGISTRY.counter("wabridge_outage_holds_total", "Retries of a step while a backend was down.", ["port"])

# How long one message is held in place through a backend outage before it is handed back to the queue. Handing it
# back at once burnt the queue's 3 attempts in ~30 ms of a PostgreSQL outage and dead-lettered every message in
# flight (found by tests/e2e/test_backend_outages.py); holding keeps it unacked, and its customer's lane waits with
# it, so order is kept. Bounded: RabbitMQ closes a channel whose delivery stays unacked past its consumer timeout
# (30 min by default), and a drain must not wait on an outage. The tenant actor's holds (before anything left the
# bridge) take theirs from the `outage_hold` setting; this default is for the holds after Genesys has the message.
HOLD_FOR = 300.0  # s
HOLD_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # s between tries, the last one repeated

T = TypeVar("T")


async def hold_through_outage(
    step: Callable[[], Awaitable[T]],
    *,
    hold_for: float = HOLD_FOR,
    give_up: Callable[[], bool] = lambda: False,
    what: str = "a message",
) -> T:
    """`await step()`, tried again while it raises BackendUnavailable, for up to `hold_for` seconds or until
    `give_up()` (a drain); then the last BackendUnavailable propagates. `what` is held, for the log."""
    deadline = time.monotonic() + hold_for
    tries = 0
    while True:
        try:
            return await step()
        except BackendUnavailable as exc:
            if give_up() or time.monotonic() >= deadline:
                raise
            _holds.labels(exc.port).inc()
            if tries == 0:
                log.warning("holding %s through an outage: %s", what, exc)
            await asyncio.sleep(HOLD_BACKOFF[min(tries, len(HOLD_BACKOFF) - 1)])
            tries += 1
