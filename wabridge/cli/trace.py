"""`wabridge trace ID`: everything the bridge knows about a message, in time order ("her photo never arrived: where
is it?").

ID is a wamid (Meta's message id), a Genesys message id, or a webhook id (every message of that webhook; the form
`WEBHOOK:TENANT` of the bridge's queue message ids works too). The story of each message: received (the webhook,
its shard, where the raw body is archived, the customer), each unusual step (a failed attempt tried again, a hold
while the tenant's Genesys was down, a hand-back to the queue, parking, the dead-letter queue, a replay), and its
state now (delivered: the Genesys conversation and message id; failed or dead-lettered: the error). Steps of the whole
webhook (parking) are shown with each of its messages.

An agent's message (outbound: Genesys → the customer) is found by its Genesys message id or its webhook id: its
story is the Genesys webhook, the hand-off to Meta (the wamid Meta gave each part), WhatsApp's statuses as they first
reached each (sent, delivered, read, failed) and the receipt the agent got. Not by one of Meta's wamids for it: they
sit space-separated in one column that no index covers, and a scan of every row per lookup is not worth it.
`--raw` prints the archived raw body too, read from its direction's bucket (webhooks-inbound, webhooks-outbound).
Not shown: a webhook still parked or in the dead-letter queue whose messages the worker never reached (their bodies
are not searched).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio
import msgspec

from wabridge.codecs.receipts import OutboundState, decode_state
from wabridge.engine.settings import load_settings
from wabridge.ports import (
    WEBHOOKS_BUCKET,
    WEBHOOKS_OUTBOUND_BUCKET,
    BackendUnavailable,
    MessageEvent,
    TrackingRecord,
)

FINAL_TEXT = {
    "received": "in flight (received, not settled yet)",
    "delivered": "delivered to Genesys",
    "failed": "failed (wabridge replay sends it again)",
    "dead-lettered": "dead-lettered (wabridge replay sends it again)",
    "unrouted": "unrouted: no tenant owns it",
    "duplicate": "seen only as a repeat",
}
# An agent's message: `delivered` means Meta accepted the send (the bridge's part done); WhatsApp's own statuses follow.
FINAL_TEXT_OUTBOUND = FINAL_TEXT | {
    "delivered": "handed to WhatsApp (Meta accepted the send)",
    "failed": "failed (the agent got a Failed receipt; wabridge replay sends it again)",
}
OUTBOUND = "outbound"


def meta_state(row: TrackingRecord) -> OutboundState | None:
    """What Meta said of an outbound row (codecs/receipts.OutboundState); None when there is nothing readable."""
    return decode_state(row.meta_status)


def archive_bucket(row: TrackingRecord) -> str:
    return WEBHOOKS_OUTBOUND_BUCKET if row.direction == OUTBOUND else WEBHOOKS_BUCKET


def register(sub) -> None:
    p = sub.add_parser(
        "trace",
        help="everything the bridge knows about one message",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("id", help="a wamid, a Genesys message id, or a webhook id")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.add_argument("--raw", action="store_true", help="also the raw webhook body, from the archive (it holds the text)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return anyio.run(_trace, load_settings(), args)


async def _trace(settings, args) -> int:
    from wabridge.adapters.backends import open_backends

    wanted = args.id.strip()
    raw = getattr(args, "raw", False)
    async with open_backends(settings, ports=("store", "objects") if raw else ("store",)) as backends:
        store = backends.store
        rows = await store.find_tracking(wanted)
        if not rows and ":" in wanted:  # a queue message id: `{webhook id}:{tenant}`
            webhook_id, _, tenant_id = wanted.partition(":")
            rows = [r for r in await store.find_tracking(webhook_id) if r.tenant_id == tenant_id]
        stories = []
        for row in rows:
            events = await store.list_events(
                tenant_id=row.tenant_id, wamids=[row.wamid], webhook_ids=[row.webhook_id] if row.webhook_id else []
            )
            stories.append((row, steps(row, [e for e in events if e.wamid in ("", row.wamid)])))
        bodies = [await _archived(backends.objects, row) for row, _ in stories] if raw else [None] * len(stories)
    if not stories:
        print(
            f"wabridge: no message known by {wanted!r} (a wamid, a Genesys message id or a webhook id)", file=sys.stderr
        )
        return 1
    if args.json:
        messages = [_as_json(row, story) for row, story in stories]
        if raw:
            for message, body in zip(messages, bodies, strict=True):
                message["raw"] = body.decode(errors="replace") if isinstance(body, bytes) else None
                message["raw_error"] = body if isinstance(body, str) else None
        print(msgspec.json.encode({"id": wanted, "messages": messages}).decode())
    else:
        texts = [_as_text(row, story) for row, story in stories]
        if raw:
            texts = [
                t + "\n  raw body: " + (b.decode(errors="replace") if isinstance(b, bytes) else f"({b})")
                for t, b in zip(texts, bodies, strict=True)
            ]
        print("\n\n".join(texts))
    return 0


async def _archived(objects, row: TrackingRecord) -> bytes | str:
    """The raw body the row's archive key names, in its direction's bucket; else why not (text)."""
    from wabridge.actors.archive import read_archived

    if not row.archive_key:
        return "not archived: the row has no archive key"
    try:
        return await read_archived(objects, row.archive_key, bucket=archive_bucket(row))
    except KeyError:
        return f"not found at {archive_bucket(row)}/{row.archive_key}"
    except BackendUnavailable as exc:
        return f"the object store is down: {exc}"


def steps(row: TrackingRecord, events: list[MessageEvent]) -> list[dict[str, Any]]:
    """The message's story, oldest first: received, its events, its state now."""
    received: dict[str, Any] = {
        "at": row.received_at or row.created_at,
        "step": "received",
        "detail": _received_detail(row),
    }
    final_at = row.updated_at or row.created_at
    story = [received]
    for event in events:
        if event.event == row.status and abs(event.at - final_at) < 2.0:
            continue  # the same fact as the final state below
        detail = event.detail if event.wamid else f"{event.detail} (its whole webhook)".lstrip()
        story.append({"at": event.at, "step": event.event, "detail": detail})
    state = meta_state(row) if row.direction == OUTBOUND else None
    if state is not None:  # WhatsApp's statuses, each when the message (all its parts) first reached it
        for status, at in state.at.items():
            story.append({"at": at, "step": f"whatsapp {status}", "detail": _parts_detail(state)})
    story.sort(key=lambda s: s["at"])
    story.append({"at": max(final_at, story[-1]["at"]), "step": row.status, "detail": _final_detail(row)})
    if state is not None and (state.receipt or state.receipt_error):
        story.append({"at": story[-1]["at"], "step": "receipt", "detail": _receipt_detail(state)})
    return story


