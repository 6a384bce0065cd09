"""Meta webhook body (verified bytes) -> one Result per customer message, receipt, or skipped item.

Error contract: `transform` raises only `WebhookDecodeError` (the body is not JSON, or not a JSON object: the ingress
answers 400). Anything else wrong is data: a `Skipped` with a reason code (results.SKIP_REASONS), and one bad
message, change or entry never loses the others.

Two paths. The fast one decodes the whole body into typed Structs in one call (the usual case: ~1 µs for 500 B).
If that fails validation, the slow one re-reads the body in layers of `msgspec.Raw` (entry, change, message) so
the bad part is skipped alone.

Media is not fetched here (no I/O in codecs): the Genesys attachment url is the placeholder `media:<media id>`,
and `Inbound.media` says what to fetch; the media actor then calls `with_media_url` (or `media_as_text`).

One message or status is turned into its Result in webhook_items.py; the placeholder and the media actor's
ways out are in media_placeholder.py.
"""

from __future__ import annotations

import msgspec

from wabridge.codecs.genesys import encode_genesys
from wabridge.codecs.meta import (
    Change,
    Contact,
    Error,
    Message,
    RawChange,
    RawEntry,
    RawValue,
    RawWebhook,
    Status,
    Webhook,
)
from wabridge.codecs.results import Result, Skipped
from wabridge.codecs.webhook_items import _DETAIL_MAX, _ID_MAX, _inbound, _status_update

__all__ = [
    "WebhookDecodeError",
    "encode_genesys",
    "transform",
]

WABA_OBJECT = "whatsapp_business_account"


class WebhookDecodeError(ValueError):
    """The body is not JSON, or not a JSON object: the sender's fault, answered with 400."""


# What a decoder raises on bad bytes: msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError, not as
# DecodeError (msgspec 0.22); RecursionError is a guard should nesting ever outrun msgspec's own depth limit.
_NOT_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

_webhook_decoder = msgspec.json.Decoder(Webhook)
_raw_webhook_decoder = msgspec.json.Decoder(RawWebhook)
_raw_entry_decoder = msgspec.json.Decoder(RawEntry)
_raw_change_decoder = msgspec.json.Decoder(RawChange)
_raw_value_decoder = msgspec.json.Decoder(RawValue)
_message_decoder = msgspec.json.Decoder(Message)
_status_decoder = msgspec.json.Decoder(Status)
_contact_decoder = msgspec.json.Decoder(Contact)
_any_decoder = msgspec.json.Decoder()


class _IdOnly(msgspec.Struct):
    id: object = None


_id_decoder = msgspec.json.Decoder(_IdOnly)


def transform(body: bytes) -> list[Result]:
    """All results of one webhook body, in payload order. Raises WebhookDecodeError only."""
    try:
        hook = _webhook_decoder.decode(body)
    except (msgspec.ValidationError, UnicodeDecodeError):
        return _transform_in_layers(body)
    except _NOT_JSON as exc:
        raise WebhookDecodeError(f"not JSON: {_short(exc)}") from None
    if hook.object != WABA_OBJECT:
        return [Skipped("unsupported_object", f"object {hook.object[:64]!r}")]
    out: list[Result] = []
    for entry in hook.entry:
        for change in entry.changes:
            _change(change, out)
    if not out:
        out.append(Skipped("empty_change", "no entry with a change"))
    return out


def _change(change: Change, out: list[Result]) -> None:
    if change.field != "messages":
        out.append(Skipped("unsupported_field", f"field {change.field[:64]!r}"))
        return
    value = change.value
    phone_number_id = value.metadata.phone_number_id
    if not phone_number_id or len(phone_number_id) > _ID_MAX:
        out.append(Skipped("malformed_entry", "change without metadata.phone_number_id"))
        return
    display = value.metadata.display_phone_number
    for msg in value.messages:
        try:
            out.append(_inbound(msg, phone_number_id, display, value.contacts))
        except Exception as exc:  # the second line: see _unexpected
            out.append(_unexpected("malformed_message", msg.id, phone_number_id, exc))
    for status in value.statuses:
        try:
            out.append(_status_update(status, phone_number_id))
        except Exception as exc:
            out.append(_unexpected("malformed_status", status.id, phone_number_id, exc))
    for error in value.errors:
        out.append(Skipped("webhook_error", _error_line(error), phone_number_id=phone_number_id))
    if not (value.messages or value.statuses or value.errors):
        out.append(Skipped("empty_change", "no messages, statuses or errors", phone_number_id=phone_number_id))


def _error_line(error: Error) -> str:
    return f"{error.code}: {error.title or error.message or ''}"[:_DETAIL_MAX]


def _short(exc: BaseException) -> str:
    return str(exc)[:_DETAIL_MAX]


