"""Meta status webhooks and send errors -> Genesys receipts (docs/reference.md sections 3 and 4). Pure, no I/O.

- `advances(old, new)`: statuses are forward-only, sent < delivered < read < played; a late `sent` never
  overwrites `read`.
- `receipt_for(previous, new)`: which Genesys receipt a status change owes: `Delivered` once (delivered, read or
  played, whichever comes first), `Failed` once, nothing for `sent`.
- `reason_for(code, title, details)`: Meta's error code -> Genesys reason (the table `REASONS`), with Meta's text.
- `disposition(http_status, code)`: what the runtime does after a failed send: `final` (a Failed receipt),
  `throttled` (retry later, keep the customer's order) or `transient` (back off and retry).
- `receipt_body(...)`: the JSON for POST .../inbound/open/receipt.
- `media_problem(meta_type, mime, size)`: Meta's media limits (`MEDIA_LIMITS`) -> a Genesys reason code or None.

Choices where the issue and the references were silent:
- `failed` is terminal and ranks above `sent` only. A `failed` after `delivered` / `read` (Meta sends both for one
  message on multi-device accounts) is ignored: the customer has the message on some device, and Genesys was told
  `Delivered` already. Every receipt the bridge sends is therefore final (`isFinalReceipt: true`).
- A message sent as several Meta messages (outbound.py: a long text, a caption Meta cannot carry) is `Delivered`
  when every part is, and `Failed` as soon as one part fails (`combined`): the agent learns of a failure at once,
  and of delivery only when the customer has all of it.
- 131053 (media upload error) maps to `MediaTypeNotAllowed`: Meta gives an unsupported type as its usual cause, and
  the receipt carries Meta's own text, so a fetch failure still reads right to the agent.
- 131048 (spam rate limit) is final (`RateLimited`): it is a quality restriction on the number, not a rate to wait
  out; retrying would only stall the customer's lane.
- Error codes 1, 2, 131000 and 131016 (Meta's "unknown / service unavailable / something went wrong") are
  transient like a 5xx; an unknown 4xx code is final with `GeneralError` and Meta's text.
- Media sizes are in binary units (5 MB = 5 x 1024 x 1024): the bridge should not refuse what Meta takes; a file
  Meta refuses after all still ends in a Failed receipt, from its error. A sticker may be 500 KB (the animated
  limit): whether a webp is animated is not known without parsing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec
from msgspec import Struct

from wabridge.codecs.timestamps import iso_time

IdType = Literal["Phone", "Email", "Opaque"]
ReceiptStatus = Literal["Delivered", "Failed"]
ReasonCode = Literal[
    "MessageExpired",
    "RateLimited",
    "MessageNotAllowed",
    "GeneralError",
    "UnsupportedMessage",
    "UnknownMessage",
    "InvalidMessageStructure",
    "InvalidDestination",
    "ServerError",
    "MediaTypeNotAllowed",
    "InvalidMediaContentLength",
    "RecipientOptedOut",
    "DataFiltered",
]
Disposition = Literal["final", "throttled", "transient"]

REASON_MESSAGE_MAX = 1000  # characters of a reason's message: Meta's details can be long; the agent reads a line

# --- forward-only statuses ------------------------------------------------------------------------------------------

# Meta's statuses for a message the business sent, in the order they can happen. `failed` ranks above `sent` only.
RANK: dict[str, int] = {"sent": 1, "failed": 2, "delivered": 3, "read": 4, "played": 5}
# What Genesys is told for each (it has no Read: read and played imply delivered).
GENESYS_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "Delivered",
    "read": "Delivered",
    "played": "Delivered",
    "failed": "Failed",
}


def advances(old: str | None, new: str) -> bool:
    """Whether status `new` moves a message on from `old` (None: nothing seen yet). Forward-only: a late `sent` never
    overwrites `read`; `failed` is terminal and never overwrites `delivered` (multi-device); an unknown status
    (one Meta adds) never moves a message."""
    if new not in RANK:
        return False
    if old is None or old not in RANK:
        return True
    if old == "failed":
        return False
    if new == "failed":
        return old == "sent"
    return RANK[new] > RANK[old]


def receipt_for(previous: str | None, new: str) -> ReceiptStatus | None:
    """The receipt Genesys is owed when status `new` arrives for a message last at `previous`: None when the status
    does not advance or says nothing new to Genesys (`sent`; `read` after `delivered`)."""
    if not advances(previous, new):
        return None
    status = GENESYS_STATUS.get(new)
    if status is None or status == GENESYS_STATUS.get(previous or ""):
        return None
    return status


def combined(parts: Sequence[str | None]) -> str | None:
    """The status of one Genesys message sent as several Meta messages, from each part's latest status (None: no
    status yet). `failed` as soon as one part failed (before delivery); else the least advanced part's status."""
    if not parts:
        return None
    if "failed" in parts:
        return "failed"
    if any(p not in RANK for p in parts):
        return None
    return min(parts, key=lambda p: RANK[p])  # type: ignore[index]


