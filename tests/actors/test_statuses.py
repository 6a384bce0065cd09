"""Meta's statuses of the agents' messages → Genesys receipts (actors/statuses.py), against the Genesys simulator's
receipt endpoint (which validates each receipt strictly) and a real store: forward-only, one receipt per message
however many statuses, the reason of a failure, a status that outruns its send, a message in several parts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from wabridge.actors.agent_media import AgentMedia
from wabridge.genesys.auth import TokenProvider
from wabridge.genesys.files import AgentFiles
from wabridge.actors.contacts import Contacts
from wabridge.genesys.open_messaging import OpenMessagingClient
from wabridge.meta.graph import MetaGraph
from wabridge.actors.outbound import OutboundSender
from wabridge.codecs.receipts import read_state
from wabridge.actors.statuses import StatusReceipts
from wabridge.actors.tracking import TrackingLookups, TrackingWriter
from wabridge.codecs.meta_bodies import callback_data
from wabridge.codecs.outbound_results import Send
from wabridge.codecs.results import StatusError, StatusUpdate
from wabridge.adapters.backends import open_backends
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.ports import GenesysCredential, Store, TenantConfig, TrackingRecord
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings
from wabridge.sim.genesys import GenesysSim

pytestmark = pytest.mark.anyio

PHONE = "106540352242922"
CUSTOMER = "15550001234"


def tenant_for(url: str) -> TenantConfig:
    return TenantConfig(
        tenant_id="acme", phone_number_ids=(PHONE,), app_secret=Secret("a"), verify_token=Secret("v"),
        whatsapp_token=Secret("w"), genesys_api_url=url, genesys_login_url=url, genesys_integration_id="int-1",
        credentials=(GenesysCredential("cid", Secret("secret")),), rate_limit_per_minute=0,
    )  # fmt: skip


class Rig(msgspec.Struct, dict=True):
    sim: GenesysSim
    store: Store
    tracker: TrackingWriter
    statuses: StatusReceipts
    tenant: TenantConfig

    def receipts(self) -> list[dict]:
        return list(self.sim.agent.unmatched_receipts)  # the sim did not send these messages itself: all land here

    async def sent(self, genesys_id: str, parts: int = 1) -> Send:
        """An agent's message the bridge has sent (its tracking row, as outbound.py writes it)."""
        send = Send(id=genesys_id, to_id=CUSTOMER, to_id_type="Phone", kind="text", parts=(None,) * parts)  # type: ignore[arg-type]
        await self.tracker.record(TrackingRecord(
            wamid=genesys_id, tenant_id="acme", status="delivered", direction="outbound", type="text",
            genesys_message_id=genesys_id, customer_id=CUSTOMER, meta_ids=" ".join(f"wamid.{i}" for i in range(parts)),
        ))  # fmt: skip
        return send

    async def status(self, send: Send, status: str, *, part: int = 0, errors=(), at: float | None = None) -> str:
        update = StatusUpdate(
            phone_number_id=PHONE, wamid=f"wamid.{part}", status=status, timestamp=at or time.time(),
            recipient_id=CUSTOMER, callback_data=callback_data(send, part), errors=tuple(errors),
        )  # fmt: skip
        return await self.statuses.apply(self.tenant, update)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = Settings(data_dir=tmp_path / "data", secret_key=Secret(generate_key()))
    async with (
        GenesysSim(clients={"cid": "secret"}, integrations=["int-1"], rate_limit=0) as sim,
        open_backends(settings, ports=("store", "objects")) as backends,
        TrackingWriter(backends.store, max_delay=0.001) as tracker,
    ):
        tokens = TokenProvider(MemoryCache())
        genesys = OpenMessagingClient(tokens, timeout=2.0, backoff_base=0.01)
        graph = MetaGraph(None, base_url="http://127.0.0.1:9")  # never called: statuses only send receipts
        media = AgentMedia(backends.objects, graph, AgentFiles(tokens))
        sender = OutboundSender(
            graph=graph, media=media, contacts=Contacts(backends.store),
            genesys=genesys, tracker=tracker, seen=TrackingLookups(backends.store),
        )  # fmt: skip
        statuses = StatusReceipts(backends.store, tracker, sender, wait_for_send=5.0)
        try:
            yield Rig(sim, backends.store, tracker, statuses, tenant_for(sim.url))
        finally:
            await genesys.aclose()
            await graph.aclose()
            await tokens.aclose()


