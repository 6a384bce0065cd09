"""The placeholder attachment url (`media:<media id>`) the transform leaves, and the media actor's two ways out: the
fetched media's url, or a text notice in its place."""

from __future__ import annotations

import msgspec

from wabridge.codecs.genesys import OpenInboundNormalizedMessage
from wabridge.codecs.results import Inbound

MEDIA_PLACEHOLDER = "media:"  # attachment url prefix until the media actor has a fetchable url


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
