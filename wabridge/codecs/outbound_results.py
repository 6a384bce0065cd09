"""What the outbound codec hands the runtime: `Send`, `Typing` or `OutboundSkipped` (and why), and its errors."""

from __future__ import annotations

from msgspec import Struct

from wabridge.codecs.meta_send import MetaMessage
from wabridge.codecs.receipts import IdType, MetaMediaType, ReasonCode

TEXT_PARTS_MAX = 8  # 32,768 characters


class MediaToFetch(Struct, frozen=True, kw_only=True, gc=False):
    """The agent's file: download `url` (with the Genesys token when the host is Genesys's), check it again with
    `receipts.media_problem(meta_type, <its content type>, <its size>)`, upload it to Meta, pass the id to
    `meta_body`."""

    url: str
    media_type: str  # Genesys's mediaType
    meta_type: MetaMediaType
    mime: str | None = None
    filename: str | None = None
    size: int | None = None


class Send(Struct, tag=True, frozen=True, kw_only=True, gc=False):
    id: str  # the Genesys message id: de-duplication key (Genesys retries) and the receipt's id
    conversation_id: str | None = None
    integration_id: str | None = None
    to_id: str
    to_id_type: IdType
    kind: str  # text | link | image | video | audio | document | sticker | template
    parts: tuple[MetaMessage, ...]  # in send order; receipts.combined joins their statuses
    media: MediaToFetch | None = None
    reply_to: str | None = None  # wamid the first part answers


class Typing(Struct, tag=True, frozen=True, kw_only=True, gc=False):
    id: str
    conversation_id: str | None = None
    integration_id: str | None = None
    to_id: str
    to_id_type: IdType


class OutboundSkipped(Struct, tag=True, frozen=True, kw_only=True, gc=False):
    """Nothing sent. `genesys_reason`: the Failed receipt the agent must see (None: no receipt is owed, or, without
    `id` and `to_id`, none can be addressed)."""

    reason: str
    detail: str
    id: str | None = None
    to_id: str | None = None
    to_id_type: IdType | None = None
    genesys_reason: ReasonCode | None = None


OutboundResult = Send | Typing | OutboundSkipped

OUTBOUND_SKIP_REASONS = {
    "malformed_message": "a field of the wrong type, or no usable message id",
    "not_a_message": "a Receipt, or a message whose direction is not Outbound",
    "unsupported_event": "an Event other than typing On",
    "missing_recipient": "no usable channel.to id / idType",
    "empty_message": "no text, attachment or template",
    "unsupported_content": "a content type, media type or combination WhatsApp is not sent (quick replies, cards)",
    "malformed_attachment": "an attachment without an http(s) url",
    "media_type_not_allowed": "a mime type Meta does not take for that media type",
    "media_too_large": "a file over Meta's size limit for its media type",
    "malformed_template": "a template without an id, a language, or with an empty parameter",
    "text_too_long": f"text that would take more than {TEXT_PARTS_MAX} WhatsApp messages",
}
_SKIP_RECEIPT: dict[str, ReasonCode | None] = {
    "malformed_message": "InvalidMessageStructure",
    "not_a_message": None,
    "unsupported_event": None,
    "missing_recipient": "InvalidDestination",
    "empty_message": "InvalidMessageStructure",
    "unsupported_content": "UnsupportedMessage",
    "malformed_attachment": "InvalidMessageStructure",
    "media_type_not_allowed": "MediaTypeNotAllowed",
    "media_too_large": "InvalidMediaContentLength",
    "malformed_template": "InvalidMessageStructure",
    "text_too_long": "MessageNotAllowed",
}


class OutboundDecodeError(ValueError):
    """The body is not JSON, or not a JSON object: the sender's fault, answered with 400."""


class _Refused(Exception):
    """Inside the decoder: this message is skipped, with this reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail
