"""Meta's send bodies (POST /<PHONE_NUMBER_ID>/messages, docs/reference.md section 4), as msgspec Structs: the drafts
codecs/outbound.py builds and codecs/meta_bodies.py finishes."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

# omit_defaults: an absent field is left out, never sent as null. The fields every body must carry have no default.


class MetaText(Struct, omit_defaults=True, frozen=True, gc=False):
    body: str
    preview_url: bool = False


class MetaMedia(Struct, omit_defaults=True, frozen=True, gc=False):
    """`id` (uploaded) or `link`, never both; a draft has neither until `meta_body` fills one."""

    id: str | None = None
    link: str | None = None
    caption: str | None = None
    filename: str | None = None


class MetaLanguage(Struct, frozen=True, gc=False):
    code: str


class MetaParameter(Struct, omit_defaults=True, frozen=True, gc=False):
    type: str  # text | image | video | document
    text: str | None = None
    parameter_name: str | None = None
    image: MetaMedia | None = None
    video: MetaMedia | None = None
    document: MetaMedia | None = None


class MetaComponent(Struct, frozen=True, gc=False):
    type: str  # header | body
    parameters: list[MetaParameter]


class MetaTemplate(Struct, omit_defaults=True, frozen=True, gc=False):
    name: str
    language: MetaLanguage
    components: list[MetaComponent] = []


class MetaContext(Struct, frozen=True, gc=False):
    message_id: str


class MetaMessage(Struct, omit_defaults=True, frozen=True, kw_only=True, gc=False):
    """POST /<PHONE_NUMBER_ID>/messages. In a `Send`, a draft: `to` empty until `meta_body` sets it."""

    messaging_product: Literal["whatsapp"]
    recipient_type: Literal["individual"]
    to: str
    type: str  # text | image | video | audio | document | sticker | template
    context: MetaContext | None = None
    biz_opaque_callback_data: str | None = None
    text: MetaText | None = None
    image: MetaMedia | None = None
    video: MetaMedia | None = None
    audio: MetaMedia | None = None
    document: MetaMedia | None = None
    sticker: MetaMedia | None = None
    template: MetaTemplate | None = None


class MetaTypingIndicator(Struct, frozen=True, gc=False):
    type: str


class MetaTyping(Struct, frozen=True, kw_only=True, gc=False):
    messaging_product: Literal["whatsapp"]
    status: Literal["read"]
    message_id: str
    typing_indicator: MetaTypingIndicator
