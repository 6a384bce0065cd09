"""The bridge killed -9 in the middle of a run, and drained by SIGTERM in the middle of another: every webhook it
answered 200 is delivered, each customer's messages in the order they were sent."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from tests.e2e.harness import APP_SECRET, PHONE_NUMBER_ID, Bridge, Genesys, put_tenant
from wabridge.sim import webhooks
from wabridge.sim.meta import customer_wa_id

pytestmark = pytest.mark.anyio

CUSTOMERS = 50
RESEND_FOR = 60.0  # s a sender keeps resending one webhook the bridge did not take (Meta retries for days)


async def send_as_customers(bridge: Bridge, customers: int, per_customer: int) -> dict[str, list[str]]:
    """Every customer sends its messages one after another (so their order is defined), all customers at once.
    A webhook not answered 200 is sent again, as Meta would. → wa_id → wamids answered 200, in send order."""
    acked: dict[str, list[str]] = {customer_wa_id(c): [] for c in range(customers)}

    async def customer(client: httpx.AsyncClient, wa_id: str) -> None:
        for i in range(per_customer):
            message = webhooks.message("text", wa_id=wa_id, text=f"{wa_id} #{i}")
            body = webhooks.webhook(PHONE_NUMBER_ID, [message])
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": webhooks.sign(body, APP_SECRET)}
            deadline = time.monotonic() + RESEND_FOR
            while time.monotonic() < deadline:
                try:
                    response = await client.post(f"{bridge.url}/webhook/meta", content=body, headers=headers)
                    if response.status_code == 200:
                        acked[wa_id].append(message["id"])
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)

    limits = httpx.Limits(max_connections=customers, max_keepalive_connections=customers)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        await asyncio.gather(*(customer(client, wa_id) for wa_id in acked))
    return acked


async def wait_accepted(genesys: Genesys, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (await genesys.stats())["accepted"] < n:
        assert time.monotonic() < deadline, f"Genesys did not get {n} messages in {timeout} s"
        await asyncio.sleep(0.05)


def check_order(acked: dict[str, list[str]], received: list[dict]) -> None:
    """Per customer, the first arrival of each acknowledged message follows the send order."""
    wanted = {w for wamids in acked.values() for w in wamids}
    arrivals: dict[str, list[str]] = {}
    seen: set[str] = set()
    for item in received:
        wamid = item["body"]["channel"]["messageId"]
        if wamid in wanted and wamid not in seen:
            seen.add(wamid)
            arrivals.setdefault(item["body"]["channel"]["from"]["id"], []).append(wamid)
    assert seen == wanted, f"{len(wanted - seen)} acknowledged messages never reached Genesys"
    for wa_id, wamids in acked.items():
        assert arrivals.get(wa_id, []) == wamids, f"customer {wa_id}'s messages reached Genesys out of order"


async def test_a_bridge_killed_mid_run_delivers_every_acknowledged_message_in_order_after_restart(
    bridge: Bridge, genesys: Genesys
) -> None:
    sending = asyncio.ensure_future(send_as_customers(bridge, CUSTOMERS, 40))
    await wait_accepted(genesys, 500)
    await bridge.kill()
    await asyncio.sleep(0.5)
    await bridge.start()
    acked = await sending

    wamids = [w for ws in acked.values() for w in ws]
    assert len(wamids) == CUSTOMERS * 40, "every sender got its 200s once the bridge was back"
    rows = await bridge.wait_tracked(wamids, timeout=150)
    received = await genesys.wait_messages(len(wamids))

    assert {rows[w].status for w in wamids} == {"delivered"}
    check_order(acked, received)
    # A message is sent to Genesys before its tracking row is durable (we cannot know it arrived until Genesys
    # answers), so a crash can repeat what was between the two: at most one message per ordering lane, and a
    # tenant has `tenant_concurrency` lanes running. One tenant here, one crash.
    copies = Counter(item["body"]["channel"]["messageId"] for item in received)
    duplicates = sum(n - 1 for n in copies.values())
    assert duplicates <= bridge.settings.tenant_concurrency * 1, f"{duplicates} messages delivered twice"


async def test_a_bridge_drained_by_sigterm_mid_run_exits_0_and_delivers_nothing_twice(
    bridge: Bridge, genesys: Genesys
) -> None:
    sending = asyncio.ensure_future(send_as_customers(bridge, CUSTOMERS, 16))
    await wait_accepted(genesys, 250)
    assert await bridge.terminate() == 0, bridge.stderr()[-3000:]
    await bridge.start()
    acked = await sending

    wamids = [w for ws in acked.values() for w in ws]
    assert len(wamids) == CUSTOMERS * 16
    rows = await bridge.wait_tracked(wamids, timeout=120)
    received = await genesys.wait_messages(len(wamids))

    assert {rows[w].status for w in wamids} == {"delivered"}
    check_order(acked, received)
    copies = Counter(item["body"]["channel"]["messageId"] for item in received)
    assert [w for w, n in copies.items() if n > 1] == []
    assert await bridge.terminate() == 0


async def test_a_bridge_killed_while_its_tenant_is_parked_delivers_everything_in_order_after_restart(
    backend_settings, genesys: Genesys, meta, tmp_path
) -> None:
    """One customer, one lane, Genesys answering in 1.5 s: the tenant takes a message every 1.5 s with its
    mailbox full, so it is parked (the worker holds 4 + 1 for it). Killed then, the bridge leaves the messages it had
    taken unacked and the newer ones parked; after the restart the older ones must still reach Genesys first."""
    settings = backend_settings.replace(graph_api_url=meta.graph_url, worker_prefetch=8, mailbox_size=1,
                                        tenant_concurrency=1, shards=1)  # fmt: skip
    await put_tenant(settings, genesys.url)
    await genesys.fault(latency_ms=1500, count=-1)
    bridge = Bridge(settings, tmp_path / "bridge")
    try:
        await bridge.start()
        acked = await send_as_customers(bridge, 1, 30)
        wamids = [w for ws in acked.values() for w in ws]
        assert len(wamids) == 30
        async with bridge.store() as store:
            deadline = time.monotonic() + 30
            while not await store.parked_tenants(0) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await store.parked_tenants(0), "the tenant was parked"
        await bridge.kill()
        await genesys.clear_faults()
        await bridge.start()
        rows = await bridge.wait_tracked(wamids, timeout=120)
        received = await genesys.wait_messages(len(wamids))
        assert {rows[w].status for w in wamids} == {"delivered"}
        check_order(acked, received)
        copies = Counter(item["body"]["channel"]["messageId"] for item in received)
        assert sum(n - 1 for n in copies.values()) <= 1, "at most the one in flight at the kill, twice"
    finally:
        await bridge.aclose()
