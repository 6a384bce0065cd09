"""`wabridge messages`: the tracked messages, newest first ("what happened to this customer today?").

One line each: when it was received, tenant, wamid, customer, type, direction, state, attempts, what WhatsApp said,
error. Filter by tenant, customer (the id their conversation is keyed on: phone number or BSUID), state, time window
and direction; `wabridge trace WAMID` tells one message's whole story. An agent's message (outbound) is listed by its
Genesys message id; its state `delivered` means Meta accepted the send, and the `whatsapp` column says what WhatsApp
reported since (sent, delivered, read, failed) and which receipt the agent got.
"""

from __future__ import annotations

import argparse

import anyio
import msgspec

from wabridge.cli.replay import _instant
from wabridge.cli.trace import OUTBOUND, iso, meta_state
from wabridge.codecs.receipts import OutboundState
from wabridge.engine.settings import SettingsError, load_settings
from wabridge.ports import TrackingStatus

DIRECTIONS = {"in": "inbound", "out": "outbound"}
_RANK = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}  # codecs/receipts.advances: forward only
COLUMNS = ("received", "tenant", "wamid", "customer", "type", "direction", "status", "attempts", "whatsapp", "error")


def register(sub) -> None:
    p = sub.add_parser("messages", help="tracked messages, newest first", description=__doc__)
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--customer", help="only this customer (phone number or BSUID)")
    p.add_argument("--status", choices=tuple(TrackingStatus), action="append", help="only this state (repeatable)")
    p.add_argument("--since", type=_instant, help="received at or after this ISO-8601 time")
    p.add_argument("--until", type=_instant, help="received before this ISO-8601 time")
    p.add_argument("--direction", choices=tuple(DIRECTIONS), help="in: customer → Genesys; out: agent → customer")
    p.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    if args.since and args.until and args.since >= args.until:
        raise SettingsError("--since must be before --until")
    return anyio.run(_messages, load_settings(), args)


async def _messages(settings, args) -> int:
    from wabridge.adapters.backends import open_backends

    async with open_backends(settings, ports=("store",)) as backends:
        rows = await backends.store.list_tracking(
            tenant_id=args.tenant,
            customer_id=args.customer,
            statuses=args.status or (),
            since=args.since,
            until=args.until,
            direction=DIRECTIONS.get(args.direction or ""),
            limit=args.limit,
            newest_first=True,
        )
    if args.json:
        keep = [{k: v for k, v in msgspec.structs.asdict(r).items() if k != "payload"} for r in rows]  # no text
        for row, fields in zip(rows, keep, strict=True):
            if row.direction == OUTBOUND:
                state = meta_state(row)
                fields["meta"] = msgspec.structs.asdict(state) if state is not None else None
        print(msgspec.json.encode(keep).decode())
        return 0
    if not rows:
        print("no messages")
        return 0
    table = [COLUMNS] + [
        (
            iso(r.received_at or r.created_at),
            r.tenant_id,
            r.wamid,
            r.customer_id or "",
            r.type,
            r.direction,
            r.status,
            str(r.attempts),
            _whatsapp(r.direction, meta_state(r)),
            (r.error or "").replace("\n", " ")[:60],
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1])
    return 0


def _whatsapp(direction: str, state: OutboundState | None) -> str:
    """An agent's message: WhatsApp's latest status for it (the last the whole message reached) and the receipt."""
    if direction != OUTBOUND:
        return ""
    if state is None:
        return "-"
    # By rank, not time: Meta's timestamps are whole seconds, so sent, delivered and read often share one.
    latest = max(state.at, key=lambda status: _RANK.get(status, 0)) if state.at else "no status yet"
    receipt = f", receipt {state.receipt}" if state.receipt else (", receipt refused" if state.receipt_error else "")
    return latest + receipt
