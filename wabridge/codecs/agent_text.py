"""Readable text for the agent from WhatsApp messages that are not plain text or media.

Each renderer returns the text the agent sees and adds the structured data to `meta` (the Genesys top-level
`metadata`, `dict[str, str]`), under keys named by Meta's own field paths (`location.latitude`,
`reaction.message_id`, `order.product_items`...), so a flow or a script can find them by the Meta documentation.
Values are bounded (METADATA_VALUE_MAX); nested data is stored as compact JSON.
"""

from __future__ import annotations

import json

import msgspec

from wabridge.codecs.meta import Edit, Interactive, Location, Message, Order, Reaction, Revoke, SharedContact, System

METADATA_VALUE_MAX = 4096  # characters per metadata value: Meta's own text limit; beyond that it is not data
_LIST_MAX = 50  # contacts / order items rendered; the rest is counted

# Types Meta has introduced that carry no customer content we forward: a plain sentence for the agent.
NEWER_TYPES = {
    "request_welcome": "The customer opened the chat.",
    "edit": "The customer edited an earlier message.",
    "revoke": "The customer deleted an earlier message.",
}


def put(meta: dict[str, str], key: str, value: object) -> None:
    """Store one metadata value as a bounded string; None and empty values are left out."""
    if value is None or value == "":
        return
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    meta[key] = text[:METADATA_VALUE_MAX]


def coordinate(value: float | str | None, bound: float) -> float | None:
    """A latitude (bound 90) or longitude (bound 180) as a number, or None when it is not one."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and -bound <= number <= bound else None


def location_text(loc: Location, meta: dict[str, str]) -> str:
    latitude, longitude = coordinate(loc.latitude, 90.0), coordinate(loc.longitude, 180.0)
    put(meta, "location.latitude", latitude)
    put(meta, "location.longitude", longitude)
    put(meta, "location.name", loc.name)
    put(meta, "location.address", loc.address)
    put(meta, "location.url", loc.url)
    lines = ["Shared a location"]
    name = None if loc.name and loc.address and loc.address.startswith(loc.name) else loc.name
    place = ", ".join(p for p in (name, loc.address) if p)
    if place:
        lines.append(place)
    if latitude is not None and longitude is not None:
        lines.append(f"https://maps.google.com/?q={latitude},{longitude}")
    if loc.url:
        lines.append(loc.url)
    return "\n".join(lines)


def _contact_line(card: SharedContact) -> str:
    name = card.name.formatted_name if card.name and card.name.formatted_name else None
    if not name and card.name:
        name = " ".join(p for p in (card.name.first_name, card.name.last_name) if p) or None
    parts = [name or "(no name)"]
    parts += [f"{p.phone} ({p.type})" if p.type else p.phone for p in card.phones if p.phone]
    parts += [e.email for e in card.emails if e.email]
    if card.org and card.org.company:
        parts.append(card.org.company)
    return " - ".join(parts)


def contacts_text(cards: list[SharedContact], meta: dict[str, str]) -> str:
    put(meta, "contacts", [_card_data(c) for c in cards[:_LIST_MAX]])
    lines = [f"Shared {len(cards)} contact{'s' if len(cards) != 1 else ''}:"]
    lines += [_contact_line(card) for card in cards[:_LIST_MAX]]
    if len(cards) > _LIST_MAX:
        lines.append(f"... and {len(cards) - _LIST_MAX} more")
    return "\n".join(lines)


def _card_data(card: SharedContact) -> dict[str, object]:
    data: dict[str, object] = {
        "name": card.name.formatted_name if card.name else None,
        "phones": [{"phone": p.phone, "wa_id": p.wa_id, "type": p.type} for p in card.phones],
        "emails": [e.email for e in card.emails],
    }
    # The rest of the card only when present, so the common card stays short.
    if card.org is not None and (card.org.company or card.org.department or card.org.title):
        data["org"] = {k: v for k, v in msgspec.structs.asdict(card.org).items() if v}
    if card.birthday:
        data["birthday"] = card.birthday
    if card.addresses:
        data["addresses"] = [{k: v for k, v in msgspec.structs.asdict(a).items() if v} for a in card.addresses]
    if card.urls:
        data["urls"] = [u.url for u in card.urls if u.url]
    return data


def interactive_text(reply: Interactive, meta: dict[str, str]) -> str | None:
    """The chosen button / list row / submitted form; None when the payload has no reply we know."""
    put(meta, "interactive.type", reply.type)
    chosen = reply.button_reply or reply.list_reply
    if chosen is not None:
        kind = "button_reply" if reply.button_reply is not None else "list_reply"
        put(meta, f"interactive.{kind}.id", chosen.id)
        put(meta, f"interactive.{kind}.title", chosen.title)
        put(meta, f"interactive.{kind}.description", chosen.description)
        text = chosen.title or chosen.id or ""
        return f"{text}\n{chosen.description}" if chosen.description else text
    form = reply.nfm_reply
    if form is not None:
        put(meta, "interactive.nfm_reply.name", form.name)
        put(meta, "interactive.nfm_reply.response_json", form.response_json)
        lines = [f"Submitted a form{': ' + form.name if form.name else ''}"]
        lines += _form_fields(form.response_json)
        return "\n".join(lines)
    call = reply.call_permission_reply
    if call is not None:
        for name in call.__struct_fields__:
            put(meta, f"interactive.call_permission_reply.{name}", getattr(call, name))
        answer = {"accept": "allowed", "reject": "declined"}.get(call.response or "", "answered")
        return f"The customer {answer} being called{' (permanently)' if call.is_permanent else ''}."
    return None


def _form_fields(response_json: str | None) -> list[str]:
    """`key: value` lines of a flow's answers; the raw JSON when it is not an object (it need not be)."""
    if not response_json:
        return []
    try:
        answers = json.loads(response_json[:METADATA_VALUE_MAX])
    except (ValueError, RecursionError):
        return [response_json[:METADATA_VALUE_MAX]]
    if not isinstance(answers, dict):
        return [response_json[:METADATA_VALUE_MAX]]
    return [f"{k}: {v}" for k, v in list(answers.items())[:_LIST_MAX] if k != "flow_token"]


