"""The Genesys outbound webhook body (an agent's message, `OpenOutboundNormalizedMessage`, docs/reference.md section
3), as msgspec Structs: what codecs/outbound.py decodes."""

from __future__ import annotations

import msgspec
from msgspec import Struct


class _Decoded(Struct, rename="camel", gc=False):
    """Base of the Genesys outbound Structs: camelCase on the wire; every field defaulted, unknown ones ignored."""


class Recipient(_Decoded):
    id: str | None = None
    id_type: str | None = None
    nickname: str | None = None


class OutboundChannel(_Decoded):
    id: str | None = None  # the integration id
    platform: str | None = None
    type: str | None = None
    message_id: str | None = None
    to: Recipient | None = None
    from_: Recipient | None = msgspec.field(default=None, name="from")
    time: str | None = None


class Attachment(_Decoded):
    id: str | None = None
    media_type: str | None = None
    url: str | None = None
    mime: str | None = None
    filename: str | None = None
    text: str | None = None  # a caption
    sha256: str | None = None
    content_size_bytes: int | float | None = None


class TemplateParameter(_Decoded):
    name: str | None = None
    text: str | None = None


class TemplateHeader(_Decoded):
    type: str | None = None  # Text | Media
    text: str | None = None
    media: Attachment | None = None
    parameters: list[TemplateParameter] = []


class TemplateBody(_Decoded):
    text: str | None = None
    parameters: list[TemplateParameter] = []


class TemplateFooter(_Decoded):
    text: str | None = None


class Template(_Decoded):
    id: str | None = None  # for WhatsApp, namespace@name
    language: str | None = None
    header: TemplateHeader | None = None
    body: TemplateBody | None = None
    footer: TemplateFooter | None = None


class Content(_Decoded):
    content_type: str | None = None  # Attachment | Notification
    attachment: Attachment | None = None
    template: Template | None = None


class TypingEvent(_Decoded):
    type: str | None = None  # On | Off
    duration: int | float | None = None


class Event(_Decoded):
    event_type: str | None = None
    typing: TypingEvent | None = None


class RelatedChannel(_Decoded):
    message_id: str | None = None


class RelatedMessage(_Decoded):
    id: str | None = None
    channel: RelatedChannel | None = None


class OpenOutboundNormalizedMessage(_Decoded):
    id: str | None = None
    channel: OutboundChannel | None = None
    conversation_id: str | None = None
    direction: str | None = None
    originating_entity: str | None = None
    type: str | None = None  # Text | Structured | Receipt | Event
    text: str | None = None
    content: list[Content] = []
    events: list[Event] = []
    related_messages: list[RelatedMessage] = []
