"""Whatever the body, `transform` answers with results or WebhookDecodeError: never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wabridge.codecs.results import Inbound, Skipped, StatusUpdate, pack_result, unpack_result
from wabridge.codecs.transform import WebhookDecodeError, encode_genesys, transform

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "meta"
SAMPLES = [p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**80) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def check(body: bytes) -> None:
    """The contract: results that encode and round-trip, or WebhookDecodeError."""
    try:
        found = transform(body)
    except WebhookDecodeError:
        return
    assert found, "a decodable body yields at least one result"
    for result in found:
        assert isinstance(result, (Inbound, Skipped, StatusUpdate))
        assert unpack_result(pack_result(result)) == result
        if isinstance(result, Inbound):
            assert result.message.text or result.message.content
            msgspec.json.decode(encode_genesys(result.message))


@FAST
@given(json_values)
def test_arbitrary_json_never_raises_anything_but_decode_error(value):
    check(json.dumps(value).encode())


@FAST
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_bodies_are_decode_errors_or_results(sample, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(sample)))
    check(sample[:cut])


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _replace(value, path, new):
    if not path:
        return new
    copy = value.copy()
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


@FAST
@given(st.sampled_from(SAMPLES), st.data())
def test_a_wrong_type_in_any_field_is_skipped_or_decoded_never_raised(sample, data):
    hook = json.loads(sample)
    path = data.draw(st.sampled_from(list(_paths(hook))))
    wrong = data.draw(json_values)
    check(json.dumps(_replace(hook, path, wrong)).encode())


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_huge_strings_in_any_field_are_bounded_or_passed_through(sample, data):
    hook = json.loads(sample)
    path = data.draw(st.sampled_from([p for p in _paths(hook) if p]))
    check(json.dumps(_replace(hook, path, "x" * 300_000 + "\u00e9")).encode())


def test_deep_nesting_is_a_decode_error_or_a_skip():
    for depth in (100, 1_000, 100_000):
        check(b'{"object":"whatsapp_business_account","entry":' + b"[" * depth + b"]" * depth + b"}")
        check(b"[" * depth + b"]" * depth)
        nested = b'{"a":' * depth + b"1" + b"}" * depth
        check(b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{'
              b'"metadata":{"phone_number_id":"1"},"messages":[{"id":"w","from":"1","timestamp":"1","type":"text",'
              b'"text":' + nested + b"}]}}]}]}")


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_and_invalid_utf8_never_raise_anything_but_decode_error(junk):
    check(junk)
    check(SAMPLES[0][:40] + junk + SAMPLES[0][40:])


def test_invalid_utf8_inside_one_message_skips_that_message_only():
    good = json.loads((FIXTURES / "batch_with_malformed_message.json").read_bytes())
    raw = json.dumps(good).encode().replace(b'"third"', b'"th\xff\xfeird"')
    first, bad, third = transform(raw)
    assert isinstance(first, Inbound) and first.message.text == "first"
    assert isinstance(bad, Skipped) and isinstance(third, Skipped) and third.reason == "malformed_message"
    check(raw)


def test_invalid_utf8_in_the_envelope_is_a_decode_error():
    raw = (FIXTURES / "text.json").read_bytes().replace(b"whatsapp_business_account", b"whatsapp\xff")
    try:
        transform(raw)
    except WebhookDecodeError:
        return
    raise AssertionError("invalid UTF-8 in the envelope was accepted")


def test_a_lone_surrogate_escape_is_a_decode_error():
    body = (FIXTURES / "text.json").read_bytes().replace(b"Does it come", b"Does \\ud800 come")
    try:
        transform(body)
    except WebhookDecodeError:
        return
    raise AssertionError("a lone surrogate was accepted")


def test_error_codes_too_large_for_msgpack_are_dropped_not_fatal():
    hook = json.loads((FIXTURES / "statuses.json").read_bytes())
    hook["entry"][0]["changes"][0]["value"]["statuses"][2]["errors"][0]["code"] = 2**70
    *_, failed = transform(json.dumps(hook).encode())
    assert isinstance(failed, StatusUpdate) and failed.errors[0].code is None
    assert unpack_result(pack_result(failed)) == failed
