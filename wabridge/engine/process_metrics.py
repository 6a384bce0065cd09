"""The process's own vitals on /metrics: event-loop lag, resident memory, CPU time.

Event-loop lag is how late a periodic sleep wakes up: the time the loop spent on other callbacks (a slow handler, a
large JSON decode, the garbage collector) when it should have run this one. Every webhook and delivery waits the same
way, so a lag of 100 ms is 100 ms added to each of them; the soak and overload scenarios watch it, and the dashboard
shows it per process beside RSS. `watching()` runs the probe for as long as its block lasts (a worker's `run`, the
ingress's `start`..`aclose`); one probe per event loop, however many roles share it. With the ingress's processes
sharing their metrics (metrics.py), the same block keeps this process's callbacks published into the shared files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from wabridge.engine import metrics
from wabridge.engine.metrics import REGISTRY

INTERVAL = 0.25  # seconds between probes: one cheap timer callback, four times a second
WINDOW = 15.0  # the max gauge covers about one scrape interval
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_lag = REGISTRY.histogram(
    "wabridge_event_loop_lag_seconds",
    "How late a periodic sleep woke up: time the event loop was busy elsewhere.",
    buckets=LAG_BUCKETS,
)
_lag_max = REGISTRY.gauge(
    "wabridge_event_loop_lag_max_seconds",
    f"The largest event-loop lag of the last {WINDOW:g} s.",
    multiprocess_mode="livemax",  # the ingress's processes: the slowest loop
)
_rss = REGISTRY.gauge("wabridge_process_resident_memory_bytes", "Resident memory of this process.")  # processes: summed
_cpu = REGISTRY.counter("wabridge_process_cpu_seconds_total", "CPU time (user + system) used by this process.")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> float:
    """Resident memory now (Linux: /proc/self/statm); elsewhere the peak, the best the platform gives."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


_rss.set_function(resident_bytes)
_cpu.labels().set_function(time.process_time)


class LoopLag:
    """Measures how late `sleep(interval)` returns; publishes each lag to the histogram and the window's max."""

    def __init__(self, interval: float = INTERVAL, *, window: float = WINDOW) -> None:
        self.interval = interval
        self.recent: deque[float] = deque(maxlen=max(1, round(window / interval)))

    def observe(self, lag: float) -> None:
        _lag.observe(lag)
        self.recent.append(lag)

    def max(self) -> float:
        return max(self.recent, default=0.0)

    async def watch(
        self,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        clock = clock or asyncio.get_running_loop().time
        while True:
            started = clock()
            await sleep(self.interval)
            self.observe(max(0.0, clock() - started - self.interval))


_running: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


@contextlib.asynccontextmanager
async def watching() -> AsyncIterator[None]:
    """Probe this event loop's lag while the block runs (nested blocks on the same loop share the first probe)."""
    loop = asyncio.get_running_loop()
    if loop in _running:
        yield
        return
    probe = LoopLag()
    _lag_max.set_function(probe.max)
    task = _running[loop] = loop.create_task(probe.watch(), name="event-loop-lag")
    published = loop.create_task(metrics.publishing(), name="metrics-publishing")
    try:
        yield
    finally:
        _running.pop(loop, None)
        for running in (task, published):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
