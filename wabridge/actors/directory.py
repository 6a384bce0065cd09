"""The tenant directory: which tenant owns a phone_number_id, and its configuration (secrets included).

Three tiers, fastest first:
  1. an in-process map of *decoded* configs (bounded LRU, entries trusted for `ttl` seconds) — the ingress hot path
     almost always stops here;
  2. the Cache port (`tenant:{phoneNumberId}:config`, 1 h): the whole TenantConfig **encrypted** with the SecretBox
     (AES-GCM, context = the key name), so app secrets and tokens never sit in Redis in plaintext and a value copied
     under another key does not decrypt; an unknown number is cached there as `-` for `negative_ttl`;
  3. the Store (PostgreSQL / SQLite).

Unknown numbers are cached as negatives too (bounded separately, short-lived), and concurrent lookups of one number
share one store query (single flight), so a flood of unknown numbers cannot hammer the database: at most
`max_store_lookups` queries run at once, each distinct number at most once per `negative_ttl` per process.

A Cache that is down is skipped (the store answers); a Store that is down raises BackendUnavailable to the caller.
Staleness: a change made through `invalidate` here is seen at once in this process, by other processes after at
most `ttl` seconds (their in-process tier) plus the Cache port's own local staleness (LocalCache, 1 s) — pass the
previous config too when phone numbers were removed, so their old entries go as well.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag

from wabridge.engine import keys
from wabridge.engine.lru import MISSING, ExpiringLRU
from wabridge.engine.secrets import Secret, SecretBox, SecretKeyError
from wabridge.ports import BackendUnavailable, Cache, TenantConfig, TenantStore

log = logging.getLogger("wabridge.tenants")

_NEGATIVE = b"-"


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return obj.reveal()  # only ever into the encrypted blob below
    raise NotImplementedError(type(obj))


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError(kind)


_config_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_config_decoder = msgspec.json.Decoder(TenantConfig, dec_hook=_dec_hook)


class DirectoryStatistics(msgspec.Struct, frozen=True):
    local_hits: int
    cache_hits: int  # found in the Cache port (encrypted)
    store_lookups: int
    entries: int
    negatives: int

    @property
    def hit_ratio(self) -> float:
        total = self.local_hits + self.cache_hits + self.store_lookups
        return self.local_hits / total if total else 1.0


class TenantDirectory:
    """Finds tenants by phone_number_id or id. One per process; safe for concurrent use on one event loop."""

    def __init__(
        self,
        store: TenantStore,
        cache: Cache,
        box: SecretBox,
        *,
        ttl: float = 5.0,
        negative_ttl: float = 10.0,
        max_entries: int = 10_000,
        max_negatives: int = 10_000,
        max_store_lookups: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cache = cache
        self._box = box
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._by_number: ExpiringLRU[str, TenantConfig] = ExpiringLRU(max_entries, clock=clock)
        self._by_id: ExpiringLRU[str, TenantConfig | None] = ExpiringLRU(max_entries, clock=clock)
        self._negatives: ExpiringLRU[str, None] = ExpiringLRU(max_negatives, clock=clock)
        self._all: ExpiringLRU[str, list[TenantConfig]] = ExpiringLRU(1, clock=clock)
        self._in_flight: dict[str, asyncio.Future[TenantConfig | None]] = {}
        self._lookups = asyncio.Semaphore(max_store_lookups)
        self._local_hits = self._cache_hits = self._store_lookups = 0

    # --- lookups ----------------------------------------------------------------------------------------------

    async def by_phone_number(self, phone_number_id: str) -> TenantConfig | None:
        tenant = self._by_number.get(phone_number_id, None)
        if tenant is not None:
            self._local_hits += 1
            return tenant
        if self._negatives.get(phone_number_id, MISSING) is not MISSING:
            self._local_hits += 1
            return None
        pending = self._in_flight.get(phone_number_id)
        if pending is not None:  # single flight: wait for the lookup already running
            await asyncio.wait([pending])
            if pending.cancelled():  # its caller was cancelled, not us: look again
                return await self.by_phone_number(phone_number_id)
            return pending.result()
        pending = asyncio.get_running_loop().create_future()
        self._in_flight[phone_number_id] = pending
        try:
            tenant = await self._fetch(phone_number_id)
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # mark it retrieved: waiters may be none
            raise
        except BaseException:
            pending.cancel()
            raise
        else:
            pending.set_result(tenant)
        finally:
            del self._in_flight[phone_number_id]
        self._remember(phone_number_id, tenant)
        return tenant

    async def by_id(self, tenant_id: str) -> TenantConfig | None:
        cached = self._by_id.get(tenant_id, MISSING)
        if cached is not MISSING:
            self._local_hits += 1
            return cached
        async with self._lookups:
            self._store_lookups += 1
            tenant = await self._store.get_tenant(tenant_id)
        self._by_id.put(tenant_id, tenant, self._ttl if tenant is not None else self._negative_ttl)
        return tenant

    async def all(self) -> list[TenantConfig]:
        """Every tenant (the verification handshake without a tenant id), cached for `ttl` seconds."""
        tenants = self._all.get("all", None)
        if tenants is not None:
            return tenants
        async with self._lookups:
            tenants = await self._store.list_tenants()
        self._all.put("all", tenants, self._ttl)
        return tenants

    async def invalidate(self, tenant: TenantConfig, *, previous: TenantConfig | None = None) -> None:
        """Forget a tenant here and in the Cache port (call after changing it in the store)."""
        numbers = set(tenant.phone_number_ids) | set(previous.phone_number_ids if previous else ())
        for number in numbers:
            self._by_number.pop(number)
            self._negatives.pop(number)
            try:
                await self._cache.delete(keys.tenant_config(number))
            except BackendUnavailable:
                log.warning("cache down: tenant %s stays cached elsewhere up to its TTL", tenant.tenant_id)
        self._by_id.pop(tenant.tenant_id)
        self._all.pop("all")

    def statistics(self) -> DirectoryStatistics:
        return DirectoryStatistics(
            self._local_hits, self._cache_hits, self._store_lookups, len(self._by_number), len(self._negatives)
        )

    # --- the slow path ----------------------------------------------------------------------------------------

    async def _fetch(self, phone_number_id: str) -> TenantConfig | None:
        key = keys.tenant_config(phone_number_id)
        try:
            cached = await self._cache.get(key)
        except BackendUnavailable:
            cached = None  # the store still answers
        if cached is not None:
            self._cache_hits += 1
            if cached == _NEGATIVE:
                return None
            tenant = self._open(key, cached)
            if tenant is not None and phone_number_id in tenant.phone_number_ids:
                return tenant
        async with self._lookups:
            self._store_lookups += 1
            tenant = await self._store.tenant_for_phone_number(phone_number_id)
        try:
            if tenant is None:
                await self._cache.set(key, _NEGATIVE, self._negative_ttl)
            else:
                await self._cache.set(key, self._seal(key, tenant), keys.TENANT_CONFIG_TTL)
        except BackendUnavailable:
            pass  # next process to miss asks the store again
        return tenant

    def _remember(self, phone_number_id: str, tenant: TenantConfig | None) -> None:
        if tenant is None:
            self._negatives.put(phone_number_id, None, self._negative_ttl)
        else:
            self._by_number.put(phone_number_id, tenant, self._ttl)

    def _seal(self, key: str, tenant: TenantConfig) -> bytes:
        return self._box.encrypt(_config_encoder.encode(tenant).decode(), context=key).encode()

    def _open(self, key: str, sealed: bytes) -> TenantConfig | None:
        try:
            return _config_decoder.decode(self._box.decrypt(sealed.decode(), context=key))
        except (SecretKeyError, InvalidTag, UnicodeDecodeError, ValueError, msgspec.DecodeError):
            log.warning("unreadable cached tenant config under %s (rotated key?): asking the store", key)
            return None