async def test_statuses_move_forward_only_and_owe_one_delivered_receipt(rig: Rig) -> None:
    send = await rig.sent("g-1")
    assert await rig.status(send, "sent") == "updated"
    assert rig.receipts() == []  # Genesys has no "sent" to be told
    assert await rig.status(send, "delivered") == "delivered"
    assert await rig.status(send, "read") == "updated"  # read says nothing new to Genesys
    assert await rig.status(send, "delivered") == "stale"  # a duplicate
    assert await rig.status(send, "sent") == "stale"  # late: never overwrites read
    receipts = rig.receipts()
    assert [r["status"] for r in receipts] == ["Delivered"]
    assert receipts[0]["body"]["id"] == "g-1" and receipts[0]["body"]["channel"]["to"]["id"] == CUSTOMER
    row = await rig.store.get_tracking("acme", "g-1")
    assert row is not None and row.status == "delivered"
    state = read_state(row.meta_status)
    assert state.parts == ["read"] and state.receipt == "Delivered"
    assert set(state.at) == {"sent", "delivered", "read"}


async def test_a_failed_status_is_a_failed_receipt_with_metas_reason(rig: Rig) -> None:
    send = await rig.sent("g-2")
    error = StatusError(code=131047, title="Re-engagement message", details="more than 24 hours have passed")
    assert await rig.status(send, "failed", errors=[error]) == "failed"
    assert await rig.status(send, "delivered") == "stale"  # failed is final here: Genesys was told once
    [receipt] = rig.receipts()
    assert receipt["status"] == "Failed"
    assert receipt["reasons"][0]["code"] == "MessageNotAllowed" and "131047" in receipt["reasons"][0]["message"]
    row = await rig.store.get_tracking("acme", "g-2")
    assert row is not None and row.status == "failed" and "MessageNotAllowed" in (row.error or "")


async def test_a_status_that_outruns_its_send_waits_for_it(rig: Rig) -> None:
    send = Send(id="g-3", to_id=CUSTOMER, to_id_type="Phone", kind="text", parts=(None,))  # type: ignore[arg-type]
    applying = asyncio.create_task(rig.status(send, "delivered"))
    await asyncio.sleep(0.3)
    assert not applying.done(), "it waits for the send's row"
    await rig.sent("g-3")
    assert await applying == "delivered"
    row = await rig.store.get_tracking("acme", "g-3")
    assert row is not None and row.meta_ids == "wamid.0" and read_state(row.meta_status).receipt == "Delivered"


async def test_a_message_in_parts_is_delivered_when_every_part_is(rig: Rig) -> None:
    send = await rig.sent("g-4", parts=2)
    assert await rig.status(send, "delivered", part=0) == "updated"
    assert rig.receipts() == []
    assert await rig.status(send, "read", part=1) == "delivered"
    assert [r["status"] for r in rig.receipts()] == ["Delivered"]


async def test_a_status_of_a_message_the_bridge_did_not_send_changes_nothing(rig: Rig) -> None:
    update = StatusUpdate(phone_number_id=PHONE, wamid="wamid.x", status="delivered", timestamp=time.time(),
                          recipient_id=CUSTOMER, callback_data="campaign-7")  # fmt: skip
    assert await rig.statuses.apply(rig.tenant, update) == "unmatched"
    assert rig.receipts() == []


async def test_a_status_of_an_attempt_a_replay_replaced_changes_nothing(rig: Rig) -> None:
    send = await rig.sent("g-5")  # its row names wamid.0: the replayed attempt's
    stale = StatusUpdate(
        phone_number_id=PHONE, wamid="wamid.earlier", status="failed", timestamp=time.time(), recipient_id=CUSTOMER,
        callback_data=callback_data(send, 0), errors=(StatusError(code=131047),),
    )  # fmt: skip
    rig.statuses._wait_for_send = 0.2  # it waits for its wamid to be named, then gives up on it
    assert await rig.statuses.apply(rig.tenant, stale) == "stale"
    assert rig.receipts() == []
    assert await rig.status(send, "delivered") == "delivered"
