"""`wabridge trace ID`: everything the bridge knows about a message, in time order ("her photo never arrived: where
is it?").

ID is a wamid (Meta's message id), a Genesys message id, or a webhook id (every message of that webhook; the form
`WEBHOOK:TENANT` of the bridge's queue message ids works too). The story of each message: received (the webhook,
its shard, where the raw body is archived, the customer), each unusual step (a failed attempt tried again, a hold
while the tenant's Genesys was down, a hand-back to the queue, parking, the dead-letter queue, a replay), and its
state now (delivered: the Genesys conversation and message id; failed or dead-lettered: the error). Steps of the whole
webhook (parking) are shown with each of its messages.

Only the inbound direction (customer → Genesys) exists today; the records carry a `direction` for the outbound one
(a Genesys webhook, the send to Meta, its statuses and receipts), with nothing to trace yet. Not shown: a webhook
still parked or in the dead-letter queue whose messages the worker never reached (their bodies are not searched).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio
import msgspec

from wabridge.engine.ports import MessageEvent, TrackingRecord
from wabridge.engine.settings import load_settings

FINAL_TEXT = {
    "received": "in flight (received, not settled yet)",
    "delivered": "delivered to Genesys",
    "failed": "failed (wabridge replay sends it again)",
    "dead-lettered": "dead-lettered (wabridge replay sends it again)",
    "unrouted": "unrouted: no tenant owns it",
    "duplicate": "seen only as a repeat",
}


def register(sub) -> None:
    p = sub.add_parser(
        "trace", help="everything the bridge knows about one message", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("id", help="a wamid, a Genesys message id, or a webhook id")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return anyio.run(_trace, load_settings(), args)


async def _trace(settings, args) -> int:
    from wabridge.engine.backends import open_backends

    wanted = args.id.strip()
    async with open_backends(settings, ports=("store",)) as backends:
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
    if not stories:
        print(f"wabridge: no message known by {wanted!r} (a wamid, a Genesys message id or a webhook id)",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.json:
        document = {"id": wanted, "messages": [_as_json(row, story) for row, story in stories]}
        print(msgspec.json.encode(document).decode())
    else:
        print("\n\n".join(_as_text(row, story) for row, story in stories))
    return 0


def steps(row: TrackingRecord, events: list[MessageEvent]) -> list[dict[str, Any]]:
    """The message's story, oldest first: received, its events, its state now."""
    received = {"at": row.received_at or row.created_at, "step": "received", "detail": _received_detail(row)}
    final_at = row.updated_at or row.created_at
    story = [received]
    for event in events:
        if event.event == row.status and abs(event.at - final_at) < 2.0:
            continue  # the same fact as the final state below
        detail = event.detail if event.wamid else f"{event.detail} (its whole webhook)".lstrip()
        story.append({"at": event.at, "step": event.event, "detail": detail})
    story.sort(key=lambda s: s["at"])
    story.append({"at": max(final_at, story[-1]["at"]), "step": row.status, "detail": _final_detail(row)})
    return story


def _received_detail(row: TrackingRecord) -> str:
    parts = []
    if row.webhook_id:
        parts.append(f"webhook {row.webhook_id}")
    if row.shard is not None:
        parts.append(f"shard {row.shard}")
    if row.archive_key:
        parts.append(f"archived at webhooks-inbound/{row.archive_key}")
    if row.customer_id:
        parts.append(f"customer {row.customer_id}")
    return ", ".join(parts) or "(where from was not recorded: a row older than this command)"


def _final_detail(row: TrackingRecord) -> str:
    parts = [FINAL_TEXT.get(row.status, row.status)]
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
    return {**fields, "steps": [{**s, "at": iso(s["at"]), "ts": s["at"]} for s in story]}
