"""The agent's side, end to end (issue 17): customers write, an agent answers through Genesys's outbound webhook, the
answers reach WhatsApp once each and in order, and Meta's statuses come back to the agent as receipts — on both
backends, with Meta or Genesys down for a while, and with the bridge killed mid-run."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.e2e.harness import (
    APP_SECRET, PHONE_NUMBER_ID, TENANT, WHATSAPP_TOKEN, Bridge, Genesys, free_port, running_bridge, tenant_config,
)  # fmt: skip
from wabridge.adapters.backends import open_backends
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks
from wabridge.sim.genesys_agent import sign
from wabridge.sim.meta import MetaSim
from wabridge.sim.meta_send import Quirks

pytestmark = [pytest.mark.anyio]

OUTBOUND_SECRET = "e2e-outbound-secret"


class Agent:
    """The agent's side of the Genesys simulator (genesys_agent.py), over HTTP."""

    def __init__(self, genesys: Genesys) -> None:
        self._http = httpx.AsyncClient(base_url=genesys.url, timeout=120)

    async def send(self, *, wait: bool = True, **spec: Any) -> dict[str, Any]:
        response = await self._http.post("/sim/agent/send", params={"wait": "true"} if wait else None, json=spec)
        response.raise_for_status()
        return response.json()

    async def outbound(self) -> list[dict[str, Any]]:
        return (await self._http.get("/sim/agent/outbound")).json()

    async def conversation_of(self, customer: str) -> str:
        for message in (await self._http.get("/sim/messages")).json():
            if message["body"]["channel"]["from"]["id"] == customer:
                return message["conversationId"]
        raise AssertionError(f"{customer} never reached Genesys")

    async def wait_receipts(self, ids: list[str], *, timeout: float = 60.0, statuses=("Delivered", "Failed"),
                            ) -> dict[str, dict[str, Any]]:  # fmt: skip
        """Until each message has a final receipt; the records by id."""
        deadline = time.monotonic() + timeout
        while True:
            records = {r["id"]: r for r in await self.outbound()}
            if all(records.get(i, {}).get("receipts") and records[i]["receipts"][-1]["status"] in statuses
                   for i in ids):  # fmt: skip
                return records
            if time.monotonic() > deadline:
                missing = {i: records.get(i, {}).get("receipts") for i in ids}
                raise AssertionError(f"receipts missing: {missing}")
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        await self._http.aclose()


class World(msgspec.Struct, kw_only=True, dict=True):
    bridge: Bridge
    genesys: Genesys
    meta: MetaSim
    agent: Agent


