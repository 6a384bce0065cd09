"""The final Meta bodies of a `Send` (recipient, uploaded media, reply context, callback data) and the typing
indicator, built from runtime facts."""

from __future__ import annotations

import msgspec
from msgspec import Struct

from wabridge.codecs.meta_send import MetaContext, MetaMedia, MetaTyping, MetaTypingIndicator
from wabridge.codecs.outbound import _NOT_JSON, _usable
from wabridge.codecs.outbound_results import Send
from wabridge.codecs.receipts import MEDIA_LIMITS, IdType

TYPING_INTERVAL = 5.0  # seconds between two typing indicators to one customer (Meta's shows for up to 25 s)
CALLBACK_MAX = 512  # bytes of biz_opaque_callback_data

_encoder = msgspec.json.Encoder()


def callback_data(send: Send, part: int) -> str:
    """biz_opaque_callback_data for part `part` of `send`: Meta echoes it in that message's status webhooks."""
    facts = {"g": send.id, "p": [part, len(send.parts)], "to": send.to_id, "t": send.to_id_type}
    data = _encoder.encode(facts)
    if len(data) > CALLBACK_MAX:
        data = _encoder.encode({"g": send.id, "p": [part, len(send.parts)]})
    return data.decode()


class CallbackFacts(Struct, frozen=True, gc=False):
    id: str
    part: int
    parts: int
    to_id: str | None = None
    to_id_type: IdType | None = None


class _Callback(Struct):
    g: str
    p: tuple[int, int]
    to: str | None = None
    t: IdType | None = None


_callback_decoder = msgspec.json.Decoder(_Callback)


def parse_callback_data(value: object) -> CallbackFacts | None:
    """The facts `callback_data` wrote, or None for anything else (a status for a message the bridge did not send)."""
    if not isinstance(value, str) or len(value) > CALLBACK_MAX:
        return None
    try:
        found = _callback_decoder.decode(value)
    except (*_NOT_JSON, msgspec.ValidationError):
        return None
    part, parts = found.p
    if _usable(found.g) is None or not 0 <= part < parts:
        return None
    return CallbackFacts(found.g, part, parts, found.to, found.t)


def meta_body(
    send: Send, part: int = 0, *, to: str | None = None, media_id: str | None = None, media_link: str | None = None
) -> bytes:
    """The JSON body of part `part` of `send`: recipient `to` (default `send.to_id`), the media by the id Meta gave
    its upload (or by `media_link`) where the draft has the media, reply context on the first part, callback data.
    Raises ValueError when the part needs media and neither is given."""
    draft = send.parts[part]
    changes: dict[str, object] = {"to": to or send.to_id, "biz_opaque_callback_data": callback_data(send, part)}
    if part == 0 and send.reply_to:
        changes["context"] = MetaContext(send.reply_to)
    if draft.type in MEDIA_LIMITS:  # image, video, audio, document, sticker
        changes[draft.type] = _filled(getattr(draft, draft.type), media_id, media_link)
    elif draft.template is not None and send.media is not None:
        components = [
            msgspec.structs.replace(
                c,
                parameters=[
                    msgspec.structs.replace(p, **{p.type: _filled(getattr(p, p.type), media_id, media_link)})
                    if p.type in ("image", "video", "document")
                    else p
                    for p in c.parameters
                ],
            )
            for c in draft.template.components
        ]
        changes["template"] = msgspec.structs.replace(draft.template, components=components)
    return _encoder.encode(msgspec.structs.replace(draft, **changes))


def _filled(media: MetaMedia, media_id: str | None, media_link: str | None) -> MetaMedia:
    if media_id:
        return msgspec.structs.replace(media, id=media_id, link=None)
    if media_link:
        return msgspec.structs.replace(media, id=None, link=media_link)
    raise ValueError("this message carries media: pass the media id of its upload (or a link)")


def typing_body(wamid: str) -> bytes:
    """Meta's typing indicator, shown on the customer's latest inbound message `wamid` (it also marks it read)."""
    return _encoder.encode(
        MetaTyping(
            messaging_product="whatsapp", status="read", message_id=wamid, typing_indicator=MetaTypingIndicator("text")
        )
    )


def typing_due(last_sent: float | None, now: float, interval: float = TYPING_INTERVAL) -> bool:
    """Whether a typing indicator may go to a customer whose last one went at `last_sent` (None: never)."""
    return last_sent is None or not (0 <= now - last_sent < interval)
