"""Who sent a message: the identity rules.

Meta identifies a customer by phone number (`from` / `contacts[].wa_id`) and, since April 2026, also by a
business-scoped user id (BSUID: `from_user_id` / `contacts[].user_id`, e.g. `US.13491208655302741918`). Customers
who adopt a username may come with the BSUID alone. The rules, in order:

1. Phone: `from` (else the matching contact's `wa_id`) made of 1-20 digits
   -> Genesys `from.id` = that number, `idType` "Phone"; `Route.sender_id` = the number.
2. User id: otherwise `from_user_id`, else the matching contact's `user_id`, else a non-numeric `from`
   (Meta has put the BSUID in `from`) -> `from.id` = that id, `idType` "Opaque"; `Route.sender_id` = the id.
3. Neither -> the message is skipped as `missing_sender`.

`Route.wa_id` and `Route.user_id` carry whichever of the two Meta sent, so a later stage can alias them.
Consequence to know: a customer known by phone who later writes with a BSUID only gets a new `sender_id` (a new
conversation mapping) unless that alias is recorded.

The matching contact is the `contacts[]` item whose `wa_id` equals `from` or whose `user_id` equals `from_user_id`;
with a single contact, that one. Its `profile.name` becomes `nickname`, split at the first space into
`firstName` / `lastName` (a one-word name is a `firstName` only).
"""

from __future__ import annotations

from msgspec import Struct

from wabridge.codecs.genesys import IdType, OpenMessagingFrom
from wabridge.codecs.meta import Contact, Message

_MAX_ID = 128  # characters: longer ids are not Meta's, and they key caches and database rows


class Sender(Struct, frozen=True):
    sender_id: str
    id_type: IdType
    wa_id: str | None
    user_id: str | None
    from_: OpenMessagingFrom


class MissingSender(ValueError):
    pass


def _is_phone(value: str | None) -> bool:
    return value is not None and 0 < len(value) <= 20 and value.isascii() and value.isdigit()


def _usable(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value if 0 < len(value) <= _MAX_ID and value.isprintable() else None


def matching_contact(msg: Message, contacts: list[Contact]) -> Contact | None:
    if len(contacts) == 1:
        return contacts[0]
    for contact in contacts:
        if (msg.from_ and contact.wa_id == msg.from_) or (msg.from_user_id and contact.user_id == msg.from_user_id):
            return contact
    return None


def identify(msg: Message, contact: Contact | None) -> Sender:
    """The sender of `msg` by the rules above; raises MissingSender when there is none."""
    sent_from = _usable(msg.from_)
    wa_id = sent_from if _is_phone(sent_from) else None
    if wa_id is None and contact is not None and _is_phone(contact.wa_id):
        wa_id = contact.wa_id
    user_id = _usable(msg.from_user_id) or (_usable(contact.user_id) if contact is not None else None)
    if wa_id is not None:
        sender_id, id_type = wa_id, "Phone"
    elif user_id is not None:
        sender_id, id_type = user_id, "Opaque"
    elif sent_from is not None:  # rule 2: a non-numeric `from` is a user id
        sender_id = user_id = sent_from
        id_type = "Opaque"
    else:
        raise MissingSender("no phone number and no user id")
    name = contact.profile.name if contact is not None and contact.profile is not None else None
    name = name.strip()[:256] if name else None
    first = last = None
    if name:
        first, _, rest = name.partition(" ")
        last = rest.strip() or None
    return Sender(
        sender_id=sender_id,
        id_type=id_type,  # type: ignore[arg-type]
        wa_id=wa_id,
        user_id=user_id,
        from_=OpenMessagingFrom(id=sender_id, id_type=id_type, nickname=name or None, first_name=first, last_name=last),  # type: ignore[arg-type]
    )
