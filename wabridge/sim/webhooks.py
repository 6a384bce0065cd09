"""Builders of Meta-shaped webhook bodies, for the tests, the demo and the load generator.

Shapes follow reference.md §1 and the public fixtures (pywa, nyaruka/courier): one envelope
`{"object":"whatsapp_business_account","entry":[{"id","changes":[{"field":"messages","value":{…}}]}]}`.
Bodies are serialised the way Meta does (compact, non-ASCII escaped as \\uXXXX) because the signature covers the raw
bytes: re-encoding differently would break `X-Hub-Signature-256`.

Media ids are self-describing so any process can resolve them without shared state: 20 digits,
`{mime code:02d}{size:010d}{nonce:08d}`. The Meta simulator serves `media_bytes(media_id)` for them (a real file
header for the mime type, then deterministic padding), and built messages carry the sha256 of exactly those bytes,
base64 as in Meta's webhooks (the Graph lookup answers hex: consumers must normalise).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

WABA_ID = "102290129340398"
DISPLAY_PHONE_NUMBER = "15550783881"

# Mime types the simulator can serve, by a two-digit code embedded in the media id.
MEDIA_MIMES: dict[int, str] = {
    1: "image/jpeg",
    2: "image/png",
    3: "video/mp4",
    4: "audio/ogg; codecs=opus",
    5: "audio/mpeg",
    6: "application/pdf",
    7: "image/webp",
}
_MIME_CODES = {mime: code for code, mime in MEDIA_MIMES.items()}

# First bytes of each format, so the files look real to anything that sniffs them.
_HEADERS: dict[str, bytes] = {
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "image/png": (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"  # signature, then the IHDR chunk's length and type
        b"\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    ),
    "video/mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    "audio/ogg; codecs=opus": b"OggS\x00\x02" + b"\x00" * 20 + b"OpusHead",
    "audio/mpeg": b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "application/pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    "image/webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
}
CHUNK = 64 * 1024
MAX_MEDIA_SIZE = 9_999_999_999  # ten digits in the id

# kind → (Meta message type, default mime, default size in bytes)
MEDIA_KINDS: dict[str, tuple[str, str, int]] = {
    "image": ("image", "image/jpeg", 2_048),
    "video": ("video", "video/mp4", 8_192),
    "audio": ("audio", "audio/mpeg", 4_096),
    "voice": ("audio", "audio/ogg; codecs=opus", 3_072),
    "document": ("document", "application/pdf", 5_120),
    "sticker": ("sticker", "image/webp", 1_024),
}

ALL_KINDS: tuple[str, ...] = (
    "text",
    "image",
    "video",
    "audio",
    "voice",
    "document",
    "sticker",
    "location",
    "contacts",
    "button_reply",
    "list_reply",
    "nfm_reply",
    "button",
    "reaction",
    "unreaction",
    "order",
    "system",
    "referral",
    "reply",
    "forwarded",
    "unsupported",
    "unknown",
)

_serial = itertools.count(1)


# --- signature ------------------------------------------------------------------------------------------------------


def sign(body: bytes, app_secret: str) -> str:
    """The `X-Hub-Signature-256` header value Meta sends for `body`."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


# --- media ----------------------------------------------------------------------------------------------------------


class UnknownMedia(KeyError):
    """Not a media id this simulator issued."""


def media_id_for(mime: str, size: int, nonce: int | None = None) -> str:
    if mime not in _MIME_CODES:
        raise ValueError(f"the simulator serves no {mime!r}; choose one of {sorted(_MIME_CODES)}")
    if not 0 < size <= MAX_MEDIA_SIZE:
        raise ValueError(f"media size must be 1..{MAX_MEDIA_SIZE} bytes")
    nonce = next(_serial) % 100_000_000 if nonce is None else nonce % 100_000_000
    return f"{_MIME_CODES[mime]:02d}{size:010d}{nonce:08d}"


def parse_media_id(media_id: str) -> tuple[str, int]:
    """(mime, size) of a simulator media id; raises UnknownMedia for anything else."""
    if len(media_id) != 20 or not media_id.isdigit():
        raise UnknownMedia(media_id)
    mime = MEDIA_MIMES.get(int(media_id[:2]))
    size = int(media_id[2:12])
    if mime is None or size == 0:
        raise UnknownMedia(media_id)
    return mime, size


