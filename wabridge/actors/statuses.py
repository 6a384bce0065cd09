"""Meta's status webhooks for the agents' messages → Genesys receipts, so the agent sees delivered or failed.

A status arrives on the inbound path (Meta's webhook, the tenant actor) and runs in its customer's ordering lane,
so a receipt never passes the customer's messages that came before it. Each one:

    whose?       biz_opaque_callback_data, which the bridge set on every send (codecs/meta_bodies.callback_data): the
                 Genesys id, the part, the recipient. Without it the status is not for a message the bridge sent
                 (another app on the number, a message sent before the bridge): counted, nothing else.
    sent yet?    the Genesys id's tracking row, once it names this status's wamid among the ones Meta gave the send
                 (`meta_ids`, written once Meta answered). A status can outrun that answer (reference.md §4): it
                 waits for it, up to `wait_for_send`, and then goes on without. A row naming other wamids only is a
                 later attempt (`wabridge replay`): a status of the attempt it replaced changes nothing.
    forward-only each part's status moves only forward (codecs/receipts.advances: sent < delivered < read; failed
                 only after sent); the message's status is the parts' combined (`combined`), and a change of it may
                 owe Genesys one receipt (`status_receipt`): Delivered once, or Failed with the reason from Meta's
                 errors[]. A duplicate or late status changes nothing and owes nothing.
    receipt      POSTed to Genesys before the row is written (on the tenant's Genesys budget, held through its
                 outages); a crash between the two sends it again rather than never.
    the row      `meta_status` (codecs/receipts.OutboundState: parts, first time of each status, the receipt) and, when
                 Meta failed it, status `failed` with the reason: visible in `wabridge messages` and replayable.

One tenant's statuses are handled by the one worker consuming its shard, and one message's by its customer's lane:
this read-modify-write of the row has a single writer.
"""

from __future__ import annotations

import time

from wabridge.actors.outbound import OUTBOUND, OutboundSender, guessed_id_type
from wabridge.actors.tracking import TrackingWriter
from wabridge.codecs.meta_bodies import parse_callback_data
from wabridge.codecs.receipts import advances, combined, read_state, status_receipt, write_state
from wabridge.codecs.results import StatusUpdate
from wabridge.engine.backoff import Backoff, poll
from wabridge.engine.metrics import REGISTRY
from wabridge.ports import TenantConfig, TrackingRecord, TrackingStatus, TrackingStore

WAIT_FOR_SEND = 30.0  # s: how long a status waits for its send's answer to be recorded
SENT_ROW_POLL = Backoff(0.05, 1.0, jitter=None)  # s between asks for the send's row, when not woken sooner

_statuses = REGISTRY.counter("wabridge_meta_statuses_total", "Meta status webhooks, by what they changed.", ["result"])


class StatusReceipts:
    def __init__(
        self,
        store: TrackingStore,
        tracker: TrackingWriter,
        sender: OutboundSender,
        *,
        wait_for_send: float = WAIT_FOR_SEND,
    ) -> None:
        self._store = store
        self._tracker = tracker
        self._sender = sender
        self._wait_for_send = wait_for_send

    @staticmethod
    def lane_of(status: StatusUpdate) -> str:
        """The ordering lane a status runs in: its customer's, under the id the bridge gives them (the one the send
        went to, from the callback data), else the recipient's as Meta names them."""
        facts = parse_callback_data(status.callback_data)
        if facts is not None and facts.to_id:
            return facts.to_id
        return status.recipient_id or status.recipient_user_id or status.wamid

    async def apply(self, tenant: TenantConfig, status: StatusUpdate) -> str:
        """Returns what the status did: unmatched | stale | updated | delivered | failed (a receipt went)."""
        facts = parse_callback_data(status.callback_data)
        if facts is None:
            _statuses.labels("unmatched").inc()
            return "unmatched"
        tenant_id = tenant.tenant_id
        row = await self._sent_row(tenant_id, facts.id, status.wamid)
        if row is not None and row.meta_ids and status.wamid not in row.meta_ids.split():
            _statuses.labels("superseded").inc()
            return "stale"
        state = read_state(row.meta_status if row is not None else None)
        if len(state.parts) != facts.parts:
            state.parts = (state.parts + [None] * facts.parts)[: facts.parts]
        if not advances(state.parts[facts.part], status.status):
            _statuses.labels("stale").inc()  # a duplicate, or one that arrived after a later status
            return "stale"
        before = combined(state.parts)
        state.parts[facts.part] = status.status
        after = combined(state.parts)
        if after is not None and after != before:
            state.at.setdefault(after, status.timestamp)
        to_id = facts.to_id or (row.customer_id if row is not None else None) or status.recipient_id or ""
        to_id_type = facts.to_id_type or guessed_id_type(to_id)
        errors = [(e.code, e.title, e.details) for e in status.errors] if after == "failed" else []
        owed = (
            None
            if after is None or after == before
            else status_receipt(facts.id, to_id, to_id_type, before, after, status.timestamp, errors)
        )
        result = "updated"
        if owed is not None and state.receipt != owed.status:
            reasons = list(owed.reasons or ())
            state.receipt, state.receipt_error = await self._sender.send_receipt(
                tenant, facts.id, to_id, to_id_type, owed.status, status.timestamp, reasons
            )
            if owed.status == "Failed" and reasons:
                state.reason = f"{reasons[0].code}: {reasons[0].message}"
            result = owed.status.lower()
        failed = after == "failed"
        now = time.time()
        await self._tracker.record(
            TrackingRecord(
                wamid=facts.id,
                tenant_id=tenant_id,
                direction=OUTBOUND,
                genesys_message_id=facts.id,
                status=TrackingStatus.FAILED
                if failed
                else (row.status if row is not None else TrackingStatus.DELIVERED),
                type="" if row is None else row.type,
                attempts=row.attempts if row is not None else 1,
                error=state.reason if failed else (row.error if row is not None else None),
                customer_id=to_id or None,
                meta_status=write_state(state),
                created_at=row.created_at if row is not None else now,
                updated_at=now,
            )
        )
        _statuses.labels(result).inc()
        return result

    async def _sent_row(self, tenant_id: str, genesys_id: str, wamid: str) -> TrackingRecord | None:
        """The send's tracking row once it names `wamid`, waiting a while for that (a status may outrun the send's
        answer); after the wait, the row as it is (or None)."""

        def names_it(row: TrackingRecord | None) -> bool:
            return row is not None and wamid in (row.meta_ids or "").split()

        # Woken at once when this process records the send (the usual case: it sent it); else the store is asked
        # again after the pause (another worker sent it, or a replay from the command line).
        row = await poll(
            lambda: self._store.get_tracking(tenant_id, genesys_id),
            names_it,
            SENT_ROW_POLL,
            self._wait_for_send,
            pause=lambda seconds: self._sender.recorded(tenant_id, genesys_id, seconds),
        )
        if not names_it(row):
            _statuses.labels("before_send").inc()
        return row
