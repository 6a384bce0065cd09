"""Genesys outbound webhook body (agent -> customer) -> what to send to Meta. Pure, no I/O.

`decode_outbound(body)` reads one `OpenOutboundNormalizedMessage` (docs/reference.md section 3) and returns one of
- `Send`: the Meta message(s) to send, as drafts (`MetaMessage`, docs/reference.md section 4) and the facts the
  runtime needs: Genesys message id, conversation id, `channel.to` (id, idType), the kind, the media to fetch, the
  reply-context wamid. `meta_body(send, part, ...)` then builds each final body from runtime facts (recipient, the
  media id after upload);
- `Typing`: the agent is typing; `typing_body(wamid)` builds Meta's indicator on the customer's latest inbound wamid
  (which the runtime remembers), at most once per customer per `TYPING_INTERVAL` (`typing_due`);
- `OutboundSkipped(reason, detail, id, ...)`: nothing to send, and why (`OUTBOUND_SKIP_REASONS`); `genesys_reason`
  set when the agent must see a Failed receipt (receipts.py builds it).
Error contract: only `OutboundDecodeError`, for a body that is not JSON or not a JSON object (answered 400). Any other
body, whatever sits in whatever field, is a result or a skip. Style as meta.py: every decoded field defaulted,
unknown fields ignored, `gc=False`.

Choices where the issue was silent:
- Text over 4,096 characters is SPLIT, not refused: refusing gives the customer nothing and the agent a Failed
  receipt with no fitting reason code (bots, which read no receipts, write the long texts). Each part is its own
  Meta message (its own wamid); receipts.combined makes one Genesys receipt of them: Delivered when all parts are,
  Failed when one fails. Parts break at a paragraph, a line, then a space, never inside a grapheme's joiners.
  More than `TEXT_PARTS_MAX` parts is refused (`text_too_long`, `MessageNotAllowed`): it bounds the burst to one
  customer (Meta's pair rate limit, 131056) and the rows one Genesys id costs. Length is counted in UTF-16 units,
  which is never less than code points, so a part fits whichever way Meta counts.
- A caption Meta cannot carry (audio and sticker take none; over 1,024 characters) follows the media as text parts.
- `Image` with a webp mime goes as a sticker (Meta's images are jpeg/png only); `Link` goes as text with the url and
  a link preview; any other `mediaType`, several attachments in one message, and content types other than
  Attachment / Notification (quick replies, cards) are refused as `unsupported_content` (`UnsupportedMessage`):
  sending the text alone would drop the choices the agent offered.
- Templates: `namespace@name` -> name (the namespace is not needed by the Cloud API); language `en-US` -> `en_US`.
  Parameters named 1, 2, ... (or unnamed) are positional in that order; other names go as Meta's `parameter_name`
  (named templates). A template without an id or a language is refused (`malformed_template`).
- Reply context: Genesys documents none on this webhook; when `relatedMessages[]` carries a message whose
  `channel.messageId` looks like a wamid (the id the bridge gave the customer's message inbound), the first part
  answers it (`context.message_id`). Unverified against a live Genesys.
- Recipient: `to` is `channel.to.id` (for `Phone`, digits only: a leading `+` is dropped). A BSUID (`Opaque`) goes in
  `to` too, as Meta's send body has one recipient field in docs/reference.md; the runtime may pass another `to`.
- `biz_opaque_callback_data` carries the Genesys id, the part and the recipient (`callback_data`): a status webhook
  that outruns the send's own answer still finds its Genesys message (`parse_callback_data`).
- `Receipt` bodies posted to this webhook, `Event`s other than typing and typing `Off` are skipped, with no receipt.

The shapes are in genesys_outbound.py (decoded) and meta_send.py (sent), the results in outbound_results.py, long
text in long_text.py, the final bodies in meta_bodies.py.
"""

from __future__ import annotations

import mimetypes

import msgspec

from wabridge.codecs.genesys_outbound import Attachment, OpenOutboundNormalizedMessage, Recipient, TemplateParameter
from wabridge.codecs.long_text import _utf16_len, split_text
from wabridge.codecs.meta_send import (
    MetaComponent,
    MetaLanguage,
    MetaMedia,
    MetaMessage,
    MetaParameter,
    MetaTemplate,
    MetaText,
)
from wabridge.codecs.outbound_results import (
    _SKIP_RECEIPT,
    TEXT_PARTS_MAX,
    MediaToFetch,
    OutboundDecodeError,
    OutboundResult,
    OutboundSkipped,
    Send,
    Typing,
    _Refused,
)
from wabridge.codecs.receipts import IdType, MetaMediaType, bare_mime, media_problem

