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


# --- hostile bodies: the routing view runs before the signature check, so it may raise MalformedWebhook only ------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from wabridge.codecs.routing import split_by_tenant  # noqa: E402

BODY = webhooks.webhook("106540352242922", [webhooks.message("text", wa_id="15550001111")])
DEEP = b'{"x":' + b"[" * 1000 + b"]" * 1000 + b',"entry":[]}'


@pytest.mark.parametrize(
    "body",
    [DEEP, BODY.replace(b"106540352242922", b"1065\xff40352242922")],
    ids=["deep", "utf8-number"],
)
def test_a_body_too_deep_or_with_invalid_utf8_in_what_the_view_decodes_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedWebhook):
        read_routing(body)


def test_the_split_refuses_invalid_utf8_in_an_entry_s_key_as_malformed() -> None:
    body = BODY.replace(b'"id":', b'"\xff":0,"id":', 1)
    read_routing(body)  # the view skips the key unread: the ingress's own UTF-8 check stands before the split
    with pytest.raises(MalformedWebhook):
        split_by_tenant(body, {"106540352242922": "t"}, fallback=None)


def test_a_body_too_deep_for_python_s_json_is_not_repaired() -> None:
    assert without_lone_surrogates(b'\\ud83d{"x":' + b"[" * 5000 + b"]" * 5000 + b"}") is None
    assert without_lone_surrogates(b'{"x":"\\ud83d","y":' + b"[" * 5000 + b"]" * 5000 + b"}") is None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(BODY)), st.integers(0, 8), st.binary(max_size=8))
def test_the_views_raise_nothing_but_malformed_webhook_on_any_mutation(at: int, cut: int, insert: bytes) -> None:
    body = BODY[:at] + insert + BODY[at + cut :]
    for view in (read_routing, lambda b: split_by_tenant(b, {"106540352242922": "t"}, fallback="t")):
        try:
            view(body)
        except MalformedWebhook:
            pass


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200)
@given(JSON_VALUES, JSON_VALUES, JSON_VALUES)
def test_what_the_routing_view_reads_the_split_splits(object_: object, entry_extra: object, value_extra: object) -> None:
    """The split runs after the signature passed: a body the view took must not fail there (it was a 500)."""
    envelope = json.loads(BODY)
    envelope["object"] = object_
    envelope["entry"][0]["extra"] = entry_extra
    envelope["entry"][0]["changes"][0]["value"]["extra"] = value_extra
    envelope["entry"].append({"id": "2", "changes": [{"field": "messages", "value": {"metadata": {"phone_number_id": "2"}}}]})
    body = json.dumps(envelope).encode()
    assert read_routing(body).phone_number_ids == ("106540352242922", "2")
    parts = split_by_tenant(body, {"106540352242922": "a", "2": "b"}, fallback=None)
    assert {tenant: json.loads(part)["object"] for tenant, part in parts.items()} == {"a": object_, "b": object_}