def iter_media_bytes(media_id: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """The file's bytes in chunks, never all in memory (a 30 MB file for the size-limit tests stays cheap)."""
    mime, size = parse_media_id(media_id)
    head = _HEADERS[mime][:size]
    pad_block = hashlib.sha256(media_id.encode()).digest() * (chunk // 32)
    yield head
    left = size - len(head)
    while left > 0:
        piece = pad_block[: min(left, chunk)]
        left -= len(piece)
        yield piece


def media_bytes(media_id: str) -> bytes:
    return b"".join(iter_media_bytes(media_id))


@lru_cache(maxsize=1024)
def media_sha256(media_id: str) -> bytes:
    digest = hashlib.sha256()
    for piece in iter_media_bytes(media_id):
        digest.update(piece)
    return digest.digest()


def sha256_b64(media_id: str) -> str:
    """As Meta's webhooks carry it."""
    return base64.b64encode(media_sha256(media_id)).decode()


def sha256_hex(media_id: str) -> str:
    """As the Graph media lookup answers it."""
    return media_sha256(media_id).hex()


# --- messages -------------------------------------------------------------------------------------------------------


def new_wamid() -> str:
    raw = f"sim{time.time_ns()}{next(_serial)}".encode()
    return "wamid." + base64.b64encode(hashlib.sha256(raw).digest()[:24]).decode()


def message(
    kind: str,
    *,
    wa_id: str | None = "16505551234",
    wamid: str | None = None,
    media_id: str | None = None,
    mime: str | None = None,
    size: int | None = None,
    ts: float | None = None,
    text: str = "Does it come in another color?",
    user_id: str | None = None,
    context_id: str | None = None,
) -> dict[str, Any]:
    """One Meta message object of `kind` (see ALL_KINDS). `wa_id=None` with a `user_id` is a BSUID-only sender."""
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(ALL_KINDS)}")
    msg: dict[str, Any] = {}
    if wa_id is not None:
        msg["from"] = wa_id
    if user_id is not None:
        msg["from_user_id"] = user_id
    if wa_id is None and user_id is None:
        raise ValueError("a message needs a sender: wa_id or user_id")
    msg["id"] = wamid or new_wamid()
    msg["timestamp"] = str(int(time.time() if ts is None else ts))
    msg.update(_payload(kind, text, media_id, mime, size, context_id))
    return msg


def _payload(
    kind: str, text: str, media_id: str | None, mime: str | None, size: int | None, context_id: str | None
) -> dict[str, Any]:
    if kind in MEDIA_KINDS:
        mtype, default_mime, default_size = MEDIA_KINDS[kind]
        media_id = media_id or media_id_for(mime or default_mime, size or default_size)
        mime, _ = parse_media_id(media_id)
        body: dict[str, Any] = {"mime_type": mime, "sha256": sha256_b64(media_id), "id": media_id}
        if kind in ("image", "video"):
            body["caption"] = text
        elif kind == "document":
            body.update(caption=text, filename="invoice-2026.pdf")
        elif kind in ("audio", "voice"):
            body["voice"] = kind == "voice"
        elif kind == "sticker":
            body["animated"] = False
        return {"type": mtype, mtype: body}
    match kind:
        case "text":
            return {"type": "text", "text": {"body": text}}
        case "location":
            return {
                "type": "location",
                "location": {
                    "latitude": 38.7223,
                    "longitude": -9.1393,
                    "name": "Praça do Comércio",
                    "address": "1100-148 Lisboa",
                    "url": "https://maps.example.com/pc",
                },
            }
        case "contacts":
            return {
                "type": "contacts",
                "contacts": [
                    {
                        "name": {"formatted_name": "Chandler Bing", "first_name": "Chandler", "last_name": "Bing"},
                        "phones": [{"phone": "+1 555-555-5555", "wa_id": "15555555555", "type": "CELL"}],
                        "emails": [{"email": "chandler@example.com", "type": "WORK"}],
                        "org": {"company": "Initech"},
                    }
                ],
            }
        case "button_reply":
            return {
                "type": "interactive",
                "interactive": {"type": "button_reply", "button_reply": {"id": "yes-1", "title": "Yes"}},
            }
        case "list_reply":
            return {
                "type": "interactive",
                "interactive": {
                    "type": "list_reply",
                    "list_reply": {"id": "row-2", "title": "Blue", "description": "The blue one"},
                },
            }
        case "nfm_reply":
            return {
                "type": "interactive",
                "interactive": {
                    "type": "nfm_reply",
                    "nfm_reply": {
                        "name": "flow",
                        "body": "Sent",
                        "response_json": json.dumps({"flow_token": "fl0w", "first_name": "Bob", "age": "32"}),
                    },
                },
            }
        case "button":
            return {
                "type": "button",
                "button": {"payload": "No-Button-Payload", "text": "No"},
                "context": {"from": DISPLAY_PHONE_NUMBER, "id": context_id or new_wamid()},
            }
        case "reaction":
            return {"type": "reaction", "reaction": {"message_id": context_id or new_wamid(), "emoji": "\U0001f62e"}}
        case "unreaction":  # emoji empty = the customer removed their reaction
            return {"type": "reaction", "reaction": {"message_id": context_id or new_wamid(), "emoji": ""}}
        case "order":
            return {
                "type": "order",
                "order": {
                    "catalog_id": "354160437058781",
                    "text": "Lunch",
                    "product_items": [
                        {"product_retailer_id": "HAMBURGER", "quantity": 3, "item_price": 30, "currency": "EUR"},
                        {"product_retailer_id": "SODA", "quantity": 2, "item_price": 10, "currency": "EUR"},
                    ],
                },
            }
        case "system":
            return {
                "type": "system",
                "system": {
                    "body": "User changed from 16505551234 to 16505559999",
                    "type": "customer_changed_number",
                    "new_wa_id": "16505559999",
                },
            }
        case "referral":
            return {
                "type": "text",
                "text": {"body": text},
                "referral": {
                    "source_url": "https://fb.me/ad",
                    "source_id": "ADID",
                    "source_type": "ad",
                    "body": "Spring sale",
                    "headline": "50% off",
                    "media_type": "image",
                    "image_url": "https://example.com/ad.jpg",
                    "ctwa_clid": "CTWA_CLID",
                },
            }
        case "reply":
            return {
                "type": "text",
                "text": {"body": text},
                "context": {"from": DISPLAY_PHONE_NUMBER, "id": context_id or new_wamid()},
            }
        case "forwarded":
            return {"type": "text", "text": {"body": text}, "context": {"forwarded": True}}
        case "unsupported":
            return {"type": "unsupported", "unsupported": {"type": "poll"}, "errors": [_unsupported_error()]}
        case "unknown":  # a type Meta invents after this code was written
            return {"type": "hologram", "hologram": {"id": "h-1"}}
    raise AssertionError(kind)


def _unsupported_error() -> dict[str, Any]:
    return {
        "code": 131051,
        "title": "Message type unknown",
        "message": "Message type unknown",
        "error_data": {"details": "Message type is currently not supported."},
    }


def status(wamid: str, status: str = "delivered", *, recipient_id: str = "16505551234", ts: float | None = None):
    """A receipt for a message the business sent (not a customer message)."""
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(int(time.time() if ts is None else ts)),
        "recipient_id": recipient_id,
        "conversation": {"id": "7270432eae37498234f4444b35ffc5", "origin": {"type": "service"}},
        "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
    }
    if status == "failed":
        item["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
    return item


def contact(wa_id: str | None, name: str = "Sheena Nelson", *, user_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"profile": {"name": name}}
    if wa_id is not None:
        item["wa_id"] = wa_id
    if user_id is not None:
        item["user_id"] = user_id
    return item


def _contacts_for(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for msg in messages:
        sender = (msg.get("from"), msg.get("from_user_id"))
        if sender not in seen:
            seen[sender] = contact(sender[0], f"Customer {sender[0] or sender[1]}", user_id=sender[1])
    return list(seen.values())


# --- envelope -------------------------------------------------------------------------------------------------------


def entry(
    phone_number_id: str,
    messages: Sequence[dict[str, Any]] = (),
    *,
    contacts: list[dict[str, Any]] | None = None,
    statuses: Sequence[dict[str, Any]] = (),
    waba_id: str = WABA_ID,
    display_phone_number: str = DISPLAY_PHONE_NUMBER,
) -> dict[str, Any]:
    """One `entry` item: one WABA, one `messages` change for one phone number."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
    }
    messages = list(messages)
    if messages:
        value["contacts"] = _contacts_for(messages) if contacts is None else contacts
        value["messages"] = messages
    elif contacts:
        value["contacts"] = contacts
    if statuses:
        value["statuses"] = list(statuses)
    return {"id": waba_id, "changes": [{"value": value, "field": "messages"}]}


def envelope(entries: list[dict[str, Any]]) -> bytes:
    """The POST body for several entries, serialised as Meta does (compact, non-ASCII escaped)."""
    return json.dumps({"object": "whatsapp_business_account", "entry": entries}, separators=(",", ":")).encode()


def webhook(
    phone_number_id: str,
    messages: Sequence[dict[str, Any]] = (),
    *,
    contacts: list[dict[str, Any]] | None = None,
    statuses: Sequence[dict[str, Any]] = (),
) -> bytes:
    """One POST body carrying `messages` (several per POST allowed) and/or `statuses` for one phone number."""
    return envelope([entry(phone_number_id, messages, contacts=contacts, statuses=statuses)])


# --- statuses of messages the business sent (reference.md §4) --------------------------------------------------------

ERROR_CODES_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


def send_status(
    wamid: str,
    status: str,
    *,
    recipient_id: str,
    ts: float | None = None,
    biz_opaque_callback_data: str | None = None,
    category: str = "service",
    error: tuple[int, str, str] | None = None,
) -> dict[str, Any]:
    """One `statuses[]` item for a message the business sent: sent | delivered | read | failed (`error` =
    (code, title, details), as Meta puts them in `errors[]`). `biz_opaque_callback_data` is echoed as given."""
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(int(time.time() if ts is None else ts)),
        "recipient_id": recipient_id,
    }
    if biz_opaque_callback_data is not None:
        item["biz_opaque_callback_data"] = biz_opaque_callback_data
    if status in ("sent", "delivered"):  # billing information rides on the first two only
        conversation = hashlib.sha256(recipient_id.encode()).hexdigest()[:32]
        item["conversation"] = {"id": conversation, "origin": {"type": category}}
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": category}
    if error is not None:
        code, title, details = error
        item["errors"] = [
            {
                "code": code,
                "title": title,
                "message": title,
                "error_data": {"details": details},
                "href": ERROR_CODES_HREF,
            }
        ]
    return item
