"""Meta webhook body (verified bytes) -> one Result per customer message, receipt, or skipped item.

Error contract: `transform` raises only `WebhookDecodeError` (the body is not JSON, or not a JSON object: the ingress
answers 400). Anything else wrong is data: a `Skipped` with a reason code (results.SKIP_REASONS), and one bad
message, change or entry never loses the others.

Two paths. The fast one decodes the whole body into typed Structs in one call (the usual case: ~1 µs for 500 B).
If that fails validation, the slow one re-reads the body in layers of `msgspec.Raw` (entry, change, message) so
the bad part is skipped alone.

Media is not fetched here (no I/O in codecs): the Genesys attachment url is the placeholder `media:<media id>`,
and `Inbound.media` says what to fetch; the media actor then calls `with_media_url` (or `media_as_text`).
"""

from __future__ import annotations

import msgspec

from wabridge.codecs import agent_text
from wabridge.codecs.agent_text import put
from wabridge.codecs.genesys import (
    ChannelMetadata,
    OpenInboundMessageChannel,
    OpenInboundNormalizedMessage,
    OpenMessageAttachment,
    OpenMessageContent,
    encode_genesys,
)
from wabridge.codecs.meta import (
    Change,
    Contact,
    Error,
    Media,
    Message,
    RawChange,
    RawEntry,
    RawValue,
    RawWebhook,
    Status,
    Webhook,
)
from wabridge.codecs.results import Inbound, MediaRef, Result, Route, Skipped, StatusError, StatusUpdate
from wabridge.codecs.sender import MissingSender, identify, matching_contact
from wabridge.codecs.timestamps import InvalidTimestamp, iso_time, parse_meta_timestamp

__all__ = [
    "MEDIA_PLACEHOLDER",
    "WebhookDecodeError",
    "encode_genesys",
    "media_as_text",
    "transform",
    "with_media_url",
]

WABA_OBJECT = "whatsapp_business_account"
MEDIA_PLACEHOLDER = "media:"  # attachment url prefix until the media actor has a fetchable url
_ID_MAX = 256  # characters in a wamid / phone_number_id; longer is not Meta's and would bloat every key
_DETAIL_MAX = 300  # characters of a Skipped.detail

# Meta message type -> (field holding the media, Genesys mediaType)
MEDIA_TYPES: dict[str, str] = {
    "image": "Image",
    "sticker": "Image",
    "video": "Video",
    "audio": "Audio",
    "voice": "Audio",  # on-premise API name of a voice note
    "document": "File",
}

# Meta status -> Genesys receipt status. Genesys has no "Read": read and played imply delivered.
RECEIPTS: dict[str, str] = {
    "sent": "Sent",
    "delivered": "Delivered",
    "read": "Delivered",
    "played": "Delivered",
    "failed": "Failed",
}


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


# --- one message --------------------------------------------------------------------------------------------------


