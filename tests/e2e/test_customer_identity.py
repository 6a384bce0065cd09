"""A customer is one customer, phone or BSUID: through the whole bridge, every message of a customer Meta names by
phone number, by business-scoped user id or by both reaches the agent in one Genesys conversation (the simulator keys
conversations on `from.id`, as Genesys does), in order, under the first id the bridge saw. Both backend sets."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.harness import PHONE_NUMBER_ID, Bridge, Genesys
from wabridge.sim import webhooks

pytestmark = pytest.mark.anyio

PHONE, BSUID, NEW_BSUID = "16505551234", "US.13491208655302741918", "US.88120455318710220415"


def text(wa_id: str | None = None, user_id: str | None = None, body: str = "hello") -> dict[str, Any]:
    return webhooks.message("text", wa_id=wa_id, user_id=user_id, text=body)


async def send_bsuid_change(bridge: Bridge, previous: str, new: str) -> str:
    """A `user_changed_user_id` notice as Meta sends it: the ids in `system`, no `from`, no contact."""
    notice = {"id": webhooks.new_wamid(), "timestamp": str(int(time.time())), "type": "system",
              "system": {"body": f"User changed from {previous} to {new}", "type": "user_changed_user_id",
                         "user_id": new, "previous_user_id": previous}}  # fmt: skip
    assert await bridge.post(webhooks.webhook(PHONE_NUMBER_ID, [notice], contacts=[])) == 200
    return notice["id"]


async def one_conversation(bridge: Bridge, genesys: Genesys, wamids: list[str]) -> list[dict[str, Any]]:
    """Every message delivered once, in the order sent, all in one Genesys conversation that the tracking rows name
    too; the Genesys bodies, in that order."""
    rows = await bridge.wait_tracked(wamids)
    assert {w: rows[w].status for w in wamids} == dict.fromkeys(wamids, "delivered")
    received = await genesys.wait_messages(len(wamids))
    assert [r["body"]["channel"]["messageId"] for r in received] == wamids, "each once, in order"
    conversations = {r["conversationId"] for r in received}
    assert len(conversations) == 1, f"the agent sees {len(conversations)} conversations for one customer"
    assert {rows[w].conversation_id for w in wamids} == conversations
    return [r["body"] for r in received]


async def test_a_customer_first_seen_by_phone_stays_in_their_conversation_when_they_write_by_bsuid_alone(
    bridge: Bridge, genesys: Genesys
) -> None:
    wamids = await bridge.send(text(PHONE, BSUID, "both ids"), text(user_id=BSUID, body="bsuid alone"), text(PHONE))
    bodies = await one_conversation(bridge, genesys, wamids)
    assert [(b["channel"]["from"]["id"], b["channel"]["from"]["idType"]) for b in bodies] == [(PHONE, "Phone")] * 3
    assert bodies[1]["channel"]["metadata"]["customAttributes"]["user_id"] == BSUID, "the agent still sees the BSUID"


async def test_a_customer_first_seen_by_bsuid_stays_in_their_conversation_when_their_phone_number_shows(
    bridge: Bridge, genesys: Genesys
) -> None:
    wamids = await bridge.send(text(user_id=BSUID, body="bsuid alone"), text(PHONE, BSUID, "both ids"), text(PHONE))
    bodies = await one_conversation(bridge, genesys, wamids)
    assert [(b["channel"]["from"]["id"], b["channel"]["from"]["idType"]) for b in bodies] == [(BSUID, "Opaque")] * 3
    assert [b["channel"]["metadata"]["customAttributes"].get("wa_id") for b in bodies] == [None, PHONE, PHONE], (
        "the phone number stays visible to the agent")  # fmt: skip


async def test_after_a_bsuid_change_the_new_bsuid_writes_into_the_same_conversation(
    bridge: Bridge, genesys: Genesys
) -> None:
    wamids = await bridge.send(text(PHONE, BSUID, "both ids"))
    wamids.append(await send_bsuid_change(bridge, BSUID, NEW_BSUID))
    wamids += await bridge.send(text(user_id=NEW_BSUID, body="the new bsuid alone"))
    bodies = await one_conversation(bridge, genesys, wamids)
    assert {b["channel"]["from"]["id"] for b in bodies} == {PHONE}
    assert "User changed from" in bodies[1]["text"]
