"""Actors: the model in five sentences.

An actor is an object whose `on_receive` handles one message at a time from its bounded mailbox, in one task, so its
state needs no locks. Others reach it only through its `ActorRef`: `tell` (fire and forget, waits when the mailbox is
full) or `ask` (request/response with a timeout). Its life is setup (`on_start`), running, teardown (`on_stop`).
A handler that raises crashes only that actor: its supervisor restarts it with a fresh instance and the same mailbox,
and the message in hand is retried (`retries` times) or handed to the `on_failed` callback — never silently dropped.
An ask whose handler raises gets the exception; teardown fails every pending ask with `ActorStopped`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any

from wabridge.engine.logs import get_logger
from wabridge.engine.mailbox import Mailbox, MailboxClosed
from wabridge.engine.metrics import REGISTRY

# One handler call in this many is timed for the latency histogram: timing every call made an actor cost 1.57x a bare
# asyncio.Queue per message instead of 1.08x (docs/decisions.md).
LATENCY_SAMPLE_EVERY = 16

FailureCallback = Callable[[Any, BaseException], None]


class ActorStopped(MailboxClosed):
    """The actor is stopped or stopping: the message was not (and will not be) handled."""


class Actor:
    """Subclass and override `on_receive`; the hooks are optional. One instance per life: a restart builds a new one."""

    async def on_start(self) -> None:
        pass

    async def on_receive(self, message: Any) -> Any:
        raise NotImplementedError

    async def on_stop(self) -> None:
        """Runs after a clean stop and after a crash of a started actor (release what on_start took)."""


class _Ask:
    __slots__ = ("future", "message")

    def __init__(self, message: Any, future: asyncio.Future) -> None:
        self.message = message
        self.future = future


# --- metrics: per actor kind (a role such as "tenant"), never per actor, so the series stay few -------------------

_messages = REGISTRY.counter("wabridge_actor_messages_total", "Messages handled by actors.", ["actor"])
_failures = REGISTRY.counter("wabridge_actor_failures_total", "Actor handler calls that raised.", ["actor"])
_restarts = REGISTRY.counter("wabridge_actor_restarts_total", "Actor restarts by a supervisor.", ["actor"])
_depth = REGISTRY.gauge("wabridge_actor_mailbox_depth", "Messages waiting in actor mailboxes.", ["actor"])
_live = REGISTRY.gauge("wabridge_actors_live", "Actors currently alive.", ["actor"])
_latency = REGISTRY.histogram(
    "wabridge_actor_handler_seconds", f"Actor handler latency (1 call in {LATENCY_SAMPLE_EVERY} sampled).", ["actor"]
)


class _Kind:
    """Counts for one actor kind, read at scrape time: the hot path only bumps an int on its own ref."""

    def __init__(self, kind: str) -> None:
        self.refs: weakref.WeakSet[ActorRef] = weakref.WeakSet()
        self.retired_handled = 0
        _messages.labels(kind).set_function(lambda: self.retired_handled + sum(r.handled for r in list(self.refs)))
        _depth.labels(kind).set_function(lambda: sum(len(r.mailbox) for r in list(self.refs)))
        _live.labels(kind).set_function(lambda: sum(1 for r in list(self.refs) if r.alive))
        self.failures = _failures.labels(kind)
        self.restarts = _restarts.labels(kind)
        self.latency = _latency.labels(kind)


_kinds: dict[str, _Kind] = {}


def _kind(kind: str) -> _Kind:
    k = _kinds.get(kind)
    if k is None:
        k = _kinds[kind] = _Kind(kind)
    return k


def mailbox_depths(kind: str) -> dict[str, int]:
    """Messages waiting in each mailbox of this kind, by actor name: for the per-actor views of a few hot spots
    (worker.py exports the deepest tenant mailboxes), read at scrape time, off the hot path."""
    k = _kinds.get(kind)
    return {r.name: len(r.mailbox) for r in list(k.refs)} if k is not None else {}


class ActorRef:
    """The handle to an actor: its mailbox outlives every restart. Made by `Supervisor.spawn`."""

    def __init__(
        self,
        factory: Callable[[], Actor],
        *,
        name: str,
        kind: str | None = None,
        capacity: int = 1024,
        retries: int = 1,
        on_failed: FailureCallback | None = None,
    ) -> None:
        self.name = name
        self.kind = kind or getattr(factory, "__name__", "actor").lower()
        self.mailbox: Mailbox[Any] = Mailbox(capacity)
        self.retries = retries
        self.on_failed = on_failed
        self.handled = 0
        self.restarts = 0
        self.alive = False
        self.log = get_logger("actor", actor=name, kind=self.kind)
        self._factory = factory
        self._current: Any = None  # the message being handled (an _Ask or a told message)
        self._in_hand: Any = None  # a told message whose handler crashed, to retry after the restart
        self._in_hand_attempts = 0
        self._ended = asyncio.Event()
        self._stats = _kind(self.kind)
        self._stats.refs.add(self)

    def __repr__(self) -> str:
        return f"<ActorRef {self.name} alive={self.alive} mailbox={len(self.mailbox)}/{self.mailbox.capacity}>"

    # --- talking to it --------------------------------------------------------------------------------------------

    def tell_nowait(self, message: Any) -> None:
        """Raises MailboxFull at capacity, ActorStopped once stopping."""
        try:
            self.mailbox.send_nowait(message)
        except MailboxClosed:
            raise ActorStopped(f"actor {self.name} is stopped") from None

    async def tell(self, message: Any) -> None:
        """Waits while the mailbox is full (backpressure)."""
        mailbox = self.mailbox
        if len(mailbox) < mailbox.capacity and not mailbox.closed:
            mailbox.send_nowait(message)  # fast path, no coroutine switch
            return
        try:
            await mailbox.send(message)
        except MailboxClosed:
            raise ActorStopped(f"actor {self.name} is stopped") from None

    async def ask(self, message: Any, *, timeout: float = 5.0) -> Any:
        """The handler's return value or exception; TimeoutError after `timeout` s (the actor may still handle it)."""
        future = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):
            await self.tell(_Ask(message, future))
            return await future

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in hand: safe to stop without waiting on work."""
        return not self.mailbox and self._current is None and self._in_hand is None

    async def stop(self) -> None:
        """Refuse new messages, let the actor finish what is queued, run on_stop, and wait for all of it."""
        self.mailbox.close()
        await self._ended.wait()

    @property
    def stopped(self) -> bool:
        """Ended for good: its mailbox is closed and drained (or abandoned at teardown)."""
        return self._ended.is_set()

    async def wait_stopped(self) -> None:
        await self._ended.wait()

    # --- one life -------------------------------------------------------------------------------------------------

    async def _incarnation(self) -> None:
        """Run one fresh instance until the mailbox is closed and empty (returns) or a handler raises (re-raises)."""
        actor = self._factory()
        self.alive = True
        try:
            await actor.on_start()
            try:
                await self._run(actor)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    self._interrupted(exc)  # cancelled: no crash to count, but the message in hand is kept
                await self._stop_quietly(actor)
                raise
            # A failing on_stop after a clean drain is logged, not a crash: restarting would only run it again.
            await self._stop_quietly(actor)
        finally:
            self.alive = False

    async def _stop_quietly(self, actor: Actor) -> None:
        try:
            await actor.on_stop()
        except Exception:
            self.log.exception("on_stop failed")

    async def _run(self, actor: Actor) -> None:
        mailbox = self.mailbox
        receive = actor.on_receive
        stats = self._stats
        if self._in_hand is not None:
            message = self._in_hand
            self._current = message
            await receive(message)
            self._current = self._in_hand = None
            self._in_hand_attempts = 0
            self.handled += 1
        n = self.handled
        while True:
            if not mailbox:
                if mailbox.closed:
                    return
                await mailbox.wait_nonempty()
                continue
            # Drain the whole batch without suspending between messages (unless the handler itself awaits).
            while mailbox:
                item = mailbox.receive_nowait()
                self._current = item
                sampled = not (n & (LATENCY_SAMPLE_EVERY - 1))
                if sampled:
                    started = time.perf_counter()
                if type(item) is _Ask:
                    try:
                        result = await receive(item.message)
                    except Exception as exc:
                        if not item.future.done():
                            item.future.set_exception(exc)
                        raise
                    if not item.future.done():
                        item.future.set_result(result)
                else:
                    await receive(item)
                if sampled:
                    stats.latency.observe(time.perf_counter() - started)
                self._current = None
                n += 1
                self.handled = n

    def _after_crash(self, exc: BaseException) -> None:
        """Called by the supervisor before a restart: decide the fate of the message in hand."""
        self._stats.failures.inc()
        current, self._current = self._current, None
        if current is None:
            return
        if type(current) is _Ask:
            return  # its caller already has the exception
        self._in_hand = current
        self._in_hand_attempts += 1
        if self._in_hand_attempts > self.retries:
            self._in_hand = None
            self._in_hand_attempts = 0
            self._hand_over(current, exc)

    def _interrupted(self, exc: BaseException) -> None:
        current, self._current = self._current, None
        if type(current) is _Ask:
            if not current.future.done():
                current.future.set_exception(ActorStopped(f"actor {self.name} interrupted: {exc!r}"))
        elif current is not None:
            self._in_hand = current

    def _hand_over(self, message: Any, exc: BaseException) -> None:
        if self.on_failed is None:
            self.log.error("message dropped: %s failed (%s: %s)", type(message).__name__, type(exc).__name__, exc)
            return
        try:
            self.on_failed(message, exc)
        except Exception:
            self.log.exception("on_failed callback raised")

    def _abandon(self, reason: BaseException) -> None:
        """Final teardown: fail every pending ask and hand every unhandled told message to on_failed."""
        pending = [m for m in (self._current, self._in_hand) if m is not None]
        self._current = self._in_hand = None
        self.mailbox.close()
        pending.extend(self.mailbox.take_all())
        for message in pending:
            if type(message) is _Ask:
                if not message.future.done():
                    message.future.set_exception(ActorStopped(f"actor {self.name} stopped: {reason!r}"))
            else:
                self._hand_over(message, reason)

    def _ended_for_good(self) -> None:
        self._ended.set()
        self._stats.retired_handled += self.handled
        self.handled = 0
        self._stats.refs.discard(self)
