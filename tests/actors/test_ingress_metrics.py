"""The ingress's /metrics under Granian with several worker processes: one scrape counts what every process did.

The processes share their metrics through prometheus_client's multiprocess mode (engine/metrics.py): each writes
its own file in PROMETHEUS_MULTIPROC_DIR, and the process that answers a scrape adds them all up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from tests.actors.test_ingress import granian_ingress
from tests.conftest import REPO
from wabridge.adapters.backends import open_backends
from wabridge.engine import metrics
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.ports import GenesysCredential, TenantConfig

pytestmark = pytest.mark.anyio

WEBHOOKS = 40
WEBHOOK = (REPO / "tests" / "fixtures" / "meta" / "text.json").read_bytes()  # phone_number_id 106540352242922
APP_SECRET = "shop-app-secret"
SHOP = TenantConfig(
    tenant_id="shop",
    phone_number_ids=("106540352242922",),
    app_secret=Secret(APP_SECRET),
    verify_token=Secret("verify-shop"),
    whatsapp_token=Secret("wa-token"),
    genesys_api_url="https://api.mypurecloud.ie",
    genesys_login_url="https://login.mypurecloud.ie",
    genesys_integration_id="integration-shop",
    credentials=(GenesysCredential("client", Secret("client-secret")),),
)


def signed() -> dict[str, str]:
    digest = hmac.new(APP_SECRET.encode(), WEBHOOK, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}


@pytest.fixture
async def embedded(embedded_settings: Settings) -> AsyncIterator:
    async with open_backends(embedded_settings) as backends:  # migrates the store
        await backends.store.put_tenant(SHOP)
        yield backends


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics text, by name and labels."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name}{labels} not in /metrics")


def run_in_a_process_sharing(directory, code: str) -> None:
    """`code` in a process of its own that writes its metrics to `directory`, as an ingress worker does."""
    env = os.environ | {metrics.MULTIPROC_DIR: str(directory), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=60)


async def test_one_scrape_counts_the_webhooks_every_granian_worker_accepted(
    embedded_settings: Settings, embedded, tmp_path, monkeypatch
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    # A previous run's counts, left in the directory: the new run must start from zero.
    run_in_a_process_sharing(
        shared, "from wabridge.actors import ingress\ningress.REQUESTS.labels('webhook', '200').inc(1000)"
    )
    assert list(shared.glob("counter_*.db"))
    monkeypatch.setenv(metrics.MULTIPROC_DIR, str(shared))

    with granian_ingress(embedded_settings, workers=2) as base:

        async def post() -> int:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:  # a connection of its own
                return (await http.post("/webhook/meta", content=WEBHOOK, headers=signed())).status_code

        statuses = await asyncio.gather(*(post() for _ in range(WEBHOOKS)))
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            page = (await http.get("/metrics")).text

    assert statuses == [200] * WEBHOOKS
    assert sample(page, "wabridge_ingress_requests_total", route="webhook", status="200") == WEBHOOKS
    assert sample(page, "wabridge_ingress_queued_total") == WEBHOOKS
    assert sample(page, "wabridge_ingress_publish_seconds_count") == WEBHOOKS


def test_share_between_processes_empties_the_directory_of_a_previous_run(tmp_path, monkeypatch) -> None:
    stale = tmp_path / "counter_123.db"
    stale.write_bytes(b"x")
    # setenv first: monkeypatch then puts back the variable's absence, which `share_between_processes` would
    # otherwise leak into every later test's bridge processes (they would all share this directory's metrics).
    monkeypatch.setenv(metrics.MULTIPROC_DIR, "")
    metrics.share_between_processes(str(tmp_path))
    assert os.environ[metrics.MULTIPROC_DIR] == str(tmp_path) and not stale.exists()


def test_a_dead_process_s_gauges_leave_the_sums_and_its_counts_stay(tmp_path, monkeypatch) -> None:
    run_in_a_process_sharing(
        tmp_path,
        "from wabridge.engine.metrics import REGISTRY\n"
        "REGISTRY.gauge('wabridge_test_running', 'x').set(5)\n"
        "REGISTRY.counter('wabridge_test_done_total', 'x').inc(7)\n",
    )
    monkeypatch.setenv(metrics.MULTIPROC_DIR, str(tmp_path))

    def scraped() -> str:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(tmp_path))
        return generate_latest(registry).decode()

    assert sample(scraped(), "wabridge_test_running") == 5
    metrics.forget_dead_processes()
    text = scraped()
    assert "wabridge_test_running " not in text
    assert sample(text, "wabridge_test_done_total") == 7