@pytest.fixture
async def world(backend_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    port = free_port()
    bridge_url = f"http://127.0.0.1:{port}"
    # Both simulators retry as patiently as the real services (Genesys 5 times 5 s apart, Meta for days), within a
    # test's time: a bridge killed and restarted must find its webhooks still coming.
    genesys = Genesys(bridge_url=bridge_url, tenant=TENANT, outbound_secret=OUTBOUND_SECRET, retry_interval=3)
    agent = Agent(genesys)
    try:
        async with MetaSim(tokens=[WHATSAPP_TOKEN], numbers={PHONE_NUMBER_ID: APP_SECRET},
                           bridge_url=f"{bridge_url}/webhook/meta", status_retries=8, retry_backoff=0.5,
                           quirks=quirks.args[0] if (quirks := request.node.get_closest_marker("quirks")) else None,
                           ) as meta:  # fmt: skip
            settings = backend_settings.replace(graph_api_url=meta.graph_url, port=port, far_end_retry_max=1)
            tenant = msgspec.structs.replace(
                tenant_config(genesys.url), genesys_webhook_secret=Secret(OUTBOUND_SECRET), send_rate_per_second=0
            )
            async with open_backends(settings, ports=("store",)) as backends:
                await backends.store.put_tenant(tenant)
            async with running_bridge(settings, tmp_path / "bridge") as bridge:
                yield World(bridge=bridge, genesys=genesys, meta=meta, agent=agent)
    finally:
        await agent.aclose()
        await genesys.aclose()


async def customers_write(world: World, customers: list[str], *, in_window: bool = True) -> dict[str, str]:
    """Each customer writes once; the conversation Genesys gave each."""
    wamids = await world.bridge.send(*(webhooks.message("text", wa_id=c, text=f"hello from {c}") for c in customers))
    await world.bridge.wait_tracked(wamids, statuses=("delivered",))
    if in_window:
        for customer in customers:
            world.meta.outbound.customer_wrote(PHONE_NUMBER_ID, customer)
    return {c: await world.agent.conversation_of(c) for c in customers}


def sent_to(meta: MetaSim, customer: str) -> list[dict[str, Any]]:
    """What the Meta simulator accepted for `customer`, in order (read marks and typing are not sends)."""
    return [dataclasses.asdict(s) for s in list(meta.outbound.sent) if s.to == customer]


async def test_an_agent_answers_in_order_and_sees_each_message_delivered(world: World) -> None:
    a, b = "15550001001", "15550001002"
    conversations = await customers_write(world, [a, b])
    ids = []
    for n in range(4):
        ids.append((await world.agent.send(conversationId=conversations[a], type="text", text=f"answer {n}"))["id"])
    ids.append((await world.agent.send(conversationId=conversations[a], type="attachment", mediaType="Image",
                                       mime="image/png", filename="map.png", text="where we are"))["id"])  # fmt: skip
    ids.append((await world.agent.send(conversationId=conversations[b], type="template", template={
        "id": "ns@order_update", "language": "en-US", "parameters": {"1": "B-42"}}))["id"])  # fmt: skip

    records = await world.agent.wait_receipts(ids)
    assert [records[i]["receipts"][-1]["status"] for i in ids] == ["Delivered"] * len(ids)
    assert all(len(records[i]["receipts"]) == 1 for i in ids), "one receipt per message, however many statuses"

    to_a = sent_to(world.meta, a)
    assert [s["type"] for s in to_a] == ["text"] * 4 + ["image"]
    assert [s["body"]["text"]["body"] for s in to_a[:4]] == [f"answer {n}" for n in range(4)]
    assert to_a[4]["body"]["image"]["id"] and to_a[4]["body"]["image"].get("caption") == "where we are"
    assert all(s["phone_number_id"] == PHONE_NUMBER_ID for s in to_a)
    to_b = sent_to(world.meta, b)
    assert [s["type"] for s in to_b] == ["template"]
    assert to_b[0]["body"]["template"]["name"] == "order_update"

    # The customer's message was marked read once, when the agent first answered.
    reads = [r for r in world.meta.outbound.reads if not r["typing"]]
    tracked = await world.bridge.tracking()
    inbound_of_a = next(w for w, r in tracked.items() if r.direction == "inbound" and r.customer_id == a)
    assert [r["message_id"] for r in reads].count(inbound_of_a) == 1

    outbound_rows = {w: r for w, r in tracked.items() if r.direction == "outbound"}
    assert set(ids) <= set(outbound_rows)
    assert all(outbound_rows[i].status == "delivered" and outbound_rows[i].meta_ids for i in ids)
    assert "delivered" in (outbound_rows[ids[0]].meta_status or "")


async def test_refusals_reach_the_agent_as_failed_receipts_with_the_reason(world: World) -> None:
    inside, outside = "15550002001", "15550002002"
    conversations = await customers_write(world, [inside])
    conversations |= await customers_write(world, [outside], in_window=False)
    late = (await world.agent.send(conversationId=conversations[outside], type="text", text="hello?"))["id"]
    stranger = (await world.agent.send(to={"id": "15559999999", "idType": "Phone"}, integrationId="e2e-integration",
                                       type="text", text="who?"))["id"]  # fmt: skip
    fine = (await world.agent.send(conversationId=conversations[inside], type="text", text="fine"))["id"]

    records = await world.agent.wait_receipts([late, stranger, fine])
    late_receipt = records[late]["receipts"][-1]
    assert late_receipt["status"] == "Failed"
    assert late_receipt["reasons"][0]["code"] == "MessageNotAllowed" and "131047" in late_receipt["reasons"][0]["message"]
    assert records[stranger]["receipts"][-1]["status"] == "Failed"
    assert records[stranger]["receipts"][-1]["reasons"][0]["code"] == "InvalidDestination"
    assert records[fine]["receipts"][-1]["status"] == "Delivered"
    assert sent_to(world.meta, "15559999999") == []  # never guessed

    rows = await world.bridge.tracking()
    assert rows[late].status == "failed" and "MessageNotAllowed" in (rows[late].error or "")
    assert rows[stranger].status == "failed" and rows[stranger].payload  # replayable


async def test_a_webhook_genesys_sends_twice_is_sent_to_whatsapp_once(world: World) -> None:
    customer = "15550003001"
    conversations = await customers_write(world, [customer])
    first = await world.agent.send(conversationId=conversations[customer], type="text", text="only once")
    body = msgspec.json.encode(first["body"])
    for encoding in ("base64", "hex"):  # Genesys retries; both digest encodings are the same HMAC
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, OUTBOUND_SECRET, encoding)}
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{world.bridge.url}/webhook/genesys/{TENANT}", content=body, headers=headers)
        assert answer.status_code == 200
    await world.bridge.wait_tracked([first["id"]], statuses=("delivered",),
                                    until=lambda rows: rows[first["id"]].duplicates >= 2)  # fmt: skip
    assert [s["body"]["text"]["body"] for s in sent_to(world.meta, customer)] == ["only once"]


