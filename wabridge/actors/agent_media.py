"""The agent's file, on its way to the customer: download it from Genesys, keep a copy, check it, upload it to Meta.

    media_id = await agent_media.upload(tenant, send, phone_number_id)   # then meta_bodies.meta_body(…, media id)

1. Download `send.media.url` at once (Genesys's download links may not live long). The tenant's Genesys OAuth token
   goes along as Bearer only when the url's host is a Genesys host: the tenant's API region (`api.mypurecloud.ie` →
   `mypurecloud.ie` and its subdomains, over the API's own scheme), or `*.mypurecloud.*` / `*.pure.cloud` over https.
   Any other host gets no token: a link elsewhere must not learn a credential for the tenant's Genesys org. Redirects
   are followed (up to 5), the token never sent past the origin it was meant for (media.py's rule), never from https
   to http; a host that resolves to a private, loopback or link-local address is refused at once
   (WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS allows it, for simulators).
   Reading stops past Meta's limit for the type (receipts.MEDIA_LIMITS): a larger file is never held whole.
2. The real content type is the download's Content-Type; a generic one (application/octet-stream, what object stores
   answer when nobody said) or none falls back to the mime Genesys named, then to a guess from the file name.
3. Stored in `media-outbound` at `{tenant}/{meta type}/{YYYY-MM-DD}/{genesys id}.{ext}` (object_keys.media_key),
   metadata: the Genesys id and the tenant — the record of what the agent sent, refused or not.
4. `receipts.media_problem(meta type, real type, real size)`: MediaRefused(MediaTypeNotAllowed /
   InvalidMediaContentLength) instead of an upload Meta would refuse.
5. `graph.upload(...)` with the checked type and the file name → Meta's media id. Meta refusing the upload
   (SendRefused) becomes MediaRefused with Meta's reason: the caller has one refusal to handle for the media.

Failures: 401 with the token → a fresh token, once; any other 4xx (or a 401 without a token) → MediaRefused
(GeneralError, with the status); 408, 429, 5xx, timeouts and broken connections → tried `attempts` times with backoff,
then MediaRefused(GeneralError). Objects down → BackendUnavailable passes through (the caller holds the message).
Not idempotent per Genesys id: a redelivered message downloads and uploads again (the key is the same, the copy is
overwritten).
Memory: at most `concurrency` files in hand, each at most Meta's limit for its type (100 MB for a document).
"""

from __future__ import annotations

import mimetypes
import random
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import anyio
import msgspec

from wabridge.actors.media import MAX_REDIRECTS, REDIRECTS
from wabridge.codecs.object_keys import extension_for, media_key
from wabridge.codecs.outbound_results import MediaToFetch, Send
from wabridge.codecs.receipts import MEDIA_LIMITS, Reason, bare_mime, media_problem
from wabridge.engine import history
from wabridge.genesys.auth import LoginFailed, TokenProvider
from wabridge.http.client import AddressRefused, BodyTooLarge, Http1Pools, HttpError, Reply
from wabridge.meta.graph import MetaGraph, SendRefused
from wabridge.ports import MEDIA_OUTBOUND_BUCKET, Objects, TenantConfig

RETRYABLE = frozenset({408, 425, 429})  # and every 5xx
GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/unknown"})
MAX_ORIGINS = 64  # download pools kept: Genesys's download hosts and what they redirect to


class MediaRefused(Exception):
    """The agent's file cannot go to WhatsApp: the agent gets a Failed receipt with `reason`."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.message)
        self.reason = reason

    def __repr__(self) -> str:
        return f"MediaRefused({self.reason.code}, {self.reason.message!r})"


class AgentMediaStatistics(msgspec.Struct, frozen=True):
    uploaded: int
    refused: int
    retries: int
    bytes_stored: int


class _Retry(Exception):
    pass


def genesys_host(url: str, tenant: TenantConfig) -> bool:
    """Whether `url` is one of the tenant's Genesys hosts, which may be sent its OAuth token (module docstring)."""
    parts, api = urlsplit(url), urlsplit(tenant.genesys_api_url)
    host, api_host = (parts.hostname or "").lower(), (api.hostname or "").lower()
    if not host:
        return False
    region = api_host.removeprefix("api.") if api_host.count(".") >= 2 else api_host
    if region and (host == region or host == api_host or host.endswith("." + region)):
        return parts.scheme in ("https", api.scheme)
    labels = host.split(".")
    known = "mypurecloud" in labels[1:-1] or host.endswith(".pure.cloud")
    return known and parts.scheme == "https"


def real_mime(header: str | None, media: MediaToFetch) -> str:
    """The file's content type, bare: the download's, else what Genesys named, else a guess from the file name."""
    for candidate in (header, media.mime):
        bare = bare_mime(candidate)
        if bare is not None and bare not in GENERIC_TYPES:
            return bare
    guessed = mimetypes.guess_type(media.filename or "", strict=False)[0] if media.filename else None
    return bare_mime(guessed) or "application/octet-stream"