CAPTION_MAX = 1024
_ID_MAX = 256  # characters of an id that keys a tracking row
_DETAIL_MAX = 300

_NOT_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_decoder = msgspec.json.Decoder(OpenOutboundNormalizedMessage)
_any_decoder = msgspec.json.Decoder()


class _LooseRecipient(msgspec.Struct):
    id: object = None
    idType: object = None


class _LooseChannel(msgspec.Struct):
    to: object = None


class _Envelope(msgspec.Struct):
    id: object = None
    channel: object = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)

MEDIA_TYPES: dict[str, MetaMediaType] = {"Image": "image", "Video": "video", "Audio": "audio", "File": "document"}
CAPTIONED: frozenset[str] = frozenset({"image", "video", "document"})
HEADER_MEDIA: dict[str, MetaMediaType] = {"Image": "image", "Video": "video", "File": "document"}


def decode_outbound(body: bytes) -> OutboundResult:
    """What to do with one Genesys outbound webhook body. Raises OutboundDecodeError only."""
    try:
        msg = _decoder.decode(body)
    except (msgspec.ValidationError, UnicodeDecodeError) as exc:
        return _malformed(body, exc)
    except _NOT_JSON as exc:
        raise OutboundDecodeError(f"not JSON: {str(exc)[:_DETAIL_MAX]}") from None
    to_id, to_id_type = _recipient(msg.channel.to if msg.channel is not None else None)
    message_id = _usable(msg.id)
    try:
        return _outbound(msg, message_id, to_id, to_id_type)
    except _Refused as refused:
        return _skip(refused.reason, refused.detail, message_id, to_id, to_id_type)
    except Exception as exc:  # the second line of totality: a bug costs this message, not the runtime
        return _skip(
            "malformed_message", f"unexpected {type(exc).__name__}: {str(exc)[:200]!r}", message_id, to_id, to_id_type
        )


def _skip(
    reason: str, detail: str, message_id: str | None, to_id: str | None, to_id_type: IdType | None
) -> OutboundSkipped:
    return OutboundSkipped(
        reason=reason,
        detail=detail[:_DETAIL_MAX],
        id=message_id,
        to_id=to_id,
        to_id_type=to_id_type,
        genesys_reason=_SKIP_RECEIPT[reason],
    )


def _malformed(body: bytes, exc: Exception) -> OutboundSkipped:
    """A body that is a JSON object with a field of the wrong type: skipped, with its id and recipient when those
    can still be read, so the agent gets a Failed receipt."""
    try:
        whole = _any_decoder.decode(body)
    except _NOT_JSON as not_json:
        raise OutboundDecodeError(f"not JSON: {str(not_json)[:_DETAIL_MAX]}") from None
    if not isinstance(whole, dict):
        raise OutboundDecodeError(f"not a JSON object: {type(whole).__name__}")
    envelope = _envelope_decoder.decode(body)
    channel = envelope.channel if isinstance(envelope.channel, dict) else {}
    to = channel.get("to")
    to_id, to_id_type = (
        _recipient(
            Recipient(
                id=to.get("id") if isinstance(to.get("id"), str) else None,
                id_type=to.get("idType") if isinstance(to.get("idType"), str) else None,
            )
        )
        if isinstance(to, dict)
        else (None, None)
    )
    return _skip("malformed_message", str(exc), _usable(envelope.id), to_id, to_id_type)


def _usable(value: object) -> str | None:
    """An id that can key a tracking row (PostgreSQL text refuses NUL), else None."""
    return value if isinstance(value, str) and 0 < len(value) <= _ID_MAX and "\x00" not in value else None


def _recipient(to: Recipient | None) -> tuple[str | None, IdType | None]:
    if to is None or to.id_type not in ("Phone", "Email", "Opaque"):
        return None, None
    value = _usable(to.id)
    if value is None or not value.strip() or any(ch.isspace() or ord(ch) < 32 for ch in value):
        return None, None
    if to.id_type == "Phone":
        digits = value.removeprefix("+")
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
            return None, None
        value = digits
    return value, to.id_type  # type: ignore[return-value]


