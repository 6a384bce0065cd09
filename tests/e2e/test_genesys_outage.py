"""A tenant's Genesys down for tens of seconds is weather (issue 15): its messages wait in place, in order, and go as
soon as it answers again; another tenant, whose Genesys is fine, is not slowed; nothing fails, nothing is sent twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.e2e.harness import PHONE_NUMBER_ID, TENANT, Bridge, Genesys, running_bridge, running_genesys, tenant_config
from wabridge.adapters.backends import open_backends
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks
from wabridge.sim.meta import MetaSim

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CALM, CALM_NUMBER = "calm", "106540352249999"
OUTAGE = 30.0  # s
CUSTOMERS = 6


@pytest.fixture
async def calm_genesys() -> AsyncIterator[Genesys]:
    async with running_genesys() as sim:
        yield sim


@pytest.fixture
async def two_tenants(
    backend_settings: Settings, genesys: Genesys, calm_genesys: Genesys, meta: MetaSim, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """The test tenant on `genesys`, and a second one on a Genesys of its own, sharing the bridge's shards."""
    settings = backend_settings.replace(graph_api_url=meta.graph_url, far_end_retry_max=2)
    async with open_backends(settings, ports=("store",)) as backends:
        await backends.store.put_tenant(tenant_config(genesys.url))
        calm = msgspec.structs.replace(tenant_config(calm_genesys.url), tenant_id=CALM, phone_number_ids=(CALM_NUMBER,))
        await backends.store.put_tenant(calm)
    async with running_bridge(settings, tmp_path / "bridge") as running:
        yield running


async def test_a_genesys_outage_holds_its_tenants_messages_in_order_and_slows_no_other_tenant(
    two_tenants: Bridge, genesys: Genesys, calm_genesys: Genesys
) -> None:
    bridge = two_tenants
    await genesys.fault(status=503, count=-1)
    sent: dict[str, list[str]] = {f"1555000{c:04d}": [] for c in range(CUSTOMERS)}  # customer → wamids, in order
    calm_sent: list[str] = []

    async def customers_write(until: float) -> None:
        n = 0
        while time.monotonic() < until:
            for customer, wamids in sent.items():
                message = webhooks.message("text", wa_id=customer, text=f"{customer} #{len(wamids)}")
                assert await bridge.post(webhooks.webhook(PHONE_NUMBER_ID, [message])) == 200
                wamids.append(message["id"])
            calm = webhooks.message("text", wa_id=f"1666000{n:04d}")
            assert await bridge.post(webhooks.webhook(CALM_NUMBER, [calm])) == 200
            calm_sent.append(calm["id"])
            n += 1
            await asyncio.sleep(0.5)

    started = time.monotonic()
    await customers_write(started + OUTAGE - 5)
    # The calm tenant went on through the whole outage: everything it sent is delivered before the outage ends.
    calm_delivered = await wait_delivered(bridge, CALM, calm_sent, timeout=started + OUTAGE - time.monotonic())
    assert set(calm_delivered) >= set(calm_sent)
    assert await metric(bridge, 'wabridge_far_end_down_tenants{far_end="genesys"}') == 1.0
    rows = await tracked(bridge, TENANT)
    assert not [w for ws in sent.values() for w in ws if w in rows and rows[w] != "received"], "none failed"
    await asyncio.sleep(max(0.0, started + OUTAGE - time.monotonic()))

    await genesys.clear_faults()
    back = time.monotonic()
    expected = [w for ws in sent.values() for w in ws]
    delivered = await wait_delivered(bridge, TENANT, expected, timeout=60)
    resumed_in = time.monotonic() - back
    assert resumed_in < 20, f"delivery resumed {resumed_in:.1f} s after Genesys came back"

    assert sorted(delivered) == sorted(expected), "each once, none failed"
    received = [m["body"]["channel"]["messageId"] for m in await genesys.messages()]
    assert sorted(received) == sorted(expected), "Genesys got each exactly once"
    for customer, wamids in sent.items():
        assert [w for w in received if w in set(wamids)] == wamids, f"{customer}'s order"
    assert await metric(bridge, 'wabridge_far_end_down_tenants{far_end="genesys"}') == 0.0
    log = bridge.stderr()
    assert log.count("of tenant shop is down") == 1 and log.count("of tenant shop is back") == 1, log[-3000:]


async def tracked(bridge: Bridge, tenant_id: str) -> dict[str, str]:
    async with bridge.store() as store:
        return {r.wamid: r.status for r in await store.list_tracking(tenant_id=tenant_id, limit=100_000)}


async def wait_delivered(bridge: Bridge, tenant_id: str, wamids: list[str], *, timeout: float) -> list[str]:
    """The wamids of `tenant_id` tracked delivered, once all of `wamids` are (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await tracked(bridge, tenant_id)
        delivered = [w for w, status in rows.items() if status == "delivered"]
        if set(wamids) <= set(delivered) or time.monotonic() > deadline:
            failed = {w: s for w, s in rows.items() if s not in ("delivered", "received")}
            assert not failed, f"{len(failed)} not delivered: {dict(list(failed.items())[:3])}"
            return delivered
        await asyncio.sleep(0.2)


async def metric(bridge: Bridge, series: str) -> float | None:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{bridge.settings.worker_metrics_port}/metrics")).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None