class AgentMedia:
    def __init__(
        self,
        objects: Objects,
        graph: MetaGraph,
        tokens: TokenProvider,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        backoff: float = 0.5,
        concurrency: int = 8,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.time,
        allow_private_urls: bool = False,
    ) -> None:
        if attempts < 1 or concurrency < 1:
            raise ValueError("attempts and concurrency must be at least 1")
        self._objects, self._graph, self._tokens = objects, graph, tokens
        self._attempts, self._backoff, self._sleep, self._clock = attempts, backoff, sleep, clock
        self._slots = anyio.Semaphore(concurrency)
        # The url is the agent's (Genesys's message): fetched from public addresses only, unless the settings allow
        # private ones (WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS, for simulators on 127.0.0.1).
        self._http = Http1Pools(
            max_pools=MAX_ORIGINS,
            limit=concurrency,
            timeout=timeout,
            connect_timeout=5.0,
            public_only=not allow_private_urls,
        )
        self._counts = {"uploaded": 0, "refused": 0, "retries": 0, "bytes_stored": 0}

    def statistics(self) -> AgentMediaStatistics:
        return AgentMediaStatistics(**self._counts)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def upload(self, tenant: TenantConfig, send: Send, phone_number_id: str) -> str:
        """Meta's media id for `send.media`. Raises MediaRefused, BackendUnavailable (Objects down, or a drain while
        Meta is down)."""
        media = send.media
        if media is None:
            raise ValueError("upload() needs a Send with media")
        try:
            async with self._slots:
                return await self._upload(tenant, send, media, phone_number_id)
        except MediaRefused:
            self._counts["refused"] += 1
            raise

    async def _upload(self, tenant: TenantConfig, send: Send, media: MediaToFetch, phone_number_id: str) -> str:
        kind = media.meta_type
        limit = MEDIA_LIMITS.get(kind)
        if limit is None:  # the codec names only Meta's media types; anything else cannot be sent as media
            raise MediaRefused(Reason("MediaTypeNotAllowed", f"WhatsApp has no media type {kind!r}"))
        try:
            data, header = await self._download(tenant, media.url, limit.max_bytes)
        except BodyTooLarge:
            raise MediaRefused(
                Reason(
                    "InvalidMediaContentLength",
                    f"The {kind} is larger than {limit.max_bytes} bytes, the most WhatsApp accepts for a {kind}",
                )
            ) from None
        mime = real_mime(header, media)
        key = media_key(tenant.tenant_id, kind, self._clock(), send.id, extension_for(mime))
        metadata = {"genesys-id": send.id, "tenant": tenant.tenant_id}
        await self._objects.put(MEDIA_OUTBOUND_BUCKET, key, data, content_type=mime, metadata=metadata)
        self._counts["bytes_stored"] += len(data)
        match media_problem(kind, mime, len(data)):
            case None:
                pass
            case "InvalidMediaContentLength":
                raise MediaRefused(
                    Reason(
                        "InvalidMediaContentLength",
                        f"The {kind} is {len(data)} bytes; WhatsApp accepts at most {limit.max_bytes} for a {kind}",
                    )
                )
            case problem:
                allowed = ", ".join(sorted(limit.mimes or ()))
                raise MediaRefused(Reason(problem, f"WhatsApp does not take {mime} as a {kind} (only {allowed})"))
        try:
            media_id = await self._graph.upload(tenant, phone_number_id, data, mime, media.filename)
        except SendRefused as refused:
            raise MediaRefused(refused.reason) from refused
        self._counts["uploaded"] += 1
        return media_id

    async def _download(self, tenant: TenantConfig, url: str, max_bytes: int) -> tuple[bytes, str | None]:
        """(bytes, Content-Type); BodyTooLarge past `max_bytes`; MediaRefused when it cannot be had."""
        with_token = genesys_host(url, tenant)
        relogged = False
        attempt = 0
        while True:
            attempt += 1
            token = None
            try:
                if with_token:
                    token = await self._tokens.token(tenant)
                reply = await self._get(url, token, max_bytes)
            except BodyTooLarge:
                raise
            except LoginFailed as exc:
                if exc.permanent:
                    raise MediaRefused(Reason("GeneralError", f"The agent's file could not be downloaded: {exc}"))
                detail = str(exc)
            except TimeoutError:
                detail = "timed out"
            except AddressRefused as exc:  # no retry makes a private address public
                raise MediaRefused(Reason("GeneralError", f"The agent's file was not downloaded: {exc}")) from None
            except (HttpError, ValueError, _Retry) as exc:  # ValueError: a url that is not http(s)
                detail = str(exc)[:200] or type(exc).__name__
            else:
                status = reply.status
                if 200 <= status < 300:
                    return reply.body, reply.header("content-type")
                detail = f"HTTP {status}"
                if status == 401 and token is not None and not relogged:
                    # The token expired or was revoked: log in again, once, before anything counts as a failure.
                    await self._tokens.invalidate(tenant, tenant.credentials[0], token)
                    relogged = True
                    continue
                if status < 500 and status not in RETRYABLE:
                    raise MediaRefused(Reason("GeneralError", f"The agent's file could not be downloaded: {detail}"))
            if attempt >= self._attempts:
                raise MediaRefused(
                    Reason("GeneralError", f"The agent's file could not be downloaded: {detail} ({attempt} tries)")
                )
            self._counts["retries"] += 1
            history.note("media-retried", f"agent file, attempt {attempt}: {detail}")
            await self._sleep(self._backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))

    async def _get(self, url: str, token: str | None, max_bytes: int) -> Reply:
        """GET `url`, following redirects; the token goes only to the origin of the url it came with, and a redirect
        from https to http is refused (the file would travel in clear)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        origin, scheme = None, ""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            here = f"{parts.scheme}://{parts.netloc}"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if origin is None:
                origin = here
            elif here != origin:
                headers = {}  # and not back: once the url left the token's origin, it is not sent again
            if scheme == "https" and parts.scheme != "https":
                raise MediaRefused(
                    Reason(
                        "GeneralError", "The agent's file was not downloaded: its link redirected from https to http"
                    )
                )
            scheme = parts.scheme
            reply = await self._http.request(here, "GET", target, headers, max_body=max_bytes)
            location = reply.header("location")
            if reply.status not in REDIRECTS or not location:
                return reply
            url = urljoin(url, location)
        raise _Retry(f"more than {MAX_REDIRECTS} redirects")