async def test_meta_down_holds_the_answers_in_order_and_sends_each_once_when_it_is_back(world: World) -> None:
    customers = ["15550004001", "15550004002"]
    conversations = await customers_write(world, customers)
    world.meta.outbound.inject(target="messages", status=503, count=-1)
    ids = {c: [] for c in customers}
    for n in range(3):
        for c in customers:
            ids[c].append((await world.agent.send(conversationId=conversations[c], type="text", text=f"{c} {n}"))["id"])
    await asyncio.sleep(3)
    assert not any(sent_to(world.meta, c) for c in customers)
    world.meta.outbound.faults.clear()
    await world.agent.wait_receipts([i for c in customers for i in ids[c]], timeout=90)
    for c in customers:
        assert [s["body"]["text"]["body"] for s in sent_to(world.meta, c)] == [f"{c} {n}" for n in range(3)]


async def test_genesys_receipts_down_are_sent_once_it_is_back(world: World) -> None:
    customer = "15550005001"
    conversations = await customers_write(world, [customer])
    await world.genesys.fault(status=503, count=-1)  # its whole API: receipts too
    sent = (await world.agent.send(conversationId=conversations[customer], type="text", text="are you there"))["id"]
    await asyncio.sleep(3)
    assert not (await world.agent.outbound())[-1]["receipts"]
    await world.genesys.clear_faults()
    records = await world.agent.wait_receipts([sent], timeout=90)
    assert [r["status"] for r in records[sent]["receipts"]] == ["Delivered"]


@pytest.mark.slow
async def test_a_bridge_killed_mid_run_loses_no_answer_and_keeps_their_order(world: World) -> None:
    customers = [f"1555000600{i}" for i in range(3)]
    conversations = await customers_write(world, customers)
    world.meta.outbound.inject(target="messages", latency_ms=50, count=-1)
    ids: dict[str, list[str]] = {c: [] for c in customers}

    async def agents_write() -> None:
        for n in range(8):
            for c in customers:
                record = await world.agent.send(wait=False, conversationId=conversations[c], type="text",
                                                text=f"{c} {n}")  # fmt: skip
                ids[c].append(record["id"])
            await asyncio.sleep(0.1)

    writing = asyncio.create_task(agents_write())
    await asyncio.sleep(0.8)
    await world.bridge.kill()
    await asyncio.sleep(1)
    await world.bridge.start()
    await writing
    world.meta.outbound.faults.clear()
    records = await world.agent.wait_receipts([i for c in customers for i in ids[c]], timeout=120)
    assert all(records[i]["state"] == "delivered" for c in customers for i in ids[c])  # the bridge took each one
    for c in customers:
        texts = [s["body"]["text"]["body"] for s in sent_to(world.meta, c)]
        expected = [f"{c} {n}" for n in range(8)]
        assert set(texts) == set(expected), "every answer reached the customer"
        deduped = list(dict.fromkeys(texts))
        assert deduped == expected, "in the order the agent wrote them"
        assert len(texts) - len(deduped) <= 2, "a resend only of what was in flight at the kill"


async def test_typing_shows_once_per_few_seconds_on_the_customers_latest_message(world: World) -> None:
    customer = "15550007001"
    conversations = await customers_write(world, [customer])
    tracked = await world.bridge.tracking()
    latest = next(w for w, r in tracked.items() if r.direction == "inbound" and r.customer_id == customer)
    await world.agent.send(conversationId=conversations[customer], type="typing")
    await world.agent.send(conversationId=conversations[customer], type="typing")  # within 5 s: not again
    answer = (await world.agent.send(conversationId=conversations[customer], type="text", text="here"))["id"]
    await world.agent.wait_receipts([answer])
    typing = [r for r in world.meta.outbound.reads if r["typing"]]
    assert [(r["message_id"], r["phone_number_id"]) for r in typing] == [(latest, PHONE_NUMBER_ID)]
    # The indicator marked the message read already: the answer does not mark it again.
    assert [r for r in world.meta.outbound.reads if not r["typing"] and r["message_id"] == latest] == []


async def test_replay_sends_a_refused_answer_again_once_the_cause_is_gone(world: World) -> None:
    customer = "15550008001"
    conversations = await customers_write(world, [customer], in_window=False)
    refused = (await world.agent.send(conversationId=conversations[customer], type="text", text="late"))["id"]
    await world.agent.wait_receipts([refused])
    await world.bridge.wait_tracked([refused], statuses=("failed",))
    world.meta.outbound.customer_wrote(PHONE_NUMBER_ID, customer)  # the customer writes again: the window opens

    code, out, err = await world.bridge.cli("replay", "--direction", "out")
    assert code == 0, out + err
    assert "1 delivered" in out
    records = await world.agent.wait_receipts([refused], statuses=("Delivered",))
    assert [r["status"] for r in records[refused]["receipts"]] == ["Failed", "Delivered"]
    assert [s["body"]["text"]["body"] for s in sent_to(world.meta, customer)] == ["late", "late"]  # refused, then sent
    code, out, err = await world.bridge.cli("replay", "--direction", "out")
    assert code == 0 and "nothing to do" in out, out + err  # idempotent: delivered now, not sent a third time


