"""Transform throughput: Meta webhook bytes -> Genesys JSON bytes, for a text and an image webhook.

Three implementations do the same work and must produce identical bytes (asserted before timing); the first is
also timed with its caches emptied on every call:
- wabridge's msgspec path: `transform` + `encode_genesys`;
- stdlib `json` + dicts, written the way a team would (datetime for the time);
- pydantic v2 models, the same.
The comparators cover only what these two webhooks need (text and media messages, phone or user id senders).
Run: `.venv/bin/python -m pytest bench/test_transform_bench.py --benchmark-min-time=0.05`; compare medians in a run.
On a shared machine add `--benchmark-timer=time.process_time` (CPU time of this process, not wall time).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from wabridge.codecs import sender, timestamps
from wabridge.codecs.transform import encode_genesys, transform

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "meta"
MEDIA_TYPES = {"image": "Image", "sticker": "Image", "video": "Video", "audio": "Audio", "document": "File"}


def compact(scenario: str) -> bytes:
    """The fixture as Meta sends it: one line, no indentation."""
    return json.dumps(json.loads((FIXTURES / f"{scenario}.json").read_bytes()), separators=(",", ":")).encode()


WEBHOOKS = {"text": compact("text"), "media": compact("image")}


def with_msgspec(body: bytes) -> list[bytes]:
    return [encode_genesys(r.message) for r in transform(body)]


def with_msgspec_cold(body: bytes) -> list[bytes]:
    """The msgspec path with its sender and time caches emptied first: a new customer in a new second every time
    (the repeated bench payload would otherwise always hit them)."""
    sender._senders.clear()
    timestamps._parsed.clear()
    timestamps._times.clear()
    return [encode_genesys(r.message) for r in transform(body)]


# --- shared by both comparators -------------------------------------------------------------------------------------


def iso(timestamp: str) -> str:
    seconds = float(timestamp)
    if seconds >= 1e11:
        seconds /= 1000
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sha_hex(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) == 64:
        try:
            return bytes.fromhex(value).hex()
        except ValueError:
            pass
    try:
        digest = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest.hex() if len(digest) == 32 else None


def sender_of(sent_from: str | None, user_id: str | None, name: str | None) -> dict:
    if sent_from and sent_from.isdigit():
        sender = {"id": sent_from, "idType": "Phone"}
    else:
        sender = {"id": user_id or sent_from, "idType": "Opaque"}
    if name:
        first, _, rest = name.partition(" ")
        sender.update(nickname=name, firstName=first)
        if rest.strip():
            sender["lastName"] = rest.strip()
    return sender


# --- stdlib json + dicts --------------------------------------------------------------------------------------------


def with_stdlib(body: bytes) -> list[bytes]:
    hook = json.loads(body)
    out = []
    for entry in hook["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            meta = value["metadata"]
            contact = value["contacts"][0]
            for msg in value["messages"]:
                user_id = msg.get("from_user_id") or contact.get("user_id")
                custom = {"phone_number_id": meta["phone_number_id"],
                          "display_phone_number": meta["display_phone_number"]}
                if user_id:
                    custom["user_id"] = user_id
                genesys: dict = {"channel": {
                    "messageId": msg["id"],
                    "time": iso(msg["timestamp"]),
                    "from": sender_of(msg.get("from"), user_id, contact.get("profile", {}).get("name")),
                    "metadata": {"customAttributes": custom},
                }}
                kind = msg["type"]
                if kind == "text":
                    genesys["text"] = msg["text"]["body"]
                else:
                    media = msg[kind]
                    attachment = {"mediaType": MEDIA_TYPES[kind], "url": "media:" + media["id"],
                                  "mime": media.get("mime_type"), "filename": media.get("filename"),
                                  "text": media.get("caption"), "sha256": sha_hex(media.get("sha256"))}
                    genesys["content"] = [{"attachment": {k: v for k, v in attachment.items() if v is not None}}]
                genesys["metadata"] = {"type": kind}
                out.append(json.dumps(genesys, separators=(",", ":"), ensure_ascii=False).encode())
    return out


# --- pydantic v2 ----------------------------------------------------------------------------------------------------


class PMetadata(BaseModel):
    display_phone_number: str
    phone_number_id: str


class PProfile(BaseModel):
    name: str | None = None


class PContact(BaseModel):
    profile: PProfile | None = None
    wa_id: str | None = None
    user_id: str | None = None


class PText(BaseModel):
    body: str


class PMedia(BaseModel):
    id: str
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None


class PMessage(BaseModel):
    from_: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    id: str
    timestamp: str
    type: str
    text: PText | None = None
    image: PMedia | None = None
    video: PMedia | None = None
    audio: PMedia | None = None
    document: PMedia | None = None
    sticker: PMedia | None = None


class PValue(BaseModel):
    metadata: PMetadata
    contacts: list[PContact] = []
    messages: list[PMessage] = []


class PChange(BaseModel):
    field: str
    value: PValue


class PEntry(BaseModel):
    id: str
    changes: list[PChange]


class PWebhook(BaseModel):
    object: str
    entry: list[PEntry]


class Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class GFrom(Out):
    id: str
    id_type: str
    nickname: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class GChannelMetadata(Out):
    custom_attributes: dict[str, str]


class GChannel(Out):
    message_id: str
    time: str
    from_: GFrom = Field(alias="from")
    metadata: GChannelMetadata


class GAttachment(Out):
    media_type: str
    url: str
    mime: str | None = None
    filename: str | None = None
    text: str | None = None
    sha256: str | None = None


class GContent(Out):
    attachment: GAttachment


class GMessage(Out):
    channel: GChannel
    text: str | None = None
    content: list[GContent] | None = None
    metadata: dict[str, str]


def with_pydantic(body: bytes) -> list[bytes]:
    hook = PWebhook.model_validate_json(body)
    out = []
    for entry in hook.entry:
        for change in entry.changes:
            value = change.value
            contact = value.contacts[0]
            for msg in value.messages:
                user_id = msg.from_user_id or contact.user_id
                custom = {"phone_number_id": value.metadata.phone_number_id,
                          "display_phone_number": value.metadata.display_phone_number}
                if user_id:
                    custom["user_id"] = user_id
                name = contact.profile.name if contact.profile else None
                text = content = None
                if msg.type == "text":
                    text = msg.text.body
                else:
                    media = getattr(msg, msg.type)
                    content = [GContent(attachment=GAttachment(
                        media_type=MEDIA_TYPES[msg.type], url="media:" + media.id, mime=media.mime_type,
                        filename=media.filename, text=media.caption, sha256=sha_hex(media.sha256)))]
                genesys = GMessage(
                    channel=GChannel(message_id=msg.id, time=iso(msg.timestamp),
                                     from_=GFrom(**sender_of(msg.from_, user_id, name)),
                                     metadata=GChannelMetadata(custom_attributes=custom)),
                    text=text, content=content, metadata={"type": msg.type})
                out.append(genesys.model_dump_json(by_alias=True, exclude_none=True).encode())
    return out


IMPLEMENTATIONS = {
    "msgspec": with_msgspec,
    "msgspec_cold_caches": with_msgspec_cold,
    "stdlib_json": with_stdlib,
    "pydantic_v2": with_pydantic,
}


@pytest.mark.parametrize("kind", list(WEBHOOKS))
def test_all_implementations_produce_identical_bytes(kind):
    body = WEBHOOKS[kind]
    expected = with_msgspec(body)
    assert len(expected) == 1
    for name, implementation in IMPLEMENTATIONS.items():
        assert implementation(body) == expected, name


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("kind", list(WEBHOOKS))
def test_transform_throughput(benchmark, kind, implementation):
    body = WEBHOOKS[kind]
    run = IMPLEMENTATIONS[implementation]
    benchmark.group = f"transform {kind} webhook ({len(body)} B)"
    benchmark.extra_info["bytes"] = len(body)
    result = benchmark(run, body)
    assert result == with_msgspec(body)
