"""Every bridge metric the Grafana dashboard and the Prometheus alert rules query (deploy/) is exported by a real
`wabridge serve` after a short run: the ingress's /metrics or the worker's. The broker's series (rabbitmq_*) are not
the bridge's and are left out (tests/deploy/monitoring.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.deploy.monitoring import bridge_names, exported
from tests.e2e.harness import Bridge, Genesys
from wabridge.sim import webhooks

pytestmark = pytest.mark.anyio

# Each process's own vitals: both processes must export them, with samples (the event-loop probe has run).
PER_PROCESS = ("wabridge_process_resident_memory_bytes", "wabridge_process_cpu_seconds_total",
               "wabridge_event_loop_lag_seconds_count", "wabridge_event_loop_lag_max_seconds")  # fmt: skip


async def test_every_metric_the_dashboard_and_alerts_use_is_exported(bridge: Bridge, genesys: Genesys) -> None:
    wamids = await bridge.send(webhooks.message("text"), webhooks.message("image"), webhooks.message("text"))
    rows = await bridge.wait_tracked(wamids)
    assert {rows[w].status for w in wamids} == {"delivered"}

    async with httpx.AsyncClient(timeout=10.0) as http:
        ingress = (await http.get(f"{bridge.url}/metrics")).text
        worker = (await http.get(f"http://127.0.0.1:{bridge.settings.worker_metrics_port}/metrics")).text

    missing = sorted(n for n in bridge_names() if not exported(n, ingress) and not exported(n, worker))
    assert not missing, f"queried by deploy/ but exported by neither process: {missing}"
    for name, text in (("ingress", ingress), ("worker", worker)):
        samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        assert set(PER_PROCESS) <= samples, (name, set(PER_PROCESS) - samples)
    # The media message went through the download path the dashboard counts.
    assert 'wabridge_media_downloads_total{result="stored"} 1.0' in worker
    assert 'wabridge_tenant_deliveries_total{outcome="delivered",tenant="shop"} 3.0' in worker
