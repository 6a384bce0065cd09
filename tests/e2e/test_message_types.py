"""Every WhatsApp message type through the real HTTP path to the Genesys simulator, on both backend sets."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from tests.e2e.harness import PHONE_NUMBER_ID, Bridge, Genesys
from wabridge.sim import webhooks
from wabridge.sim.meta import SEND_KINDS, build_item

pytestmark = pytest.mark.anyio

CAPTION = "Does it come in another color?"
# kind → what the agent must read (a part of `text`); media kinds → (mediaType, mime, filename or "").
AGENT_TEXT = {
    "text": CAPTION, "location": "Praça do Comércio, 1100-148 Lisboa", "contacts": "Chandler Bing - +1 555-555-5555",
    "button_reply": "Yes", "list_reply": "Blue\nThe blue one", "nfm_reply": "first_name: Bob", "button": "No",
    "reaction": "Reacted \U0001f62e", "unreaction": "Removed a reaction", "order": "3 x HAMBURGER at 30 EUR",
    "system": "User changed from 16505551234 to 16505559999", "referral": CAPTION, "reply": CAPTION,
    "forwarded": CAPTION, "unsupported": "cannot be shown here: poll", "unknown": "cannot be shown here: hologram",
    "bsuid": CAPTION,
}  # fmt: skip
ATTACHMENT = {
    "image": ("Image", "image/jpeg", ""), "video": ("Video", "video/mp4", ""), "audio": ("Audio", "audio/mpeg", ""),
    "voice": ("Audio", "audio/ogg; codecs=opus", ""), "document": ("File", "application/pdf", "invoice-2026.pdf"),
    "sticker": ("Image", "image/webp", ""),
}  # fmt: skip
CUSTOMERS = 3


async def _wait_media_fetched(genesys: Genesys, timeout: float = 30.0) -> list[dict]:
    """Genesys downloads attachments after answering: until every attachment has its download recorded."""
    deadline = time.monotonic() + timeout
    while True:
        received = await genesys.messages()
        pending = [r for r in received if len(r["media"]) < len(r["body"].get("content", []))]
        if not pending or time.monotonic() > deadline:
            return received
        await asyncio.sleep(0.2)


async def test_every_message_type_reaches_the_agent_once_in_order_with_downloadable_media(
    bridge: Bridge, genesys: Genesys
) -> None:
    sent: dict[str, tuple[str, dict]] = {}  # wamid → (kind, Meta message)
    order: dict[str, list[str]] = {}  # sender id → wamids in send order
    for n, kind in enumerate(SEND_KINDS):
        messages, statuses = build_item(kind, n % CUSTOMERS)
        assert await bridge.post(webhooks.webhook(PHONE_NUMBER_ID, messages, statuses=statuses)) == 200
        for message in messages:
            sent[message["id"]] = (kind, message)
            order.setdefault(message.get("from") or message["from_user_id"], []).append(message["id"])

    rows = await bridge.wait_tracked(list(sent))
    received = await genesys.wait_messages(len(sent))
    received = await _wait_media_fetched(genesys)

    assert {w: r.status for w, r in rows.items() if w in sent} == dict.fromkeys(sent, "delivered")
    by_wamid = {}
    for item in received:
        wamid = item["body"]["channel"]["messageId"]
        assert wamid not in by_wamid, f"{wamid} delivered twice"
        by_wamid[wamid] = item
    assert set(by_wamid) == set(sent), "a receipt (status) must not reach the agent; every message must"

    for wamid, (kind, message) in sent.items():
        body = by_wamid[wamid]["body"]
        if kind in ATTACHMENT:
            media_type, mime, filename = ATTACHMENT[kind]
            (item,) = body["content"]
            attachment = item["attachment"]
            assert (attachment["mediaType"], attachment["mime"], attachment.get("filename", "")) == (
                media_type, mime, filename), kind  # fmt: skip
            (fetched,) = by_wamid[wamid]["media"]
            original = webhooks.media_bytes(message[message["type"]]["id"])
            assert fetched["status"] == 200, (kind, fetched)
            assert fetched["sha256"] == hashlib.sha256(original).hexdigest(), kind
        else:
            assert AGENT_TEXT[kind] in body["text"], (kind, body["text"])
            assert not body.get("content"), kind
        assert body["channel"]["from"]["idType"] == ("Opaque" if kind == "bsuid" else "Phone")

    for sender, wamids in order.items():
        arrived = [r["body"]["channel"]["messageId"] for r in received
                   if r["body"]["channel"]["messageId"] in set(wamids)]  # fmt: skip
        assert arrived == wamids, f"customer {sender}'s messages arrived out of order"
    for sender, wamids in order.items():
        assert len({by_wamid[w]["conversationId"] for w in wamids}) == 1, f"{sender} split over conversations"
        assert all(rows[w].conversation_id == by_wamid[w]["conversationId"] for w in wamids)


async def test_a_webhook_meta_sends_twice_is_delivered_once_and_counted_as_a_duplicate(
    bridge: Bridge, genesys: Genesys
) -> None:
    message = webhooks.message("text", wa_id="15550000042")
    body = webhooks.webhook(PHONE_NUMBER_ID, [message])
    assert await bridge.post(body) == 200
    await bridge.wait_tracked([message["id"]])
    assert await bridge.post(body) == 200  # Meta's retry of a delivery it thinks failed

    rows = await bridge.wait_tracked([message["id"]], until=lambda rows: rows[message["id"]].duplicates >= 1)
    assert rows[message["id"]].status == "delivered"
    await asyncio.sleep(0.5)
    assert [r["body"]["channel"]["messageId"] for r in await genesys.messages()] == [message["id"]]
