"""A tiny Prometheus registry: counters, gauges (set or read from a callback at scrape time), fixed-bucket
histograms, rendered in the text exposition format 0.0.4 for /metrics.

Bounded: a metric holds at most `max_series` label sets; one more is a bug (unbounded label values such as a
customer id), so it raises instead of growing. Hot paths should bind a child once (`counter.labels("tenant")`) and
call `inc()` on it, or keep a local count and publish it through a callback.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_SERIES = 1000

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), *, max_series: int = MAX_SERIES) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.max_series = max_series
        self._children: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()  # child creation only; updates are single-threaded per event loop

    def labels(self, *values: str):
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    if len(self._children) >= self.max_series:
                        raise ValueError(f"{self.name}: more than {self.max_series} label sets (unbounded label?)")
                    child = self._children[key] = self._new_child()
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(tuple(str(v) for v in values), None)

    def _new_child(self) -> object:
        raise NotImplementedError

    def _default(self):
        return self.labels()

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for key, child in list(self._children.items()):
            yield from self._render_child(key, child)

    def _render_child(self, key: tuple[str, ...], child) -> Iterable[str]:
        yield f"{self.name}{_labels(self.labelnames, key)} {_number(child.get())}"


class _CounterChild:
    __slots__ = ("_fn", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._fn: Callable[[], float] | None = None

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount

    def set_function(self, fn: Callable[[], float]) -> None:
        """Read the total from `fn` at scrape time (a monotonic count kept elsewhere, e.g. by an actor loop)."""
        self._fn = fn

    def get(self) -> float:
        return self.value + (self._fn() if self._fn is not None else 0.0)


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), **kw) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends with _total: {name!r}")
        super().__init__(name, help, labelnames, **kw)

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._default().inc(amount)


class _GaugeChild:
    __slots__ = ("_fn", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set_function(self, fn: Callable[[], float]) -> None:
        """Read the value from `fn` at scrape time (mailbox depth: no bookkeeping on the hot path)."""
        self._fn = fn

    def get(self) -> float:
        return float(self._fn()) if self._fn is not None else self.value


class Gauge(_Metric):
    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._default().set(value)

    def set_function(self, fn: Callable[[], float]) -> None:
        self._default().set_function(fn)


class _HistogramChild:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float] = DEFAULT_BUCKETS, **kw
    ) -> None:
        if "le" in labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct and non-empty")
        self.bounds = bounds
        super().__init__(name, help, labelnames, **kw)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._default().observe(value)

    def _render_child(self, key: tuple[str, ...], child: _HistogramChild) -> Iterable[str]:
        cumulative = 0
        for bound, n in zip((*self.bounds, math.inf), child.counts):
            cumulative += n
            le = 'le="' + _number(bound) + '"'
            yield f"{self.name}_bucket{_labels(self.labelnames, key, le)} {cumulative}"
        yield f"{self.name}_sum{_labels(self.labelnames, key)} {_number(child.sum)}"
        yield f"{self.name}_count{_labels(self.labelnames, key)} {child.count}"


class Registry:
    """The metrics one process exposes. `REGISTRY` is the process-wide default the engine registers into."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> _Metric:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            if type(existing) is not type(metric) or existing.labelnames != metric.labelnames:
                raise ValueError(f"metric {metric.name!r} already registered differently")
            return existing
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = (), **kw) -> Counter:
        return self.register(Counter(name, help, labelnames, **kw))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = (), **kw) -> Gauge:
        return self.register(Gauge(name, help, labelnames, **kw))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (), **kw) -> Histogram:
        return self.register(Histogram(name, help, labelnames, **kw))  # type: ignore[return-value]

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in list(self._metrics.values()):
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode() if lines else b""


REGISTRY = Registry()


# --- bounded per-tenant series ------------------------------------------------------------------------------------

OTHER = "_other"


class Capped:
    """A metric labelled first by a value with no natural bound (a tenant id): the first `limit` values get series of
    their own, every later one shares `OTHER`. A deployment with more tenants than that still counts every message,
    and the metric never reaches MAX_SERIES (which would raise on the hot path)."""

    def __init__(self, metric: _Metric, limit: int) -> None:
        if not metric.labelnames:
            raise ValueError(f"{metric.name} has no label to cap")
        self.metric = metric
        self.limit = limit
        self._own: set[str] = set()
        self._children: dict[tuple[str, ...], object] = {}

    def labels(self, first: str, *rest: str):
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


class TopGauge(_Metric):
    """A gauge whose series are read at scrape time from `fn` (label value → number), keeping only the `top` largest
    non-zero ones: the deepest tenant mailboxes, say, of however many tenants a worker holds. A series missing from a
    scrape means "not among the largest", which is what a dashboard of hot spots needs."""

    kind = "gauge"

    def __init__(self, name: str, help: str, label: str, fn: Callable[[], dict[str, float]], *, top: int = 20) -> None:
        super().__init__(name, help, (label,), max_series=top)
        self.fn = fn
        self.top = top

    def labels(self, *values: str):
        raise TypeError(f"{self.name} is read from its function at scrape time")

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        values = sorted(((v, k) for k, v in self.fn().items() if v > 0), reverse=True)[: self.top]
        for value, key in values:
            yield f"{self.name}{_labels(self.labelnames, (key,))} {_number(value)}"
