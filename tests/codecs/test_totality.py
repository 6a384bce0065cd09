"""The transform is total: whatever value sits in whatever field, one item yields a result or a typed skip.

Real webhooks (tests/fixtures/meta and the peer corpus) are mutated at any path — every field at every depth of
messages, statuses, contacts, errors, metadata and every message type's payload — by replacing a value, deleting a
key or adding an unknown one, then encoded (including number tokens Python's json cannot write, and invalid UTF-8).
`transform` must raise WebhookDecodeError or return results, and every call the worker makes on a result must
succeed. Two layers: a deterministic sweep of hostile values over every path of every document, and hypothesis
for arbitrary values and several mutations at once. Derandomized, no example database: CI sees the same inputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.codecs.test_corpus import CORPUS, payloads
from wabridge.codecs import webhook_items
from wabridge.codecs.agent_text import METADATA_VALUE_MAX
from wabridge.codecs.genesys import OpenInboundNormalizedMessage
from wabridge.codecs.media_placeholder import MEDIA_PLACEHOLDER, media_as_text, with_media_url
from wabridge.codecs.results import SKIP_REASONS, Inbound, Skipped, StatusUpdate, pack_result, unpack_result
from wabridge.codecs.timestamps import iso_time
from wabridge.codecs.transform import WebhookDecodeError, encode_genesys, transform

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "meta"
DOCUMENTS: list[tuple[str, object]] = [(p.stem, json.loads(p.read_bytes())) for p in sorted(FIXTURES.glob("*.json"))]
if CORPUS.is_dir():
    DOCUMENTS += [(label, json.loads(body)) for label, body in payloads()]
GENESYS_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
INT64 = range(-(2**63), 2**63)
DETAIL_MAX = 300


class Token(str):
    """JSON text written as is: numbers Python's json cannot produce (1e400, -0, 5,000 digits)."""


# --- the oracle: what the worker does with a result must work for every result ------------------------------------


def check(body: bytes) -> list:
    try:
        found = transform(body)
    except WebhookDecodeError:
        return []
    assert found, "a decodable body yields at least one result"
    for result in found:
        assert type(result) in (Inbound, Skipped, StatusUpdate), result
        assert unpack_result(pack_result(result)) == result  # the replay payload
        if isinstance(result, Inbound):
            check_inbound(result)
        elif isinstance(result, Skipped):
            assert result.reason in SKIP_REASONS and len(result.detail) <= DETAIL_MAX, result
            # one with a wamid is tracked `failed`, the detail its error text
            assert result.wamid is None or usable_key(result.wamid) and "\x00" not in result.detail, result
        else:
            assert usable_key(result.wamid) and all(e.code is None or e.code in INT64 for e in result.errors)
            assert result.timestamp == result.timestamp and GENESYS_TIME.match(iso_time(result.timestamp))
    return found


def usable_key(value: str) -> bool:
    """A wamid keys tracking rows, written in batches: PostgreSQL text refuses NUL, and one such row fails them all."""
    return 0 < len(value) <= 256 and "\x00" not in value


def check_inbound(result: Inbound) -> None:
    route, msg = result.route, result.message
    assert usable_key(route.wamid) and route.wamid == msg.channel.message_id
    assert len(route.type) <= 64 and "\x00" not in route.type  # a tracking column too
    assert route.sender_id and route.sender_id == msg.channel.from_.id and route.id_type == msg.channel.from_.id_type
    assert msg.text or msg.content
    assert iso_time(route.timestamp) == msg.channel.time and GENESYS_TIME.match(msg.channel.time)
    assert all(type(v) is str and len(v) <= METADATA_VALUE_MAX for v in (msg.metadata or {}).values())
    assert msgspec.json.decode(encode_genesys(msg), type=OpenInboundNormalizedMessage) == msg
    if result.media is not None:
        assert result.media.media_id and msg.content
        result.media.sha256_digest()
        filled = with_media_url(msg, "https://objects.example/m?X-Amz-Signature=s", "image/png")
        assert not any(c.attachment.url.startswith(MEDIA_PLACEHOLDER) for c in filled.content)
        msgspec.json.decode(encode_genesys(filled))
    as_text = media_as_text(result, "The customer sent a file that could not be fetched.")
    assert as_text.text and as_text.content is None
    msgspec.json.decode(encode_genesys(as_text))


# --- documents, paths and hostile values ------------------------------------------------------------------------


