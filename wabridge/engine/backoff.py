"""The one backoff policy of the bridge: every pause between tries (media downloads, deliveries to Genesys and sends
to Meta, far-end probes, outage holds, restarts, AMQP re-subscriptions, start-up) grows from `first` seconds, doubling
per try, up to `cap`.

Jitter keeps callers that failed together from trying again in step: "equal" draws from [d/2, d] (spread, with a
floor), "full" from [0, d]; None pauses exactly d, for pauses no crowd shares (a restart, a poll of one's own row).
`uniform` is the random source: a seeded `random.Random(n).uniform` makes the pauses reproducible.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    first: float  # s: the pause after the first failed try
    cap: float = math.inf  # s: no pause is longer
    jitter: Literal["equal", "full"] | None = "equal"
    uniform: Callable[[float, float], float] = random.uniform

    def ceiling(self, attempt: int) -> float:
        """The pause after failed try `attempt` (from 1) before jitter: first · 2^(attempt - 1), at most `cap`."""
        return min(self.cap, self.first * 2.0 ** min(max(attempt - 1, 0), 64))

    def delay(self, attempt: int) -> float:
        """The pause after failed try `attempt` (from 1), jittered."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "equal":
            return ceiling / 2 + self.uniform(0, ceiling / 2)
        if self.jitter == "full":
            return self.uniform(0, ceiling)
        return ceiling


async def poll(
    ask: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    policy: Backoff,
    within: float,
    *,
    pause: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`ask()` again, pausing by `policy`, until `done(answer)` or for up to `within` seconds (a pause that would end
    past them is not taken); the last answer. `pause` may return early (woken by an event): the next ask comes then."""
    deadline = clock() + within
    attempt = 1
    while True:
        answer = await ask()
        if done(answer):
            return answer
        delay = policy.delay(attempt)
        if clock() + delay > deadline:
            return answer
        await pause(delay)
        attempt += 1