@pytest.mark.quirks(Quirks(out_of_order=0.5, duplicate=0.5, early=0.5, seed=7))
async def test_statuses_out_of_order_twice_or_before_the_send_answer_make_one_receipt_each(world: World) -> None:
    customer = "15550009001"
    conversations = await customers_write(world, [customer])
    ids = [(await world.agent.send(conversationId=conversations[customer], type="text", text=f"n{n}"))["id"]
           for n in range(8)]  # fmt: skip
    long_text = "word " * 1000  # 5,000 characters: two WhatsApp messages, one Genesys receipt
    ids.append((await world.agent.send(conversationId=conversations[customer], type="text", text=long_text))["id"])
    records = await world.agent.wait_receipts(ids)
    await world.meta.outbound.wait_statuses()
    await asyncio.sleep(1)  # a late duplicate still on its way through the bridge would show by now
    records = {r["id"]: r for r in await world.agent.outbound()}
    assert {i: [r["status"] for r in records[i]["receipts"]] for i in ids} == {i: ["Delivered"] for i in ids}
    posted = list(world.meta.outbound.statuses)
    assert len(posted) > 3 * len(ids), "the simulator did send duplicates"
    assert len(sent_to(world.meta, customer)) == len(ids) + 1


SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "genesys-open-messaging"


async def test_every_captured_genesys_outbound_body_is_taken_and_answered_with_at_most_one_receipt(
    world: World,
) -> None:
    """Genesys's own captured outbound bodies (../shared/samples), addressed to a customer who wrote: each is taken
    (200), none crashes anything, each message ends with exactly one receipt; typing and menus send nothing."""
    customer = "15550010001"
    await customers_write(world, [customer])
    paths = sorted(SAMPLES.glob("openmessaging-outbound-*.json"))
    paths = [p for p in paths if "schema" not in p.name]
    assert len(paths) >= 8
    ids = {}
    async with httpx.AsyncClient() as http:
        for path in paths:
            body = msgspec.json.decode(path.read_bytes())
            body["id"] = f"{path.stem}-{time.monotonic_ns()}"
            body["channel"]["to"] = {"id": customer, "idType": "Phone"}
            raw = msgspec.json.encode(body)
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, OUTBOUND_SECRET)}
            answer = await http.post(f"{world.bridge.url}/webhook/genesys/{TENANT}", content=raw, headers=headers)
            assert answer.status_code == 200, (path.name, answer.text)
            ids[path.stem] = body["id"]
    expect_receipt = {stem: i for stem, i in ids.items() if "typing" not in stem}
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(base_url=world.genesys.url) as http:
        while True:
            receipts = (await http.get("/sim/agent/unmatched-receipts")).json()
            by_id: dict[str, list[str]] = {}
            for r in receipts:
                by_id.setdefault(r["body"]["id"], []).append(r["status"])
            if all(i in by_id for i in expect_receipt.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
    assert {stem: by_id.get(i) for stem, i in expect_receipt.items()} == {
        stem: by_id.get(i) for stem, i in expect_receipt.items() if by_id.get(i) and len(by_id[i]) == 1
    }, by_id
    assert set(expect_receipt) == {stem for stem, i in expect_receipt.items() if i in by_id}, "a receipt for each"
    texts = [s for s in sent_to(world.meta, customer) if s["type"] == "text"]
    assert texts, "the plain text sample reached the customer"
    assert await world.bridge.post(b"{}") in (200, 400)  # the bridge still serves


@pytest.mark.slow
async def test_a_drain_while_meta_is_down_hands_the_held_answers_back_and_they_go_once_in_order(world: World) -> None:
    customer = "15550011001"
    conversations = await customers_write(world, [customer])
    world.meta.outbound.inject(target="messages", status=503, count=-1)
    ids = [(await world.agent.send(conversationId=conversations[customer], type="text", text=f"held {n}"))["id"]
           for n in range(4)]  # fmt: skip
    await asyncio.sleep(2)  # held in place: the tenant's Meta is down
    assert await world.bridge.terminate() == 0, world.bridge.stderr()[-2000:]  # a drain hands them back
    world.meta.outbound.faults.clear()
    await world.bridge.start()
    await world.agent.wait_receipts(ids, timeout=90)
    texts = [s["body"]["text"]["body"] for s in sent_to(world.meta, customer)]
    assert texts == [f"held {n}" for n in range(4)], texts
    rows = await world.bridge.tracking()
    assert all(rows[i].status == "delivered" for i in ids)