def encode(value: object, raw_utf8: bool = False) -> bytes:
    """JSON bytes of `value`; `raw_utf8` writes strings unescaped, lone surrogates as the invalid UTF-8 they make."""
    return _text(value, raw_utf8).encode("utf-8", "surrogatepass")


def _text(value: object, raw_utf8: bool) -> str:
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=not raw_utf8)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return repr(value)  # the strategies stay below Python's 4,300-digit limit; Token writes longer ones
    if isinstance(value, float):
        return repr(value)  # finite only (strategies below)
    if isinstance(value, list):
        return "[" + ",".join(_text(v, raw_utf8) for v in value) + "]"
    return "{" + ",".join(f"{_text(str(k), raw_utf8)}:{_text(v, raw_utf8)}" for k, v in value.items()) + "}"


def paths(value: object, path: tuple = ()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*path, index))


def node_at(doc: object, path: tuple) -> object:
    for step in path:
        doc = doc[step]  # type: ignore[index]
    return doc


def replaced(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    copy = value.copy()  # type: ignore[attr-defined]
    copy[path[0]] = replaced(value[path[0]], path[1:], new)  # type: ignore[index]
    return copy


def deleted(value: object, path: tuple) -> object:
    """`value` without the item at `path` (a dict key or a list item)."""
    copy = value.copy()  # type: ignore[attr-defined]
    if len(path) == 1:
        del copy[path[0]]
    else:
        copy[path[0]] = deleted(value[path[0]], path[1:])  # type: ignore[index]
    return copy


MESSAGE_TYPES = [
    "text", "image", "sticker", "video", "audio", "voice", "document", "location", "contacts", "interactive",
    "button", "reaction", "order", "system", "edit", "revoke", "unsupported", "request_welcome", "unknown", "",
]
HOSTILE = [
    None, True, False, 0, -1, 2**63, -(2**63) - 1, 10**400, -(10**400), 1e308, -1e308, 5e-324, -0.0,
    Token("1e400"), Token("-1e400"), Token("-0"), Token("9" * 5000), Token("-" + "9" * 5000),
    "", "\x00", "a\x00b", "\ud800", "\udfff\ud83d", "x" * 70_000, "131026", "-131026", "1" * 400, "1e400", "-0",
    "NaN", "-inf", " 12 ", "\u00b2", "\u0661\u0662\u0663", "1_000", "wamid.X", [], {}, [None], [[[]]], {"": {}},
    {"id": "wamid.X", "type": "text"}, ["text", 1, None],
]


def mutations(doc: object):
    """Every single-step mutation of `doc`: each hostile value at each path, each key deleted, a key added to each
    object (the root is replaced too, so `transform` meets non-object bodies)."""
    for path in paths(doc):
        for value in HOSTILE:
            yield replaced(doc, path, value)
        if path:
            yield deleted(doc, path)
        target = node_at(doc, path)
        if isinstance(target, dict):
            yield replaced(doc, path, {**target, "zz_unknown": {"nested": [1, "x"]}})


def test_the_sweep_reaches_every_kind_of_item():
    """The documents under mutation contain every message type, statuses with errors, contacts and value errors."""
    seen: set[str] = set()
    for _, doc in DOCUMENTS:
        for path in paths(doc):
            seen.add(".".join(str(p) for p in path if isinstance(p, str)))
    for field in ("statuses.errors.code", "contacts.profile.name", "errors.code", "metadata.phone_number_id",
                  "messages.timestamp", "messages.context.id", "messages.referral.source_id"):
        assert any(s.endswith(field) for s in seen), field
    for kind in MESSAGE_TYPES[:16]:
        assert any(s.endswith(f"messages.{kind}") for s in seen), kind


@pytest.mark.parametrize(("label", "doc"), DOCUMENTS, ids=[label for label, _ in DOCUMENTS])
def test_every_hostile_value_at_every_path_is_a_result_or_a_skip(label, doc):
    for mutated in mutations(doc):
        check(encode(mutated))


# --- hypothesis: arbitrary values, several mutations, both string encodings ------------------------------------


def subtrees() -> list[object]:
    """Every object and list inside the documents: transplanted elsewhere, they make plausible wrong payloads."""
    found = []
    for _, doc in DOCUMENTS:
        for path in paths(doc):
            node = node_at(doc, path)
            if path and isinstance(node, (dict, list)):
                found.append(node)
    return found


# Any code point but lone surrogates: msgspec refuses an escaped one anywhere in the body (a WebhookDecodeError, as the
# sweep checks with HOSTILE), so arbitrary text with them would turn most examples into whole-body rejections.
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
scalars = (
    st.none() | st.booleans()
    | st.integers()
    # past 64 bits up to 4,200 digits, both signs (hypothesis keeps bounded integers near their bounds: drawn as
    # a digit count, so a few hundred digits — past float's range — come as often as twenty)
    | st.builds(lambda digits, sign, low: sign * (10**digits + low), st.integers(19, 4200), st.sampled_from([1, -1]),
                st.integers(0, 2**64))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e308, -1e308, -0.0, 5e-324])
    | st.sampled_from([Token("1e400"), Token("-1e400"), Token("-0"), Token("1E+2"), Token("9" * 5000)])
    | any_text
    | st.sampled_from([*MESSAGE_TYPES, "131026", "1" * 400, "x" * 70_000, "sent", "read", "failed"])
    | st.text(st.sampled_from("0123456789-+.eE _"), max_size=30)
    | st.sampled_from(HOSTILE)
)
known_keys = st.sampled_from(sorted({p[-1] for _, d in DOCUMENTS for p in paths(d) if p and isinstance(p[-1], str)}))
containers = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(known_keys | any_text, inner, max_size=4),
    max_leaves=12,
)
transplants = st.sampled_from(subtrees())  # a payload from elsewhere: `type: location` with an order's body, ...
# one_of draws its branches about equally, and st.recursive mostly containers: weighted here so that most
# replacements are a scalar, where a field's type is checked value by value.
json_values = st.integers(0, 9).flatmap(lambda n: scalars if n < 6 else containers if n < 8 else transplants)


