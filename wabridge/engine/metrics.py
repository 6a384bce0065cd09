"""The metrics a process exposes on /metrics, kept by prometheus_client: counters, gauges (set, or read from a
callback), histograms, and the text exposition format 0.0.4.

One process (a worker, the embedded ingress): values live in the process, callbacks are read at scrape time. Several
processes answering one port (the ingress under Granian with `--workers N`): prometheus_client's multiprocess mode.
The parent calls `share_between_processes` before the processes start, so they import prometheus_client with
PROMETHEUS_MULTIPROC_DIR set; each update then goes to the process's own file there, a scrape of any process adds up
every process's files, and `publishing()` copies the callbacks into the files every PUBLISH_INTERVAL.

Bounded: a metric holds at most `max_series` label sets; one more is a bug (unbounded label values such as a
customer id), so it raises instead of growing. Hot paths bind a child once (`counter.labels("tenant")`) and call
`inc()` on it, or keep a local count and publish it through a callback (`set_function`).
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import prometheus_client
from prometheus_client import multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.samples import Sample

CONTENT_TYPE = prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SERIES = 1000
PUBLISH_INTERVAL = 1.0  # seconds between copies of the callbacks into the shared files (multiprocess mode only)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

prometheus_client.disable_created_metrics()  # no `_created` series: the exposition stays what the dashboards read


def shared_between_processes() -> bool:
    """Whether this process writes its metrics to the directory its sibling processes share."""
    return bool(getattr(values.ValueClass, "_multiprocess", False)) and bool(os.environ.get(MULTIPROC_DIR))


def share_between_processes(directory: str) -> None:
    """In the parent, before it starts the processes that answer one /metrics: they share `directory`, emptied of a
    previous run's files first (a dead run's counts would add to the new one's counters)."""
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)
    os.environ[MULTIPROC_DIR] = directory


def forget_dead_processes() -> None:
    """Drop the live gauges of processes that are gone (a worker Granian respawned, or one killed -9): their last
    values would otherwise stay in every sum. Their counters and histograms stay, as counted totals should."""
    directory = os.environ[MULTIPROC_DIR]
    pids = {path.rsplit("_", 1)[-1].removesuffix(".db") for path in glob.glob(os.path.join(directory, "gauge_live*"))}
    for pid in filter(str.isdigit, pids):
        if not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Every series read from a callback, to copy into the shared files in multiprocess mode.
_from_functions: dict[Any, None] = {}
_lock = threading.Lock()


def publish() -> None:
    """Copy every callback's value into this process's files (multiprocess mode; a no-op in one process)."""
    if not shared_between_processes():
        return
    for series in list(_from_functions):
        try:
            series._publish()
        except Exception:  # a broken callback must not stop the others' numbers; in one process its scrape fails
            continue


async def publishing(interval: float = PUBLISH_INTERVAL) -> None:
    """Keep the callbacks' values in the shared files until cancelled (multiprocess mode only)."""
    if not shared_between_processes():
        return
    forget_dead_processes()
    try:
        while True:
            publish()
            await asyncio.sleep(interval)
    finally:
        publish()  # a stopping process leaves its final counts


class _Bounded:
    """What wabridge adds to prometheus_client's metrics: `labels()` of an unlabelled metric is the metric itself,
    and at most `max_series` label sets."""

    _labelnames: Any
    _metrics: Any
    _name: Any
    max_series = MAX_SERIES

    @property
    def labelnames(self) -> tuple[str, ...]:
        return self._labelnames

    def labels(self: Any, *labelvalues: object, **labelkwargs: object) -> Any:
        if not labelvalues and not labelkwargs and not self._labelnames:
            return self
        key = tuple(str(v) for v in labelvalues)
        if len(self._metrics) >= self.max_series and key not in self._metrics:
            raise ValueError(f"{self._name}: more than {self.max_series} label sets (unbounded label?)")
        return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]  # prometheus_client's, next in the MRO


class Counter(_Bounded, prometheus_client.Counter):
    _function: Callable[[], float] | None = None
    _published = 0.0

    def set_function(self, fn: Callable[[], float]) -> None:
        """Add `fn()` to the count at scrape time (a monotonic count kept elsewhere, e.g. by an actor loop)."""
        self._raise_if_not_observable()
        self._function = fn
        with _lock:
            _from_functions[self] = None

    def get(self) -> float:
        """The count now: its increments, plus its function's total (of which `_published` is in the files)."""
        if self._function is None:
            return self._value.get()
        return self._value.get() - self._published + self._function()

    def _child_samples(self) -> Sequence[Sample]:
        return (Sample("_total", {}, self.get(), None, None),)

    def _publish(self) -> None:
        assert self._function is not None
        now = float(self._function())
        if now > self._published:
            self._value.inc(now - self._published)
            self._published = now


