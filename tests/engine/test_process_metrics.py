"""The per-process vitals (event-loop lag, RSS, CPU) and the bounded per-tenant series the dashboard reads."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.engine.test_metrics import assert_prometheus_text
from wabridge.engine import process_metrics
from wabridge.engine.actor import Actor, ActorRef
from wabridge.engine.metrics import OTHER, REGISTRY, Capped, MetricsRegistry, TopGauge

pytestmark = pytest.mark.anyio


def _sample(text: str, name: str) -> float:
    (value,) = re.findall(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(value)


async def test_loop_lag_is_how_late_the_sleep_woke() -> None:
    """A fake clock: the loop "was busy" 0.3 s past a 0.25 s sleep, then on time; no wall-clock involved."""
    now = [100.0]
    late = iter([0.3, 0.0])

    async def sleep(seconds: float) -> None:
        try:
            now[0] += seconds + next(late)
        except StopIteration:
            raise asyncio.CancelledError from None

    counted = re.compile(r"^wabridge_event_loop_lag_seconds_count (\S+)$", re.MULTILINE)
    before = float(next(iter(counted.findall(REGISTRY.render().decode())), 0))
    probe = process_metrics.LoopLag(0.25, window=1.0)
    with pytest.raises(asyncio.CancelledError):
        await probe.watch(clock=lambda: now[0], sleep=sleep)
    assert [round(x, 6) for x in probe.recent] == [0.3, 0.0]
    assert probe.max() == pytest.approx(0.3)
    text = REGISTRY.render().decode()
    assert float(counted.findall(text)[0]) == before + 2
    assert re.search(r'^wabridge_event_loop_lag_seconds_bucket\{le="0.5"\} [\d.]+$', text, re.MULTILINE)


async def test_watching_runs_one_probe_per_loop_and_publishes_its_max() -> None:
    async with process_metrics.watching():
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "event-loop-lag"]
        async with process_metrics.watching():  # a second role on the same loop shares the probe
            assert [t for t in asyncio.all_tasks() if t.get_name() == "event-loop-lag"] == [task]
        assert not task.done()
        assert "wabridge_event_loop_lag_max_seconds " in REGISTRY.render().decode()
    assert task.cancelled()


def test_resident_memory_and_cpu_are_this_process_s() -> None:
    text = REGISTRY.render().decode()
    assert _sample(text, "wabridge_process_resident_memory_bytes") > 10 * 2**20  # a Python with the bridge loaded
    assert _sample(text, "wabridge_process_cpu_seconds_total") > 0


def test_capped_gives_the_first_tenants_their_own_series_and_the_rest_one() -> None:
    registry = MetricsRegistry()
    deliveries = registry.counter("wabridge_t_total", "By tenant.", ["tenant", "outcome"], max_series=8)
    capped = Capped(deliveries, 3)
    for n in range(1000):  # far more tenants than the metric could hold: must not raise
        capped.labels(f"t{n}", "delivered").inc()
        capped.labels(f"t{n}", "failed").inc()
    lines = assert_prometheus_text(registry.render().decode())
    assert 'wabridge_t_total{outcome="delivered",tenant="t0"} 1.0' in lines
    assert 'wabridge_t_total{outcome="failed",tenant="t2"} 1.0' in lines
    assert f'wabridge_t_total{{outcome="delivered",tenant="{OTHER}"}} 997.0' in lines
    assert not any('tenant="t3"' in line for line in lines)


def test_top_gauge_shows_only_the_largest_non_zero_values() -> None:
    registry = MetricsRegistry()
    depths = {f"t{n}": n for n in range(50)}
    registry.register(TopGauge("wabridge_deep", "Deepest.", "tenant", lambda: depths, top=3))
    lines = assert_prometheus_text(registry.render().decode())
    assert [line for line in lines if not line.startswith("#")] == [
        'wabridge_deep{tenant="t49"} 49.0',
        'wabridge_deep{tenant="t48"} 48.0',
        'wabridge_deep{tenant="t47"} 47.0',
    ]
    depths.clear()
    assert [line for line in registry.render().decode().splitlines() if not line.startswith("#")] == []


async def test_the_worker_exports_its_deepest_tenant_mailboxes_by_tenant() -> None:
    import wabridge.actors.worker  # noqa: F401  (registers the gauge)

    class Idle(Actor):
        async def on_receive(self, message: object) -> None:
            pass

    refs = [ActorRef(Idle, name=f"tenant:acme-{n}", kind="tenant", capacity=10) for n in range(3)]
    for n, ref in enumerate(refs):
        for _ in range(n * 2):
            ref.tell_nowait("webhook")  # never started: the messages stay in the mailbox
    text = REGISTRY.render().decode()
    assert 'wabridge_tenant_mailbox_depth{tenant="acme-2"} 4.0' in text
    assert 'wabridge_tenant_mailbox_depth{tenant="acme-1"} 2.0' in text
    assert 'tenant="acme-0"' not in text  # empty: not a hot spot