ITEM_LISTS = ("messages", "statuses", "contacts", "errors")


def related(current: object) -> list[object]:
    """Values near the one a field holds, where Meta's own inconsistencies lie: the number as a string and the
    string as a number, the same much bigger or negative, with a NUL, very long."""
    near: list[object] = [None, "", [current], {"id": current}]
    if isinstance(current, bool):
        near += [int(current), str(current).lower()]
    elif isinstance(current, (int, float)) and abs(current) < 1e300:  # not one an earlier step made huge
        near += [str(current), -current, int(current) * 10**400, -int(current) * 10**400, Token(f"{int(current)}e400"),
                 float(current) + 0.5]
    elif isinstance(current, str):
        near += [current + "\x00", "\x00" + current, current[:40] * 2000, current + "\u00b2", f" {current} "]
        if current.isascii() and current.isdigit() and len(current) < 30:
            number = int(current)
            near += [number, -number, float(number), number * 10**400, Token(current + "0" * 400), current + "0" * 400]
    return near


@st.composite
def mutated_documents(draw) -> bytes:
    _, doc = draw(st.sampled_from(DOCUMENTS))
    every = list(paths(doc))[1:]  # not the root: a body that is not an object is the sweep's (HOSTILE at ())
    items = [p for p in every if len(p) == 7 and p[5] in ITEM_LISTS]  # each message, status, contact, error
    if items and draw(st.integers(0, 4)):
        # Mostly one item, each of its fields (its payloads' too) hit with a chance of 1 in 4: several wrong fields
        # in one message, its neighbours intact. Paths drawn from the whole document at once mostly land in the
        # envelope or in the contacts, and a field such as `timestamp` was hit in 2 % of examples.
        item = draw(st.sampled_from(items))
        fields = [p for p in every if p[:7] == item]
        chosen = [p for p in fields if draw(st.integers(0, 3)) == 0] or [draw(st.sampled_from(fields))]
    else:
        chosen = draw(st.lists(st.sampled_from(every), min_size=1, max_size=3))
    for path in sorted(chosen, key=len, reverse=True):  # the deepest first: a parent changed later keeps them
        try:
            current = node_at(doc, path)
        except (KeyError, IndexError, TypeError):  # gone with an earlier deletion
            continue
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "delete":
            doc = deleted(doc, path)
        elif action == "add" and isinstance(current, dict):
            doc = replaced(doc, path, {**current, draw(known_keys | any_text): draw(json_values)})
        else:
            near = related(current)
            doc = replaced(doc, path, draw(st.sampled_from(near) if draw(st.integers(0, 2)) else json_values))
    return encode(doc, raw_utf8=draw(st.booleans()))


FUZZ = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(mutated_documents())
def test_any_value_in_any_field_yields_results_the_worker_can_use(body):
    check(body)


