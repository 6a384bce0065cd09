"""Every webhook of the peer corpora (../shared/corpus, read in place, never copied) through `wabridge transform`.

pywa files map variant names to payloads; courier files are one payload each. Each payload goes in as one stdin
line; every result must come out: a Genesys message on stdout, or a status / skip with its reason on stderr.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from wabridge.cli import main
from wabridge.codecs.results import Inbound, Skipped, StatusUpdate
from wabridge.codecs.transform import transform

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"peer corpus absent: {CORPUS}")


def payloads() -> list[tuple[str, bytes]]:
    """(name, webhook body) for every payload in the corpus: `file` or `file:variant`."""
    found = []
    for path in sorted(CORPUS.glob("*/*.json")):
        data = json.loads(path.read_bytes())
        label = f"{path.parent.name}/{path.stem}"
        if "object" in data:
            found.append((label, path.read_bytes()))
        else:
            found += [(f"{label}:{name}", json.dumps(hook).encode()) for name, hook in data.items()]
    return found


def run_cli(monkeypatch, capsysbinary, lines: list[bytes]) -> tuple[int, list[dict], list[str]]:
    stdin = io.TextIOWrapper(io.BytesIO(b"\n".join(lines) + b"\n"))
    monkeypatch.setattr("sys.stdin", stdin)
    code = main(["transform", "-"])
    out, err = capsysbinary.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err.decode().splitlines()


def test_the_corpus_is_there_and_large():
    assert len(payloads()) >= 60


def test_every_corpus_payload_goes_through_the_cli_with_every_item_accounted_for(monkeypatch, capsysbinary):
    items = payloads()
    code, messages, notes = run_cli(monkeypatch, capsysbinary, [body.replace(b"\n", b"") for _, body in items])
    assert code == 0
    expected = [r for _, body in items for r in transform(body)]
    assert len(messages) == sum(isinstance(r, Inbound) for r in expected)
    assert len(notes) == len(expected) - len(messages)
    for note in notes:
        assert " status " in note or " skipped " in note, note
    for message in messages:
        channel = message["channel"]
        assert channel["messageId"] and channel["time"].endswith("Z") and channel["from"]["id"]
        assert channel["from"]["idType"] in ("Phone", "Opaque")
        assert message.get("text") or message.get("content")
    # every transformed message carries the wamid, sender and time the payload said
    for label, body in items:
        for result in transform(body):
            if isinstance(result, Inbound):
                assert result.route.wamid == result.message.channel.message_id, label
                assert result.route.sender_id == result.message.channel.from_.id, label


def by_label() -> dict[str, list]:
    return {label: transform(body) for label, body in payloads()}


# (payload, sender id, id type, wamid, channel time, text or None, media id or None)
EXPECTED = [
    ("courier/hello", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z", "Hello World", None),
    ("courier/hello_from_bsuid", "US.1234", "Opaque", "external_id", "2016-01-30T01:57:09.000Z", "Hello World", None),
    ("courier/hello_bsuid_in_from", "US.1234", "Opaque", "external_id", "2016-01-30T01:57:09.000Z", "Hello World",
     None),
    ("courier/hello_user_id", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z", "Hello World", None),
    ("courier/image", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z", None, "id_image"),
    ("courier/voice", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z", None, "id_voice"),
    ("courier/document", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z", None, "id_document"),
    ("courier/button", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z", "No", None),
    ("courier/list_reply", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z", "Yes", None),
    ("courier/group_message", "5678", "Phone", "external_id", "2016-01-30T01:57:09.000Z",
     "Hello World, group message", None),
    ("pywa/message:text", "972987654321", "Phone", "wamid.xyzxyz", "2023-10-11T16:53:43.000Z", "Body Text", None),
    ("pywa/message:image", "972987654321", "Phone", "wamid.xyzxyz", "2023-10-11T16:56:19.000Z", None, "65463453"),
    ("pywa/message:document", "972987654321", "Phone", "wamid.xyzxyz", "2023-10-11T17:01:06.000Z", None,
     "1234567890987654321"),
    ("pywa/message:reply", "972987654321", "Phone", "wamid.xyzxyz", "2023-10-11T17:19:06.000Z", "replied text", None),
    ("pywa/message:referral", "972987654321", "Phone", "wamid.ID", "2023-10-11T17:23:20.000Z", "BODY", None),
    ("pywa/callback_button:quick_reply_without_context", "972987654321", "Phone", "wamid.xsidjx",
     "2023-10-25T21:23:47.000Z", "title", None),
]


def test_an_edit_carries_what_the_message_now_says_and_a_revoke_names_the_deleted_one():
    (edited,) = by_label()["pywa/edited_message:image"]
    assert edited.message.text == "The customer edited an earlier message. It now reads: Updated image caption"
    assert edited.message.metadata["edit.original_message_id"].startswith("wamid.HBgLMTQxMjU1NTA4Mjk")
    (revoked,) = by_label()["pywa/deleted_message:revoke"]
    assert revoked.message.text == "The customer deleted an earlier message."
    assert revoked.message.metadata["revoke.original_message_id"] == "<ORIGINAL_WHATSAPP_MESSAGE_ID>"


@pytest.mark.parametrize(("label", "sender", "id_type", "wamid", "time", "text", "media_id"), EXPECTED)
def test_corpus_message_has_the_expected_sender_wamid_time_and_body(label, sender, id_type, wamid, time, text,
                                                                    media_id):
    (result,) = by_label()[label]
    assert isinstance(result, Inbound)
    assert (result.route.sender_id, result.route.id_type, result.route.wamid) == (sender, id_type, wamid)
    assert result.message.channel.time == time
    assert result.message.text == text
    assert (result.media.media_id if result.media else None) == media_id
    if media_id:
        assert result.message.content[0].attachment.url == f"media:{media_id}"


@pytest.mark.parametrize(
    ("label", "reason"),
    [("courier/no_from", "missing_sender"), ("courier/invalid_timestamp", "malformed_message"),
     ("courier/error_errors", "webhook_error")],
)
def test_corpus_payloads_without_a_usable_message_are_skipped_with_a_reason(label, reason):
    (result,) = by_label()[label]
    assert isinstance(result, Skipped) and result.reason == reason


def test_corpus_statuses_are_decoded_not_dropped():
    statuses = [r for label, found in by_label().items() if "status" in label for r in found]
    assert {s.status for s in statuses if isinstance(s, StatusUpdate)} >= {
        "sent", "delivered", "read", "played", "failed", "deleted", "in_orbit"}
    failed = next(s for s in statuses if isinstance(s, StatusUpdate) and s.status == "failed" and s.errors)
    assert failed.receipt == "Failed" and failed.errors[0].code in (131014, 130472)


def test_duplicates_in_one_webhook_both_come_out_with_the_same_wamid_for_dedup_downstream():
    first, second = by_label()["courier/duplicate"]
    assert first.route.wamid == second.route.wamid == "external_id"
