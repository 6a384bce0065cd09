"""Genesys OAuth tokens (client credentials): one login per credential however many deliveries wait for it.

Where a token lives, nearest first:
  process memory  the token this process fetched, until the cache TTL would end; a token read from the cache, for
                  at most LOCAL_HOLD_S (the cache does not say how long it has left, but a cached token always has
                  at least EXPIRY_MARGIN_S of life, so holding it 60 s more is safe).
  Cache port      `tenant:{tenantId}:oauth:token` for the tenant's first credential (the seed's key, unchanged),
                  `tenant:{tenantId}:oauth:token:{client_id}` for each further one; TTL expires_in − 300 s, or half
                  the lifetime for tokens shorter than 10 min (Genesys allows 5 min). Sealed with the SecretBox
                  (context = the key) when one is given, as the worker does: a token is a live credential for the
                  tenant's Genesys org, so it is not left readable in Redis. Never logged (only tenant and client ids).
  the login       POST {login}/oauth/token, Basic client_id:client_secret, grant_type=client_credentials.
Single flight: the first caller for a credential starts one fetch task (cache, then login); every caller arriving
while it runs awaits that same task (shielded: a cancelled caller does not cancel the others' login), so 100 waiting
deliveries make one login, and a failing login fails them all at once instead of being retried 100 times in a row.
Cache down (BackendUnavailable): ignored, memory and the login carry on alone (each process then logs in once).
A 401 from the API: the caller `invalidate()`s the token it used — only if it is still the current one, so a burst of
401s on one stale token makes one new login, not one per message. The refused token is remembered (one per
credential) and never handed out again: a fetch that had read it from the cache just before the 401 would bring it
back, and the delivery that asked for a fresh token would fail "401 with a fresh token" (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from wabridge.engine import keys
from wabridge.engine.secrets import SecretBox, SecretKeyError
from wabridge.http.client import Http1Pools, HttpError
from wabridge.ports import BackendUnavailable, Cache, GenesysCredential, TenantConfig

log = logging.getLogger(__name__)

EXPIRY_MARGIN_S = keys.OAUTH_TOKEN_MARGIN
LOCAL_HOLD_S = 60.0
MAX_CREDENTIALS = 10_000  # memory bound: tokens of this many credentials, least recently used dropped
LOGIN_CONNECTIONS = 4  # per login host: logins are rare (one per credential per token lifetime) and single-flight
MAX_LOGIN_HOSTS = 64  # login pools kept (one per Genesys region in use); past it the least recent closes once idle


class LoginFailed(Exception):
    """The Genesys login did not give a token. `permanent`: the credentials were refused (fix the tenant config)."""

    def __init__(self, tenant_id: str, client_id: str, detail: str, *, status: int | None, permanent: bool) -> None:
        super().__init__(f"genesys login for tenant {tenant_id} client {client_id} failed: {detail}")
        self.status = status
        self.permanent = permanent


class LoginReply(msgspec.Struct):
    access_token: str
    expires_in: float = 86_400.0
    token_type: str = "bearer"


class TokenStatistics(msgspec.Struct, frozen=True):
    logins: int
    from_memory: int
    from_cache: int
    invalidated: int


_decode_login = msgspec.json.Decoder(LoginReply).decode


def _remember(entries: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Per-credential memory, bounded: the least recently set credential is forgotten past MAX_CREDENTIALS."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > MAX_CREDENTIALS:
        entries.popitem(last=False)


def token_key(tenant: TenantConfig, credential: GenesysCredential) -> str:
    """The seed's key for the first credential; the others named by client id (the Cache adapter adds the prefix)."""
    first = not tenant.credentials or credential.client_id == tenant.credentials[0].client_id
    return keys.oauth_token(tenant.tenant_id, None if first else credential.client_id)


