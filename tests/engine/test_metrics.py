"""The metrics registry renders valid Prometheus text (format 0.0.4), and the engine publishes its counters.
Across processes: tests/actors/test_ingress_metrics.py."""

from __future__ import annotations

import re

import pytest

from wabridge.engine.actor import Actor
from wabridge.engine.metrics import REGISTRY, MetricsRegistry
from wabridge.engine.supervisor import Supervisor

pytestmark = pytest.mark.anyio

# One sample line: name, optional {label="value",...} with escaped values, then a float (or ±Inf/NaN).
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(-?[0-9.]+(e[+-]?[0-9]+)?|[+-]Inf|NaN)$"
)
COMMENT = re.compile(r"^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram))$")


def assert_prometheus_text(text: str) -> list[str]:
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    for line in lines:
        assert SAMPLE.match(line) or COMMENT.match(line), f"not Prometheus text: {line!r}"
    return lines


def test_counters_gauges_and_histograms_render_as_prometheus_text_with_escaped_labels() -> None:
    registry = MetricsRegistry()
    requests = registry.counter("wabridge_requests_total", 'Requests by "route".\nSecond line.', ["route"])
    requests.labels('/webhook "meta"\\n').inc(3)
    depth = registry.gauge("wabridge_depth", "Queue depth.", ["queue"])
    depth.labels("q1").set_function(lambda: 7)
    latency = registry.histogram("wabridge_latency_seconds", "Latency.", buckets=(0.01, 0.1, 1.0))
    for value in (0.005, 0.05, 0.5, 5.0):
        latency.observe(value)

    lines = assert_prometheus_text(registry.render().decode())
    assert '# HELP wabridge_requests_total Requests by "route".\\nSecond line.' in lines
    assert 'wabridge_requests_total{route="/webhook \\"meta\\"\\\\n"} 3.0' in lines
    assert 'wabridge_depth{queue="q1"} 7.0' in lines
    buckets = [line for line in lines if line.startswith("wabridge_latency_seconds_bucket")]
    assert buckets == [
        'wabridge_latency_seconds_bucket{le="0.01"} 1.0',
        'wabridge_latency_seconds_bucket{le="0.1"} 2.0',
        'wabridge_latency_seconds_bucket{le="1.0"} 3.0',
        'wabridge_latency_seconds_bucket{le="+Inf"} 4.0',
    ]
    assert "wabridge_latency_seconds_count 4.0" in lines
    assert "wabridge_latency_seconds_sum 5.555" in lines


def test_a_metric_refuses_more_label_sets_than_its_bound() -> None:
    counter = MetricsRegistry().counter("wabridge_x_total", "x", ["customer"], max_series=2)
    counter.labels("a").inc()
    counter.labels("b").inc()
    with pytest.raises(ValueError, match="more than 2 label sets"):
        counter.labels("c")


def test_a_counter_only_goes_up_and_names_are_checked() -> None:
    registry = MetricsRegistry()
    with pytest.raises(ValueError):
        registry.counter("wabridge_no_suffix", "x")
    with pytest.raises(ValueError):
        registry.gauge("bad-name", "x")
    with pytest.raises(ValueError):
        registry.counter("wabridge_y_total", "y").inc(-1)


async def test_the_engine_exposes_mailbox_depth_restarts_messages_handled_and_handler_latency() -> None:
    class Flaky(Actor):
        async def on_receive(self, message: int) -> None:
            if message == 3:
                raise RuntimeError("once")

    async with Supervisor(max_restarts=5, period=10.0) as root:
        ref = root.spawn(Flaky, name="m", kind="metricstest", retries=0, on_failed=lambda m, e: None)
        for i in range(40):
            await ref.tell(i)
    lines = assert_prometheus_text(REGISTRY.render().decode())
    assert 'wabridge_actor_messages_total{actor="metricstest"} 39.0' in lines
    assert 'wabridge_actor_restarts_total{actor="metricstest"} 1.0' in lines
    assert 'wabridge_actor_failures_total{actor="metricstest"} 1.0' in lines
    assert 'wabridge_actor_mailbox_depth{actor="metricstest"} 0.0' in lines
    count = next(line for line in lines if line.startswith('wabridge_actor_handler_seconds_count{actor="metricstest"}'))
    assert float(count.split()[-1]) >= 2  # sampled: 1 call in 16
