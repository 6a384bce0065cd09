"""Where a customer last wrote: which of the tenant's phone numbers, and the wamid of that message.

An agent's answer goes out from the number the customer wrote to (a tenant may own several), and Meta's read marks
and typing indicators name the customer's latest inbound wamid; the outbound direction (agent.py) reads both here.

    inbound relay ──saw()──▶ local LRU ──(coalesced, every FLUSH_EVERY)──▶ Store.set_contacts
    agent actor  ──get()──▶ local LRU ──▶ Store.get_contacts (grouped reads)

The local map answers at once in the process that relayed the customer's message (one worker consumes a tenant's
shard); another process reads the store, where a contact lands within FLUSH_EVERY. The store keeps the latest by
the message's own time, so two writers never move a contact backwards. Writes are best effort, like the
conversations' last-activity touches (tracking.py): one failed flush is tried again with the next, and a contact
missing from the store only costs the agent's answer a short wait (agent.py) — never a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from wabridge.engine.grouping import Grouped
from wabridge.ports import Contact, CustomerStore

log = logging.getLogger(__name__)

ENTRIES = 100_000  # ~250 bytes each
FLUSH_EVERY = 0.5  # s
MAX_PENDING = 50_000  # contacts waiting for a flush; beyond it the oldest write gives way (best effort)


class Contacts:
    def __init__(self, store: CustomerStore, *, entries: int = ENTRIES, flush_every: float = FLUSH_EVERY) -> None:
        self._store = store
        self._entries = entries
        self._flush_every = flush_every
        self._known: OrderedDict[tuple[str, str], Contact] = OrderedDict()
        self._pending: dict[tuple[str, str], Contact] = {}
        self._reads: Grouped[tuple[str, str], Contact] = Grouped(store.get_contacts, name="contact-reads")
        self._flusher: asyncio.Task[None] | None = None
        self.dropped = 0

    async def __aenter__(self) -> Contacts:
        self._flusher = asyncio.create_task(self._flush_forever(), name="contacts-flush")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

    def saw(self, tenant_id: str, customer_id: str, phone_number_id: str, wamid: str, at: float) -> None:
        """The customer's message `wamid`, sent at `at` to `phone_number_id`, reached the agent."""
        key = (tenant_id, customer_id)
        known = self._known.get(key)
        if known is not None and known.at > at:
            return  # an older message (a redelivery, a replay): the contact stays on the newer one
        contact = Contact(phone_number_id=phone_number_id, wamid=wamid, at=at)
        self._remember(key, contact)
        if key not in self._pending and len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
            self.dropped += 1
        self._pending[key] = contact

    async def get(self, tenant_id: str, customer_id: str) -> Contact | None:
        """The customer's latest contact, or None when none of their messages is known. Raises BackendUnavailable
        when the store is down and this process does not know them."""
        key = (tenant_id, customer_id)
        known = self._known.get(key)
        if known is not None:
            self._known.move_to_end(key)
            return known
        found = await self._reads.get(key)
        if found is not None:
            self._remember(key, found)
        return found

    def _remember(self, key: tuple[str, str], contact: Contact) -> None:
        self._known[key] = contact
        self._known.move_to_end(key)
        while len(self._known) > self._entries:
            self._known.popitem(last=False)

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        rows = [(t, c, contact.phone_number_id, contact.wamid, contact.at) for (t, c), contact in pending.items()]
        try:
            await self._store.set_contacts(rows)
        except Exception as exc:  # best effort (module docstring): kept for the next flush unless newer ones came
            for key, contact in pending.items():
                if len(self._pending) < MAX_PENDING:
                    self._pending.setdefault(key, contact)
            log.warning("writing %d customer contacts failed: %s", len(rows), type(exc).__name__)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every)
            await self.flush()
