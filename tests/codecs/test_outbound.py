"""The outbound codec (Genesys agent message -> Meta send bodies): every captured Genesys body, read in place from
../shared/samples/genesys-open-messaging (never copied), every shape in tests/fixtures/genesys, long text, and the
fuzz: any value at any path of those documents gives a result or a skip, never an exception, and every Meta body it
leads to has the documented shape (docs/reference.md section 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.codecs.test_totality import HOSTILE, Token, deleted, encode, mutations, node_at, paths, replaced
from wabridge.codecs.long_text import TEXT_MAX, split_text
from wabridge.codecs.meta_bodies import CALLBACK_MAX, meta_body, parse_callback_data, typing_body, typing_due
from wabridge.codecs.outbound import CAPTIONED, decode_outbound
from wabridge.codecs.outbound_results import (
    OUTBOUND_SKIP_REASONS,
    TEXT_PARTS_MAX,
    OutboundDecodeError,
    OutboundSkipped,
    Send,
    Typing,
)
from wabridge.codecs.receipts import MEDIA_LIMITS, receipt, receipt_body
from wabridge.sim.genesys_agent import validate_receipt

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "genesys-open-messaging"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "genesys"
SCHEMA = "openmessaging-outbound-message-schema"  # the JSON schema, not a message


def samples() -> list[tuple[str, bytes]]:
    return [(p.stem, p.read_bytes()) for p in sorted(SAMPLES.glob("*.json")) if p.stem != SCHEMA]


def fixtures() -> list[tuple[str, bytes]]:
    return [(p.stem, p.read_bytes()) for p in sorted(FIXTURES.glob("*.json"))]


DOCUMENTS: list[tuple[str, object]] = [(n, json.loads(b)) for n, b in fixtures()]
if SAMPLES.is_dir():
    DOCUMENTS += [(n, json.loads(b)) for n, b in samples()]


# --- the documented Meta shapes, strictly (docs/reference.md section 4) -------------------------------------------

NonEmpty = msgspec.Meta(min_length=1)


class StrictText(msgspec.Struct, forbid_unknown_fields=True):
    body: str
    preview_url: bool = False


class StrictMedia(msgspec.Struct, forbid_unknown_fields=True):
    id: str | None = None
    link: str | None = None
    caption: str | None = None
    filename: str | None = None


class StrictParameter(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    text: str | None = None
    parameter_name: str | None = None
    image: StrictMedia | None = None
    video: StrictMedia | None = None
    document: StrictMedia | None = None


class StrictComponent(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    parameters: list[StrictParameter]


class StrictLanguage(msgspec.Struct, forbid_unknown_fields=True):
    code: str


class StrictTemplate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    language: StrictLanguage
    components: list[StrictComponent] = []


class StrictContext(msgspec.Struct, forbid_unknown_fields=True):
    message_id: str


class StrictMessage(msgspec.Struct, forbid_unknown_fields=True):
    messaging_product: str
    recipient_type: str
    to: str
    type: str
    context: StrictContext | None = None
    biz_opaque_callback_data: str | None = None
    text: StrictText | None = None
    image: StrictMedia | None = None
    video: StrictMedia | None = None
    audio: StrictMedia | None = None
    document: StrictMedia | None = None
    sticker: StrictMedia | None = None
    template: StrictTemplate | None = None


PAYLOADS = ("text", "image", "video", "audio", "document", "sticker", "template")


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def check_media(media: StrictMedia, kind: str) -> None:
    assert (media.id is None) != (media.link is None), media  # id or link, never both
    if media.caption is not None:
        assert kind in CAPTIONED and 0 < utf16(media.caption) <= 1024, media
    assert media.filename is None or kind == "document"


def no_nulls(value: object) -> bool:
    if isinstance(value, dict):
        return all(v is not None and no_nulls(v) for v in value.values())
    if isinstance(value, list):
        return all(no_nulls(v) for v in value)
    return True


def check_meta(body: bytes) -> StrictMessage:
    """`body` is one Meta send body of the documented shape (also with no null anywhere)."""
    assert no_nulls(json.loads(body)), body  # an absent field is left out, never sent as null
    msg = msgspec.json.decode(body, type=StrictMessage)
    assert msg.messaging_product == "whatsapp" and msg.recipient_type == "individual" and msg.to
    assert msg.type in PAYLOADS
    present = [name for name in PAYLOADS if getattr(msg, name) is not None]
    assert present == [msg.type], present  # exactly the payload its type names
    if msg.type == "text":
        assert msg.text.body.strip() and utf16(msg.text.body) <= TEXT_MAX
    elif msg.type == "template":
        assert msg.template.name and msg.template.language.code
        for component in msg.template.components:
            assert component.type in ("header", "body") and component.parameters
            for p in component.parameters:
                assert p.type in ("text", "image", "video", "document")
                if p.type == "text":
                    assert p.text
                else:
                    check_media(getattr(p, p.type), p.type)
    else:
        check_media(getattr(msg, msg.type), msg.type)
    assert msg.biz_opaque_callback_data is not None and len(msg.biz_opaque_callback_data.encode()) <= CALLBACK_MAX
    return msg


# --- the oracle ---------------------------------------------------------------------------------------------------


def check(body: bytes):
    try:
        result = decode_outbound(body)
    except OutboundDecodeError:
        return None
    assert type(result) in (Send, Typing, OutboundSkipped), result
    if isinstance(result, Send):
        check_send(result)
    elif isinstance(result, Typing):
        assert result.id and result.to_id and result.to_id_type in ("Phone", "Opaque")
        typing = json.loads(typing_body("wamid.ABC"))
        assert typing == {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.ABC",
                          "typing_indicator": {"type": "text"}}
    else:
        assert result.reason in OUTBOUND_SKIP_REASONS and len(result.detail) <= 300, result
        assert result.id is None or (0 < len(result.id) <= 256 and "\x00" not in result.id)
        if result.genesys_reason is not None and result.id is not None and result.to_id is not None:
            validate_receipt(receipt_body(receipt(result.id, result.to_id, result.to_id_type, "Failed",
                                                  1780952392.0)))
    return result


def check_send(send: Send) -> None:
    assert send.id and 1 <= len(send.parts) <= TEXT_PARTS_MAX + 1
    assert send.to_id_type in ("Phone", "Opaque") and send.to_id
    if send.to_id_type == "Phone":
        assert send.to_id.isdigit()
    needs_media = False
    for part in range(len(send.parts)):
        try:
            body = meta_body(send, part)
        except ValueError:  # this part carries the media: the runtime passes the id of its upload
            needs_media = True
            body = meta_body(send, part, media_id="1234567890")
        msg = check_meta(body)
        facts = parse_callback_data(msg.biz_opaque_callback_data)
        assert facts is not None and facts.id == send.id and (facts.part, facts.parts) == (part, len(send.parts))
        assert (msg.context is not None) == (part == 0 and send.reply_to is not None)
        check_meta(meta_body(send, part, to="15550001111", media_link="https://objects.example/m?sig=x"))
    assert needs_media == (send.media is not None)
    if send.media is not None:
        assert send.media.url.startswith(("https://", "http://")) and send.media.meta_type in MEDIA_LIMITS


# --- every captured body and every fixture ------------------------------------------------------------------------

MAIN_TO = "abcdef12345@socialmedia"
EXPECTED_SAMPLES = {
    "openmessaging-inbound-receipt-delivered": ("skip", "not_a_message"),
    "openmessaging-inbound-receipt-failure": ("skip", "not_a_message"),
    "openmessaging-outbound-attachment-audio": ("send", "audio"),
    "openmessaging-outbound-attachment-file": ("send", "document"),
    "openmessaging-outbound-attachment-image": ("send", "image"),
    "openmessaging-outbound-attachment-video": ("send", "video"),
    "openmessaging-outbound-event-typing": ("typing", None),
    "openmessaging-outbound-menu": ("send", "text"),
    # the captured template has neither an id nor a language: nothing WhatsApp could send
    "openmessaging-outbound-notification": ("skip", "malformed_template"),
    "openmessaging-outbound-text": ("send", "text"),
}


def outcome(result) -> tuple[str, str | None]:
    if isinstance(result, Send):
        return "send", result.kind
    if isinstance(result, Typing):
        return "typing", None
    return "skip", result.reason


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"Genesys samples absent: {SAMPLES}")
def test_every_captured_genesys_body_has_its_outcome():
    found = {name: outcome(check(body)) for name, body in samples()}
    assert found == EXPECTED_SAMPLES


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"Genesys samples absent: {SAMPLES}")
def test_the_captured_bodies_become_these_meta_bodies():
    by_name = {name: decode_outbound(body) for name, body in samples()}
    text = by_name["openmessaging-outbound-text"]
    assert json.loads(meta_body(text)) | {"biz_opaque_callback_data": None} == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": MAIN_TO, "type": "text",
        "text": {"body": "Hello World"}, "biz_opaque_callback_data": None}
    assert text.conversation_id == "d06cb41e-f938-4dcf-b823-c8af1a39d7e5" and text.id == "c327c2078ca056db130c55ce648d9fa2"
    assert (text.to_id, text.to_id_type) == (MAIN_TO, "Opaque")
    document = by_name["openmessaging-outbound-attachment-file"]
    assert json.loads(meta_body(document, media_id="777"))["document"] == {"id": "777", "filename": "file.pdf"}
    assert (document.media.url, document.media.mime, document.media.size) == (
        "https://api-downloads.usw2.pure.cloud/api/v2/downloads/pce1234456", "application/pdf", 10240)
    audio = by_name["openmessaging-outbound-attachment-audio"]
    assert json.loads(meta_body(audio, media_id="778"))["audio"] == {"id": "778"}
    typing = by_name["openmessaging-outbound-event-typing"]
    assert (typing.to_id, typing.conversation_id) == (MAIN_TO, "d06cb41e-f938-4dcf-b823-c8af1a39d7e5")
    assert by_name["openmessaging-outbound-notification"].genesys_reason == "InvalidMessageStructure"
    assert by_name["openmessaging-inbound-receipt-failure"].genesys_reason is None  # nothing to answer


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"Genesys samples absent: {SAMPLES}")
def test_the_schema_document_is_not_taken_for_a_message():
    result = decode_outbound((SAMPLES / f"{SCHEMA}.json").read_bytes())
    assert isinstance(result, OutboundSkipped) and result.reason == "malformed_message" and result.id is None


EXPECTED_FIXTURES = {
    "audio-with-text": ("send", "audio"),
    "event-presence": ("skip", "unsupported_event"),
    "file-no-mime": ("send", "document"),
    "image-caption": ("send", "image"),
    "image-gif-refused": ("skip", "media_type_not_allowed"),
    "image-webp-sticker": ("send", "sticker"),
    "link": ("send", "link"),
    "quick-reply": ("skip", "unsupported_content"),
    "template-full": ("send", "template"),
    "template-media-named": ("send", "template"),
    "text-bsuid": ("send", "text"),
    "text-email-recipient": ("skip", "missing_recipient"),
    "text-phone-reply": ("send", "text"),
    "typing-off": ("skip", "unsupported_event"),
    "video-too-large": ("skip", "media_too_large"),
}


def test_every_fixture_shape_has_its_outcome():
    found = {name: outcome(check(body)) for name, body in fixtures()}
    assert found == EXPECTED_FIXTURES


def fixture(name: str):
    return decode_outbound((FIXTURES / f"{name}.json").read_bytes())


def test_a_phone_recipient_loses_its_plus_and_a_related_message_becomes_the_reply_context():
    send = fixture("text-phone-reply")
    body = json.loads(meta_body(send))
    assert body["to"] == "16505551234" and body["context"] == {"message_id": "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUY1"}
    assert json.loads(meta_body(fixture("text-bsuid")))["to"] == "US.13491208655302741918"


def test_a_caption_rides_on_an_image_and_follows_audio_as_text():
    image = fixture("image-caption")
    assert json.loads(meta_body(image, media_id="9"))["image"] == {"id": "9", "caption": "Here is the receipt"}
    audio = fixture("audio-with-text")
    assert [p.type for p in audio.parts] == ["audio", "text"]
    assert json.loads(meta_body(audio, 1))["text"]["body"] == "Listen to this"
    assert audio.media.mime == "audio/ogg"  # codec parameter dropped for the limits check


def test_a_caption_over_1024_characters_follows_the_media_as_text():
    doc = json.loads((FIXTURES / "image-caption.json").read_bytes())
    doc["text"] = "word " * 300
    send = decode_outbound(json.dumps(doc).encode())
    assert [p.type for p in send.parts] == ["image", "text"]
    assert "caption" not in json.loads(meta_body(send, 0, media_id="9"))["image"]


def test_media_facts_are_what_the_runtime_needs():
    sticker = fixture("image-webp-sticker")
    assert sticker.media.meta_type == "sticker" and json.loads(meta_body(sticker, media_id="5"))["sticker"] == {"id": "5"}
    pdf = fixture("file-no-mime")
    assert (pdf.media.mime, pdf.media.filename, pdf.media.size) == ("application/pdf", "terms.pdf", None)
    link = fixture("link")
    assert link.media is None and json.loads(meta_body(link))["text"] == {
        "body": "Track it here\nhttps://example.com/track/42", "preview_url": True}


def test_refused_media_name_the_genesys_reason():
    assert fixture("image-gif-refused").genesys_reason == "MediaTypeNotAllowed"
    too_large = fixture("video-too-large")
    assert too_large.genesys_reason == "InvalidMediaContentLength" and too_large.to_id == "16505551234"


def test_a_template_becomes_name_language_and_ordered_parameters():
    body = json.loads(meta_body(fixture("template-full")))
    assert body["type"] == "template" and body["template"] == {
        "name": "order_update", "language": {"code": "en_US"},
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "42"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "42"}]},
        ]}


def test_a_template_with_a_media_header_and_named_parameters():
    send = fixture("template-media-named")
    assert send.media.meta_type == "image" and send.media.url.endswith("/cafe")
    with pytest.raises(ValueError):
        meta_body(send)  # the header's media must be uploaded first
    template = json.loads(meta_body(send, media_id="42"))["template"]
    assert template == {
        "name": "promo_spring", "language": {"code": "pt_BR"},
        "components": [
            {"type": "header", "parameters": [{"type": "image", "image": {"id": "42"}}]},
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"},
                                            {"type": "text", "parameter_name": "discount", "text": "20%"}]},
        ]}


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'"text"', b"12", b"null", b"\xff\xfe", b'{"id": "\xff"}'])
def test_only_a_body_that_is_not_a_json_object_raises(body):
    with pytest.raises(OutboundDecodeError):
        decode_outbound(body)


def test_a_wrongly_typed_field_is_a_skip_that_still_names_the_message_and_recipient():
    doc = json.loads((FIXTURES / "text-phone-reply.json").read_bytes())
    doc["content"] = "not a list"
    result = decode_outbound(json.dumps(doc).encode())
    assert isinstance(result, OutboundSkipped) and result.reason == "malformed_message"
    assert (result.id, result.to_id, result.to_id_type) == (doc["id"], "16505551234", "Phone")
    assert result.genesys_reason == "InvalidMessageStructure"


# --- long text: split, never refused up to TEXT_PARTS_MAX parts --------------------------------------------------


def text_body(text: str) -> bytes:
    doc = json.loads((FIXTURES / "text-bsuid.json").read_bytes())
    return json.dumps({**doc, "text": text}).encode()


def test_text_of_exactly_4096_characters_is_one_message_and_one_more_is_two():
    assert len(decode_outbound(text_body("a" * TEXT_MAX)).parts) == 1
    send = decode_outbound(text_body("a" * (TEXT_MAX + 1)))
    assert [len(json.loads(meta_body(send, i))["text"]["body"]) for i in range(2)] == [TEXT_MAX, 1]


def test_long_text_breaks_at_a_paragraph_then_a_space():
    first, second = "x" * 3000, "y" * 3000
    assert split_text(f"{first}\n\n{second}") == [first, second]
    words = " ".join(["word"] * 2000)
    parts = split_text(words)
    assert all(p.startswith("word") and p.endswith("word") and utf16(p) <= TEXT_MAX for p in parts)
    assert " ".join(parts) == words


def test_emoji_count_twice_and_a_joined_emoji_is_never_cut():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one visible character, 8 UTF-16 units
    parts = split_text(family * 1000)
    assert all(utf16(p) <= TEXT_MAX for p in parts) and "".join(parts) == family * 1000
    assert all(not p.startswith("\u200d") and not p.endswith("\u200d") for p in parts)


def test_text_longer_than_the_parts_allow_is_refused_with_a_receipt():
    result = decode_outbound(text_body("z" * (TEXT_MAX * TEXT_PARTS_MAX + 1)))
    assert isinstance(result, OutboundSkipped) and result.reason == "text_too_long"
    assert result.genesys_reason == "MessageNotAllowed"
    assert len(decode_outbound(text_body("z" * (TEXT_MAX * TEXT_PARTS_MAX))).parts) == TEXT_PARTS_MAX


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, exclude_categories=("Cs",)), max_size=60),
       st.integers(8, 64))
def test_split_text_keeps_every_non_blank_character_in_order(text, limit):
    parts = split_text(text, limit=limit)
    assert all(0 < utf16(p) <= limit and p == p.strip() for p in parts)
    squeeze = lambda s: "".join(s.split())  # noqa: E731 - whitespace at a cut is dropped, nothing else
    assert squeeze("".join(parts)) == squeeze(text)


def test_typing_is_due_once_per_interval():
    assert typing_due(None, 100.0)
    assert not typing_due(100.0, 103.0)
    assert typing_due(100.0, 105.0)
    assert typing_due(100.0, 99.0)  # a clock that went back does not silence the indicator


def test_callback_data_rejects_what_the_bridge_did_not_write():
    for value in (None, "", "{}", '{"g":"x","p":[2,1]}', '{"g":"","p":[0,1]}', "x" * 600, '{"g":"x","p":[0,1],"t":"Fax"}'):
        assert parse_callback_data(value) is None, value


# --- the fuzz: any value at any path ------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "doc"), DOCUMENTS, ids=[label for label, _ in DOCUMENTS])
def test_every_hostile_value_at_every_path_is_a_result_or_a_skip(label, doc):
    for mutated in mutations(doc):
        check(encode(mutated))


KNOWN_KEYS = sorted({p[-1] for _, d in DOCUMENTS for p in paths(d) if p and isinstance(p[-1], str)})
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=("Cs",)), max_size=40)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text
    | st.sampled_from(HOSTILE)
    | st.sampled_from(["Text", "Structured", "Event", "Receipt", "Typing", "On", "Off", "Attachment", "Notification",
                       "Image", "Video", "Audio", "File", "Link", "Phone", "Opaque", "Email", "image/webp",
                       "image/gif", "Outbound", "Inbound", "ns@name", "en-US", "https://x.example/f", "wamid.X",
                       "a" * 5000, "\n\n" * 3000, Token("1e400"), 10**30])
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(KNOWN_KEYS) | any_text, inner, max_size=3),
                           max_leaves=8)


@st.composite
def mutated_documents(draw) -> bytes:
    _, doc = draw(st.sampled_from(DOCUMENTS))
    every = list(paths(doc))[1:]
    for path in sorted(draw(st.lists(st.sampled_from(every), min_size=1, max_size=4)), key=len, reverse=True):
        try:
            current = node_at(doc, path)
        except (KeyError, IndexError, TypeError):  # gone with an earlier change
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            doc = deleted(doc, path)
        elif action == "add" and isinstance(current, dict):
            doc = replaced(doc, path, {**current, draw(st.sampled_from(KNOWN_KEYS)): draw(json_values)})
        else:
            doc = replaced(doc, path, draw(json_values))
    return encode(doc, raw_utf8=draw(st.booleans()))


@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_documents())
def test_any_value_in_any_field_yields_a_result_or_a_skip_and_valid_meta_bodies(body):
    check(body)
