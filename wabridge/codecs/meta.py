"""Meta WhatsApp Cloud API webhook payloads, as msgspec Structs (decode side only).

Schema evolution rule: Meta adds fields and message types without notice, so
- unknown fields are ignored (msgspec's default, never `forbid_unknown_fields`);
- every field has a default, so a missing one never fails a decode: the transform decides what is required;
- a message's `type` is a plain `str`, not an enum, and each type's payload is an optional field named like the
  type: a type we do not know decodes fine and reaches the agent as "unsupported".
Fields whose JSON type Meta is not consistent about (numbers sent as strings) are typed loosely (`str | int | float`).
"""

from __future__ import annotations

import msgspec
from msgspec import Raw, Struct

Number = int | float | str  # Meta sends prices, quantities and timestamps as numbers or strings


class _Decoded(Struct, gc=False):
    """Base of every Meta Struct. `gc=False`: decoded JSON never forms reference cycles, and untracked Structs
    skip the collector's bookkeeping (msgspec perf tips)."""


class Metadata(_Decoded):
    display_phone_number: str = ""
    phone_number_id: str = ""


class Profile(_Decoded):
    name: str | None = None
    username: str | None = None


class Contact(_Decoded):
    profile: Profile | None = None
    wa_id: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None


class ErrorData(_Decoded):
    details: str | None = None


class Error(_Decoded):
    code: int | str | None = None  # a number per Meta's docs; a string one must not cost the message
    title: str | None = None
    message: str | None = None
    details: str | None = None  # the older on-premise shape put details at the top
    error_data: ErrorData | None = None


class ReferredProduct(_Decoded):
    catalog_id: str | None = None
    product_retailer_id: str | None = None


class Context(_Decoded):
    # `from` is a Python keyword: renamed field
    from_: str | None = msgspec.field(default=None, name="from")
    id: str | None = None
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: ReferredProduct | None = None


class WelcomeMessage(_Decoded):
    text: str | None = None  # the ad's greeting the customer saw before writing


class Referral(_Decoded):
    """Click-to-WhatsApp ad or post the customer came from; may ride on any message type."""

    source_url: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    body: str | None = None
    headline: str | None = None
    media_type: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None
    ctwa_clid: str | None = None
    welcome_message: WelcomeMessage | None = None


class Text(_Decoded):
    body: str = ""


class Media(_Decoded):
    """image, video, audio, voice, document and sticker share one shape; each uses a subset."""

    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    url: str | None = None
    voice: bool = False
    animated: bool = False


class Location(_Decoded):
    # Numbers per Meta's docs; a numeric string is read too rather than lose the message (agent_text.coordinate).
    latitude: float | str | None = None
    longitude: float | str | None = None
    name: str | None = None
    address: str | None = None
    url: str | None = None


class ContactName(_Decoded):
    formatted_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class ContactPhone(_Decoded):
    phone: str | None = None
    wa_id: str | None = None
    type: str | None = None


class ContactEmail(_Decoded):
    email: str | None = None
    type: str | None = None


class ContactOrg(_Decoded):
    company: str | None = None
    department: str | None = None
    title: str | None = None


class ContactAddress(_Decoded):
    street: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    country_code: str | None = None
    type: str | None = None


class ContactUrl(_Decoded):
    url: str | None = None
    type: str | None = None


class SharedContact(_Decoded):
    """A contact card the customer shared (type `contacts`), not the sender's own profile."""

    name: ContactName | None = None
    phones: list[ContactPhone] = []
    emails: list[ContactEmail] = []
    org: ContactOrg | None = None
    birthday: str | None = None
    addresses: list[ContactAddress] = []
    urls: list[ContactUrl] = []


class Reply(_Decoded):
    id: str | None = None
    title: str | None = None
    description: str | None = None


class FlowReply(_Decoded):
    response_json: str | None = None
    body: str | None = None
    name: str | None = None


class CallPermissionReply(_Decoded):
    """The customer's answer to a request to call them (WhatsApp Business Calling)."""

    response: str | None = None  # accept / reject
    is_permanent: bool | None = None
    expiration_timestamp: Number | None = None
    response_source: str | None = None


