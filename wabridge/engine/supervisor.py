"""One-for-one supervision with restart intensity, after Erlang/OTP.

A supervisor runs each child (an actor, or a nested supervisor) in its own task inside its task group. When a child
crashes, only that child is restarted: a fresh instance, the same mailbox. More than `max_restarts` restarts within
`period` seconds means restarting is not helping: the supervisor stops all its children and escalates — a nested
supervisor's parent counts that as one crash of that child; at the top, `async with Supervisor(...)` raises
`SupervisorGaveUp`, which `drain.run_until_signalled` turns into one clear log line and exit status 1.

`per_child=True` counts the intensity per child instead, and a child past it is not escalated but restarted after a
growing pause (`COOL_DOWN`): for children that each serve one tenant, whose crashes come from that tenant's data and
must not stop the others (the worker's tenant actors). Such a supervisor never gives up on a child.

    async with Supervisor("root", max_restarts=3, period=5.0) as root:
        ref = root.spawn(TenantActor, name="tenant:t1")
        await ref.tell(message)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from wabridge.engine.actor import Actor, ActorRef, ActorStopped, FailureCallback
from wabridge.engine.backoff import Backoff
from wabridge.engine.logs import get_logger

# Pauses before restarting a per-child supervised child past its own intensity: 1 s, doubling, at most 30 s; back to
# the first once it has run a whole `period` without crashing.
COOL_DOWN = Backoff(1.0, 30.0, jitter=None)


class SupervisorGaveUp(Exception):
    """Restart intensity exceeded: the children keep crashing faster than restarts can help."""

    def __init__(self, supervisor: str, max_restarts: int, period: float, child: str, cause: BaseException) -> None:
        super().__init__(
            f"supervisor {supervisor!r} gave up: more than {max_restarts} restarts in {period:g} s, "
            f"last crash in {child!r}: {type(cause).__name__}: {cause}"
        )
        self.supervisor = supervisor
        self.child = child
        self.cause = cause


class Supervisor:
    def __init__(
        self, name: str = "root", *, max_restarts: int = 3, period: float = 5.0, per_child: bool = False
    ) -> None:
        if max_restarts < 0 or period <= 0:
            raise ValueError("max_restarts must be >= 0 and period > 0")
        self.name = name
        self.max_restarts = max_restarts
        self.period = period
        self.per_child = per_child
        self.cooled_down = 0  # per_child: restarts delayed because a child crashed past its own intensity
        self.log = get_logger("supervisor", supervisor=name)
        self._children: dict[str, ActorRef | Supervisor] = {}
        self._restart_times: deque[float] = deque(maxlen=max_restarts + 1)
        self._tg: asyncio.TaskGroup | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ended = asyncio.Event()
        self._top = True  # until adopted by a parent
        self.restarts = 0  # times its parent restarted it after it gave up

    # --- children -------------------------------------------------------------------------------------------------

    def spawn(
        self,
        factory: Callable[[], Actor],
        *,
        name: str,
        kind: str | None = None,
        capacity: int = 1024,
        retries: int = 1,
        on_failed: FailureCallback | None = None,
    ) -> ActorRef:
        """Add an actor; it starts now if the supervisor is running, else when it starts."""
        ref = ActorRef(factory, name=name, kind=kind, capacity=capacity, retries=retries, on_failed=on_failed)
        self._adopt(name, ref)
        return ref

    def supervisor(self, name: str, *, max_restarts: int = 3, period: float = 5.0) -> Supervisor:
        """Add a nested supervisor: its escalation counts as one crash here."""
        child = Supervisor(name, max_restarts=max_restarts, period=period)
        child._top = False
        self._adopt(name, child)
        return child

    def _adopt(self, name: str, child: ActorRef | Supervisor) -> None:
        if self._stop_requested is not None and self._stop_requested.is_set():
            raise ActorStopped(f"supervisor {self.name} is stopping")
        if name in self._children:
            raise ValueError(f"supervisor {self.name} already has a child named {name!r}")
        self._children[name] = child
        if self._tg is not None:
            self._tg.create_task(self._supervise(child), name=f"{self.name}/{name}")

    @property
    def children(self) -> dict[str, ActorRef | Supervisor]:
        return dict(self._children)

    # --- running --------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        self._restart_times.clear()
        self._stop_requested = asyncio.Event()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for name, child in list(self._children.items()):
            self._tg.create_task(self._supervise(child), name=f"{self.name}/{name}")
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        assert self._tg is not None and self._stop_requested is not None
        if exc_type is None:
            self._close_children()  # a clean exit drains every child
        self._stop_requested.set()
        gave_up: SupervisorGaveUp | None = None
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            leaves = list(_leaves(group))
            if any(not isinstance(e, SupervisorGaveUp) and e is not exc for e in leaves):
                raise
            # Only an escalation and/or the body's own exception: raise those plainly, not wrapped in a group.
            gave_up = next((e for e in leaves if isinstance(e, SupervisorGaveUp)), None)
        finally:
            self._tg = None
            if self._top:
                self._abandon(gave_up or (exc if isinstance(exc, BaseException) else ActorStopped("stopped")))
                self._ended.set()
        if gave_up is not None:
            if self._top:
                self.log.error("%s", gave_up)
            raise gave_up from gave_up.cause
        return False

    async def _incarnation(self) -> None:
        """One life as a nested child: run until asked to stop; raises SupervisorGaveUp on escalation."""
        async with self:
            await self._stop_requested.wait()  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Drain and stop every child (a nested supervisor then ends its life cleanly)."""
        self._close_children()
        if self._stop_requested is not None:
            self._stop_requested.set()
        if not self._top:
            await self._ended.wait()

    def _close_children(self) -> None:
        for child in list(self._children.values()):
            if isinstance(child, ActorRef):
                child.mailbox.close()
            else:
                child._close_children()
                if child._stop_requested is not None:
                    child._stop_requested.set()

    async def _supervise(self, child: ActorRef | Supervisor) -> None:
        name = child.name
        crashes: deque[float] = deque(maxlen=self.max_restarts + 1)  # per_child: this child's own window
        cool_downs = 0
        while True:
            try:
                await child._incarnation()
            except Exception as exc:
                if isinstance(child, ActorRef):
                    child._after_crash(exc)
                if not self.per_child:
                    self._count_restart(name, exc)  # raises SupervisorGaveUp past the intensity
                elif crashes and time.monotonic() - crashes[-1] > self.period:
                    cool_downs = 0  # it ran a whole period since its last crash
                if self.per_child and _past_intensity(crashes, self.max_restarts, self.period):
                    cool_downs += 1
                    pause = COOL_DOWN.delay(cool_downs)
                    self.cooled_down += 1
                    self.log.error(
                        "%s crashed more than %d times in %g s, last %s: %s; restarting it in %g s (the others go on)",
                        name,
                        self.max_restarts,
                        self.period,
                        type(exc).__name__,
                        exc,
                        pause,
                    )
                    stopping = self._stop_requested
                    if stopping is not None:  # a drain does not wait out the pause
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stopping.wait(), pause)
                child.restarts += 1
                if isinstance(child, ActorRef):
                    child._stats.restarts.inc()
                self.log.warning("restarting %s after %s: %s", name, type(exc).__name__, exc)
                continue
            break
        # A clean end (mailbox closed and drained, or a nested supervisor told to stop) is for good.
        if self._children.get(name) is child:
            del self._children[name]
        if isinstance(child, ActorRef):
            child._ended_for_good()
        else:
            child._ended.set()

    def _count_restart(self, child: str, exc: Exception) -> None:
        if _past_intensity(self._restart_times, self.max_restarts, self.period):
            raise SupervisorGaveUp(self.name, self.max_restarts, self.period, child, exc) from exc

    def _abandon(self, reason: BaseException) -> None:
        for child in list(self._children.values()):
            if isinstance(child, ActorRef):
                child._abandon(reason)
                child._ended_for_good()
            else:
                child._abandon(reason)
                child._ended.set()
        self._children.clear()


def _past_intensity(crashes: deque[float], max_restarts: int, period: float) -> bool:
    """Records a crash now; True when it makes more than `max_restarts` within `period` seconds."""
    now = time.monotonic()
    crashes.append(now)
    return len(crashes) > max_restarts and now - crashes[0] <= period


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