def _outbound(
    msg: OpenOutboundNormalizedMessage, message_id: str | None, to_id: str | None, to_id_type: IdType | None
) -> OutboundResult:
    if message_id is None:
        raise _Refused("malformed_message", "no usable message id")
    if msg.type == "Receipt" or msg.direction not in (None, "Outbound"):
        raise _Refused("not_a_message", f"type {str(msg.type)[:32]!r}, direction {str(msg.direction)[:32]!r}")
    if msg.type == "Event":
        return _event(msg, message_id, to_id, to_id_type)
    if to_id is None or to_id_type is None:
        raise _Refused("missing_recipient", "channel.to has no usable id and idType")
    if to_id_type == "Email":
        raise _Refused("missing_recipient", "channel.to is an Email: WhatsApp needs a phone number or user id")
    kinds = {c.content_type for c in msg.content}
    if kinds - {"Attachment", "Notification"}:
        raise _Refused("unsupported_content", f"content types {sorted(map(str, kinds))[:5]}")
    if "Notification" in kinds:
        kind, parts, media = _template(msg)
    elif msg.content:
        kind, parts, media = _attachment(msg)
    elif msg.text and msg.text.strip():
        kind, parts, media = "text", _texts(msg.text), None
    else:
        raise _Refused("empty_message", "no text, attachment or template")
    return Send(
        id=message_id,
        conversation_id=_usable(msg.conversation_id),
        integration_id=_usable(msg.channel.id if msg.channel is not None else None),
        to_id=to_id,
        to_id_type=to_id_type,
        kind=kind,
        parts=tuple(parts),
        media=media,
        reply_to=_reply_to(msg),
    )


def _event(
    msg: OpenOutboundNormalizedMessage, message_id: str, to_id: str | None, to_id_type: IdType | None
) -> OutboundResult:
    typing_on = any(
        e.event_type == "Typing" and (e.typing is None or e.typing.type in (None, "On")) for e in msg.events
    )
    if not typing_on:
        raise _Refused("unsupported_event", f"events {[str(e.event_type)[:32] for e in msg.events[:5]]}")
    if to_id is None or to_id_type is None:
        raise _Refused("unsupported_event", "typing without a usable channel.to")
    return Typing(
        id=message_id,
        conversation_id=_usable(msg.conversation_id),
        integration_id=_usable(msg.channel.id if msg.channel is not None else None),
        to_id=to_id,
        to_id_type=to_id_type,
    )


def _draft(type_: str, **payload: object) -> MetaMessage:
    return MetaMessage(messaging_product="whatsapp", recipient_type="individual", to="", type=type_, **payload)  # type: ignore[arg-type]


def _texts(text: str, preview_url: bool = False) -> list[MetaMessage]:
    parts = split_text(text, max_parts=TEXT_PARTS_MAX)
    if len(parts) > TEXT_PARTS_MAX:
        raise _Refused("text_too_long", f"{_utf16_len(text)} characters: over {TEXT_PARTS_MAX} WhatsApp messages")
    return [_draft("text", text=MetaText(body=part, preview_url=preview_url)) for part in parts]


def _attachment(msg: OpenOutboundNormalizedMessage) -> tuple[str, list[MetaMessage], MediaToFetch | None]:
    if len(msg.content) > 1:
        raise _Refused("unsupported_content", f"{len(msg.content)} attachments in one message")
    att = msg.content[0].attachment
    if att is None:
        raise _Refused("malformed_attachment", "an Attachment content without an attachment")
    url = att.url or ""
    if not url.startswith(("https://", "http://")) or len(url) > 8192:
        raise _Refused("malformed_attachment", f"attachment url {url[:64]!r}")
    caption = "\n".join(dict.fromkeys(t.strip() for t in (att.text, msg.text) if t and t.strip()))
    if att.media_type == "Link":
        return "link", _texts("\n".join(filter(None, (caption, url))), preview_url=True), None
    meta_type = MEDIA_TYPES.get(att.media_type or "")
    if meta_type is None:
        raise _Refused("unsupported_content", f"mediaType {str(att.media_type)[:32]!r}")
    filename = att.filename if att.filename and len(att.filename) <= 255 and "\x00" not in att.filename else None
    mime = bare_mime(att.mime) or (bare_mime(mimetypes.guess_type(filename, strict=False)[0]) if filename else None)
    if meta_type == "image" and mime == "image/webp":
        meta_type = "sticker"
    size = att.content_size_bytes if isinstance(att.content_size_bytes, int) else None
    media = MediaToFetch(
        url=url, media_type=att.media_type or "", meta_type=meta_type, mime=mime, filename=filename, size=size
    )
    _check(media, att.content_size_bytes)
    fits = meta_type in CAPTIONED and _utf16_len(caption) <= CAPTION_MAX
    payload = MetaMedia(
        caption=(caption or None) if fits else None, filename=filename if meta_type == "document" else None
    )
    parts = [_draft(meta_type, **{meta_type: payload})]
    if caption and not fits:
        parts += _texts(caption)  # refused past TEXT_PARTS_MAX there: one media part more is within the bound
    return meta_type, parts, media


