"""Every inbound message type, one scenario fixture each (tests/fixtures/meta/<scenario>.json)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from wabridge.codecs.results import Inbound, Skipped, StatusUpdate
from wabridge.codecs.transform import encode_genesys, transform

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "meta"
WAMID = "wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzQTI0QzdBN0Q0"
SHA_HEX = "666f6f626172666f6f626172666f6f626172666f6f626172666f6f6261723132"


def results(scenario: str):
    return transform((FIXTURES / f"{scenario}.json").read_bytes())


def only_inbound(scenario: str) -> Inbound:
    (result,) = results(scenario)
    assert isinstance(result, Inbound), result
    return result


def wire(inbound: Inbound) -> dict:
    """The Genesys JSON exactly as it would be POSTed."""
    return json.loads(encode_genesys(inbound.message))


def test_text_message_becomes_genesys_text_with_sender_time_and_wamid():
    inbound = only_inbound("text")
    assert wire(inbound) == {
        "channel": {
            "messageId": WAMID,
            "time": "2026-06-08T20:59:43.000Z",
            "from": {"id": "16505551234", "idType": "Phone", "nickname": "Sheena Nelson", "firstName": "Sheena",
                     "lastName": "Nelson"},
            "metadata": {"customAttributes": {"phone_number_id": "106540352242922",
                                              "display_phone_number": "15550783881",
                                              "user_id": "US.13491208655302741918"}},
        },
        "text": "Does it come in another color?",
        "metadata": {"type": "text"},
    }
    route = inbound.route
    assert (route.sender_id, route.id_type, route.wa_id, route.user_id) == (
        "16505551234", "Phone", "16505551234", "US.13491208655302741918")
    assert (route.wamid, route.timestamp, route.type, route.phone_number_id) == (
        WAMID, 1780952383.0, "text", "106540352242922")
    assert inbound.media is None


@pytest.mark.parametrize(
    ("scenario", "media_id", "media_type", "mime", "filename", "caption"),
    [
        ("image", "1046339526841001", "Image", "image/jpeg", None, "this one"),
        ("video", "2046339526841002", "Video", "video/mp4", None, None),
        ("audio", "3046339526841003", "Audio", "audio/mpeg", None, None),
        ("voice", "4046339526841004", "Audio", "audio/ogg; codecs=opus", None, None),
        ("document", "5046339526841005", "File", "application/pdf", "invoice-42.pdf", "my invoice"),
        ("sticker", "6046339526841006", "Image", "image/webp", None, None),
    ],
)
def test_media_message_carries_a_placeholder_url_and_keeps_mime_sha_filename_caption(
    scenario, media_id, media_type, mime, filename, caption
):
    inbound = only_inbound(scenario)
    assert inbound.media is not None
    assert (inbound.media.media_id, inbound.media.media_type, inbound.media.mime) == (media_id, media_type, mime)
    assert (inbound.media.filename, inbound.media.caption) == (filename, caption)
    (item,) = wire(inbound)["content"]
    expected = {"mediaType": media_type, "url": f"media:{media_id}", "mime": mime}
    expected["sha256"] = "a" * 64 if scenario == "video" else SHA_HEX  # hex and base64 both normalised to hex
    if filename:
        expected["filename"] = filename
    if caption:
        expected["text"] = caption
    assert item == {"attachment": expected}
    assert "text" not in wire(inbound)


def test_voice_note_and_animated_sticker_are_flagged_in_metadata():
    assert only_inbound("voice").message.metadata["audio.voice"] == "true"
    assert only_inbound("sticker").message.metadata["sticker.animated"] == "true"
    assert "audio.voice" not in only_inbound("audio").message.metadata


@pytest.mark.parametrize(
    ("scenario", "text_lines", "metadata"),
    [
        ("location", ["Shared a location", "Eiffel Tower, Av. Gustave Eiffel, 75007 Paris",
                      "https://maps.google.com/?q=48.8584,2.2945"],
         {"location.latitude": "48.8584", "location.longitude": "2.2945", "location.name": "Eiffel Tower"}),
        ("contacts", ["Shared 1 contact:",
                      "Ada Lovelace - +44 20 7946 0000 (CELL) - ada@example.org - Analytical Engines"], {}),
        ("interactive_button_reply", ["Yes, please"],
         {"interactive.button_reply.id": "opt-yes", "context.id": "wamid.OUTBOUND1"}),
        ("interactive_list_reply", ["Medium", "Fits 38-40"],
         {"interactive.list_reply.id": "size-m", "interactive.list_reply.description": "Fits 38-40"}),
        ("interactive_nfm_reply", ["Submitted a form: flow", "email: s@example.com", "rating: 5"],
         {"interactive.nfm_reply.name": "flow"}),
        ("button", ["Stop promotions"], {"button.payload": "STOP_PROMOS", "context.id": "wamid.TEMPLATE1"}),
        ("reaction", ["Reacted \U0001F44D to a message"],
         {"reaction.message_id": "wamid.OUTBOUND2", "reaction.emoji": "\U0001F44D"}),
        ("reaction_removed", ["Removed a reaction from a message"],
         {"reaction.message_id": "wamid.OUTBOUND2", "reaction.removed": "true"}),
        ("order", ["Placed an order (2 items):", "2 x SKU-1 at 9.99 EUR", "1 x SKU-2 at 5 EUR", "deliver after 6pm"],
         {"order.catalog_id": "cat-1"}),
        ("system_changed_number", ["[WhatsApp] Sheena changed her phone number to 16505559999"],
         {"system.type": "customer_changed_number", "system.wa_id": "16505559999"}),
        ("system_changed_user_id", ["[WhatsApp] User changed from US.13491208655302741918 to US.88120455318710220415"],
         {"system.type": "user_changed_user_id", "system.user_id": "US.88120455318710220415",
          "system.previous_user_id": "US.13491208655302741918"}),
        ("unsupported", ["[The customer sent a WhatsApp message of a type that cannot be shown here: unsupported"
                         " (Message type unknown)]"], {"unsupported.type": "unsupported"}),
        ("unknown_type", ["[The customer sent a WhatsApp message of a type that cannot be shown here: hologram]"],
         {"type": "hologram", "unsupported.type": "hologram"}),
    ],
)
def test_non_text_message_reads_as_text_with_structured_metadata(scenario, text_lines, metadata):
    inbound = only_inbound(scenario)
    assert inbound.message.text == "\n".join(text_lines)
    assert inbound.message.metadata is not None
    assert metadata.items() <= inbound.message.metadata.items()
    assert inbound.message.content is None and inbound.media is None


def test_a_bsuid_change_names_no_sender_and_goes_to_the_conversation_of_the_previous_id():
    """`user_changed_user_id` has no `from`, no `from_user_id` and no contacts: only the ids it changes."""
    inbound = only_inbound("system_changed_user_id")
    assert (inbound.route.sender_id, inbound.route.id_type) == ("US.13491208655302741918", "Opaque")
    assert wire(inbound)["channel"]["from"] == {"id": "US.13491208655302741918", "idType": "Opaque"}


def test_structured_data_is_kept_as_json_in_metadata():
    order = json.loads(only_inbound("order").message.metadata["order.product_items"])
    assert order[0] == {"product_retailer_id": "SKU-1", "quantity": "2", "item_price": "9.99", "currency": "EUR"}
    cards = json.loads(only_inbound("contacts").message.metadata["contacts"])
    assert cards[0]["phones"][0]["wa_id"] == "442079460000"
    errors = json.loads(only_inbound("unsupported").message.metadata["errors"])
    assert errors == [{"code": 131051, "title": "Message type unknown",
                       "details": "Message type is currently not supported."}]


def test_referral_from_an_ad_lands_in_metadata_and_routing_attributes():
    inbound = only_inbound("referral")
    assert inbound.message.text == "I saw your ad"
    meta = inbound.message.metadata
    assert meta["referral.source_id"] == "ad-123" and meta["referral.ctwa_clid"] == "clid-789"
    assert meta["referral.headline"] == "Summer sale"
    custom = inbound.message.channel.metadata.custom_attributes
    assert custom["referral.source_id"] == "ad-123" and custom["referral.ctwa_clid"] == "clid-789"


def test_reply_and_forwarded_context_is_kept_without_changing_the_text():
    reply = only_inbound("reply_to")
    assert reply.message.text == "yes that one"
    assert reply.message.metadata["context.id"] == "wamid.OUTBOUND3"
    forwarded = only_inbound("forwarded").message
    assert forwarded.text == "look at this"
    assert forwarded.metadata["context.forwarded"] == "true"
    assert forwarded.metadata["context.frequently_forwarded"] == "true"


def test_sender_known_only_by_business_scoped_user_id_is_opaque():
    inbound = only_inbound("bsuid_only")
    route = inbound.route
    assert (route.sender_id, route.id_type, route.wa_id, route.user_id) == (
        "US.13491208655302741918", "Opaque", None, "US.13491208655302741918")
    sender = wire(inbound)["channel"]["from"]
    assert sender == {"id": "US.13491208655302741918", "idType": "Opaque", "nickname": "kfisher fan",
                      "firstName": "kfisher", "lastName": "fan"}
    assert wire(inbound)["channel"]["metadata"]["customAttributes"]["username"] == "@sheena"


def test_millisecond_timestamp_is_normalised_to_seconds():
    inbound = only_inbound("timestamp_milliseconds")
    assert inbound.route.timestamp == pytest.approx(1780952383.25)
    assert inbound.message.channel.time == "2026-06-08T20:59:43.250Z"


def test_statuses_become_status_updates_with_genesys_receipt_values():
    delivered, read, failed = results("statuses")
    assert isinstance(delivered, StatusUpdate) and isinstance(read, StatusUpdate) and isinstance(failed, StatusUpdate)
    assert [(s.wamid, s.status, s.receipt) for s in (delivered, read, failed)] == [
        ("wamid.OUT1", "delivered", "Delivered"),
        ("wamid.OUT2", "read", "Delivered"),
        ("wamid.OUT3", "failed", "Failed"),
    ]
    assert read.callback_data == "genesys:abc"
    assert failed.errors[0].code == 131047 and failed.errors[0].details == "More than 24 hours have passed"
    assert delivered.timestamp == 1780952390.0 and delivered.recipient_id == "16505551234"


def test_one_malformed_message_is_skipped_and_its_neighbours_survive():
    first, bad, third = results("batch_with_malformed_message")
    assert isinstance(first, Inbound) and first.message.text == "first" and first.route.wamid == "wamid.GOOD1"
    assert isinstance(bad, Skipped) and bad.reason == "malformed_message" and bad.wamid == "wamid.BAD1"
    assert bad.phone_number_id == "106540352242922"
    assert isinstance(third, Inbound) and third.message.text == "third"


def test_other_fields_and_webhook_errors_are_skipped_with_a_reason():
    (update,) = results("account_update_field")
    assert update == Skipped("unsupported_field", "field 'account_update'")
    (error,) = results("value_errors")
    assert isinstance(error, Skipped) and error.reason == "webhook_error" and "131000" in error.detail


def test_group_message_keeps_its_group_id():
    inbound = only_inbound("group_text")
    assert inbound.message.metadata["group_id"] == "120363025555555555"
    assert inbound.message.channel.metadata.custom_attributes["group_id"] == "120363025555555555"


def test_every_fixture_decodes_to_results_that_all_carry_text_or_content():
    for path in sorted(FIXTURES.glob("*.json")):
        found = transform(path.read_bytes())
        assert found, path.name
        for result in found:
            if isinstance(result, Inbound):
                assert result.message.text or result.message.content, path.name
                body = encode_genesys(result.message)
                assert b"null" not in body, path.name  # absent fields are omitted, never null
                msgspec.json.decode(body)


def test_an_edited_text_reads_as_its_new_text():
    webhook = json.loads((FIXTURES / "text.json").read_bytes())
    message = webhook["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["text"]
    message.update(type="edit", edit={"original_message_id": "wamid.EARLIER",
                                      "message": {"type": "text", "text": {"body": "meet at 6, not 5"}}})
    (inbound,) = transform(json.dumps(webhook).encode())
    assert inbound.message.text == "The customer edited an earlier message. It now reads: meet at 6, not 5"
    assert inbound.message.metadata["edit.original_message_id"] == "wamid.EARLIER"
    assert inbound.message.metadata["edit.type"] == "text"


@pytest.mark.parametrize(
    ("latitude", "longitude", "url"),
    [("37.48", "-122.15", "https://maps.google.com/?q=37.48,-122.15"), ("north", "-122.15", None), (91, 0, None)],
)
def test_a_location_s_coordinates_as_strings_or_out_of_range_do_not_cost_the_message(latitude, longitude, url):
    webhook = json.loads((FIXTURES / "location.json").read_bytes())
    message = webhook["entry"][0]["changes"][0]["value"]["messages"][0]
    message["location"].update(latitude=latitude, longitude=longitude)
    message["errors"] = [{"code": "131051", "title": "a string code"}]
    (inbound,) = transform(json.dumps(webhook).encode())
    assert isinstance(inbound, Inbound)
    assert (url in inbound.message.text) if url else ("maps.google.com" not in inbound.message.text)
    assert ("location.latitude" in inbound.message.metadata) == (url is not None)


def test_a_bsuid_in_from_finds_its_contact_among_several_for_the_name():
    webhook = json.loads((FIXTURES / "bsuid_only.json").read_bytes())
    value = webhook["entry"][0]["changes"][0]["value"]
    message = value["messages"][0]
    bsuid = message.pop("from_user_id", None) or message["from"]
    message["from"] = bsuid
    value["contacts"] = [{"profile": {"name": "Someone Else"}, "wa_id": "15550001111"},
                         {"profile": {"name": "Ada Lovelace"}, "user_id": bsuid}]
    (inbound,) = transform(json.dumps(webhook).encode())
    assert inbound.route.sender_id == bsuid
    assert (inbound.message.channel.from_.nickname, inbound.message.channel.from_.id_type) == ("Ada Lovelace", "Opaque")


def test_a_shared_contact_card_keeps_its_org_birthday_addresses_and_urls():
    webhook = json.loads((FIXTURES / "contacts.json").read_bytes())
    card = webhook["entry"][0]["changes"][0]["value"]["messages"][0]["contacts"][0]
    card.update(birthday="1815-12-10", urls=[{"url": "https://example.org/ada", "type": "WORK"}],
                addresses=[{"street": "12 St James's Sq", "city": "London", "country_code": "GB", "type": "HOME"}])
    card["org"].update(title="Analyst")
    (inbound,) = transform(json.dumps(webhook).encode())
    [data] = json.loads(inbound.message.metadata["contacts"])
    assert data["org"] == {"company": "Analytical Engines", "title": "Analyst"}
    assert data["birthday"] == "1815-12-10" and data["urls"] == ["https://example.org/ada"]
    assert data["addresses"] == [{"street": "12 St James's Sq", "city": "London", "country_code": "GB", "type": "HOME"}]


def test_a_call_permission_reply_reads_as_the_customer_s_answer():
    webhook = json.loads((FIXTURES / "interactive_button_reply.json").read_bytes())
    message = webhook["entry"][0]["changes"][0]["value"]["messages"][0]
    message["interactive"] = {"type": "call_permission_reply", "call_permission_reply": {
        "response": "accept", "is_permanent": True, "response_source": "user_action"}}
    (inbound,) = transform(json.dumps(webhook).encode())
    assert inbound.message.text == "The customer allowed being called (permanently)."
    assert inbound.message.metadata["interactive.call_permission_reply.response"] == "accept"
    assert inbound.message.metadata["interactive.call_permission_reply.is_permanent"] == "true"


def test_the_portfolio_user_id_and_an_ad_s_welcome_message_are_kept():
    webhook = json.loads((FIXTURES / "referral.json").read_bytes())
    value = webhook["entry"][0]["changes"][0]["value"]
    value["messages"][0]["referral"]["welcome_message"] = {"text": "Hi! Ask us about the spring sale."}
    value["contacts"][0]["parent_user_id"] = "US.ENT.11815799212886844830"
    (inbound,) = transform(json.dumps(webhook).encode())
    assert inbound.message.metadata["referral.welcome_message.text"] == "Hi! Ask us about the spring sale."
    assert inbound.message.channel.metadata.custom_attributes["parent_user_id"] == "US.ENT.11815799212886844830"
