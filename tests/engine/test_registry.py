"""Registry: actors by key, started on first use, stopped when idle, bounded by max_live (LRU spare first)."""

from __future__ import annotations

import asyncio

import pytest

from wabridge.engine.actor import Actor
from wabridge.engine.registry import Registry
from wabridge.engine.supervisor import Supervisor

pytestmark = pytest.mark.anyio


class Tenant(Actor):
    def __init__(self, tenant_id: str, log: list[str]) -> None:
        self.tenant_id, self.log = tenant_id, log

    async def on_start(self) -> None:
        self.log.append(f"start {self.tenant_id}")

    async def on_receive(self, message: float) -> str:
        await asyncio.sleep(message)
        return self.tenant_id

    async def on_stop(self) -> None:
        self.log.append(f"stop {self.tenant_id}")


async def test_an_actor_is_started_on_first_use_and_reused_by_key() -> None:
    log: list[str] = []
    async with Supervisor() as root, Registry(root, lambda t: Tenant(t, log), kind="tenant") as tenants:
        first = await tenants.get("t1")
        assert await first.ask(0) == "t1"
        assert await tenants.get("t1") is first
        assert len(tenants) == 1
    assert log == ["start t1", "stop t1"]


async def test_an_idle_actor_is_stopped_after_the_idle_timeout_and_restarted_on_next_use() -> None:
    log: list[str] = []
    async with Supervisor() as root, Registry(
        root, lambda t: Tenant(t, log), kind="tenant", idle_timeout=0.1
    ) as tenants:
        busy = await tenants.get("busy")
        await tenants.get("idle")
        busy.tell_nowait(0.4)  # still handling when the timeout passes: not idle
        await asyncio.sleep(0.3)
        assert "stop idle" in log and "stop busy" not in log
        assert "idle" not in tenants and "busy" in tenants
        again = await tenants.get("idle")
        assert await again.ask(0) == "idle"
    assert log.count("start idle") == 2


async def test_the_live_actor_bound_stops_the_least_recently_used_spare_actor_first() -> None:
    log: list[str] = []
    async with Supervisor() as root, Registry(root, lambda t: Tenant(t, log), kind="tenant", max_live=3) as tenants:
        a = await tenants.get("a")
        await tenants.get("b")
        await tenants.get("c")
        a.tell_nowait(0.2)  # a is the least recently used but busy: b is the spare to go
        await tenants.get("d")
        assert len(tenants) == 3
        assert "stop b" in log and "stop a" not in log
        for key in "efgh":
            await tenants.get(key)
            assert len(tenants) <= 3
        assert log.count("start a") == 1
    assert sorted(x for x in log if x.startswith("start")) == sorted(f"start {k}" for k in "abcdefgh")


async def test_when_no_actor_is_spare_the_bound_waits_for_the_oldest_to_finish_its_work() -> None:
    log: list[str] = []
    async with Supervisor() as root, Registry(root, lambda t: Tenant(t, log), kind="tenant", max_live=1) as tenants:
        a = await tenants.get("a")
        a.tell_nowait(0.1)
        started = asyncio.get_running_loop().time()
        b = await tenants.get("b")
        waited = asyncio.get_running_loop().time() - started
        assert waited >= 0.05
        assert await b.ask(0) == "b"
        assert log == ["start a", "stop a", "start b"]  # a key never has two actors, and the bound holds
