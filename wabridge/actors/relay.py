"""The relay: one customer message from Meta's shape to a Genesys agent, tracked. Called inside the customer's
ordering lane (tenant.py), so one customer's messages pass here one at a time, in the order they were sent.

    seen before?   the tracking row says delivered / failed / dead-lettered → `duplicate`, not sent again
    conversation   state.py: memo → cache → store; a new customer's id is Genesys's answer (or a new one)
    media          media.py: Meta → object storage → presigned URL (or a text notice)
    posting        open_messaging.py: rate budget, OAuth token, POST with retries
    tracking       tracking.py: batched, and awaited — the queue message is acked only after this row is durable

Errors: `BackendUnavailable` (store or objects down) before the message is sent propagates: the caller holds the
message (`hold_through_outage`) and runs the relay again, which is safe since nothing left the bridge yet. Once
Genesys has the message, the tracking write (and the conversation id it named) is retried here instead: running the
whole relay again would send the message a second time. A Genesys refusal is not an error here: the message is tracked
`failed` with its payload, so `wabridge replay` can send it again.
"""

from __future__ import annotations

import functools
import time

from wabridge.actors.contacts import Contacts
from wabridge.actors.media import MediaFetcher
from wabridge.actors.state import ConversationState
from wabridge.actors.tracking import TrackingLookups, TrackingWriter
from wabridge.codecs.results import Inbound, pack_result
from wabridge.codecs.transform import encode_genesys
from wabridge.engine.history import Origin, Trail, current, note, origin_fields
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY, Capped
from wabridge.engine.outage import hold_through_outage
from wabridge.ports import (
    GenesysApi,
    MessageEventKind,
    PostFailed,
    TenantConfig,
    TrackingRecord,
    TrackingStatus,
    TrackingStore,
)

log = get_logger("relay")

# A message in one of these states is never sent again by a redelivery: Meta's retries and our own redeliveries
# after a crash stop here. A row still `received` was in flight at a crash: it is sent again (at-least-once).
SETTLED = frozenset({TrackingStatus.DELIVERED, TrackingStatus.FAILED, TrackingStatus.DEAD_LETTERED})

OUTCOMES = REGISTRY.counter("wabridge_deliveries_total", "Customer messages by outcome.", ["outcome"])
_delivered, _failed, _duplicate = (OUTCOMES.labels(o) for o in ("delivered", "failed", "duplicate"))
_media_notices = REGISTRY.counter("wabridge_media_notices_total", "Media replaced by a text notice.", ["reason"])
_latency = REGISTRY.histogram("wabridge_relay_seconds", "From webhook receipt to tracked delivery.", [])
# Per tenant too, for the dashboard; the first 200 tenants a worker sees by name, the rest as `_other` (bounded).
_by_tenant = Capped(
    REGISTRY.counter(
        "wabridge_tenant_deliveries_total", "Customer messages by tenant and outcome.", ["tenant", "outcome"]
    ),
    200,
)


