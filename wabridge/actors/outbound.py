"""One agent message to the customer on WhatsApp, tracked: the outbound twin of relay.py. Called inside the
customer's ordering lane (agent.py), so one customer's answers pass here one at a time, in the order Genesys sent
them.

    seen before?   the tracking row of its Genesys id says delivered / failed / dead-lettered → `duplicate`
                   (Genesys retries a webhook up to 5 times), never sent again
    which number   contacts.py: the number the customer last wrote to, and that message's wamid; a customer the
                   bridge never heard from is not guessed: a Failed receipt, InvalidDestination
    read mark      the customer's latest message marked read (blue ticks), once, when the tenant wants it
    media          agent_media.py: downloaded at once, kept in `media-outbound`, checked, uploaded to Meta
    send           graph.py: each part (a long text is several) to /{phone-number-id}/messages, in order
    tracking       the row keyed by the Genesys id: status `delivered` (Meta took it), the wamids Meta gave each
                   part; the queue message is acked only once it is durable, so a crash resends at most what was in
                   flight. Meta has no idempotency key: a send retried after a lost answer may reach the customer
                   twice; that window is one message per customer lane, as inbound.

A refusal (Meta's 4xx, a media problem, no such customer, a webhook the codec skipped with a reason owed) becomes a
`Failed` receipt to Genesys, with the reason mapped from Meta's error (codecs/receipts.py), so the agent sees why; the
row is tracked `failed` with the Genesys body as its payload, so `wabridge replay --direction out` can send it again.

Errors: `BackendUnavailable` before anything left the bridge propagates (the agent actor holds the message and runs
this again: safe). Once Meta has a part, the tracking write is held here instead: running it again would resend.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict

from wabridge.actors.agent_media import AgentMedia, MediaRefused
from wabridge.actors.contacts import Contacts
from wabridge.actors.tracking import TrackingLookups, TrackingWriter
from wabridge.codecs.meta_bodies import meta_body, typing_due
from wabridge.codecs.outbound_results import OutboundResult, OutboundSkipped, Send, Typing
from wabridge.codecs.receipts import IdType, OutboundState, Reason, receipt, receipt_body, write_state
from wabridge.engine.backoff import Backoff, poll
from wabridge.engine.history import Origin, current, note, origin_fields
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY, Capped
from wabridge.engine.outage import hold_through_outage
from wabridge.ports import (
    Contact,
    GenesysApi,
    MessageEventKind,
    MetaGraphApi,
    PostFailed,
    SendRefused,
    TenantConfig,
    TrackingRecord,
    TrackingStatus,
)

log = get_logger("outbound")

OUTBOUND = "outbound"
SETTLED = frozenset({TrackingStatus.DELIVERED, TrackingStatus.FAILED, TrackingStatus.DEAD_LETTERED})
CONTACT_WAIT = 5.0  # s: a contact written by another worker reaches the store within contacts.FLUSH_EVERY
CONTACT_POLL = Backoff(0.1, 1.0, jitter=None)  # s between asks for a contact not in the store yet
MEMO_ENTRIES = 100_000  # customers whose last read mark / typing indicator this process remembers

_outcomes = REGISTRY.counter(
    "wabridge_outbound_messages_total", "Agent messages to customers, by outcome.", ["outcome"]
)
_sent, _failed, _duplicate, _skipped = (_outcomes.labels(o) for o in ("sent", "failed", "duplicate", "skipped"))
_by_reason = REGISTRY.counter(
    "wabridge_outbound_failures_total", "Agent messages refused, by Genesys reason code.", ["reason"]
)
_typing = REGISTRY.counter(
    "wabridge_typing_indicators_total", "Agent typing events, by what became of them.", ["result"]
)
_read_marks = REGISTRY.counter("wabridge_read_marks_total", "Customer messages marked read, by result.", ["result"])
_receipts = REGISTRY.counter(
    "wabridge_receipts_total", "Receipts sent to Genesys, by status and result.", ["status", "result"]
)
_latency = REGISTRY.histogram("wabridge_outbound_seconds", "From the agent's webhook to Meta's answer.", [])
_by_tenant = Capped(
    REGISTRY.counter("wabridge_tenant_outbound_total", "Agent messages by tenant and outcome.", ["tenant", "outcome"]),
    200,
)


def guessed_id_type(to_id: str) -> IdType:
    return "Phone" if to_id.isdigit() else "Opaque"


class OutboundSender:
    def __init__(
        self,
        *,
        graph: MetaGraphApi,
        media: AgentMedia,
        contacts: Contacts,
        genesys: GenesysApi,
        tracker: TrackingWriter,
        seen: TrackingLookups,
        outage_hold: float | None = None,
        contact_wait: float = CONTACT_WAIT,
    ) -> None:
        self._graph = graph
        self._media = media
        self._contacts = contacts
        self._genesys = genesys
        self._tracker = tracker
        self._seen = seen
        self._hold = functools.partial(hold_through_outage, report_after=outage_hold)
        self._contact_wait = contact_wait
        # (tenant, customer) → the wamid last marked read / when the last typing indicator went: at most once each
        self._marked: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._typed: OrderedDict[tuple[str, str], float] = OrderedDict()
        # (tenant, Genesys id) → woken once this process has recorded that message's send (`recorded`)
        self._recording: dict[tuple[str, str], asyncio.Event] = {}

    async def recorded(self, tenant_id: str, genesys_id: str, timeout: float) -> None:
        """Return once this process records the send of `genesys_id` (its row durable), or after `timeout`. A status
        that outran its send's answer waits here (statuses.py) instead of only polling the store: the send is usually
        recorded by this very worker milliseconds later."""
        key = (tenant_id, genesys_id)
        event = self._recording.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            if self._recording.get(key) is event:
                del self._recording[key]

    async def handle(
        self,
        tenant: TenantConfig,
        result: OutboundResult,
        raw: bytes,
        received_at: float,
        *,
        origin: Origin | None = None,
        replay: bool = False,
    ) -> str:
        """Act on one decoded agent webhook; returns what became of it (a tracking status, or "typing"/"skipped")."""
        if origin is None and (trail := current()) is not None:
            origin = trail.origin
        match result:
            case Send():
                return await self._send(tenant, result, raw, received_at, origin, replay)
            case Typing():
                return await self._typing_on(tenant, result)
            case OutboundSkipped():
                return await self._skipped(tenant, result, raw, received_at, origin)
        raise TypeError(f"not an outbound result: {type(result).__name__}")

    # --- a message ------------------------------------------------------------------------------------------------

    async def _send(
        self, tenant: TenantConfig, send: Send, raw: bytes, received_at: float, origin: Origin | None, replay: bool
    ) -> str:
        tenant_id = tenant.tenant_id
        existing = await self._seen.get(tenant_id, send.id)
        if existing is not None and (
            existing.status in SETTLED if not replay else existing.status == TrackingStatus.DELIVERED
        ):
            _duplicate.inc()
            _by_tenant.labels(tenant_id, TrackingStatus.DUPLICATE).inc()
            await self._tracker.record(self._record(tenant_id, send, TrackingStatus.DUPLICATE))
            return TrackingStatus.DUPLICATE

        contact = await self._contact(tenant, send.to_id)
        if contact is None:
            why = "no message from this customer has reached the bridge: WhatsApp needs them to write first"
            return await self._refuse(tenant, send, raw, received_at, origin, Reason("InvalidDestination", why))
        phone = contact.phone_number_id
        if phone not in tenant.phone_number_ids:
            why = f"the number the customer wrote to ({phone}) is no longer this tenant's"
            return await self._refuse(tenant, send, raw, received_at, origin, Reason("InvalidDestination", why))
        await self._mark_read(tenant, send.to_id, contact)

        media_id = None
        if send.media is not None:
            try:
                media_id = await self._media.upload(tenant, send, phone)
            except MediaRefused as exc:
                return await self._refuse(tenant, send, raw, received_at, origin, exc.reason)

        wamids: list[str] = []
        try:
            for part in range(len(send.parts)):
                wamids.append(await self._graph.send(tenant, phone, meta_body(send, part, media_id=media_id)))
        except SendRefused as exc:
            if wamids:  # the parts before it reached the customer; the agent learns the whole did not
                note(MessageEventKind.FAILED, f"part {len(wamids) + 1} of {len(send.parts)} refused")
            return await self._refuse(tenant, send, raw, received_at, origin, exc.reason, wamids=wamids)

        # From here Meta has the message: hold through a store outage rather than let the caller send it again.
        # A fresh `meta_status`: this attempt's statuses start from nothing (a replay's row held the last one's).
        record = self._record(
            tenant_id,
            send,
            TrackingStatus.DELIVERED,
            origin,
            received_at,
            attempts=1,
            payload=raw,
            meta_ids=" ".join(wamids),
            meta_status=write_state(OutboundState()),
        )
        await self._hold(lambda: self._tracker.record(record))
        if (waiting := self._recording.pop((tenant_id, send.id), None)) is not None:
            waiting.set()  # a status of this message that outran the answer (statuses.py)
        _sent.inc()
        _by_tenant.labels(tenant_id, "sent").inc()
        _latency.observe(max(0.0, time.time() - received_at))
        return TrackingStatus.DELIVERED

    async def _contact(self, tenant: TenantConfig, customer_id: str) -> Contact | None:
        """Where the customer last wrote. A contact another worker just saw may not be in the store yet
        (contacts.py): asked again for up to `contact_wait` before the answer is no."""
        return await poll(
            lambda: self._contacts.get(tenant.tenant_id, customer_id),
            lambda contact: contact is not None,
            CONTACT_POLL,
            self._contact_wait,
        )

    async def _mark_read(self, tenant: TenantConfig, customer_id: str, contact: Contact) -> None:
        """The customer's latest message marked read on WhatsApp when an agent answers: once per message."""
        if not tenant.read_marks:
            return
        key = (tenant.tenant_id, customer_id)
        if self._marked.get(key) == contact.wamid:
            return
        done = await self._graph.mark_read(tenant, contact.phone_number_id, contact.wamid)
        _read_marks.labels("marked" if done else "refused").inc()
        _remember(self._marked, key, contact.wamid)

    # --- typing, skips, refusals ----------------------------------------------------------------------------------

    async def _typing_on(self, tenant: TenantConfig, typing: Typing) -> str:
        """The agent is typing: Meta's indicator on the customer's latest message, at most once per TYPING_INTERVAL
        per customer; best effort (a typing indicator late is worse than none)."""
        key = (tenant.tenant_id, typing.to_id)
        now = time.monotonic()
        if not typing_due(self._typed.get(key), now):
            _typing.labels("too_soon").inc()
            return "typing"
        contact = await self._contacts.get(tenant.tenant_id, typing.to_id)
        if contact is None or contact.phone_number_id not in tenant.phone_number_ids:
            _typing.labels("no_contact").inc()
            return "typing"
        _remember(self._typed, key, now)
        shown = await self._graph.mark_read(tenant, contact.phone_number_id, contact.wamid, typing=True)
        _typing.labels("shown" if shown else "refused").inc()
        if shown and tenant.read_marks:
            _remember(self._marked, key, contact.wamid)  # the indicator marks it read too
        return "typing"

    async def _skipped(
        self, tenant: TenantConfig, skipped: OutboundSkipped, raw: bytes, received_at: float, origin: Origin | None
    ) -> str:
        _skipped.inc()
        if skipped.genesys_reason is None or not skipped.id or not skipped.to_id:
            # Nothing owed (a Receipt, a typing Off), or nothing to address it to: counted, logged, dropped.
            log.info(
                "agent webhook skipped: %s: %s",
                skipped.reason,
                skipped.detail,
                extra={"tenant_id": tenant.tenant_id, "genesys_id": skipped.id},
            )
            return "skipped"
        send = Send(
            id=skipped.id,
            to_id=skipped.to_id,
            to_id_type=skipped.to_id_type or guessed_id_type(skipped.to_id),
            kind=skipped.reason,
            parts=(),
        )
        existing = await self._seen.get(tenant.tenant_id, skipped.id)
        if existing is not None and existing.status in SETTLED:
            _duplicate.inc()
            await self._tracker.record(self._record(tenant.tenant_id, send, TrackingStatus.DUPLICATE))
            return TrackingStatus.DUPLICATE
        reason = Reason(skipped.genesys_reason, f"{skipped.reason}: {skipped.detail}")
        return await self._refuse(tenant, send, raw, received_at, origin, reason)

    async def _refuse(
        self,
        tenant: TenantConfig,
        send: Send,
        raw: bytes,
        received_at: float,
        origin: Origin | None,
        reason: Reason,
        *,
        wamids: list[str] | None = None,
    ) -> str:
        """A Failed receipt to Genesys with `reason` (before the row: a crash between them sends the receipt again
        rather than never), then the row `failed`, payload kept for replay."""
        _failed.inc()
        _by_reason.labels(reason.code).inc()
        _by_tenant.labels(tenant.tenant_id, TrackingStatus.FAILED).inc()
        state = OutboundState(parts=["failed"] * max(1, len(send.parts)), reason=f"{reason.code}: {reason.message}")
        state.receipt, state.receipt_error = await self.send_receipt(
            tenant, send.id, send.to_id, send.to_id_type, "Failed", time.time(), [reason]
        )
        note(MessageEventKind.FAILED, state.reason or "")
        log.warning(
            "agent message refused: %s", state.reason, extra={"tenant_id": tenant.tenant_id, "genesys_id": send.id}
        )
        record = self._record(
            tenant.tenant_id,
            send,
            TrackingStatus.FAILED,
            origin,
            received_at,
            attempts=1,
            payload=raw,
            error=state.reason,
            meta_ids=" ".join(wamids) if wamids else None,
            meta_status=write_state(state),
        )
        await self._hold(lambda: self._tracker.record(record))
        return TrackingStatus.FAILED

    async def send_receipt(
        self,
        tenant: TenantConfig,
        message_id: str,
        to_id: str,
        to_id_type: IdType,
        status: str,
        at: float,
        reasons: list[Reason] | tuple[Reason, ...] = (),
    ) -> tuple[str | None, str | None]:
        """POST one receipt to Genesys (its budget, its token, held through its outages like a message). Returns
        (the status Genesys took, or None; why it refused one, or None)."""
        body = receipt_body(receipt(message_id, to_id, to_id_type, status, at, reasons))  # type: ignore[arg-type]
        try:
            await self._genesys.receipt(tenant, body)
        except PostFailed as exc:
            _receipts.labels(status, "refused").inc()
            log.error(
                "Genesys refused the %s receipt of %s: %s",
                status,
                message_id,
                exc.error,
                extra={"tenant_id": tenant.tenant_id},
            )
            return None, exc.error[:300]
        _receipts.labels(status, "sent").inc()
        return status, None

    @staticmethod
    def _record(
        tenant_id: str,
        send: Send,
        status: str,
        origin: Origin | None = None,
        received_at: float | None = None,
        **fields,
    ) -> TrackingRecord:
        now = time.time()
        if origin is not None:
            fields.update(origin_fields(origin, received_at))
        return TrackingRecord(
            wamid=send.id,
            tenant_id=tenant_id,
            status=status,
            direction=OUTBOUND,
            type=send.kind,
            conversation_id=send.conversation_id,
            genesys_message_id=send.id,
            customer_id=send.to_id,
            created_at=now,
            updated_at=now,
            **fields,
        )


def _remember(memo: OrderedDict, key: tuple[str, str], value: object) -> None:
    memo[key] = value
    memo.move_to_end(key)
    while len(memo) > MEMO_ENTRIES:
        memo.popitem(last=False)