class Interactive(_Decoded):
    type: str | None = None
    button_reply: Reply | None = None
    list_reply: Reply | None = None
    nfm_reply: FlowReply | None = None
    call_permission_reply: CallPermissionReply | None = None


class Button(_Decoded):
    payload: str | None = None
    text: str | None = None


class Reaction(_Decoded):
    message_id: str | None = None
    emoji: str | None = None  # empty or missing: the reaction was removed


class ProductItem(_Decoded):
    product_retailer_id: str | None = None
    quantity: Number | None = None
    item_price: Number | None = None
    currency: str | None = None


class Order(_Decoded):
    catalog_id: str | None = None
    text: str | None = None
    product_items: list[ProductItem] = []


class System(_Decoded):
    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    new_wa_id: str | None = None
    identity: str | None = None
    # BSUID changes (`user_changed_user_id`, and with a number change since Aug 2026): the new and previous ids
    user_id: str | None = None
    previous_user_id: str | None = None
    parent_user_id: str | None = None
    previous_parent_user_id: str | None = None


class Unsupported(_Decoded):
    type: str | None = None


class EditedContent(_Decoded):
    """What an edited message now says: its new text, or a media message's new caption."""

    type: str = ""
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    document: Media | None = None


class Edit(_Decoded):
    original_message_id: str | None = None
    message: EditedContent | None = None


class Revoke(_Decoded):
    original_message_id: str | None = None


class Message(_Decoded):
    """One inbound customer message. Only `id` and a sender are required, and the transform checks them."""

    from_: str | None = msgspec.field(default=None, name="from")
    from_user_id: str | None = None
    from_parent_user_id: str | None = None  # the BSUID across a business portfolio
    id: str | None = None
    timestamp: Number | None = None
    type: str = ""
    group_id: str | None = None
    context: Context | None = None
    referral: Referral | None = None
    errors: list[Error] = []
    text: Text | None = None
    image: Media | None = None
    video: Media | None = None
    audio: Media | None = None
    voice: Media | None = None  # on-premise API name for a voice note
    document: Media | None = None
    sticker: Media | None = None
    location: Location | None = None
    contacts: list[SharedContact] = []
    interactive: Interactive | None = None
    button: Button | None = None
    reaction: Reaction | None = None
    order: Order | None = None
    system: System | None = None
    unsupported: Unsupported | None = None
    edit: Edit | None = None  # WhatsApp Business app numbers (coexistence) only, as is revoke
    revoke: Revoke | None = None


class Status(_Decoded):
    """A receipt for a message the business sent (sent / delivered / read / played / failed)."""

    id: str | None = None
    status: str | None = None
    timestamp: Number | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    biz_opaque_callback_data: str | None = None
    errors: list[Error] = []


class Value(_Decoded):
    """A `messages` change. `messages` and `statuses` are typed here for the fast path (whole body in one decode)."""

    metadata: Metadata = msgspec.field(default_factory=Metadata)
    contacts: list[Contact] = []
    messages: list[Message] = []
    statuses: list[Status] = []
    errors: list[Error] = []


class Change(_Decoded):
    field: str = ""
    value: Value = msgspec.field(default_factory=Value)


class Entry(_Decoded):
    id: str | None = None
    changes: list[Change] = []


class Webhook(_Decoded):
    object: str = ""
    entry: list[Entry] = []


# --- the slow path: when the typed decode fails, the body is re-read in layers of `Raw` so that one bad entry,
# change or message is skipped alone. Each layer only states the shape it needs.


class RawValue(_Decoded):
    metadata: Metadata = msgspec.field(default_factory=Metadata)
    contacts: list[Raw] = []
    messages: list[Raw] = []
    statuses: list[Raw] = []
    errors: list[Raw] = []


class RawChange(_Decoded):
    field: str = ""
    value: Raw = Raw(b"null")


class RawEntry(_Decoded):
    id: str | None = None
    changes: list[Raw] = []


class RawWebhook(_Decoded):
    object: str = ""
    entry: list[Raw] = []