# --- Meta error -> Genesys reason -----------------------------------------------------------------------------------

# Meta error code -> Genesys reason code, for errors that are final (a 4xx, or a `failed` status's errors[]).
REASONS: dict[int, ReasonCode] = {
    131047: "MessageNotAllowed",  # more than 24 hours since the customer wrote: only a template may be sent
    131026: "InvalidDestination",  # undeliverable: not a WhatsApp user, old app, terms not accepted
    131050: "RecipientOptedOut",  # the user stopped marketing messages from the business
    131049: "MessageNotAllowed",  # Meta chose not to deliver (marketing message limits per user)
    131048: "RateLimited",  # spam rate limit: the number's quality restricts what it may send
    131021: "InvalidDestination",  # recipient is the sender
    131030: "InvalidDestination",  # recipient not in the allowed list (test numbers)
    131051: "UnsupportedMessage",  # unsupported message type
    131053: "MediaTypeNotAllowed",  # media upload error (unsupported type, or the link could not be fetched)
    131052: "GeneralError",  # media download error
    131008: "InvalidMessageStructure",  # a required parameter is missing
    131009: "InvalidMessageStructure",  # a parameter value is not valid
    100: "InvalidMessageStructure",  # invalid parameter
    132000: "InvalidMessageStructure",  # template parameter count mismatch
    132001: "InvalidMessageStructure",  # template does not exist (name or language)
    132005: "InvalidMessageStructure",  # template text too long once filled
    132007: "MessageNotAllowed",  # template violates the format character policy
    132012: "InvalidMessageStructure",  # template parameter format mismatch
    132015: "MessageNotAllowed",  # template paused for low quality
    132016: "MessageNotAllowed",  # template disabled
    131031: "MessageNotAllowed",  # business account locked
    368: "MessageNotAllowed",  # temporarily blocked for policy violations
    130472: "MessageNotAllowed",  # the user's number is part of a Meta experiment
    131042: "GeneralError",  # business eligibility: payment issue
    131045: "GeneralError",  # incorrect certificate
    131005: "GeneralError",  # access denied (token permissions)
    190: "GeneralError",  # access token expired
    133010: "GeneralError",  # business phone number not registered
}
# Throttling: retry later, keep the customer's order (never a receipt while it lasts).
THROTTLING: frozenset[int] = frozenset({130429, 131056, 4, 80007, 133016})
# Meta's own "try again" codes: handled like a 5xx.
TRANSIENT: frozenset[int] = frozenset({1, 2, 131000, 131016, 131057})
THROTTLED_REASON: ReasonCode = "RateLimited"
SERVER_REASON: ReasonCode = "ServerError"


class Reason(Struct, frozen=True, gc=False):
    code: ReasonCode
    message: str


def reason_for(code: object, title: str | None = None, details: str | None = None) -> Reason:
    """The Genesys reason for Meta error `code` (an int, a numeric string, or anything: unknown -> GeneralError),
    its message Meta's own words, `(#131047) Re-engagement message: <details>`, so the agent can act on it."""
    number = _code(code)
    reason = REASONS.get(number, "GeneralError") if number is not None else "GeneralError"
    if number in THROTTLING:
        reason = THROTTLED_REASON  # throttling still pending when the message is given up on
    elif number in TRANSIENT:
        reason = SERVER_REASON
    words = [w.strip() for w in (title, details) if isinstance(w, str) and w.strip()]
    text = ": ".join(dict.fromkeys(words)) or "WhatsApp did not accept the message"  # Genesys requires a message
    prefix = f"(#{number}) " if number is not None else ""
    return Reason(reason, (prefix + text)[:REASON_MESSAGE_MAX])


def disposition(http_status: int | None, code: object = None) -> Disposition:
    """What a failed send means: `final` (a Failed receipt with `reason_for`), `throttled` (retry later, keep order),
    `transient` (back off and retry). `http_status` None: a timeout or a connection that broke."""
    number = _code(code)
    if http_status == 429 or number in THROTTLING:
        return "throttled"
    if http_status is None or http_status >= 500 or number in TRANSIENT:
        return "transient"
    return "final"


def _code(code: object) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and 0 < len(code) <= 20 and code.isascii() and code.strip().lstrip("-").isdigit():
        return int(code)
    return None


# --- the receipt body (docs/reference.md section 3, "Receipts") ----------------------------------------------------


class ReceiptTo(Struct, rename="camel", frozen=True, gc=False):
    id: str
    id_type: IdType


class ReceiptChannel(Struct, frozen=True, gc=False):
    to: ReceiptTo
    time: str


