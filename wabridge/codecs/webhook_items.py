"""One item of a Meta webhook change -> its Result: a customer message (`_inbound`) or a status (`_status_update`)."""

from __future__ import annotations

from wabridge.codecs import agent_text
from wabridge.codecs.agent_text import put
from wabridge.codecs.genesys import (
    ChannelMetadata,
    OpenInboundMessageChannel,
    OpenInboundNormalizedMessage,
    OpenMessageAttachment,
    OpenMessageContent,
)
from wabridge.codecs.media_placeholder import MEDIA_PLACEHOLDER
from wabridge.codecs.meta import Contact, Error, Media, Message, Status
from wabridge.codecs.results import Inbound, MediaRef, Result, Route, Skipped, StatusError, StatusUpdate
from wabridge.codecs.sender import MissingSender, identify, matching_contact
from wabridge.codecs.timestamps import InvalidTimestamp, iso_time, parse_meta_timestamp

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
