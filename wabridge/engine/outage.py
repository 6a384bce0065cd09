"""Holding a step through a backend outage: tried again while its server is down, rather than failed at once.

The relay and the tenant actor hold a message in place this way until its server answers again (or a drain), parking
waits on the store with it, and the ingress's archive holds a segment put with it until S3 answers again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from wabridge.engine.backoff import Backoff
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.ports import BackendUnavailable

log = get_logger("outage")

_holds = REGISTRY.counter("wabridge_outage_holds_total", "Retries of a step while a backend was down.", ["port"])
_held_long = REGISTRY.counter(
    "wabridge_outage_held_long_total", "Steps still held past WABRIDGE_OUTAGE_HOLD, holding on.", ["port"]
)

# A message is held in place through a backend outage for as long as it lasts, unacked, its customer's lane waiting
# behind it: order is kept and no attempt is spent. Handed back to the queue past a bound instead, it would go behind
# newer messages of its customer, which the worker would then take first (tests/e2e/test_outage_order.py). A drain
# stops the hold (`give_up`) and hands it back; the broker's consumer_timeout must exceed the longest outage to ride
# out (the dev services and compose set 2 h).
HOLD_BACKOFF = Backoff(0.2, 5.0, jitter=None)  # s between tries

T = TypeVar("T")


async def hold_through_outage(
    step: Callable[[], Awaitable[T]],
    *,
    hold_for: float = math.inf,
    give_up: Callable[[], bool] = lambda: False,
    what: str = "a message",
    report_after: float | None = None,
) -> T:
    """`await step()`, tried again while it raises BackendUnavailable, for up to `hold_for` seconds or until
    `give_up()` (a drain); then the last BackendUnavailable propagates. `what` is held, for the log. Still held after
    `report_after` seconds, it is reported once (an error line and `wabridge_outage_held_long_total`)."""
    started = time.monotonic()
    deadline = started + hold_for
    reported = report_after is None
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
            if not reported and time.monotonic() - started >= report_after:  # type: ignore[operator]
                reported = True
                _held_long.labels(exc.port).inc()
                log.error("still holding %s after %.0f s: %s; it waits on in place", what, report_after, exc)
            await asyncio.sleep(HOLD_BACKOFF.delay(tries + 1))
            tries += 1
