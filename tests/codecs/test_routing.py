"""The routing view's repair of a body that cannot decode only because a client cut an emoji in two."""

from __future__ import annotations

import json

import pytest

from wabridge.codecs.routing import MalformedWebhook, read_routing, without_lone_surrogates
from wabridge.codecs.transform import transform
from wabridge.sim import webhooks


def text_webhook(prefix: bytes) -> bytes:
    body = webhooks.webhook("106540352242922", [webhooks.message("text", wa_id="15550001111")])
    at = body.index(b'"body":"') + len(b'"body":"')
    return body[:at] + prefix + body[at:]


def test_a_lone_surrogate_becomes_a_replacement_character_and_the_rest_is_kept() -> None:
    raw = text_webhook(b"\\ud83d cut, \\ude00 cut, \\ud83d\\ude00 whole, \\\\ud83d literal: ")
    with pytest.raises(MalformedWebhook):
        read_routing(raw)
    repaired = without_lone_surrogates(raw)
    assert repaired is not None
    assert read_routing(repaired).phone_number_ids == ("106540352242922",)
    (inbound,) = transform(repaired)
    assert inbound.message.text.startswith("\ufffd cut, \ufffd cut, \U0001F600 whole, \\ud83d literal: ")
    assert json.loads(raw)["entry"][0]["id"] == json.loads(repaired)["entry"][0]["id"]


@pytest.mark.parametrize(
    "body",
    [b'{"object": "whatsapp_business_account", "entry": "\\u00e9"}', b"not json \\u", b'{"a": "\\ud83d\\ude00"}'],
)
def test_a_body_bad_for_any_other_reason_is_not_repaired(body: bytes) -> None:
    assert without_lone_surrogates(body) is None