def _check(media: MediaToFetch, size: object) -> None:
    problem = media_problem(media.meta_type, media.mime, size)
    if problem == "MediaTypeNotAllowed":
        raise _Refused("media_type_not_allowed", f"{media.mime} is not taken as a WhatsApp {media.meta_type}")
    if problem == "InvalidMediaContentLength":
        raise _Refused("media_too_large", f"{size} bytes is over WhatsApp's limit for a {media.meta_type}")


def _template(msg: OpenOutboundNormalizedMessage) -> tuple[str, list[MetaMessage], MediaToFetch | None]:
    items = [c for c in msg.content if c.content_type == "Notification"]
    if len(msg.content) > 1 or items[0].template is None:
        raise _Refused(
            "unsupported_content" if len(msg.content) > 1 else "malformed_template",
            "a Notification must be the message's one content item, with a template",
        )
    tpl = items[0].template
    name = (tpl.id or "").rpartition("@")[2].strip()
    language = (tpl.language or "").strip().replace("-", "_")
    if not name or len(name) > 512 or not language or len(language) > 16:
        raise _Refused("malformed_template", f"template id {str(tpl.id)[:64]!r}, language {str(tpl.language)[:16]!r}")
    components: list[MetaComponent] = []
    media: MediaToFetch | None = None
    header = tpl.header
    if header is not None and header.type == "Media":
        media = _header_media(header.media)
        components.append(MetaComponent("header", [_header_parameter(media.meta_type)]))
    elif header is not None and header.parameters:
        components.append(MetaComponent("header", _parameters(header.parameters)))
    if tpl.body is not None and tpl.body.parameters:
        components.append(MetaComponent("body", _parameters(tpl.body.parameters)))
    template = MetaTemplate(name=name, language=MetaLanguage(language), components=components)
    return "template", [_draft("template", template=template)], media


def _header_media(att: Attachment | None) -> MediaToFetch:
    if att is None or not (att.url or "").startswith(("https://", "http://")) or len(att.url or "") > 8192:
        raise _Refused("malformed_template", "a Media header without an http(s) url")
    meta_type = HEADER_MEDIA.get(att.media_type or "")
    if meta_type is None:
        raise _Refused("unsupported_content", f"template header mediaType {str(att.media_type)[:32]!r}")
    filename = att.filename if att.filename and len(att.filename) <= 255 and "\x00" not in att.filename else None
    mime = bare_mime(att.mime) or (bare_mime(mimetypes.guess_type(filename, strict=False)[0]) if filename else None)
    size = att.content_size_bytes if isinstance(att.content_size_bytes, int) else None
    media = MediaToFetch(
        url=att.url or "", media_type=att.media_type or "", meta_type=meta_type, mime=mime, filename=filename, size=size
    )
    _check(media, att.content_size_bytes)
    return media


def _header_parameter(meta_type: str) -> MetaParameter:
    """The header's media slot, filled with the uploaded id by `meta_body` (HEADER_MEDIA: image, video or document)."""
    slot = MetaMedia()
    return MetaParameter(
        meta_type,
        image=slot if meta_type == "image" else None,
        video=slot if meta_type == "video" else None,
        document=slot if meta_type == "document" else None,
    )


def _parameters(params: list[TemplateParameter]) -> list[MetaParameter]:
    """Positional when every name is a number (or none is given), in that number's order; named otherwise."""
    if any(not p.text for p in params):
        raise _Refused("malformed_template", "a template parameter without text")
    names = [(p.name or "").strip() for p in params]
    if all(n.isascii() and n.isdigit() and len(n) < 10 for n in names):
        ordered = [p for _, p in sorted(zip(map(int, names), params, strict=True), key=lambda pair: pair[0])]
        return [MetaParameter("text", text=p.text) for p in ordered]
    if not any(names):
        return [MetaParameter("text", text=p.text) for p in params]
    if not all(names):
        raise _Refused("malformed_template", "some template parameters named, some not")
    return [MetaParameter("text", text=p.text, parameter_name=name) for name, p in zip(names, params, strict=True)]


def _reply_to(msg: OpenOutboundNormalizedMessage) -> str | None:
    for related in msg.related_messages:
        wamid = related.channel.message_id if related.channel is not None else None
        if wamid and wamid.startswith("wamid.") and _usable(wamid) and len(wamid) <= 128:
            return wamid
    return None
