"""The hot-path cost of a metric update: a labelled counter's `inc()` and a histogram's `observe()`, 1,000 per round.

Four implementations in the same run:
- hand-written: the plain-float children wabridge's metrics.py had before it used prometheus_client (kept here,
  copied, as the baseline);
- prometheus_client in one process (a float under a lock);
- prometheus_client's multiprocess mode (each update written to this process's mmap file in
  PROMETHEUS_MULTIPROC_DIR), the ingress's mode under `--workers N`;
- `wabridge.engine.metrics` as it is now (a bound child, the way the hot paths call it).
Run: `.venv/bin/python -m pytest bench/test_metrics_bench.py -s --benchmark-min-time=0.05
--benchmark-timer=time.process_time`; compare medians within one run (the summary prints the ratios to the
hand-written baseline).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

import prometheus_client
import pytest
from prometheus_client import values

from wabridge.engine import metrics

UPDATES = 1000  # per round: the cost of one update is the round's time / UPDATES
BUCKETS = metrics.DEFAULT_BUCKETS
results: dict[str, float] = {}


class HandWrittenCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class HandWrittenHistogramChild:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


@pytest.fixture
def multiprocess(tmp_path, monkeypatch) -> Iterator[None]:
    """prometheus_client as a process sees it when PROMETHEUS_MULTIPROC_DIR was set before its import."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    yield
    values.close_all_multiprocess_files()


def prometheus_pair(registry: prometheus_client.CollectorRegistry) -> tuple[Callable, Callable]:
    counter = prometheus_client.Counter("bench_total", "x", ["outcome"], registry=registry).labels("delivered")
    histogram = prometheus_client.Histogram("bench_seconds", "x", buckets=BUCKETS, registry=registry)
    return counter.inc, histogram.observe


def pairs(kind: str) -> tuple[Callable, Callable]:
    if kind == "hand-written":
        return HandWrittenCounterChild().inc, HandWrittenHistogramChild(BUCKETS).observe
    if kind == "wabridge":
        registry = metrics.MetricsRegistry()
        counter = registry.counter("bench_total", "x", ["outcome"]).labels("delivered")
        return counter.inc, registry.histogram("bench_seconds", "x").observe
    return prometheus_pair(prometheus_client.CollectorRegistry(auto_describe=False))


def timed(benchmark, name: str, update: Callable, argument: float | None) -> None:
    if argument is None:

        def run() -> None:
            for _ in range(UPDATES):
                update()
    else:

        def run() -> None:
            for _ in range(UPDATES):
                update(argument)

    benchmark(run)
    results[name] = benchmark.stats.stats.median / UPDATES


@pytest.mark.parametrize("kind", ["hand-written", "prometheus_client", "wabridge"])
@pytest.mark.parametrize("op", ["inc", "observe"])
def test_one_process(benchmark, kind: str, op: str) -> None:
    inc, observe = pairs(kind)
    timed(benchmark, f"{op} {kind}", inc if op == "inc" else observe, None if op == "inc" else 0.003)


@pytest.mark.parametrize("op", ["inc", "observe"])
def test_multiprocess_mode(benchmark, multiprocess, op: str) -> None:
    inc, observe = prometheus_pair(prometheus_client.CollectorRegistry(auto_describe=False))
    timed(
        benchmark,
        f"{op} prometheus_client multiprocess",
        inc if op == "inc" else observe,
        None if op == "inc" else 0.003,
    )


def test_summary() -> None:
    """Prints each update's median cost and its ratio to the hand-written baseline (run with -s)."""
    for op in ("inc", "observe"):
        base = results.get(f"{op} hand-written")
        for name, seconds in sorted(results.items()):
            if name.startswith(op) and base:
                print(f"{name:45} {seconds * 1e9:8.0f} ns  x{seconds / base:.1f}")