# --- the slow path: one bad part skipped alone ----------------------------------------------------------------------


def _transform_in_layers(body: bytes) -> list[Result]:
    try:
        hook = _raw_webhook_decoder.decode(body)
    except msgspec.ValidationError as exc:
        _require_object(body)
        return [Skipped("malformed_entry", f"webhook: {_short(exc)}")]
    except _NOT_JSON as exc:
        raise WebhookDecodeError(f"not JSON: {_short(exc)}") from None
    if hook.object != WABA_OBJECT:
        return [Skipped("unsupported_object", f"object {hook.object[:64]!r}")]
    out: list[Result] = []
    for raw_entry in hook.entry:
        try:
            entry = _raw_entry_decoder.decode(raw_entry)
        except _NOT_JSON as exc:
            out.append(Skipped("malformed_entry", f"entry: {_short(exc)}"))
            continue
        for raw_change in entry.changes:
            _change_in_layers(raw_change, out)
    if not out:
        out.append(Skipped("empty_change", "no entry with a change"))
    return out


def _require_object(body: bytes) -> None:
    try:
        decoded = _any_decoder.decode(body)
    except _NOT_JSON as exc:
        raise WebhookDecodeError(f"not JSON: {_short(exc)}") from None
    if not isinstance(decoded, dict):
        raise WebhookDecodeError(f"not a JSON object: {type(decoded).__name__}")


def _change_in_layers(raw_change: msgspec.Raw, out: list[Result]) -> None:
    try:
        change = _raw_change_decoder.decode(raw_change)
        if change.field != "messages":
            out.append(Skipped("unsupported_field", f"field {change.field[:64]!r}"))
            return
        value = _raw_value_decoder.decode(change.value)
    except _NOT_JSON as exc:
        out.append(Skipped("malformed_entry", f"change: {_short(exc)}"))
        return
    phone_number_id = value.metadata.phone_number_id
    if not phone_number_id or len(phone_number_id) > _ID_MAX:
        out.append(Skipped("malformed_entry", "change without metadata.phone_number_id"))
        return
    contacts = [c for c in map(_decode_or_none(_contact_decoder), value.contacts) if c is not None]
    for raw in value.messages:
        try:
            msg = _message_decoder.decode(raw)
        except _NOT_JSON as exc:
            out.append(Skipped("malformed_message", _short(exc), _wamid_of(raw), phone_number_id))
            continue
        try:
            out.append(_inbound(msg, phone_number_id, value.metadata.display_phone_number, contacts))
        except Exception as exc:  # the second line: see _unexpected
            out.append(_unexpected("malformed_message", msg.id, phone_number_id, exc))
    for raw in value.statuses:
        try:
            status = _status_decoder.decode(raw)
        except _NOT_JSON as exc:
            out.append(Skipped("malformed_status", _short(exc), _wamid_of(raw), phone_number_id))
            continue
        try:
            out.append(_status_update(status, phone_number_id))
        except Exception as exc:
            out.append(_unexpected("malformed_status", status.id, phone_number_id, exc))
    for raw in value.errors:
        out.append(
            Skipped(
                "webhook_error", bytes(raw)[:_DETAIL_MAX].decode("utf-8", "replace"), phone_number_id=phone_number_id
            )
        )
    if not (value.messages or value.statuses or value.errors):
        out.append(Skipped("empty_change", "no messages, statuses or errors", phone_number_id=phone_number_id))


def _decode_or_none(decoder: msgspec.json.Decoder):
    def decode(raw: msgspec.Raw):
        try:
            return decoder.decode(raw)
        except _NOT_JSON:
            return None  # a bad contact only costs the sender's name

    return decode


def _wamid_of(raw: msgspec.Raw) -> str | None:
    """The id of a message that failed to decode, so the skip can still be traced; None if it has none."""
    try:
        value = _id_decoder.decode(raw).id
    except _NOT_JSON:
        return None
    return _traceable(value)


def _traceable(wamid: object) -> str | None:
    """The wamid if it can key a tracking row (what `_inbound` requires of one), else None."""
    return wamid if isinstance(wamid, str) and 0 < len(wamid) <= _ID_MAX and "\x00" not in wamid else None


def _unexpected(reason: str, wamid: object, phone_number_id: str, exc: Exception) -> Skipped:
    """The second line of totality, under the first (each field is read so that no value raises: test_totality.py).
    A bug we have not found must cost the one item it hits: an exception out of `transform` crashes the tenant
    actor, and the webhook is dead-lettered with every other message of the same POST. Codecs do no I/O, so
    nothing is logged here: the skip names the exception, and the tenant actor tracks it `failed` with that detail."""
    return Skipped(
        reason, f"unexpected {type(exc).__name__}: {str(exc)[:200]!r}"[:_DETAIL_MAX], _traceable(wamid), phone_number_id
    )