class Relay:
    def __init__(
        self,
        store: TrackingStore,
        state: ConversationState,
        media: MediaFetcher,
        open_messaging: GenesysApi,
        tracker: TrackingWriter,
        *,
        outage_hold: float | None = None,
        contacts: Contacts | None = None,
    ) -> None:
        self._contacts = contacts
        # Holds here come after Genesys took the message: running the relay again would send it twice, so they last
        # as long as the outage; past `outage_hold` one is reported (engine/outage.py), as the tenant actor's are.
        self._hold = functools.partial(hold_through_outage, report_after=outage_hold)
        self._seen = TrackingLookups(store)  # the de-duplication reads, grouped across concurrent messages
        self._state = state
        self._media = media
        self._open_messaging = open_messaging
        self._tracker = tracker

    async def relay(
        self,
        tenant: TenantConfig,
        inbound: Inbound,
        received_at: float,
        *,
        replay: bool = False,
        origin: Origin | None = None,
    ) -> TrackingStatus:
        """Relay one message; returns its outcome, the tracking status it ended in. `origin`: its webhook, for the
        row; by default the one of the trail the tenant actor opened for it (history.py)."""
        if replay and current() is None:  # `wabridge replay`: no tenant actor opened its trail (history.py)
            with Trail(tenant.tenant_id, inbound.route.wamid, origin, self._tracker) as trail:
                trail.note(MessageEventKind.REPLAYED)
                return await self._relay(tenant, inbound, received_at, replay, origin)
        return await self._relay(tenant, inbound, received_at, replay, origin)

    async def _relay(
        self, tenant: TenantConfig, inbound: Inbound, received_at: float, replay: bool, origin: Origin | None
    ) -> TrackingStatus:
        route = inbound.route
        tenant_id = tenant.tenant_id
        if origin is None and (trail := current()) is not None:
            origin = trail.origin
        existing = await self._seen.get(tenant_id, route.wamid)
        if existing is not None and (
            existing.status in SETTLED if not replay else existing.status == TrackingStatus.DELIVERED
        ):
            _duplicate.inc()
            _by_tenant.labels(tenant_id, TrackingStatus.DUPLICATE).inc()
            await self._tracker.record(self._record(tenant_id, inbound, TrackingStatus.DUPLICATE))
            return TrackingStatus.DUPLICATE

        known = await self._state.known(tenant_id, route.sender_id)
        message, media_error, media_key = inbound.message, None, None
        if inbound.media is not None:
            outcome = await self._media.resolve(tenant, inbound)
            message, media_key = outcome.apply(inbound), outcome.key
            if not outcome.stored:
                media_error = outcome.error
                _media_notices.labels(outcome.reason).inc()

        try:
            posted = await self._open_messaging.post_message(tenant, encode_genesys(message))
        except PostFailed as exc:
            _failed.inc()
            _by_tenant.labels(tenant_id, TrackingStatus.FAILED).inc()
            log.warning("delivery failed", extra={"tenant_id": tenant_id, "wamid": route.wamid, "error": exc.error})
            error = exc.error if not exc.body else f"{exc.error}: {exc.body.decode(errors='replace')}"
            conversation_id = known or await self._hold(
                lambda: self._state.conversation_for(tenant_id, route.sender_id)
            )
            record = self._record(
                tenant_id,
                inbound,
                TrackingStatus.FAILED,
                origin,
                received_at,
                conversation_id=conversation_id,
                attempts=exc.attempts,
                error=error,
                payload=pack_result(inbound),
                media_key=media_key,
            )
            await self._hold(lambda: self._tracker.record(record))
            # The row's error goes once a replay delivers it; the event keeps what happened (`wabridge trace`).
            note(MessageEventKind.FAILED, f"after {exc.attempts} attempt(s): {exc.error}")
            return TrackingStatus.FAILED

        # From here Genesys has the message: hold through an outage rather than let the caller send it again.
        # A new customer's conversation is named by Genesys's answer; only without one do we make an id.
        conversation_id = posted.conversation_id or known
        if conversation_id is None:
            conversation_id = await self._hold(lambda: self._state.conversation_for(tenant_id, route.sender_id))
        elif conversation_id != known:
            await self._hold(lambda: self._state.adopt(tenant_id, route.sender_id, conversation_id))
        record = self._record(
            tenant_id,
            inbound,
            TrackingStatus.DELIVERED,
            origin,
            received_at,
            conversation_id=conversation_id,
            attempts=1,
            error=media_error,
            genesys_message_id=posted.genesys_message_id,
            media_key=media_key,
        )
        await self._hold(lambda: self._tracker.record(record))
        await self._tracker.touch(tenant_id, route.sender_id, time.time())
        if self._contacts is not None:  # where an agent's answer goes from (contacts.py)
            self._contacts.saw(tenant_id, route.sender_id, route.phone_number_id, route.wamid, route.timestamp)
        _delivered.inc()
        _by_tenant.labels(tenant_id, TrackingStatus.DELIVERED).inc()
        _latency.observe(max(0.0, time.time() - received_at))
        return TrackingStatus.DELIVERED

    @staticmethod
    def _record(
        tenant_id: str,
        inbound: Inbound,
        status: str,
        origin: Origin | None = None,
        received_at: float | None = None,
        **fields,
    ) -> TrackingRecord:
        now = time.time()
        if origin is not None:  # where it came from (`wabridge trace`): on the row this write makes anyway
            fields.update(origin_fields(origin, received_at))
        return TrackingRecord(
            wamid=inbound.route.wamid,
            tenant_id=tenant_id,
            status=status,
            type=inbound.route.type,
            created_at=now,
            updated_at=now,
            customer_id=inbound.route.sender_id,
            **fields,
        )
