"""Tasks that outlive their call have an owner (engine/tasks.py): nothing the owner started is left running once it
is closed, one task's failure stays with that task, and the engine's own waits end their helper tasks before they
return."""

from __future__ import annotations

import asyncio
import logging

import pytest

from wabridge.engine import drain
from wabridge.engine.far_end import FarEnd, FarEndDown
from wabridge.engine.tasks import Tasks
from wabridge.ports import BackendUnavailable

pytestmark = pytest.mark.anyio


def still_running(before: set[asyncio.Task]) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() - before if not t.done()]


async def test_closing_the_owner_cancels_and_awaits_every_task_it_started() -> None:
    before = asyncio.all_tasks()
    tasks = Tasks("test")
    started = [tasks.start(asyncio.Event().wait()) for _ in range(3)]
    await asyncio.sleep(0)
    await tasks.close()
    assert all(t.cancelled() for t in started)
    assert len(tasks) == 0 and still_running(before) == []


async def test_a_failing_task_is_reported_and_leaves_its_siblings_running(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="wabridge.tasks")
    tasks = Tasks("test")
    go_on = asyncio.Event()

    async def fail() -> None:
        raise OverflowError("a bug the data triggers")

    async def sibling() -> str:
        await go_on.wait()
        return "done"

    failing, other = tasks.start(fail(), name="failing"), tasks.start(sibling())
    await asyncio.wait([failing])
    assert not other.done()
    assert any("failing" in r.getMessage() and "OverflowError" in r.getMessage() for r in caplog.records)
    go_on.set()
    await tasks.wait()
    assert other.result() == "done"


async def test_a_wait_cancelled_cancels_what_it_waited_for() -> None:
    before = asyncio.all_tasks()
    tasks = Tasks("test")
    stuck = tasks.start(asyncio.Event().wait())
    waiting = asyncio.create_task(tasks.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert stuck.cancelled() and still_running(before) == []


async def test_the_drain_leaves_no_task_of_its_own_running_when_it_returns() -> None:
    before = asyncio.all_tasks()

    async def main(shutdown: drain.Shutdown) -> None:
        pass

    assert await drain.run_until_signalled(main, signals=()) == 0
    assert still_running(before) == []


async def test_a_far_end_pause_cut_short_by_a_drain_leaves_no_task_running() -> None:
    before = asyncio.all_tasks()
    far_end = FarEnd("test")

    async def refused() -> None:
        asyncio.get_running_loop().call_soon(far_end.stop_holding)  # a drain, while the message waits
        raise FarEndDown(ConnectionRefusedError("refused"))

    with pytest.raises(BackendUnavailable):
        await far_end.through("t1", refused, past_hold=RuntimeError)
    assert still_running(before) == []
