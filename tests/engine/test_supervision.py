"""Actors and one-for-one supervision: crashes are contained, restarted, and nothing in hand is lost."""

from __future__ import annotations

import asyncio

import pytest

from wabridge.engine.actor import Actor, ActorStopped
from wabridge.engine.backoff import Backoff
from wabridge.engine.supervisor import Supervisor, SupervisorGaveUp

pytestmark = pytest.mark.anyio


class EveryThirdCrashes(Actor):
    """Crashes on the first attempt at every third message; a restart (fresh instance) then succeeds."""

    def __init__(self, handled: list[int], attempts: dict[int, int], lives: list[str]) -> None:
        self.handled, self.attempts = handled, attempts
        lives.append("started")

    async def on_receive(self, message: int) -> None:
        self.attempts[message] = self.attempts.get(message, 0) + 1
        if message % 3 == 2 and self.attempts[message] == 1:
            raise RuntimeError(f"crash on {message}")
        self.handled.append(message)


async def test_an_actor_crashing_on_every_third_message_is_restarted_and_loses_nothing() -> None:
    handled: list[int] = []
    attempts: dict[int, int] = {}
    lives: list[str] = []
    failed: list[int] = []
    async with Supervisor(max_restarts=100, period=1.0) as root:
        ref = root.spawn(
            lambda: EveryThirdCrashes(handled, attempts, lives), name="worker", on_failed=lambda m, e: failed.append(m)
        )
        for i in range(30):
            await ref.tell(i)
    assert handled == list(range(30))  # every message, in order: the one in hand was retried first
    assert failed == []
    assert ref.restarts == 10
    assert len(lives) == 11  # a fresh instance per restart


async def test_a_message_that_keeps_failing_goes_to_the_failure_callback_after_its_retries() -> None:
    class Poisoned(Actor):
        async def on_receive(self, message: str) -> None:
            if message == "poison":
                raise ValueError("cannot digest")
            handled.append(message)

    handled: list[str] = []
    failed: list[tuple[str, str]] = []
    async with Supervisor(max_restarts=10, period=1.0) as root:
        ref = root.spawn(Poisoned, name="p", retries=2, on_failed=lambda m, e: failed.append((m, str(e))))
        for message in ("a", "poison", "b"):
            await ref.tell(message)
    assert handled == ["a", "b"]
    assert failed == [("poison", "cannot digest")]
    assert ref.restarts == 3  # first try + 2 retries


async def test_an_ask_gets_the_handlers_exception_and_the_actor_keeps_serving() -> None:
    class Divider(Actor):
        async def on_receive(self, message: int) -> float:
            return 1 / message

    async with Supervisor() as root:
        ref = root.spawn(Divider, name="d")
        with pytest.raises(ZeroDivisionError):
            await ref.ask(0)
        assert await ref.ask(4) == 0.25


async def test_an_ask_times_out_with_timeout_error() -> None:
    class Sleeper(Actor):
        async def on_receive(self, message: float) -> None:
            await asyncio.sleep(message)

    async with Supervisor() as root:
        ref = root.spawn(Sleeper, name="s")
        with pytest.raises(TimeoutError):
            await ref.ask(0.5, timeout=0.01)


async def test_restart_intensity_exceeded_escalates_as_supervisor_gave_up_and_fails_pending_work() -> None:
    class AlwaysCrashes(Actor):
        async def on_receive(self, message: object) -> None:
            raise RuntimeError("broken")

    failed: list[object] = []
    with pytest.raises(SupervisorGaveUp, match="more than 2 restarts in 10 s") as info:
        async with Supervisor("root", max_restarts=2, period=10.0) as root:
            ref = root.spawn(AlwaysCrashes, name="bad", retries=0, on_failed=lambda m, e: failed.append(m))
            for i in range(6):
                await ref.tell(i)
            pending_ask = asyncio.ensure_future(ref.ask("never"))
            await asyncio.sleep(5)  # cancelled by the escalation
    assert info.value.child == "bad"
    assert sorted(failed) == list(range(6))  # every told message is accounted for: none silently dropped
    with pytest.raises(ActorStopped):  # teardown fails every pending request instead of leaving callers hanging
        await pending_ask


async def test_a_nested_supervisor_escalates_to_its_parent_which_restarts_it_and_keeps_its_mailboxes() -> None:
    crashes = {"left": 0}

    class CrashesThreeTimes(Actor):
        async def on_receive(self, message: str) -> None:
            if crashes["left"] > 0:
                crashes["left"] -= 1
                raise RuntimeError("flaky")
            handled.append(message)

    class Sibling(Actor):
        async def on_receive(self, message: str) -> str:
            return message

    handled: list[str] = []
    crashes["left"] = 3
    async with Supervisor("root", max_restarts=5, period=10.0) as root:
        tenant = root.supervisor("tenant", max_restarts=1, period=10.0)
        ref = tenant.spawn(CrashesThreeTimes, name="flaky", retries=5)
        other = root.spawn(Sibling, name="sibling")
        await ref.tell("m1")
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.01)
        assert await other.ask("still here") == "still here"  # a failing child never takes its siblings down
    assert handled == ["m1"]
    assert tenant.restarts == 1  # it gave up once (2 crashes > 1 allowed) and root restarted it
    assert ref.restarts == 2  # plus the give-up: 3 crashes, the message in hand survived all of them


