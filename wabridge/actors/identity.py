"""Who the customer is across their ids: one customer, one conversation, whether Meta names them by phone number,
by business-scoped user id (BSUID), or by both.

A customer's canonical id is the first id the bridge saw for them (phone or BSUID): Genesys keys its conversation on
`from.id`, and the conversation must not change under the agent. Every other id of theirs is an alias of it, per
tenant: store `customer_aliases` (insert-only), cache `mapping:alias:{tenantId}:{id}`, and a bounded LRU here. The
tenant actor moves each message to its canonical id (`sender.as_customer`) before its lane takes it, so the lane, the
conversation mapping and Genesys `from.id` all use that id; the ids it came with stay visible to the agent as custom
attributes.

A message's ids: its sender id (sender.py) and, when it has both, the other one. Resolution:
  1. an alias of either id wins;
  2. else an id in use (this process routed a message under it within `UNALIASED_SECONDS`, else it has a conversation
     mapping in the store) is canonical; the sender id when both or neither are;
  3. the other id is recorded as an alias of it (insert if absent: a concurrent writer's row wins, and is used).
A `user_changed_user_id` notice aliases the new BSUID to the canonical id of the previous one.
Rule 2 asks this process first: a customer's first message may still wait in its lane, its mapping not yet written,
when their next webhook, with both ids, is resolved.

Cost: the usual message is resolved from the LRU without an await (`known`). Aliases never change once stored, so
they are kept until evicted; "no alias" is kept `UNALIASED_SECONDS` from the store read, not refreshed by use: one
process consumes a tenant at a time, but after a failover and back the store may hold an alias this process did not
write, and it must see it within that bound. A miss costs a cache read and a store read; linking two ids, a
conversation read, a store insert and a cache write, once per customer.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from enum import Enum
from time import monotonic
from typing import Literal

from wabridge.codecs.results import Inbound, Result
from wabridge.codecs.sender import as_customer, usable_id
from wabridge.engine import keys
from wabridge.engine.grouping import Grouped
from wabridge.engine.logs import get_logger
from wabridge.engine.metrics import REGISTRY
from wabridge.ports import BackendUnavailable, Cache, CustomerStore

log = get_logger("identity")

_aliased = REGISTRY.counter("wabridge_customer_aliases_total", "Customer ids recorded as another id's alias.", [])

UNALIASED_SECONDS = 60.0
ENTRIES = 100_000  # (tenant, id) pairs, ~200 bytes each
_FOREVER = float("inf")


class _Missing(Enum):
    """No fresh local entry (an enum member, so that `is _MISSING` narrows the type)."""

    MISSING = "missing"


_MISSING = _Missing.MISSING


class CustomerIdentity:
    def __init__(self, cache: Cache, store: CustomerStore, *, entries: int = ENTRIES) -> None:
        self._cache = cache
        self._store = store
        self._entries = entries
        # (tenant, id) → (value, until). value: the canonical id when `id` is an alias; `id` itself when it is no
        # alias and this process routed a message under it; None when it is no alias, in use or not.
        self._local: OrderedDict[tuple[str, str], tuple[str | None, float]] = OrderedDict()
        # First contacts come in bursts (replies to a campaign) and are resolved concurrently (tenant.py): their
        # reads share round trips, as the conversation reads do (state.py).
        self._cache_reads: Grouped[str, bytes] = Grouped(cache.get_many, name="alias-cache-reads", max_delay=0)
        self._store_reads: Grouped[tuple[str, str], str] = Grouped(store.get_aliases, name="alias-reads")

    # --- the usual path: no await ---

    def known(self, tenant_id: str, results: list[Result]) -> list[Result] | None:
        """`results` with each customer message under its canonical id, when every id involved is known here; None
        when the store must be asked (`resolve`). The same list when no message moves."""
        moved: list[Result] | None = None
        for i, result in enumerate(results):
            if type(result) is not Inbound:
                continue
            customer = self._known(tenant_id, result)
            if customer is None:
                return None
            if customer != result.route.sender_id:
                if moved is None:
                    moved = list(results)
                moved[i] = as_customer(result, customer)
        return results if moved is None else moved

    def _known(self, tenant_id: str, inbound: Inbound) -> str | None:
        a, b, change = _ids(inbound)
        ea = self._get(tenant_id, a)
        if ea is _MISSING:
            return None
        if b is None and change is None:  # the usual message: one id
            if ea is None:
                self._in_use(tenant_id, a)
                return a
            return ea  # itself (in use) or the canonical id it is an alias of
        if b is None:
            customer = a if ea is None or ea == a else ea
        else:
            eb = self._get(tenant_id, b)
            if eb is _MISSING:
                return None
            linked = ea if ea not in (None, a) else eb if eb not in (None, b) else None
            if linked is None or _unlinked(a, ea, linked) or _unlinked(b, eb, linked):
                return None  # not linked yet
            customer = linked
        if change is not None:
            previous, new = change
            canonical = customer if previous in (a, b) else self._canonical(tenant_id, previous)
            entry = self._get(tenant_id, new)
            if canonical is None or entry is _MISSING or _unlinked(new, entry, canonical):
                return None
        self._in_use(tenant_id, customer)
        return customer

    # --- a miss: the cache, then the store ---

    async def resolve(self, tenant_id: str, results: list[Result]) -> list[Result]:
        """`known`, asking the cache and the store for what this process does not know, and recording the aliases
        a message reveals. Raises BackendUnavailable when the store is down (the cache being down only costs
        speed); safe to run again."""
        inbounds = [r for r in results if type(r) is Inbound]
        await self._load(tenant_id, {i for inbound in inbounds for i in _all_ids(inbound)})
        moved = list(results)
        for i, result in enumerate(moved):
            if type(result) is not Inbound:
                continue
            customer = self._known(tenant_id, result)
            if customer is None:
                customer = await self._link(tenant_id, result)
            if customer != result.route.sender_id:
                moved[i] = as_customer(result, customer)
        return moved

    async def _link(self, tenant_id: str, inbound: Inbound) -> str:
        a, b, change = _ids(inbound)
        await self._load(tenant_id, _all_ids(inbound))  # again: an entry may have been evicted meanwhile
        customer = await self._pair(tenant_id, a, b)
        if change is not None:
            previous, new = change
            canonical = customer if previous in (a, b) else await self._pair(tenant_id, previous, None)
            if _unlinked(new, self._value(tenant_id, new), canonical):
                await self._record(tenant_id, new, canonical)
        self._in_use(tenant_id, customer)
        return customer

    async def _pair(self, tenant_id: str, a: str, b: str | None) -> str:
        """The canonical id of a customer known by `a` (the sender id) and `b`, recording the alias it lacks."""
        ea = self._value(tenant_id, a)
        if b is None:
            return a if ea is None or ea == a else ea
        eb = self._value(tenant_id, b)
        if ea not in (None, a):
            customer = ea
        elif eb not in (None, b):
            customer = eb
        else:
            in_use = [x for x, e in ((a, ea), (b, eb)) if e == x]
            if len(in_use) != 1:
                mapped = await self._store.get_conversations([(tenant_id, a), (tenant_id, b)])
                in_use = [x for x in (a, b) if (tenant_id, x) in mapped]
            customer = in_use[0] if len(in_use) == 1 else a
        for x, e in ((a, ea), (b, eb)):
            if _unlinked(x, e, customer):
                customer = await self._record(tenant_id, x, customer)
        return customer

    async def _record(self, tenant_id: str, alias_id: str, canonical_id: str) -> str:
        """Alias `alias_id` to `canonical_id`; returns the stored canonical id (another writer's, if it won)."""
        stored = await self._store.put_alias(tenant_id, alias_id, canonical_id)
        _aliased.inc()
        self._set(tenant_id, alias_id, stored, _FOREVER)
        try:
            await self._cache.set(keys.customer_alias(tenant_id, alias_id), stored.encode(), keys.ALIAS_TTL)
        except BackendUnavailable as exc:
            log.warning("customer alias not cached: %s", exc)
        return stored

    async def _load(self, tenant_id: str, ids: Iterable[str]) -> None:
        missing = [i for i in ids if self._get(tenant_id, i) is _MISSING]
        if not missing:
            return
        names = {keys.customer_alias(tenant_id, i): i for i in missing}
        try:
            answers = await asyncio.gather(*(self._cache_reads.get(key) for key in names))
            cached = {key: value for key, value in zip(names, answers, strict=True) if value is not None}
        except BackendUnavailable:
            cached = {}
        for name, value in cached.items():
            self._set(tenant_id, names[name], value.decode(), _FOREVER)
        asked = [(tenant_id, i) for i in missing if keys.customer_alias(tenant_id, i) not in cached]
        if not asked:
            return
        canonicals = await asyncio.gather(*(self._store_reads.get(key) for key in asked))
        found = {key: canonical for key, canonical in zip(asked, canonicals, strict=True) if canonical is not None}
        until = monotonic() + UNALIASED_SECONDS
        for key in asked:
            canonical = found.get(key)
            self._set(tenant_id, key[1], canonical, _FOREVER if canonical is not None else until)
        if found:
            try:
                await self._cache.set_many(
                    [(keys.customer_alias(t, i), c.encode()) for (t, i), c in found.items()], keys.ALIAS_TTL
                )
            except BackendUnavailable as exc:
                log.warning("customer aliases not cached: %s", exc)

    # --- the local entries ---

    def _get(self, tenant_id: str, customer_id: str) -> str | Literal[_Missing.MISSING] | None:
        key = (tenant_id, customer_id)
        entry = self._local.get(key)
        if entry is None:
            return _MISSING
        if entry[1] != _FOREVER and entry[1] <= monotonic():
            del self._local[key]
            return _MISSING
        self._local.move_to_end(key)
        return entry[0]

    def _value(self, tenant_id: str, customer_id: str) -> str | None:
        value = self._get(tenant_id, customer_id)
        return None if value is _MISSING else value

    def _canonical(self, tenant_id: str, customer_id: str) -> str | None:
        value = self._get(tenant_id, customer_id)
        if value is _MISSING:
            return None
        return customer_id if value is None else value

    def _set(self, tenant_id: str, customer_id: str, value: str | None, until: float) -> None:
        self._local[(tenant_id, customer_id)] = (value, until)
        self._local.move_to_end((tenant_id, customer_id))
        if len(self._local) > self._entries:
            self._local.popitem(last=False)

    def _in_use(self, tenant_id: str, customer_id: str) -> None:
        """A message goes out under `customer_id`: remembered as in use (rule 2), until its store read expires."""
        key = (tenant_id, customer_id)
        entry = self._local.get(key)
        if entry is not None and entry[0] is None:
            self._local[key] = (customer_id, entry[1])


def _unlinked(customer_id: str, value: str | None, canonical: str) -> bool:
    """`customer_id` (its local value `value`) is not `canonical` and no alias yet: it must be recorded as one. An
    id that is an alias already stays one (insert-only; another canonical id there only comes from a race)."""
    return customer_id != canonical and (value is None or value == customer_id)


def _ids(inbound: Inbound) -> tuple[str, str | None, tuple[str, str] | None]:
    """(sender id, the message's other id or None, (previous, new) BSUIDs of a `user_changed_user_id` or None)."""
    route = inbound.route
    a, b = route.sender_id, route.user_id
    if b is None or b == a:
        b = route.wa_id if route.wa_id != a else None
    change = None
    if route.type == "system":
        meta = inbound.message.metadata or {}
        if meta.get("system.type") == "user_changed_user_id":
            previous = usable_id(meta.get("system.previous_user_id"))
            new = usable_id(meta.get("system.user_id"))
            if previous is not None and new is not None and previous != new:
                change = (previous, new)
    return a, b, change


def _all_ids(inbound: Inbound) -> Sequence[str]:
    a, b, change = _ids(inbound)
    return (a, *((b,) if b is not None else ()), *(change or ()))


def customer_ids(results: Iterable[Result]) -> set[str]:
    """Every id the customer messages among `results` name: two queue messages that share none can be resolved at once
    with the same outcome as one after the other (each resolution writes only its own ids' entries)."""
    return {i for r in results if type(r) is Inbound for i in _all_ids(r)}
