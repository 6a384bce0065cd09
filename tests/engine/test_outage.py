"""Holding a step through a backend outage (engine/outage.py), on its own: a fake clock stands in for the time it
reads and the pauses it takes, so the hold's bounds are checked in fake seconds and no test waits on the real clock."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest

from wabridge.engine import outage
from wabridge.engine.outage import HOLD_BACKOFF, hold_through_outage
from wabridge.ports import BackendUnavailable

pytestmark = pytest.mark.anyio

PORT = "test-store"  # the label the hold counts under; no other code uses it, so the counts are this file's own


class Clock:
    """The time outage.py reads and the pauses it takes: a pause moves the clock on, at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    # hold_through_outage takes no clock: the module's own `time` and `asyncio` names are what it reads and sleeps on.
    monkeypatch.setattr(outage, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(outage, "asyncio", SimpleNamespace(sleep=clock.sleep))
    return clock


class Step:
    """A step whose server is down until `down_until` (fake seconds on `clock`), or for its first `failures` tries;
    it then answers. `raised` keeps each error it raised, in order. A hold that never ends fails the test (after
    MAX_TRIES), rather than spinning forever on the fake clock."""

    MAX_TRIES = 10_000

    def __init__(
        self, clock: Clock, *, failures: int = 0, down_until: float = -math.inf, error: type[Exception] | None = None
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.down_until = down_until
        self.error = error
        self.tries = 0
        self.raised: list[Exception] = []

    async def __call__(self) -> str:
        self.tries += 1
        assert self.tries <= self.MAX_TRIES, "held forever"
        if self.error is not None:
            exc: Exception = self.error("not an outage")
        elif self.tries <= self.failures or self.clock.now < self.down_until:
            exc = BackendUnavailable(PORT, f"try {self.tries}")
        else:
            return "answered"
        self.raised.append(exc)
        raise exc


def holds() -> float:
    return outage._holds.labels(PORT).get()


def held_long() -> float:
    return outage._held_long.labels(PORT).get()


async def test_a_step_that_answers_at_once_is_neither_held_nor_paused(clock: Clock) -> None:
    step, before = Step(clock), holds()
    assert await hold_through_outage(step) == "answered"
    assert step.tries == 1 and clock.pauses == [] and holds() == before


async def test_a_step_is_held_while_its_backend_is_down_and_resumes_once_it_answers(clock: Clock) -> None:
    step, before = Step(clock, failures=3), holds()
    assert await hold_through_outage(step) == "answered"
    assert step.tries == 4
    assert clock.pauses == [HOLD_BACKOFF.delay(n) for n in (1, 2, 3)], "a pause between tries, each from the backoff"
    assert holds() == before + 3, "each retry counted under the port that was down"


async def test_the_pause_between_tries_grows_to_the_last_backoff_and_no_further(clock: Clock) -> None:
    step = Step(clock, failures=40)
    assert await hold_through_outage(step) == "answered"
    assert len(clock.pauses) == 40
    assert clock.pauses == sorted(clock.pauses) and clock.pauses[0] == HOLD_BACKOFF.first, "growing from the first"
    assert clock.pauses[-10:] == [HOLD_BACKOFF.cap] * 10, "the cap repeated, never longer"


async def test_a_hold_gives_up_at_hold_for_and_the_last_outage_propagates(clock: Clock) -> None:
    started, hold_for = clock.now, 10.0
    step = Step(clock, down_until=math.inf)
    with pytest.raises(BackendUnavailable) as raised:
        await hold_through_outage(step, hold_for=hold_for)
    assert raised.value is step.raised[-1], "the last try's error, not an earlier one"
    held = clock.now - started
    assert hold_for <= held < hold_for + HOLD_BACKOFF.cap, "tried until hold_for, not one pause longer"


async def test_a_hold_of_zero_seconds_tries_once(clock: Clock) -> None:
    step = Step(clock, down_until=math.inf)
    with pytest.raises(BackendUnavailable):
        await hold_through_outage(step, hold_for=0.0)
    assert step.tries == 1 and clock.pauses == []


async def test_a_backend_back_just_before_hold_for_ends_the_hold_with_its_answer(clock: Clock) -> None:
    step = Step(clock, down_until=clock.now + 9.0)  # the try at 8.7 s fails, the next one answers
    assert await hold_through_outage(step, hold_for=10.0) == "answered"


async def test_give_up_a_drain_stops_the_hold_at_the_next_failed_try_without_another_pause(clock: Clock) -> None:
    step = Step(clock, down_until=math.inf)
    with pytest.raises(BackendUnavailable) as raised:
        await hold_through_outage(step, give_up=lambda: step.tries >= 3)  # the drain came during the third try
    assert step.tries == 3 and raised.value is step.raised[-1]
    assert len(clock.pauses) == 2, "no pause after the drain"


async def test_give_up_already_true_tries_once(clock: Clock) -> None:
    step = Step(clock, down_until=math.inf)
    with pytest.raises(BackendUnavailable):
        await hold_through_outage(step, give_up=lambda: True)
    assert step.tries == 1 and clock.pauses == []


@pytest.mark.parametrize("error", [ValueError, ConnectionError, TimeoutError])
async def test_an_error_that_is_not_an_outage_propagates_at_once(clock: Clock, error: type[Exception]) -> None:
    """ConnectionError included: BackendUnavailable is one, but a bare one is not a port's outage."""
    step, before = Step(clock, error=error), holds()
    with pytest.raises(error) as raised:
        await hold_through_outage(step)
    assert type(raised.value) is error
    assert step.tries == 1 and clock.pauses == [] and holds() == before


async def test_a_hold_past_report_after_is_reported_once_in_the_log_and_the_count(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wabridge.outage")
    step, before = Step(clock, down_until=clock.now + 60.0), held_long()
    assert await hold_through_outage(step, what="message m1", report_after=5.0) == "answered"
    assert step.tries > 10, "held well past report_after"
    assert held_long() == before + 1, "counted once, not once per try"
    reports = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(reports) == 1 and "still holding message m1" in reports[0].getMessage()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "holding message m1" in warnings[0].getMessage(), "the hold's start, once"


async def test_a_hold_shorter_than_report_after_or_without_it_is_not_reported(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wabridge.outage")
    before = held_long()
    assert await hold_through_outage(Step(clock, down_until=clock.now + 3.0), report_after=5.0) == "answered"
    assert await hold_through_outage(Step(clock, down_until=clock.now + 60.0)) == "answered"
    assert held_long() == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
