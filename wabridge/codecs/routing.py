"""Routing a Meta webhook to its tenants, and the message the ingress queues for the workers.

The ingress must read `phone_number_id` *before* it can verify the signature (the number picks the tenant, the tenant
picks the HMAC key). So this module decodes only `entry[].changes[].value.metadata.phone_number_id` (and the message
ids, for tracking what could not be routed) through a small "view": everything else in the payload is skipped by the
decoder, never trusted, never built. The HMAC check decides; this read only picks the key.

One POST may carry entries for several phone numbers (several tenants under one Meta app). `split_by_tenant`
re-wraps the changes of each tenant into an envelope of its own, copying each change's JSON verbatim (`msgspec.Raw`).
When a body concerns one tenant only, the ingress queues the raw bytes untouched and this split never runs.

Schema rule: new fields get defaults, unknown fields are ignored (a webhook field we don't know is still routed).
Whatever the bytes, these functions raise MalformedWebhook and nothing else: they run before the signature is checked,
so a body nested past msgspec's depth limit (RecursionError) or with invalid UTF-8 in a field they decode
(UnicodeDecodeError) is the sender's fault like any other. They do not vouch for the fields they skip (invalid UTF-8
there decodes unnoticed): the ingress checks the whole body once it is signed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import msgspec

# --- the routing view: only what picks the tenant ---------------------------------------------------------------


class _Metadata(msgspec.Struct):
    phone_number_id: str = ""


class _MessageId(msgspec.Struct):
    id: str = ""


class _Value(msgspec.Struct):
    metadata: _Metadata | None = None
    messages: list[_MessageId] = []


class _Change(msgspec.Struct):
    field: str = ""
    value: _Value | None = None


class _Entry(msgspec.Struct):
    changes: list[_Change] = []


class _Envelope(msgspec.Struct):
    entry: list[_Entry] = []


class MalformedWebhook(ValueError):
    """The body is not JSON, or not shaped like a Meta webhook envelope."""


# What msgspec raises on bytes that are not a readable envelope: its own errors, a nesting deeper than it recurses,
# and invalid UTF-8 in a string it decodes.
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError)


class Routing(msgspec.Struct, frozen=True):
    """What one webhook body says about where it goes (unverified until the HMAC check passes)."""

    phone_number_ids: tuple[str, ...]  # distinct, in order of appearance
    message_ids: tuple[str, ...]  # wamids of `messages` (not statuses), for tracking an unroutable body
    unlabelled_changes: int  # changes without a phone_number_id (account updates and the like)
    changes: int


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def read_routing(body: bytes) -> Routing:
    """Decode only the routing fields of a webhook body. Raises MalformedWebhook."""
    try:
        envelope = _envelope_decoder.decode(body)
    except _DECODE_ERRORS as exc:
        raise MalformedWebhook(str(exc)) from None
    numbers: dict[str, None] = {}  # an ordered set
    wamids: list[str] = []
    unlabelled = changes = 0
    for entry in envelope.entry:
        for change in entry.changes:
            changes += 1
            value = change.value
            number = value.metadata.phone_number_id if value is not None and value.metadata is not None else ""
            if number:
                numbers[number] = None
            else:
                unlabelled += 1
            if value is not None:
                wamids.extend(m.id for m in value.messages if m.id)
    return Routing(tuple(numbers), tuple(wamids), unlabelled, changes)


def without_lone_surrogates(body: bytes) -> bytes | None:
    """The body with each lone UTF-16 surrogate escape (`\\ud83d` without its other half: an emoji cut in two by a
    client) replaced by U+FFFD, re-encoded; None when that is not what keeps it from decoding. msgspec rightly refuses
    such a body whole, and Meta, having signed and sent it, would resend it for a week."""
    if b"\\u" not in body:
        return None
    try:
        value = json.loads(body)  # Python's decoder keeps a lone surrogate as a code point of its own
        json.dumps(value, ensure_ascii=False).encode()
        return None  # no lone surrogate in it: something else is wrong with the body
    except UnicodeEncodeError:
        pass  # a lone surrogate (before the clause below: it is a ValueError too)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError included), or nested past json's depth
        return None
    try:
        return json.dumps(_replace_surrogates(value), ensure_ascii=False, separators=(",", ":")).encode()
    except RecursionError:  # nested nearly as deep as json goes: _replace_surrogates recurses further
        return None


def _replace_surrogates(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


# --- splitting one envelope per tenant --------------------------------------------------------------------------


class _RawEnvelope(msgspec.Struct):
    # Kept verbatim, whatever its type: the routing view ignores it, so a part gets what a one-tenant body would
    # (a str here made `"object": 5` a MalformedWebhook after the signature had passed).
    object: msgspec.Raw = msgspec.Raw(b'"whatsapp_business_account"')
    entry: list[dict[str, msgspec.Raw]] = []


class _ChangeView(msgspec.Struct):
    value: _Value | None = None


_raw_envelope_decoder = msgspec.json.Decoder(_RawEnvelope)
_raw_changes_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_change_view_decoder = msgspec.json.Decoder(_ChangeView)
_json_encoder = msgspec.json.Encoder()


def split_by_tenant(body: bytes, tenant_of: Mapping[str, str], *, fallback: str | None) -> dict[str, bytes]:
    """One envelope per tenant, each with that tenant's changes only (entry fields and change JSON kept verbatim).

    `tenant_of` maps phone_number_id → tenant id. A change without a phone_number_id goes to `fallback`; a change whose
    number no tenant owns goes nowhere (the caller tracks it as unrouted). Raises MalformedWebhook.
    """
    try:
        envelope = _raw_envelope_decoder.decode(body)
        per_tenant: dict[str, list[dict[str, msgspec.Raw | list[msgspec.Raw]]]] = {}
        for entry in envelope.entry:
            kept: dict[str, list[msgspec.Raw]] = {}
            raw_changes = entry.get("changes")
            for raw in _raw_changes_decoder.decode(raw_changes) if raw_changes is not None else ():
                value = _change_view_decoder.decode(raw).value
                number = value.metadata.phone_number_id if value is not None and value.metadata is not None else ""
                tenant = tenant_of.get(number) if number else fallback
                if tenant is not None:
                    kept.setdefault(tenant, []).append(raw)
            for tenant, raws in kept.items():
                rewrapped: dict[str, msgspec.Raw | list[msgspec.Raw]] = {**entry, "changes": raws}
                per_tenant.setdefault(tenant, []).append(rewrapped)
    except _DECODE_ERRORS as exc:
        raise MalformedWebhook(str(exc)) from None
    return {
        tenant: _json_encoder.encode({"object": envelope.object, "entry": entries})
        for tenant, entries in per_tenant.items()
    }


# --- the queue message ------------------------------------------------------------------------------------------


class QueuedWebhook(msgspec.Struct, frozen=True, array_like=True):
    """One verified webhook body for one tenant, as the ingress queues it (msgpack). `array_like`: positional
    fields keep the message small; new fields go at the end with defaults."""

    tenant_id: str
    received_at: float  # Unix seconds, when the ingress read the body
    archive_key: str  # `{segment key}#{line}` of the raw body (actors/archive.py; best-effort: may be missing)
    body: bytes  # the raw signed body, or this tenant's re-wrapped part of it


_queued_encoder = msgspec.msgpack.Encoder()
_queued_decoder = msgspec.msgpack.Decoder(QueuedWebhook)


def encode_queued(message: QueuedWebhook) -> bytes:
    return _queued_encoder.encode(message)


def decode_queued(data: bytes) -> QueuedWebhook:
    return _queued_decoder.decode(data)
