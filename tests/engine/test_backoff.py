"""The one backoff policy: growth, cap, the jitter ranges, a seeded source giving the same pauses; and `poll`, asking
again until an answer is done or the time is up. A fake clock and fake pauses: nothing sleeps."""

from __future__ import annotations

import math
import random

import pytest

from wabridge.engine.backoff import Backoff, poll

pytestmark = pytest.mark.anyio


def low(a: float, b: float) -> float:
    return a


def high(a: float, b: float) -> float:
    return b


def test_without_jitter_the_pause_doubles_from_first_and_stops_at_the_cap() -> None:
    policy = Backoff(0.2, 5.0, jitter=None)
    assert [policy.delay(n) for n in range(1, 8)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert policy.delay(10_000) == 5.0, "a long outage neither overflows nor passes the cap"
    assert Backoff(1.0).ceiling(1_000) == 2.0**64, "no cap: growth stops at a finite bound"


def test_equal_jitter_draws_from_half_to_the_whole_ceiling() -> None:
    assert Backoff(1.0, 10.0, uniform=low).delay(3) == 2.0
    assert Backoff(1.0, 10.0, uniform=high).delay(3) == 4.0
    assert Backoff(1.0, 10.0, uniform=high).delay(9) == 10.0
    seeded = Backoff(0.5, 30.0, uniform=random.Random(7).uniform)
    for attempt in range(1, 40):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= seeded.delay(attempt) <= ceiling


def test_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    assert Backoff(1.0, 10.0, jitter="full", uniform=low).delay(3) == 0.0
    assert Backoff(1.0, 10.0, jitter="full", uniform=high).delay(3) == 4.0
    seeded = Backoff(1.0, 8.0, jitter="full", uniform=random.Random(3).uniform)
    assert all(0.0 <= seeded.delay(n) <= min(8.0, 2 ** (n - 1)) for n in range(1, 40))


def test_a_seeded_source_gives_the_same_pauses_again() -> None:
    def pauses(seed: int) -> list[float]:
        policy = Backoff(0.5, 30.0, uniform=random.Random(seed).uniform)
        return [policy.delay(n) for n in range(1, 10)]

    assert pauses(42) == pauses(42) and pauses(42) != pauses(43)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


async def test_poll_asks_again_with_growing_pauses_until_the_answer_is_done() -> None:
    clock, answers = Clock(), iter([None, None, None, "row"])

    async def ask() -> str | None:
        return next(answers)

    policy = Backoff(0.1, 1.0, jitter=None)
    found = await poll(ask, lambda row: row is not None, policy, 10.0, pause=clock.pause, clock=clock)
    assert found == "row" and clock.pauses == pytest.approx([0.1, 0.2, 0.4])


async def test_poll_takes_no_pause_that_would_end_past_the_time_and_returns_the_last_answer() -> None:
    clock, asks = Clock(), []

    async def ask() -> int:
        asks.append(clock.now)
        return len(asks)

    policy = Backoff(0.1, 1.0, jitter=None)
    last = await poll(ask, lambda n: False, policy, 2.0, pause=clock.pause, clock=clock)
    assert clock.pauses == pytest.approx([0.1, 0.2, 0.4, 0.8]), "the next (1.0) would end at 2.5 s"
    assert last == 5 and clock.now <= 2.0


async def test_poll_answers_at_once_without_pausing() -> None:
    clock = Clock()

    async def ask() -> str:
        return "here"

    assert await poll(ask, lambda a: True, Backoff(0.1), math.inf, pause=clock.pause, clock=clock) == "here"
    assert clock.pauses == []