def _parts_detail(state: OutboundState) -> str:
    statuses = [s or "no status yet" for s in state.parts]
    if len(statuses) == 1:
        return f"now {statuses[0]}"
    return "parts now: " + ", ".join(f"{i + 1}: {s}" for i, s in enumerate(statuses))


def _receipt_detail(state: OutboundState) -> str:
    if state.receipt is None:
        return f"none: Genesys refused it: {state.receipt_error[:300] if state.receipt_error else '?'}"
    text = f"{state.receipt} sent to the agent (Genesys accepted it)"
    return text + (f": {state.reason[:300]}" if state.receipt == "Failed" and state.reason else "")


def _received_detail(row: TrackingRecord) -> str:
    parts = []
    if row.webhook_id:
        parts.append(f"webhook {row.webhook_id}")
    if row.shard is not None:
        parts.append(f"shard {row.shard}")
    if row.direction == OUTBOUND:
        parts.insert(0, "the agent's message, from Genesys's outbound webhook")
    if row.archive_key:
        parts.append(f"archived at {archive_bucket(row)}/{row.archive_key}")
    if row.customer_id:
        parts.append(f"customer {row.customer_id}")
    return ", ".join(parts) or "(where from was not recorded: a row older than this command)"


def _final_detail(row: TrackingRecord) -> str:
    outbound = row.direction == OUTBOUND
    parts = [(FINAL_TEXT_OUTBOUND if outbound else FINAL_TEXT).get(row.status, row.status)]
    if outbound and row.meta_ids:
        parts.append(f"Meta wamid {row.meta_ids}" if " " not in row.meta_ids else f"Meta wamids {row.meta_ids}")
    if outbound and (state := meta_state(row)) is not None and state.parts:
        parts.append(f"WhatsApp: {_parts_detail(state)}")
    if row.conversation_id:
        parts.append(f"Genesys conversation {row.conversation_id}")
    if row.genesys_message_id:
        parts.append(f"Genesys message {row.genesys_message_id}")
    if row.media_key:
        parts.append(f"media at media-inbound/{row.media_key}")
    if row.attempts:
        parts.append(f"{row.attempts} attempt(s)")
    if row.error:
        parts.append(f"error: {row.error[:300]}")
    if row.duplicates:
        parts.append(f"came again {row.duplicates} time(s) since, not sent again")
    return "; ".join(parts)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _as_text(row: TrackingRecord, story: list[dict[str, Any]]) -> str:
    head = f"{row.wamid}  tenant {row.tenant_id}  {row.direction}  {row.type or '?'}"
    width = max(len(s["step"]) for s in story)
    lines = [head] + [f"  {iso(s['at'])}  {s['step']:<{width}}  {s['detail']}" for s in story]
    return "\n".join(lines)


def _as_json(row: TrackingRecord, story: list[dict[str, Any]]) -> dict[str, Any]:
    fields = {k: v for k, v in msgspec.structs.asdict(row).items() if k != "payload"}  # it holds the message text
    if row.direction == OUTBOUND:
        fields["meta_wamids"] = (row.meta_ids or "").split()
        state = meta_state(row)
        fields["meta"] = msgspec.structs.asdict(state) if state is not None else None
    return {**fields, "steps": [{**s, "at": iso(s["at"]), "ts": s["at"]} for s in story]}
