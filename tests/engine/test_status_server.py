import socket

import httpx
import pytest

from wabridge.engine.metrics import REGISTRY
from wabridge.engine.status_server import serve_status

pytestmark = pytest.mark.anyio

_probe = REGISTRY.counter("wabridge_test_status_probe_total", "A counter the status server test reads back.", [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_worker_serves_its_metrics_and_health():
    _probe.inc(3)
    port = _free_port()
    async with serve_status("127.0.0.1", port), httpx.AsyncClient() as client:
        metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
        health = await client.get(f"http://127.0.0.1:{port}/healthz")
        missing = await client.get(f"http://127.0.0.1:{port}/nope")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "wabridge_test_status_probe_total 3.0" in metrics.text
    assert (health.status_code, health.text) == (200, "ok")
    assert missing.status_code == 404


async def test_a_taken_port_does_not_stop_the_worker():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async with serve_status("127.0.0.1", taken.getsockname()[1]) as server:
            assert server is None


async def test_port_zero_serves_nothing():
    async with serve_status("127.0.0.1", 0) as server:
        assert server is None
