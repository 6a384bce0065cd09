"""Genesys Cloud Open Messaging inbound message (`OpenInboundNormalizedMessage`), as msgspec Structs.

Field names and enum values are Genesys's own (docs/reference.md, section 2). Flags, once for all Structs here:
- `rename="camel"`: Genesys spells fields in camelCase (`messageId`, `idType`, `mediaType`, `customAttributes`);
- `omit_defaults=True`: an absent field is left out of the JSON, never sent as `null`;
- `frozen=True`: a built message is a value; `with_media_url` and friends return a changed copy;
- `gc=False`: these values never form reference cycles, so the garbage collector need not track them.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

IdType = Literal["Phone", "Email", "Opaque"]
MediaType = Literal["Image", "Video", "Audio", "File", "Link"]


class OpenMessagingFrom(Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    id: str
    id_type: IdType
    nickname: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class ChannelMetadata(Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    custom_attributes: dict[str, str] | None = None


class OpenInboundMessageChannel(Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    message_id: str
    time: str
    # `from` is a Python keyword: the field is `from_` here, "from" on the wire
    from_: OpenMessagingFrom = msgspec.field(name="from")
    metadata: ChannelMetadata | None = None


class OpenMessageAttachment(Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    media_type: MediaType
    url: str | None = None
    mime: str | None = None
    filename: str | None = None
    text: str | None = None  # the caption
    sha256: str | None = None


class OpenMessageContent(Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    # `OpenInboundMessageContent` in Genesys's API has one field, `attachment` (checked against the official SDK's
    # model): no `contentType` on the inbound side, unlike the outbound `OpenMessageContent`.
    attachment: OpenMessageAttachment


class OpenInboundNormalizedMessage(Struct, rename="camel", omit_defaults=True, frozen=True, gc=False):
    channel: OpenInboundMessageChannel
    text: str | None = None
    content: list[OpenMessageContent] | None = None
    metadata: dict[str, str] | None = None


_encoder = msgspec.json.Encoder()


def encode_genesys(msg: OpenInboundNormalizedMessage) -> bytes:
    """The JSON body for POST .../inbound/open/message (one module-level Encoder, reused)."""
    return _encoder.encode(msg)
