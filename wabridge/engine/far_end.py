"""A SaaS far end (a tenant's Genesys org; Meta, for the outbound direction) being down is weather, not a verdict.

`FarEnd.through(tenant_id, step)` runs one request step (which does its own quick retries for a blip). When the step
raises `FarEndDown` (refused, reset, timed out, 5xx: the far end, not the message) the tenant is marked down — one
warning, and a gauge — and the message stays where it is, in its customer's lane, unacked. While a tenant is down
its messages take turns: one probe in flight at a time, the next after a pause that grows with jitter up to
`retry_max`; every other message of the tenant waits, and all of them go at once when a probe gets through (one
info line: back up). So an outage costs the far end one request per pause per tenant, not one per waiting message,
and delivery resumes within a pause of the recovery, in order (each customer's lane is still waiting in place).

Past `hold_for` seconds of one outage the messages stop waiting: each fails (`FarEndDown` propagates: the caller
tracks it `failed`, replayable) unless it is the probe, which still tries — so a far end that comes back after the
hold is found again. While the process drains (`stop_holding`), a waiting message raises `BackendUnavailable` for
its port instead: nothing left the bridge, so it goes back to the queue and is delivered by whoever runs next.

The messages held are not handed back to the queue: no attempt is spent and nothing is dead-lettered for waiting.
Their tenant's mailbox fills, and the worker parks the tenant (parking.py), so the other tenants go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from wabridge.engine import history
from wabridge.engine.backoff import Backoff
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.engine.tasks import first_of
from wabridge.ports import BackendUnavailable

log = get_logger("far_end")

_down_gauge = REGISTRY.gauge("wabridge_far_end_down_tenants", "Tenants held by a far-end outage now.", ["far_end"])
_outages = REGISTRY.counter("wabridge_far_end_outages_total", "Far-end outages seen, per far end.", ["far_end"])
_probes = REGISTRY.counter("wabridge_far_end_probes_total", "Requests tried while a far end was down.", ["far_end"])

T = TypeVar("T")

FIRST_PAUSE = 1.0  # s before the first probe; doubling up to retry_max, with equal jitter


class FarEndDown(Exception):
    """Raised by a step when the far end, not the message, is at fault; wraps what the step would have raised past
    the hold (`final`, e.g. a PostFailed to track)."""

    def __init__(self, final: Exception) -> None:
        super().__init__(str(final))
        self.final = final


class _Outage:
    def __init__(self) -> None:
        self.since = time.monotonic()
        self.probe = asyncio.Lock()  # held by the one message trying while the far end is down
        self.over = asyncio.Event()
        self.probes = 0
        self.last_error = ""


class FarEnd:
    def __init__(self, name: str, *, hold_for: float = 3600.0, retry_max: float = 10.0) -> None:
        self.name = name
        self.hold_for = hold_for
        self.retry_max = retry_max
        self._pauses = Backoff(FIRST_PAUSE, retry_max)  # equal jitter: tenants' probes spread, a floor is kept
        self._down: dict[str, _Outage] = {}
        self._stopping = asyncio.Event()
        self._gauge = _down_gauge.labels(name)
        self._gauge.set_function(lambda: len(self._down))
        self._outages = _outages.labels(name)
        self._probes = _probes.labels(name)

    def is_down(self, tenant_id: str) -> bool:
        return tenant_id in self._down

    def stop_holding(self) -> None:
        """A drain: held messages go back to the queue (BackendUnavailable) instead of waiting on."""
        self._stopping.set()

    async def through(
        self, tenant_id: str, step: Callable[[], Awaitable[T]], *, past_hold: Callable[[str], Exception]
    ) -> T:
        """`await step()`, held through an outage of `tenant_id`'s far end (module docstring). Raises what the step
        raises; past the hold, the probe's `FarEndDown.final` or, for a message that did not try, `past_hold(why)`;
        BackendUnavailable when draining."""
        noted = False
        while True:
            outage = self._down.get(tenant_id)
            if outage is None:
                try:
                    return await step()
                except FarEndDown as exc:
                    outage = self._went_down(tenant_id, exc)
                    if self._past_hold(outage):  # a hold of 0: no waiting at all
                        raise exc.final from None
            if not noted:  # the message's trail (`wabridge trace`): it waits for the far end
                noted = True
                history.note("held", f"{self.name} down: {outage.last_error}"[:300])
            if self._past_hold(outage) and outage.probe.locked():
                # Past the hold only the probe still tries; the others fail now, to be replayed.
                raise past_hold(f"{self.name} down for {time.monotonic() - outage.since:.0f} s: {outage.last_error}")
            async with outage.probe:
                if outage.over.is_set():
                    continue  # it came back while this one waited its turn
                await self._pause(outage)
                if outage.over.is_set():
                    continue
                self._probes.inc()
                try:
                    result = await step()
                except FarEndDown as exc:
                    outage.probes += 1
                    outage.last_error = str(exc)
                    if self._past_hold(outage):
                        raise exc.final from None
                    continue
                self._came_back(tenant_id, outage)
                return result

    def _past_hold(self, outage: _Outage) -> bool:
        return time.monotonic() - outage.since >= self.hold_for

    async def _pause(self, outage: _Outage) -> None:
        """Until the next probe is due (or the far end is back, or a drain)."""
        if self._stopping.is_set():
            raise BackendUnavailable(self.name, "draining while it is down")
        delay = self._pauses.delay(outage.probes + 1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await first_of(outage.over.wait(), self._stopping.wait())
        if self._stopping.is_set() and not outage.over.is_set():
            raise BackendUnavailable(self.name, "draining while it is down")

    def _went_down(self, tenant_id: str, exc: FarEndDown) -> _Outage:
        outage = self._down.get(tenant_id)
        if outage is None:
            outage = self._down[tenant_id] = _Outage()
            outage.last_error = str(exc)
            self._outages.inc()
            log.warning(
                "%s of tenant %s is down (%s): holding its messages in place",
                self.name,
                tenant_id,
                exc,
                extra={"tenant_id": tenant_id},
            )
        return outage

    def _came_back(self, tenant_id: str, outage: _Outage) -> None:
        if self._down.get(tenant_id) is outage:
            del self._down[tenant_id]
        outage.over.set()
        log.warning(
            "%s of tenant %s is back after %.1f s (%d probes): delivering",
            self.name,
            tenant_id,
            time.monotonic() - outage.since,
            outage.probes,
            extra={"tenant_id": tenant_id},
        )
