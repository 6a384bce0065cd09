"""Results as the rest of the bridge uses them: stored as msgpack, media url filled in, media replaced by text."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wabridge.codecs.media_placeholder import media_as_text, with_media_url
from wabridge.codecs.meta import Contact, Message, Profile
from wabridge.codecs.results import (
    Inbound,
    MediaRef,
    Result,
    Skipped,
    StatusUpdate,
    pack_result,
    unpack_result,
)
from wabridge.codecs.sender import MissingSender, identify, matching_contact
from wabridge.codecs.timestamps import InvalidTimestamp, iso_time, parse_meta_timestamp
from wabridge.codecs.transform import encode_genesys, transform

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "meta"


def all_results() -> list[Result]:
    return [r for p in sorted(FIXTURES.glob("*.json")) for r in transform(p.read_bytes())]


def test_every_kind_of_result_round_trips_through_msgpack_as_a_tagged_union():
    found = all_results()
    assert {type(r) for r in found} == {Inbound, Skipped, StatusUpdate}
    for result in found:
        data = msgspec.msgpack.encode(result)
        assert unpack_result(data) == result
        assert msgspec.msgpack.decode(data, type=Result) == result
        assert pack_result(result) == data


def test_with_media_url_fills_only_the_placeholder():
    (image,) = transform((FIXTURES / "image.json").read_bytes())
    url = "https://s3.example/media/1046339526841001?X-Amz-Signature=abc"
    filled = with_media_url(image.message, url)
    assert filled.content[0].attachment.url == url
    assert filled.content[0].attachment.text == "this one"
    assert image.message.content[0].attachment.url == "media:1046339526841001"  # the original is unchanged
    assert with_media_url(filled, "https://other") == filled  # no placeholder left: nothing to replace
    (text,) = transform((FIXTURES / "text.json").read_bytes())
    assert with_media_url(text.message, url) is text.message


def test_with_media_url_fills_a_missing_mime_from_the_lookup_and_keeps_meta_s():
    """Genesys requires `attachment.mime`; a webhook without `mime_type` gets the one Meta's media lookup named."""
    webhook = json.loads((FIXTURES / "image.json").read_bytes())
    image = webhook["entry"][0]["changes"][0]["value"]["messages"][0]["image"]
    meta_mime = image.pop("mime_type")
    (bare,) = transform(json.dumps(webhook).encode())
    assert bare.message.content[0].attachment.mime is None
    filled = with_media_url(bare.message, "https://s3.example/x", "image/png")
    assert json.loads(encode_genesys(filled))["content"][0]["attachment"]["mime"] == "image/png"
    (full,) = transform((FIXTURES / "image.json").read_bytes())
    assert with_media_url(full.message, "https://s3.example/x", "image/png").content[0].attachment.mime == meta_mime


def test_media_as_text_replaces_the_attachment_with_the_notice_and_keeps_the_caption():
    (document,) = transform((FIXTURES / "document.json").read_bytes())
    msg = media_as_text(document, "[The customer sent a file that could not be passed on: too large]")
    wire = json.loads(encode_genesys(msg))
    assert "content" not in wire
    assert wire["text"] == "[The customer sent a file that could not be passed on: too large]\nmy invoice"
    assert wire["channel"]["messageId"] == document.route.wamid


def test_genesys_json_omits_absent_fields_instead_of_sending_null():
    (text,) = transform((FIXTURES / "bsuid_only.json").read_bytes())
    body = encode_genesys(msgspec.structs.replace(text.message, metadata=None))
    assert b"null" not in body and b"metadata\":{\"custom" in body and b"\"content\"" not in body


@pytest.mark.parametrize(
    ("sha", "digest_hex"),
    [
        ("a" * 64, "a" * 64),
        ("A" * 64, "a" * 64),
        ("Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyMTI=", "666f6f626172" * 5 + "3132"),
        ("Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyMTI", "666f6f626172" * 5 + "3132"),
        ("4654+8g=", None),
        ("not base64 !", None),
        (None, None),
    ],
)
def test_sha256_is_normalised_from_hex_or_base64(sha, digest_hex):
    ref = MediaRef(media_id="1", media_type="Image", sha256=sha)
    digest = ref.sha256_digest()
    assert (digest.hex() if digest else None) == digest_hex


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("1454119029", 1454119029.0), (1454119029, 1454119029.0), ("1454119029500", 1454119029.5),
     (1454119029.25, 1454119029.25), ("0", 0.0)],
)
def test_meta_timestamps_in_seconds_or_milliseconds_parse_to_seconds(raw, seconds):
    assert parse_meta_timestamp(raw) == seconds


@pytest.mark.parametrize("raw", ["asdf", "", "-5", "nan", "inf", "1e400", None, True, [1], "9" * 30, 1e300])
def test_bad_timestamps_are_rejected_as_invalid(raw):
    with pytest.raises(InvalidTimestamp):
        parse_meta_timestamp(raw)


def test_iso_time_matches_the_genesys_format_with_milliseconds():
    assert iso_time(1780952383.0) == "2026-06-08T20:59:43.000Z"
    assert iso_time(1780952383.25) == "2026-06-08T20:59:43.250Z"
    assert iso_time(1780952383.9999) == "2026-06-08T20:59:44.000Z"
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"


def msg(**fields) -> Message:
    return msgspec.convert({"id": "w", "timestamp": "1", "type": "text", **fields}, Message)


@pytest.mark.parametrize(
    ("fields", "contact", "expected"),
    [
        ({"from": "16505551234"}, None, ("16505551234", "Phone", "16505551234", None)),
        ({"from": "16505551234", "from_user_id": "US.1"}, None, ("16505551234", "Phone", "16505551234", "US.1")),
        ({"from_user_id": "US.1"}, None, ("US.1", "Opaque", None, "US.1")),
        ({}, Contact(user_id="US.2"), ("US.2", "Opaque", None, "US.2")),
        ({}, Contact(wa_id="4477"), ("4477", "Phone", "4477", None)),
        ({"from": "US.3"}, None, ("US.3", "Opaque", None, "US.3")),
        ({"from": " padded "}, Contact(user_id="US.4"), ("US.4", "Opaque", None, "US.4")),
    ],
)
def test_identity_rules_prefer_the_phone_number_then_the_user_id(fields, contact, expected):
    sender, wa_id, user_id = identify(msg(**fields), contact)
    assert (sender.id, sender.id_type, wa_id, user_id) == expected


def test_a_message_with_no_phone_and_no_user_id_has_no_sender():
    with pytest.raises(MissingSender):
        identify(msg(), Contact(profile=Profile(name="Anon")))
    with pytest.raises(MissingSender):
        identify(msg(**{"from": "x" * 500}), None)


def test_the_contact_is_matched_by_phone_or_user_id_when_there_are_several():
    a, b = Contact(wa_id="111", profile=Profile(name="A")), Contact(user_id="US.9", profile=Profile(name="B Bee"))
    assert matching_contact(msg(**{"from": "111"}), [b, a]) is a
    assert matching_contact(msg(from_user_id="US.9"), [a, b]) is b
    assert matching_contact(msg(**{"from": "222"}), [a, b]) is None
    sender, _, _ = identify(msg(from_user_id="US.9"), b)
    assert (sender.nickname, sender.first_name, sender.last_name) == ("B Bee", "B", "Bee")


@given(st.integers(min_value=0, max_value=253402300799), st.integers(min_value=0, max_value=999))
def test_iso_time_agrees_with_datetime_for_every_second_and_millisecond(seconds, millis):
    expected = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"
    assert iso_time(seconds + millis / 1000) == expected