def _inbound(msg: Message, phone_number_id: str, display: str, contacts: list[Contact]) -> Result:
    wamid = msg.id
    if not wamid or len(wamid) > _ID_MAX or "\x00" in wamid:  # NUL: PostgreSQL text refuses it (tracking key)
        return Skipped("malformed_message", "message without a usable id", phone_number_id=phone_number_id)
    try:
        seconds = parse_meta_timestamp(msg.timestamp)
    except InvalidTimestamp as exc:
        return Skipped("malformed_message", f"timestamp {exc}"[:_DETAIL_MAX], wamid, phone_number_id)
    contact = matching_contact(msg, contacts)
    try:
        sender, wa_id, user_id = identify(msg, contact)
    except MissingSender as exc:
        return Skipped("missing_sender", str(exc), wamid, phone_number_id)

    kind = msg.type
    if len(kind) > 64 or "\x00" in kind:  # not a type Meta names; bounded, and storable (tracking rows keep it)
        kind = kind[:64].replace("\x00", "\ufffd")
    meta: dict[str, str] = {"type": kind}
    custom: dict[str, str] = {"phone_number_id": phone_number_id, "display_phone_number": display}
    if user_id is not None:
        custom["user_id"] = user_id
    parent_user_id = msg.from_parent_user_id or (contact.parent_user_id if contact is not None else None)
    if parent_user_id:
        put(custom, "parent_user_id", parent_user_id[:128])
    if contact is not None and contact.profile is not None and contact.profile.username:
        put(custom, "username", contact.profile.username)
    if msg.context is not None or msg.referral is not None or msg.errors or msg.group_id is not None:
        _facts(msg, meta, custom)

    text: str | None = None
    media: MediaRef | None = None
    content: list[OpenMessageContent] | None = None
    if kind == "text" and msg.text is not None:
        text = msg.text.body
    elif kind in MEDIA_TYPES:
        payload: Media | None = getattr(msg, kind)
        if payload is None or not payload.id or len(payload.id) > _ID_MAX:
            return Skipped("malformed_message", f"{kind} without a media id", wamid, phone_number_id)
        media = _media_ref(kind, payload)
        content = [_attachment(media)]
        if payload.voice or kind == "voice":
            meta["audio.voice"] = "true"
        if payload.animated:
            meta["sticker.animated"] = "true"
    else:
        text = _readable(msg, meta)
    if not text and content is None:
        text = agent_text.unsupported_text(msg, meta)

    route = Route(
        phone_number_id=phone_number_id,
        display_phone_number=display,
        sender_id=sender.id,
        id_type=sender.id_type,
        wa_id=wa_id,
        user_id=user_id,
        wamid=wamid,
        timestamp=seconds,
        type=kind,
    )
    channel = OpenInboundMessageChannel(
        message_id=wamid,
        time=iso_time(seconds),
        from_=sender,
        metadata=ChannelMetadata(custom_attributes=custom),
    )
    message = OpenInboundNormalizedMessage(channel=channel, text=text, content=content, metadata=meta)
    return Inbound(route, message, media)


def _readable(msg: Message, meta: dict[str, str]) -> str | None:
    match msg.type:
        case "location" if msg.location is not None:
            return agent_text.location_text(msg.location, meta)
        case "contacts" if msg.contacts:
            return agent_text.contacts_text(msg.contacts, meta)
        case "interactive" if msg.interactive is not None:
            return agent_text.interactive_text(msg.interactive, meta)
        case "button" if msg.button is not None:
            put(meta, "button.payload", msg.button.payload)
            put(meta, "button.text", msg.button.text)
            return msg.button.text or msg.button.payload
        case "reaction" if msg.reaction is not None:
            return agent_text.reaction_text(msg.reaction, meta)
        case "order" if msg.order is not None:
            return agent_text.order_text(msg.order, meta)
        case "system" if msg.system is not None:
            return agent_text.system_text(msg.system, meta)
        case "edit" if msg.edit is not None:
            return agent_text.edit_text(msg.edit, meta)
        case "revoke" if msg.revoke is not None:
            return agent_text.revoke_text(msg.revoke, meta)
    return None  # unsupported, unknown, or a known type without its payload


def _facts(msg: Message, meta: dict[str, str], custom: dict[str, str]) -> None:
    """Reply-to / forwarded context, ad referral, message errors and group: metadata, never the text."""
    ctx = msg.context
    if ctx is not None:
        put(meta, "context.id", ctx.id)
        put(meta, "context.from", ctx.from_)
        if ctx.forwarded:
            meta["context.forwarded"] = "true"
        if ctx.frequently_forwarded:
            meta["context.frequently_forwarded"] = "true"
        if ctx.referred_product is not None:
            put(meta, "context.referred_product.catalog_id", ctx.referred_product.catalog_id)
            put(meta, "context.referred_product.product_retailer_id", ctx.referred_product.product_retailer_id)
    ref = msg.referral
    if ref is not None:
        for name in ref.__struct_fields__:
            if name != "welcome_message":
                put(meta, f"referral.{name}", getattr(ref, name))
        if ref.welcome_message is not None:
            put(meta, "referral.welcome_message.text", ref.welcome_message.text)
        # the ad a customer came from is a routing fact
        put(custom, "referral.source_type", ref.source_type)
        put(custom, "referral.source_id", ref.source_id)
        put(custom, "referral.ctwa_clid", ref.ctwa_clid)
    if msg.errors:
        put(meta, "errors", [{"code": e.code, "title": e.title, "details": _details(e)} for e in msg.errors[:10]])
    if msg.group_id is not None:
        put(meta, "group_id", msg.group_id)
        put(custom, "group_id", msg.group_id)