class TokenProvider:
    """`await tokens.token(tenant, credential)` → a bearer token valid for a while yet."""

    def __init__(
        self,
        cache: Cache | None,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        box: SecretBox | None = None,
    ) -> None:
        self._cache = cache
        self._box = box
        # The login's HTTP client is http/client.py, as the delivery's: one client stack in the worker.
        self._pools = Http1Pools(max_pools=MAX_LOGIN_HOSTS, limit=LOGIN_CONNECTIONS, timeout=timeout)  # by login origin
        self._clock = clock
        self._held: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key → (token, local deadline)
        self._flights: dict[str, asyncio.Future[str]] = {}  # bounded by the credentials being logged in right now
        self._refused: OrderedDict[str, str] = OrderedDict()  # key → the last token the API refused (401)
        self._logins = self._from_memory = self._from_cache = self._invalidated = 0

    async def token(self, tenant: TenantConfig, credential: GenesysCredential | None = None) -> str:
        credential = credential or tenant.credentials[0]
        key = token_key(tenant, credential)
        if (held := self._from_process(key)) is not None:
            self._from_memory += 1
            return held
        for _ in range(2):  # a fetch begun before a 401 refused its token can bring that token back: fetch again
            flight = self._flights.get(key)
            if flight is None:
                # Shared by every message waiting for this token: a context of its own, so its log lines name none
                # of them (engine/logs.py MESSAGE_CONTEXT).
                flight = asyncio.get_running_loop().create_task(
                    self._fetch(key, tenant, credential), context=contextvars.Context()
                )
                self._flights[key] = flight
                flight.add_done_callback(lambda done: self._landed(key, done))
            token = await asyncio.shield(flight)
            if token != self._refused.get(key):
                break
        return token

    async def _fetch(self, key: str, tenant: TenantConfig, credential: GenesysCredential) -> str:
        cached = await self._cache_get(key)
        if cached is not None and cached != self._refused.get(key):  # compared after the read: a 401 may come meanwhile
            self._from_cache += 1
            self._hold(key, cached, LOCAL_HOLD_S)
            return cached
        token, expires_in = await self._login(tenant, credential)
        if self._refused.get(key) == token:
            del self._refused[key]  # the login's answer stands, even if a server hands out the same token again
        ttl = keys.oauth_token_ttl(expires_in)
        self._hold(key, token, ttl)
        await self._cache_set(key, token, ttl)
        return token

    def _landed(self, key: str, flight: asyncio.Future[str]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here so a flight whose callers all left is not reported as lost

    async def invalidate(self, tenant: TenantConfig, credential: GenesysCredential, token: str) -> None:
        """The API refused `token` (401): forget it, unless a newer one has replaced it already."""
        key = token_key(tenant, credential)
        _remember(self._refused, key, token)
        held = self._held.get(key)
        if held is not None and held[0] != token:
            return
        self._held.pop(key, None)
        self._invalidated += 1
        if self._cache is None:
            return
        try:
            if await self._cache_get(key) == token:
                await self._cache.delete(key)
        except BackendUnavailable:
            pass

    def statistics(self) -> TokenStatistics:
        return TokenStatistics(self._logins, self._from_memory, self._from_cache, self._invalidated)

    async def aclose(self) -> None:
        self._held.clear()
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)  # ended before their HTTP pools close under them
        await self._pools.aclose()

    # --- internals -------------------------------------------------------------------------------------------------

    def _from_process(self, key: str) -> str | None:
        held = self._held.get(key)
        if held is None:
            return None
        if held[1] <= self._clock() or held[0] == self._refused.get(key):
            del self._held[key]
            return None
        return held[0]

    def _hold(self, key: str, token: str, seconds: float) -> None:
        _remember(self._held, key, (token, self._clock() + seconds))

    async def _cache_get(self, key: str) -> str | None:
        if self._cache is None:
            return None
        try:
            value = await self._cache.get(key)
        except BackendUnavailable:
            return None
        if not value or self._box is None:
            return value.decode() if value else None
        try:
            return self._box.decrypt(value.decode(), context=key)
        except (SecretKeyError, UnicodeDecodeError):
            return None  # sealed under a key we no longer hold, or left unsealed by an older bridge: log in again

    async def _cache_set(self, key: str, token: str, ttl: float) -> None:
        if self._cache is None or ttl <= 0:
            return
        try:
            sealed = token if self._box is None else self._box.encrypt(token, context=key)
            await self._cache.set(key, sealed.encode(), ttl)
        except BackendUnavailable:
            pass

    async def _login(self, tenant: TenantConfig, credential: GenesysCredential) -> tuple[str, float]:
        fail = lambda detail, status=None, permanent=False: LoginFailed(  # noqa: E731
            tenant.tenant_id, credential.client_id, detail, status=status, permanent=permanent
        )
        login = urlsplit(tenant.genesys_login_url)
        basic = base64.b64encode(f"{credential.client_id}:{credential.client_secret.reveal()}".encode()).decode()
        try:
            response = await self._pools.request(
                f"{login.scheme}://{login.netloc}",
                "POST",
                login.path.rstrip("/") + "/oauth/token",
                {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
                b"grant_type=client_credentials",
            )
        except TimeoutError:
            raise fail("timed out") from None
        except (HttpError, ValueError) as exc:  # ValueError: a login url that is not http(s)
            raise fail(f"{type(exc).__name__}: {exc}") from None
        if response.status != 200:
            # 400/401/403: the client is unknown or not allowed — no retry will change that.
            permanent = response.status in (400, 401, 403)
            raise fail(f"HTTP {response.status}", response.status, permanent)
        try:
            reply = _decode_login(response.body)
        except msgspec.DecodeError:
            raise fail("unreadable login reply", 200) from None
        self._logins += 1
        log.info(
            "genesys login ok tenant=%s client=%s expires_in=%s",
            tenant.tenant_id,
            credential.client_id,
            reply.expires_in,
        )
        return reply.access_token, reply.expires_in