class Gauge(_Bounded, prometheus_client.Gauge):
    _function: Callable[[], float] | None = None

    def set_function(self, fn: Callable[[], float]) -> None:
        """Read the value from `fn` at scrape time (mailbox depth: no bookkeeping on the hot path)."""
        super().set_function(fn)
        self._function = fn
        with _lock:
            _from_functions[self] = None

    def get(self) -> float:
        return float(self._function()) if self._function is not None else self._value.get()

    def _publish(self) -> None:
        assert self._function is not None
        self._value.set(float(self._function()))


class Histogram(_Bounded, prometheus_client.Histogram):
    pass


class MetricsRegistry:
    """The metrics one process exposes (not the actor registry, engine/registry.py). `REGISTRY` is the process-wide
    one the engine registers into."""

    def __init__(self) -> None:
        self._collectors = prometheus_client.CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, Any] = {}

    def register(self, metric: Any) -> Any:
        """Add `metric` (a Counter, Gauge, Histogram or TopGauge); one already registered the same way is returned."""
        name = metric.name if isinstance(metric, TopGauge) else metric._name
        existing = self._metrics.get(name)
        if existing is not None:
            if type(existing) is not type(metric) or existing.labelnames != metric.labelnames:
                raise ValueError(f"metric {name!r} already registered differently")
            return existing
        self._metrics[name] = metric
        self._collectors.register(metric)
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = (), **kw: Any) -> Counter:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends with _total: {name!r}")
        return self._new(Counter, name, help, labelnames, **kw)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = (), **kw: Any) -> Gauge:
        """`multiprocess_mode` says how the processes' values add up: "livesum" (the default), "livemax", "livemin"."""
        kw.setdefault("multiprocess_mode", "livesum")
        return self._new(Gauge, name, help, labelnames, **kw)

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float] = DEFAULT_BUCKETS, **kw
    ) -> Histogram:
        return self._new(Histogram, name, help, labelnames, buckets=buckets, **kw)

    def _new(self, kind: type, name: str, help: str, labelnames: Sequence[str], *, max_series=MAX_SERIES, **kw):
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        metric = kind(name, help, labelnames, registry=None, **kw)
        metric.max_series = max_series
        return self.register(metric)

    def render(self) -> bytes:
        """The text exposition: this process's metrics, or in multiprocess mode every live and past process's."""
        if not shared_between_processes():
            return prometheus_client.generate_latest(self._collectors)
        publish()
        forget_dead_processes()
        shared = prometheus_client.CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(shared)
        return prometheus_client.generate_latest(shared)


REGISTRY = MetricsRegistry()


# --- bounded per-tenant series ------------------------------------------------------------------------------------

OTHER = "_other"


class Capped:
    """A metric labelled first by a value with no natural bound (a tenant id): the first `limit` values get series of
    their own, every later one shares `OTHER`. A deployment with more tenants than that still counts every message,
    and the metric never reaches MAX_SERIES (which would raise on the hot path)."""

    def __init__(self, metric: Counter | Gauge | Histogram, limit: int) -> None:
        if not metric.labelnames:
            raise ValueError(f"{metric._name} has no label to cap")
        self.metric = metric
        self.limit = limit
        self._own: set[str] = set()
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, first: str, *rest: str) -> Any:
        key = (first, *rest)
        child = self._children.get(key)
        if child is None:
            if first not in self._own:
                if len(self._own) >= self.limit:
                    first = OTHER
                else:
                    self._own.add(first)
            child = self._children[key] = self.metric.labels(first, *rest)
        return child


class TopGauge:
    """A gauge whose series are read at scrape time from `fn` (label value → number), keeping only the `top` largest
    non-zero ones: the deepest tenant mailboxes, say, of however many tenants a worker holds. A series missing from a
    scrape means "not among the largest", which is what a dashboard of hot spots needs. One process's view: it is not
    part of a multiprocess scrape."""

    def __init__(self, name: str, help: str, label: str, fn: Callable[[], dict[str, float]], *, top: int = 20) -> None:
        if not _NAME.match(name) or not _LABEL.match(label):
            raise ValueError(f"invalid metric {name!r} or label {label!r}")
        self.name = name
        self.help = help
        self.labelnames = (label,)
        self.fn = fn
        self.top = top

    def labels(self, *values: str) -> Any:
        raise TypeError(f"{self.name} is read from its function at scrape time")

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.help, labels=self.labelnames)
        for value, key in sorted(((v, k) for k, v in self.fn().items() if v > 0), reverse=True)[: self.top]:
            family.add_metric([key], value)
        return [family]