def _media_ref(kind: str, payload: Media) -> MediaRef:
    return MediaRef(
        media_id=payload.id or "",
        media_type=MEDIA_TYPES[kind],  # type: ignore[arg-type]
        mime=payload.mime_type,
        sha256=payload.sha256,
        filename=payload.filename,
        caption=payload.caption,
    )


def _attachment(media: MediaRef) -> OpenMessageContent:
    digest = media.sha256_digest()
    return OpenMessageContent(
        attachment=OpenMessageAttachment(
            media_type=media.media_type,
            url=MEDIA_PLACEHOLDER + media.media_id,
            mime=media.mime,
            filename=media.filename,
            text=media.caption,
            sha256=digest.hex() if digest is not None else None,  # Meta mixes hex and base64: hex for Genesys
        ),
    )


# --- one status ---------------------------------------------------------------------------------------------------


def _status_update(status: Status, phone_number_id: str) -> Result:
    if not status.id or len(status.id) > _ID_MAX or "\x00" in status.id or not status.status:
        return Skipped("malformed_status", "status without an id or a status", phone_number_id=phone_number_id)
    try:
        seconds = parse_meta_timestamp(status.timestamp)
    except InvalidTimestamp as exc:
        return Skipped("malformed_status", f"timestamp {exc}"[:_DETAIL_MAX], status.id, phone_number_id)
    return StatusUpdate(
        phone_number_id=phone_number_id,
        wamid=status.id,
        status=status.status[:64],
        receipt=RECEIPTS.get(status.status),  # type: ignore[arg-type]
        timestamp=seconds,
        recipient_id=status.recipient_id,
        recipient_user_id=status.recipient_user_id,
        callback_data=status.biz_opaque_callback_data,
        errors=tuple(StatusError(_code(e.code), e.title, _details(e)) for e in status.errors[:10]),
    )


def _code(code: int | str | None) -> int | None:
    """Meta's error code if it fits msgpack's 64 bits (the replay payload; JSON allows any size). A numeric string
    ("131026") is read as its number; any other text is no code (its title and details still say what failed)."""
    if isinstance(code, str):
        try:
            code = int(code) if len(code) <= 20 else None
        except ValueError:
            return None
    return code if code is not None and -(2**63) <= code < 2**63 else None


def _details(error: Error) -> str | None:
    return error.error_data.details if error.error_data is not None else error.details


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


# --- after the transform: the media actor's two ways out ------------------------------------------------------------


def with_media_url(
    msg: OpenInboundNormalizedMessage, url: str, mime: str | None = None
) -> OpenInboundNormalizedMessage:
    """The message with its placeholder attachment url (`media:<id>`) replaced by `url` (a presigned GET), and its
    `mime` filled with `mime` (what Meta's media lookup named) when the webhook had none: Genesys requires one."""
    if not msg.content:
        return msg
    content = [
        msgspec.structs.replace(
            item, attachment=msgspec.structs.replace(item.attachment, url=url, mime=item.attachment.mime or mime)
        )
        if (item.attachment.url or "").startswith(MEDIA_PLACEHOLDER)
        else item
        for item in msg.content
    ]
    return msgspec.structs.replace(msg, content=content)


def media_as_text(inbound: Inbound, notice: str) -> OpenInboundNormalizedMessage:
    """The message with its attachment replaced by a text notice (media too large, expired, or refused).

    The caption, if any, follows the notice so the agent still reads what the customer wrote.
    """
    msg = inbound.message
    caption = inbound.media.caption if inbound.media is not None else None
    text = "\n".join(part for part in (notice, caption, msg.text) if part)
    return msgspec.structs.replace(msg, text=text or notice, content=None)