async def test_a_crash_in_on_start_is_restarted_and_queued_messages_are_then_handled() -> None:
    starts = {"n": 0}

    class FailsToStartTwice(Actor):
        async def on_start(self) -> None:
            starts["n"] += 1
            if starts["n"] <= 2:
                raise ConnectionError("backend not ready")

        async def on_receive(self, message: int) -> int:
            return message + 1

    async with Supervisor(max_restarts=3, period=10.0) as root:
        ref = root.spawn(FailsToStartTwice, name="late")
        assert await ref.ask(1) == 2
    assert starts["n"] == 3
    assert ref.restarts == 2


async def test_a_crash_in_on_start_every_time_escalates() -> None:
    class NeverStarts(Actor):
        async def on_start(self) -> None:
            raise ConnectionError("no backend")

    with pytest.raises(SupervisorGaveUp, match="ConnectionError: no backend"):
        async with Supervisor(max_restarts=3, period=10.0) as root:
            root.spawn(NeverStarts, name="n")
            await asyncio.sleep(5)


async def test_stopping_an_actor_drains_its_mailbox_then_runs_on_stop_and_refuses_new_messages() -> None:
    events: list[str] = []

    class Recorder(Actor):
        async def on_start(self) -> None:
            events.append("start")

        async def on_receive(self, message: str) -> None:
            events.append(message)

        async def on_stop(self) -> None:
            events.append("stop")

    async with Supervisor() as root:
        ref = root.spawn(Recorder, name="r")
        for m in ("a", "b", "c"):
            ref.tell_nowait(m)
        await ref.stop()
        with pytest.raises(ActorStopped):
            await ref.tell("late")
        assert "r" not in root.children
    assert events == ["start", "a", "b", "c", "stop"]


async def test_an_exception_in_the_supervised_block_propagates_plainly_and_stops_the_children() -> None:
    class Idle(Actor):
        async def on_receive(self, message: object) -> None:
            pass

    with pytest.raises(KeyError):
        async with Supervisor() as root:
            ref = root.spawn(Idle, name="idle")
            raise KeyError("body failed")
    assert ref.stopped and not ref.alive


async def test_a_failing_on_stop_after_a_clean_drain_is_logged_not_restarted(caplog: pytest.LogCaptureFixture) -> None:
    class BadStop(Actor):
        async def on_receive(self, message: object) -> None:
            pass

        async def on_stop(self) -> None:
            raise OSError("socket already closed")

    async with Supervisor(max_restarts=0, period=1.0) as root:
        ref = root.spawn(BadStop, name="bad-stop")
        await ref.tell("x")
        await ref.stop()
    assert ref.restarts == 0 and ref.stopped
    assert any(r.getMessage() == "on_stop failed" and r.exc_info for r in caplog.records)


async def test_per_child_intensity_pauses_only_the_crashing_child_and_never_gives_up(monkeypatch) -> None:
    """The worker's tenant actors: one tenant's poison messages crash its actor again and again; past its own
    intensity it is restarted after a pause, each poison message still reaches on_failed, and a second child (another
    tenant) goes on undisturbed. The same crashes under a shared intensity make the supervisor give up."""
    monkeypatch.setattr("wabridge.engine.supervisor.COOL_DOWN", Backoff(0.05, 0.2, jitter=None))

    class Tenant(Actor):
        def __init__(self, handled: list[str]) -> None:
            self.handled = handled

        async def on_receive(self, message: str) -> None:
            if message.startswith("poison"):
                raise OverflowError("int too large to convert to float")
            self.handled.append(message)

    poisoned: list[str] = []
    handled_a: list[str] = []
    handled_b: list[str] = []
    async with Supervisor("worker", max_restarts=2, period=10.0, per_child=True) as root:
        a = root.spawn(lambda: Tenant(handled_a), name="tenant:a", on_failed=lambda m, e: poisoned.append(m))
        b = root.spawn(lambda: Tenant(handled_b), name="tenant:b")
        for i in range(6):
            await a.tell(f"poison {i}")
            await b.tell(f"b {i}")
        await a.tell("a after")
    assert poisoned == [f"poison {i}" for i in range(6)]  # each tried twice (retries=1), then handed over
    assert handled_a == ["a after"] and handled_b == [f"b {i}" for i in range(6)]
    assert a.restarts == 12 and b.restarts == 0
    assert root.cooled_down > 0

    with pytest.raises(SupervisorGaveUp):
        async with Supervisor("worker", max_restarts=2, period=10.0) as shared:
            c = shared.spawn(lambda: Tenant([]), name="tenant:c", on_failed=lambda m, e: None)
            for i in range(6):
                await c.tell(f"poison {i}")
            await asyncio.sleep(0.5)