# --- the two crashes of issue 15, by name -------------------------------------------------------------------------


def webhook(messages: list[dict] = (), statuses: list[dict] = ()) -> dict:
    value = {"metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
             "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
             "messages": list(messages), "statuses": list(statuses)}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": value}]}]}


def text(wamid: str, body: str = "hello", **fields) -> dict:
    return {"from": "16505551234", "id": wamid, "timestamp": "1780952383", "type": "text", "text": {"body": body},
            **fields}


def failed_status(wamid: str, code: object) -> dict:
    return {"id": wamid, "status": "failed", "timestamp": "1780952392", "recipient_id": "16505551234",
            "errors": [{"code": code, "title": "Message undeliverable"}]}


@pytest.mark.parametrize("timestamp", [
    10**400, -(10**400), Token("9" * 4000), Token("1e400"), Token("-1e400"), "1" * 400, "1e400", "NaN", "-inf",
    "\u00b2", "", -1, 2**63, 1e308,
], ids=lambda value: repr(value)[:24])
def test_a_timestamp_no_clock_can_show_skips_that_message_alone(timestamp):
    results = check(encode(webhook([text("wamid.A"), text("wamid.B", timestamp=timestamp), text("wamid.C")])))
    first, bad, third = results
    assert isinstance(first, Inbound) and isinstance(third, Inbound)
    assert isinstance(bad, Skipped) and bad.reason == "malformed_message" and bad.wamid == "wamid.B"


@pytest.mark.parametrize(("code", "kept"), [
    ("131026", 131026), ("-5", -5), (131026, 131026), ("abc", None), ("", None), ("1" * 400, None), (2**70, None),
    (None, None), ("\u00b2", None),
], ids=lambda value: repr(value)[:24])
def test_a_status_error_code_as_text_is_read_as_its_number_or_as_none(code, kept):
    hook = webhook([text("wamid.IN")], [failed_status("wamid.OUT", code)])
    message, status = check(encode(hook))
    assert isinstance(message, Inbound)
    assert isinstance(status, StatusUpdate) and status.errors[0].code == kept
    assert status.errors[0].title == "Message undeliverable"


# --- the second line: an exception nobody foresaw costs its own item only -------------------------------------------


def boom(*args, **kwargs):
    raise RuntimeError("a bug in a helper")


@pytest.mark.parametrize("layered", [False, True], ids=["fast path", "layered path"])
def test_an_unexpected_error_building_one_message_skips_that_message_only(monkeypatch, layered):
    location = {**text("wamid.LOC"), "type": "location", "location": {"latitude": 1.5, "longitude": 2.5}}
    messages = [text("wamid.A"), location, text("wamid.C")]
    if layered:  # one message of the wrong shape sends the body down the layered path
        messages.append(text("wamid.D", body=["not", "text"]))
    monkeypatch.setattr("wabridge.codecs.agent_text.location_text", boom)
    results = transform(encode(webhook(messages, [failed_status("wamid.OUT", 131026)])))
    first, broken, third, *rest, status = results
    assert isinstance(first, Inbound) and first.route.wamid == "wamid.A"
    assert isinstance(third, Inbound) and third.route.wamid == "wamid.C"
    assert broken == Skipped("malformed_message", "unexpected RuntimeError: 'a bug in a helper'", "wamid.LOC",
                             "106540352242922")
    assert [r.reason for r in rest] == (["malformed_message"] if layered else [])
    assert isinstance(status, StatusUpdate) and status.errors[0].code == 131026


@pytest.mark.parametrize("layered", [False, True], ids=["fast path", "layered path"])
def test_an_unexpected_error_building_one_status_skips_that_status_only(monkeypatch, layered):
    messages = [text("wamid.A")] + ([text("wamid.D", body=7)] if layered else [])
    statuses = [failed_status("wamid.OUT1", 1), {**failed_status("wamid.OUT2", 2), "errors": []}]
    monkeypatch.setattr(webhook_items, "_code", boom)  # only a status with errors reads a code
    message, *_, broken, fine = transform(encode(webhook(messages, statuses)))
    assert isinstance(message, Inbound) and message.message.text == "hello"
    assert isinstance(broken, Skipped) and (broken.reason, broken.wamid) == ("malformed_status", "wamid.OUT1")
    assert isinstance(fine, StatusUpdate) and fine.wamid == "wamid.OUT2"