class Receipt(Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    """POST .../inbound/open/receipt. `direction` and `isFinalReceipt` have no default so that omit_defaults keeps
    them on the wire; `reasons` only with Failed."""

    id: str  # the Genesys id of the outbound message
    channel: ReceiptChannel
    status: ReceiptStatus
    direction: Literal["Outbound"]
    is_final_receipt: bool
    reasons: list[Reason] | None = None


_encoder = msgspec.json.Encoder()


def receipt(
    message_id: str,
    to_id: str,
    to_id_type: IdType,
    status: ReceiptStatus,
    seconds: float,
    reasons: Sequence[Reason] = (),
) -> Receipt:
    """The receipt for Genesys message `message_id` sent to `to_id`, at Unix time `seconds`. Every receipt the
    bridge sends is final (see the module docstring); reasons are dropped unless the status is Failed."""
    failed = status == "Failed"
    return Receipt(
        id=message_id,
        channel=ReceiptChannel(to=ReceiptTo(to_id, to_id_type), time=iso_time(seconds)),
        status=status,
        direction="Outbound",
        is_final_receipt=True,
        reasons=(list(reasons) or [Reason("GeneralError", "WhatsApp did not accept the message")]) if failed else None,
    )


def receipt_body(value: Receipt) -> bytes:
    return _encoder.encode(value)


def status_receipt(
    message_id: str,
    to_id: str,
    to_id_type: IdType,
    previous: str | None,
    status: str,
    seconds: float,
    errors: Sequence[tuple[object, str | None, str | None]] = (),
) -> Receipt | None:
    """The receipt a Meta status webhook owes Genesys, or None. `errors` are the status's (code, title, details)."""
    owed = receipt_for(previous, status)
    if owed is None:
        return None
    reasons = [reason_for(*e) for e in errors[:10]] if owed == "Failed" else []
    return receipt(message_id, to_id, to_id_type, owed, seconds, reasons)


# --- what Meta said of a message the bridge sent (a tracking row's `meta_status`) -----------------------------


class OutboundState(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What Meta said of an outbound message, kept as JSON in its tracking row's `meta_status` (statuses.py writes
    it as status webhooks come; the sender writes `receipt` when it refused the message itself)."""

    parts: list[str | None] = []  # each part's latest Meta status, forward-only (codecs/receipts.advances)
    at: dict[str, float] = {}  # Meta status → when it first reached the combined status (Meta's timestamp)
    receipt: str | None = None  # the receipt Genesys accepted: Delivered | Failed
    reason: str | None = None  # a Failed receipt's reason, "Code: message"
    receipt_error: str | None = None  # Genesys refused the receipt (it stays owed to nobody: logged, counted)


_encode_state = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(OutboundState).decode


def decode_state(text: str | None) -> OutboundState | None:
    """The row's state, or None for a blank or unreadable one (an older row)."""
    if not text:
        return None
    try:
        return _decode_state(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def read_state(text: str | None) -> OutboundState:
    """The row's state; a blank or unreadable one is a fresh state."""
    return decode_state(text) or OutboundState()


def write_state(state: OutboundState) -> str:
    return _encode_state(state).decode()


# --- Meta's media limits (docs/reference.md section 4, "Media upload") ---------------------------------------------

MetaMediaType = Literal["image", "video", "audio", "document", "sticker"]
_MB = 1024 * 1024


class MediaLimit(Struct, frozen=True, gc=False):
    mimes: frozenset[str] | None  # None: any type
    max_bytes: int


MEDIA_LIMITS: dict[str, MediaLimit] = {
    "image": MediaLimit(frozenset({"image/jpeg", "image/png"}), 5 * _MB),
    "video": MediaLimit(frozenset({"video/mp4", "video/3gpp"}), 16 * _MB),
    # ogg with the opus codec only: the codec is not in the mime Genesys gives, so ogg is let through
    "audio": MediaLimit(frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * _MB),
    "document": MediaLimit(None, 100 * _MB),  # Meta lists no types: any file goes as a document
    "sticker": MediaLimit(frozenset({"image/webp"}), 500 * 1024),
}


def bare_mime(mime: object) -> str | None:
    """`Audio/OGG; codecs=opus` -> `audio/ogg`; None for anything that is not a mime type."""
    if not isinstance(mime, str):
        return None
    bare = mime.split(";", 1)[0].strip().lower()
    return bare if 0 < len(bare) <= 255 and "/" in bare else None


def media_problem(meta_type: str, mime: object = None, size: object = None) -> ReasonCode | None:
    """The Genesys reason Meta's limits give for this media, or None when it may be sent. A fact not known yet (mime
    or size None) passes: the runtime checks again with what the download says."""
    limit = MEDIA_LIMITS.get(meta_type)
    if limit is None:
        return "MediaTypeNotAllowed"
    bare = bare_mime(mime)
    if limit.mimes is not None and mime is not None and bare not in limit.mimes:
        return "MediaTypeNotAllowed"
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size > limit.max_bytes:
        return "InvalidMediaContentLength"
    return None