def reaction_text(reaction: Reaction, meta: dict[str, str]) -> str:
    put(meta, "reaction.message_id", reaction.message_id)
    put(meta, "reaction.emoji", reaction.emoji)
    if reaction.emoji:
        return f"Reacted {reaction.emoji} to a message"
    put(meta, "reaction.removed", True)
    return "Removed a reaction from a message"


def order_text(order: Order, meta: dict[str, str]) -> str:
    put(meta, "order.catalog_id", order.catalog_id)
    put(meta, "order.text", order.text)
    items = order.product_items
    put(
        meta,
        "order.product_items",
        [
            {
                "product_retailer_id": i.product_retailer_id,
                "quantity": i.quantity,
                "item_price": i.item_price,
                "currency": i.currency,
            }
            for i in items[:_LIST_MAX]
        ],
    )
    lines = [f"Placed an order ({len(items)} item{'s' if len(items) != 1 else ''}):"]
    for item in items[:_LIST_MAX]:
        price = f" at {item.item_price} {item.currency or ''}".rstrip() if item.item_price is not None else ""
        lines.append(f"{item.quantity if item.quantity is not None else '?'} x {item.product_retailer_id}{price}")
    if len(items) > _LIST_MAX:
        lines.append(f"... and {len(items) - _LIST_MAX} more")
    if order.text:
        lines.append(order.text)
    return "\n".join(lines)


def system_text(system: System, meta: dict[str, str]) -> str:
    put(meta, "system.type", system.type)
    put(meta, "system.wa_id", system.wa_id)
    put(meta, "system.new_wa_id", system.new_wa_id)
    put(meta, "system.identity", system.identity)
    put(meta, "system.user_id", system.user_id)
    put(meta, "system.previous_user_id", system.previous_user_id)
    put(meta, "system.parent_user_id", system.parent_user_id)
    put(meta, "system.previous_parent_user_id", system.previous_parent_user_id)
    return f"[WhatsApp] {system.body or system.type or 'system notice'}"


def edit_text(edit: Edit, meta: dict[str, str]) -> str:
    """An edit names the message it changes and carries what it says now (a text, or a media message's caption)."""
    put(meta, "edit.original_message_id", edit.original_message_id)
    new = edit.message
    now = None
    if new is not None:
        put(meta, "edit.type", new.type)
        payload = getattr(new, new.type, None) if new.type in ("image", "video", "document") else None
        now = new.text.body if new.text is not None else (payload.caption if payload is not None else None)
    return f"{NEWER_TYPES['edit']} It now reads: {now}" if now else NEWER_TYPES["edit"]


def revoke_text(revoke: Revoke, meta: dict[str, str]) -> str:
    put(meta, "revoke.original_message_id", revoke.original_message_id)
    return NEWER_TYPES["revoke"]


def unsupported_text(msg: Message, meta: dict[str, str]) -> str:
    """Any type we cannot forward as content: still a readable line, so the agent knows something came."""
    if msg.type in NEWER_TYPES:
        return NEWER_TYPES[msg.type]
    kind = msg.unsupported.type if msg.unsupported is not None and msg.unsupported.type else msg.type or "unknown"
    put(meta, "unsupported.type", kind)
    reason = next((e.title for e in msg.errors if e.title), None)
    return f"[The customer sent a WhatsApp message of a type that cannot be shown here: {kind[:64]}" + (
        f" ({reason[:200]})]" if reason else "]"
    )
