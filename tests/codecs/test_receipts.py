"""Meta statuses and errors -> Genesys receipts: the forward-only rule, the error table, what a failed send means,
the media limits, and every receipt body checked by the Genesys simulator's receipt model (validate_receipt)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.codecs.test_corpus import CORPUS, payloads
from wabridge.codecs.receipts import (
    MEDIA_LIMITS,
    RANK,
    REASONS,
    THROTTLING,
    Reason,
    advances,
    combined,
    disposition,
    media_problem,
    reason_for,
    receipt,
    receipt_body,
    receipt_for,
    status_receipt,
)
from wabridge.codecs.results import StatusUpdate
from wabridge.codecs.transform import transform
from wabridge.sim.genesys_agent import validate_receipt

FORWARD = ["sent", "delivered", "read", "played"]
SETTINGS = settings(max_examples=500, deadline=None, derandomize=True, database=None)


# --- forward-only -------------------------------------------------------------------------------------------------


def fold(statuses: list[str]) -> tuple[str | None, list[str]]:
    """The state a message reaches through `statuses` in arrival order, and the receipts Genesys is sent."""
    state: str | None = None
    sent: list[str] = []
    for status in statuses:
        owed = receipt_for(state, status)
        if owed is not None:
            sent.append(owed)
        if advances(state, status):
            state = status
    return state, sent


@SETTINGS
@given(st.lists(st.sampled_from(FORWARD), max_size=12))
def test_any_order_of_statuses_ends_at_the_furthest_reached(statuses):
    state, sent = fold(statuses)
    assert state == (max(statuses, key=RANK.__getitem__) if statuses else None)
    # Delivered once, whichever of delivered / read / played came first; nothing for sent alone
    assert sent == (["Delivered"] if set(statuses) - {"sent"} else [])


@SETTINGS
@given(st.lists(st.sampled_from([*FORWARD, "failed", "deleted", "warning", ""]), max_size=12))
def test_read_is_never_downgraded_and_every_message_gets_at_most_one_receipt(statuses):
    state, sent = fold(statuses)
    if "read" in statuses and "failed" not in statuses[: statuses.index("read")]:
        assert state in ("read", "played")
    assert len(sent) <= 1
    if sent == ["Failed"]:  # failed came before anything that says the customer has it
        first = next(s for s in statuses if s in ("failed", "delivered", "read", "played"))
        assert first == "failed" and state == "failed"


@pytest.mark.parametrize(("old", "new", "expected"), [
    (None, "sent", True), ("read", "sent", False), ("read", "delivered", False), ("delivered", "read", True),
    ("sent", "failed", True), ("delivered", "failed", False), ("failed", "read", False), ("read", "read", False),
    (None, "deleted", False), ("sent", "warning", False), ("read", "played", True),
])
def test_advances(old, new, expected):
    assert advances(old, new) is expected


@pytest.mark.parametrize(("parts", "expected"), [
    ([], None), (["sent"], "sent"), (["read", "delivered"], "delivered"), (["read", None], None),
    (["read", "failed"], "failed"), (["sent", "read", "read"], "sent"),
])
def test_a_split_message_is_as_far_as_its_least_advanced_part(parts, expected):
    assert combined(parts) == expected


# --- Meta errors -> Genesys reasons -------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), [
    (131047, "MessageNotAllowed"), (131026, "InvalidDestination"), (131050, "RecipientOptedOut"),
    (131053, "MediaTypeNotAllowed"), (131048, "RateLimited"), (132001, "InvalidMessageStructure"),
    (131051, "UnsupportedMessage"), ("131026", "InvalidDestination"), (999999, "GeneralError"), (None, "GeneralError"),
    ("x", "GeneralError"), (True, "GeneralError"), (130429, "RateLimited"), (131016, "ServerError"),
])
def test_reason_for_maps_meta_codes(code, reason):
    assert reason_for(code, "t").code == reason


def test_the_24_hour_window_reason_carries_metas_words_for_the_agent():
    found = reason_for(131047, "Re-engagement message",
                       "Message failed to send because more than 24 hours have passed since the customer last replied")
    assert found == Reason("MessageNotAllowed", "(#131047) Re-engagement message: Message failed to send because more "
                                                "than 24 hours have passed since the customer last replied")
    assert reason_for(131026, None, None).message == "(#131026) WhatsApp did not accept the message"
    assert len(reason_for(1, "x" * 5000).message) == 1000


def test_every_table_reason_is_a_genesys_reason_code():
    for code, reason in REASONS.items():
        validate_receipt(receipt_body(receipt("m1", "16505551234", "Phone", "Failed", 0.0, [reason_for(code)])))
        assert reason


@pytest.mark.parametrize(("http", "code", "expected"), [
    (400, 131047, "final"), (400, 131026, "final"), (400, 100, "final"), (404, None, "final"),
    (429, None, "throttled"), (400, 130429, "throttled"), (400, 131056, "throttled"), (400, 4, "throttled"),
    (400, 80007, "throttled"), (400, 133016, "throttled"), (500, None, "transient"), (503, 131047, "transient"),
    (None, None, "transient"), (400, 131016, "transient"), (400, 2, "transient"),
])
def test_disposition_of_a_failed_send(http, code, expected):
    assert disposition(http, code) == expected


def test_throttling_codes_are_never_final():
    for code in THROTTLING:
        assert disposition(400, code) == "throttled" and code not in REASONS


# --- receipt bodies -----------------------------------------------------------------------------------------------


def test_a_failed_status_becomes_a_final_failed_receipt_genesys_takes():
    found = status_receipt("c327", "16505551234", "Phone", "sent", "failed", 1780952392.5,
                           [(131047, "Re-engagement message", "more than 24 hours")])
    body = receipt_body(found)
    validate_receipt(body)
    assert json.loads(body) == {
        "id": "c327", "channel": {"to": {"id": "16505551234", "idType": "Phone"}, "time": "2026-06-08T20:59:52.500Z"},
        "status": "Failed", "direction": "Outbound", "isFinalReceipt": True,
        "reasons": [{"code": "MessageNotAllowed", "message": "(#131047) Re-engagement message: more than 24 hours"}]}


def test_a_delivered_receipt_has_no_reasons_and_a_failure_always_has_one():
    delivered = json.loads(receipt_body(status_receipt("c1", "US.1", "Opaque", None, "read", 1.0)))
    assert delivered["status"] == "Delivered" and "reasons" not in delivered
    bare_failure = json.loads(receipt_body(status_receipt("c1", "US.1", "Opaque", None, "failed", 1.0)))
    assert bare_failure["reasons"][0]["code"] == "GeneralError" and bare_failure["reasons"][0]["message"]
    assert status_receipt("c1", "US.1", "Opaque", "read", "delivered", 1.0) is None
    assert status_receipt("c1", "US.1", "Opaque", None, "sent", 1.0) is None


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"peer corpus absent: {CORPUS}")
def test_every_corpus_status_gives_a_receipt_genesys_takes_or_none():
    updates = [r for _, body in payloads() for r in transform(body) if isinstance(r, StatusUpdate)]
    assert len(updates) >= 5
    kinds = set()
    for update in updates:
        errors = [(e.code, e.title, e.details) for e in update.errors]
        found = status_receipt("c327", update.recipient_id or "16505551234", "Phone", None, update.status,
                               update.timestamp, errors)
        if found is not None:
            validate_receipt(receipt_body(found))
            kinds.add(found.status)
    assert kinds == {"Delivered", "Failed"}


# --- media limits -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "mime", "size", "expected"), [
    ("image", "image/jpeg", 5 * 1024 * 1024, None), ("image", "image/jpeg", 5 * 1024 * 1024 + 1,
                                                     "InvalidMediaContentLength"),
    ("image", "image/gif", 10, "MediaTypeNotAllowed"), ("image", "IMAGE/PNG; x=y", 10, None),
    ("video", "video/3gpp", 16 * 1024 * 1024, None), ("video", "video/quicktime", 1, "MediaTypeNotAllowed"),
    ("audio", "audio/ogg; codecs=opus", 1, None), ("audio", "audio/wav", 1, "MediaTypeNotAllowed"),
    ("document", "application/zip", 100 * 1024 * 1024, None),
    ("document", "application/pdf", 100 * 1024 * 1024 + 1, "InvalidMediaContentLength"),
    ("sticker", "image/webp", 500 * 1024, None), ("sticker", "image/png", 1, "MediaTypeNotAllowed"),
    ("sticker", "image/webp", 500 * 1024 + 1, "InvalidMediaContentLength"),
    ("image", None, None, None), ("image", "image/png", None, None), ("image", 7, 10, "MediaTypeNotAllowed"),
    ("location", "image/png", 1, "MediaTypeNotAllowed"), ("image", "image/png", True, None),
])
def test_media_limits(kind, mime, size, expected):
    assert media_problem(kind, mime, size) == expected


def test_the_limits_table_covers_every_meta_media_type():
    assert set(MEDIA_LIMITS) == {"image", "video", "audio", "document", "sticker"}
