"""`as_customer`: a message moved to its customer's canonical id (actors/identity.py) keeps what Meta sent and shows
the agent every id of the customer. Pure codec: the real fixtures, no I/O."""

from __future__ import annotations

import msgspec

from tests.conftest import FIXTURES
from wabridge.codecs.results import Inbound, pack_result, unpack_result
from wabridge.codecs.sender import as_customer
from wabridge.codecs.transform import encode_genesys, transform
from wabridge.sim import webhooks

PHONE, BSUID = "16505551234", "US.13491208655302741918"


def only(body: bytes) -> Inbound:
    (result,) = transform(body)
    assert isinstance(result, Inbound)
    return result


def test_a_bsuid_only_message_moved_to_the_phone_number_is_sent_as_that_phone_keeping_the_bsuid_visible() -> None:
    original = only((FIXTURES / "meta" / "bsuid_only.json").read_bytes())
    moved = as_customer(original, PHONE)
    assert (moved.route.sender_id, moved.route.id_type) == (PHONE, "Phone")
    assert (moved.route.wa_id, moved.route.user_id, moved.route.wamid) == (None, BSUID, original.route.wamid)
    wire = msgspec.json.decode(encode_genesys(moved.message))
    assert wire["channel"]["from"] == {"id": PHONE, "idType": "Phone", "nickname": "kfisher fan",
                                       "firstName": "kfisher", "lastName": "fan"}  # fmt: skip
    custom = wire["channel"]["metadata"]["customAttributes"]
    assert custom["user_id"] == BSUID and custom["username"] == "@sheena" and "wa_id" not in custom
    assert wire["text"] == "hi, no phone here"
    assert unpack_result(pack_result(moved)) == moved, "the replay payload keeps the customer's id"
    assert original.message.channel.from_.id == BSUID, "the original is not changed"


def test_a_message_with_both_ids_moved_to_the_bsuid_shows_the_phone_number_as_a_custom_attribute() -> None:
    original = only(webhooks.webhook("106540352242922", [webhooks.message("text", wa_id=PHONE, user_id=BSUID)]))
    assert original.route.sender_id == PHONE
    moved = as_customer(original, BSUID)
    assert (moved.route.sender_id, moved.route.id_type) == (BSUID, "Opaque")
    assert (moved.message.channel.from_.id, moved.message.channel.from_.id_type) == (BSUID, "Opaque")
    assert moved.message.channel.metadata.custom_attributes == {  # type: ignore[union-attr]
        **original.message.channel.metadata.custom_attributes, "wa_id": PHONE}  # type: ignore[union-attr]  # fmt: skip
    assert "wa_id" not in original.message.channel.metadata.custom_attributes  # type: ignore[union-attr]


def test_a_bsuid_change_notice_is_sent_as_its_previous_bsuid_until_moved() -> None:
    notice = only((FIXTURES / "meta" / "system_changed_user_id.json").read_bytes())
    assert notice.route.sender_id == "US.13491208655302741918"
    assert notice.message.metadata["system.user_id"] == "US.88120455318710220415"  # type: ignore[index]
    moved = as_customer(notice, PHONE)
    assert (moved.message.channel.from_.id, moved.route.type) == (PHONE, "system")
