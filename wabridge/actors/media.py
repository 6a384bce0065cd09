"""The media actor's work: fetch a customer's media from Meta, keep it in `media-inbound`, hand Genesys a URL.

Meta's download is two steps with the tenant's WhatsApp token: `GET {graph_api_url}/{media_id}` answers a url,
size, mime and sha256; `GET <url>` (same token, valid 5 minutes) answers the bytes. The bytes go to the Objects port
at the seed's key `{tenant}/{type}/{YYYY-MM-DD}/{wamid}.{ext}` (object_keys.media_key), and a presigned URL valid
one hour replaces the `media:<id>` placeholder in the Genesys attachment.

What can go wrong, and what happens (a data table: FINAL_LOOKUP / RETRYABLE below):
  - larger than Genesys's 25 MB inbound limit (by the lookup's file_size, or counted while streaming when Meta
    understated it) → a text notice, nothing downloaded or nothing kept;
  - lookup 404 (media deleted or never existed) or 400 → final at once; 401/403 (the tenant's token is wrong) → final;
  - a download url whose host resolves to a private, loopback or link-local address, or a redirect from https to
    http → final at once (WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS allows private addresses, for simulators);
  - bytes that do not match Meta's sha256 → final at once: over TLS that is not line noise, and retrying would
    download a possibly large file again for the same answer;
  - 429, 5xx, network errors, and an expired or refused download url (403/404/410 on step 2) → retried, up to
    `attempts` in all, each attempt starting again from the lookup (so an expired url is replaced), with
    exponential backoff and jitter;
  - every failure above ends as `MediaOutcome(stored=False, notice=…)`: the message is still delivered, as text
    saying the media could not be fetched, and the tracking row records `outcome.error`.
  - Objects failures (S3 down) are not Meta's fault and not the message's: `BackendUnavailable` propagates, so the
    worker leaves the message unacked and it comes back later.

Idempotent: the key depends only on the message, so a redelivered message overwrites the same object.
Memory is bounded by `concurrency × max_bytes` (the Objects port takes whole bytes, so a file is buffered).

HTTP client: http/client.py, as for the Genesys POST, with the redirects followed here (Meta's download url may
send us to a CDN; the token is never sent to another origin than the one it was meant for, aiohttp's rule too) and
the size limit enforced while the body is read. With both GETs on aiohttp and the S3 put through miniopy's own
transport, an image message cost the worker 1,030-1,080 µs; with both on http1, 690-707 µs (a worker draining
3,000 image messages, bench/README.md).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import anyio
import msgspec

from wabridge.codecs.genesys import OpenInboundNormalizedMessage
from wabridge.codecs.media_placeholder import media_as_text, with_media_url
from wabridge.codecs.object_keys import extension_for, media_key
from wabridge.codecs.results import Inbound, MediaRef, sha256_digest
from wabridge.engine import history
from wabridge.engine.settings import Settings
from wabridge.http.client import AddressRefused, BodyTooLarge, Http1Pools, HttpError, Reply
from wabridge.ports import MEDIA_BUCKET, Objects, TenantConfig

GENESYS_MAX_ATTACHMENT = 25 * 1024 * 1024  # Genesys refuses inbound attachments above 25 MB
PRESIGN_SECONDS = 3600.0  # Genesys fetches the attachment soon after delivery; an hour covers its retries

# Step-1 answers that no retry can change, and the outcome reason each becomes.
FINAL_LOOKUP: dict[int, str] = {
    400: "not_found",
    404: "not_found",
    410: "not_found",
    401: "unauthorized",
    403: "unauthorized",
}
# Step-2 answers worth another attempt (which starts with a fresh lookup, so a fresh url).
RETRYABLE_DOWNLOAD = {403, 404, 408, 410, 425, 429}
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
LOOKUP_MAX_BODY = 64 * 1024  # the lookup's JSON is a few hundred bytes
MAX_ORIGINS = 64  # HTTP pools kept: the Graph API, Meta's download hosts, CDNs it redirects to

# What the agent reads instead of the attachment; {kind} is Meta's message type, {limit} the size limit in MB.
NOTICES: dict[str, str] = {
    "too_large": "[The customer sent a {kind} larger than {limit} MB, the most Genesys accepts; it was not passed on.]",
    "not_found": "[The customer sent a {kind} that WhatsApp no longer has; it could not be fetched.]",
    "unauthorized": "[The customer sent a {kind} that could not be fetched: WhatsApp refused the access token.]",
    "sha256_mismatch": "[The customer sent a {kind} that arrived damaged (checksum mismatch); it was not passed on.]",
    "download_failed": "[The customer sent a {kind} that could not be fetched from WhatsApp.]",
}


class MediaOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A fetched media file (`url`), or the notice the agent gets instead and why (`reason`)."""

    reason: str  # "stored" or a key of NOTICES
    url: str | None = None
    key: str | None = None
    notice: str | None = None
    size: int = 0  # bytes stored, or the size Meta announced when too large
    attempts: int = 0
    detail: str = ""  # the last error, short, for the tracking row (never a token or a signed url)
    mime: str | None = None  # the stored object's content type

    @property
    def stored(self) -> bool:
        return self.url is not None

    @property
    def error(self) -> str | None:
        """For TrackingRecord.error: None when the media went through."""
        return None if self.stored else f"media {self.reason}: {self.detail}".rstrip(": ")

    def apply(self, inbound: Inbound) -> OpenInboundNormalizedMessage:
        """The Genesys message to deliver: with the presigned url, or as text carrying the notice."""
        if self.url is not None:
            return with_media_url(inbound.message, self.url, self.mime)
        return media_as_text(inbound, self.notice or "")


class MediaStatistics(msgspec.Struct, frozen=True):
    stored: int
    notices: int
    retries: int
    bytes_stored: int


class _Final(Exception):
    def __init__(self, reason: str, detail: str, size: int = 0) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.size = reason, detail, size


class _Retry(Exception):
    pass


@dataclass(frozen=True)
class _Lookup:
    url: str
    mime: str | None
    sha256: bytes | None
    file_size: int | None


_decode_lookup = msgspec.json.Decoder(dict).decode


class MediaFetcher:
    """Fetches media for any tenant; one HTTP connection pool, at most `concurrency` files at once."""

    def __init__(
        self,
        objects: Objects,
        settings: Settings,
        *,
        attempts: int = 3,
        backoff: float = 0.2,
        max_bytes: int = GENESYS_MAX_ATTACHMENT,
        concurrency: int = 32,
        timeout: float = 30.0,
    ) -> None:
        if attempts < 1 or concurrency < 1 or max_bytes < 1:
            raise ValueError("attempts, concurrency and max_bytes must be at least 1")
        self._objects = objects
        self._graph = settings.graph_api_url.rstrip("/")
        self._attempts, self._backoff, self._max_bytes = attempts, backoff, max_bytes
        self._slots = anyio.Semaphore(concurrency)
        # `timeout` bounds one request, body included; at most `concurrency` downloads at once, so per origin too
        self._http = Http1Pools(max_pools=MAX_ORIGINS, limit=concurrency, timeout=timeout, connect_timeout=5.0)
        # The download url comes from Meta's answer, not from our settings: fetched from public addresses only.
        self._downloads = Http1Pools(
            max_pools=MAX_ORIGINS,
            limit=concurrency,
            timeout=timeout,
            connect_timeout=5.0,
            public_only=not settings.allow_private_media_urls,
        )
        self._counts = {"stored": 0, "notices": 0, "retries": 0, "bytes_stored": 0}

    def statistics(self) -> MediaStatistics:
        return MediaStatistics(**self._counts)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._downloads.aclose()

    async def resolve(self, tenant: TenantConfig, inbound: Inbound) -> MediaOutcome:
        """Fetch `inbound.media` and store it; raises BackendUnavailable when the Objects port is down."""
        media = inbound.media
        if media is None:
            raise ValueError("resolve() needs an Inbound with media")
        async with self._slots:
            outcome = await self._fetch_with_retries(tenant, inbound, media)
        self._counts["stored" if outcome.stored else "notices"] += 1
        return outcome

    async def _fetch_with_retries(self, tenant: TenantConfig, inbound: Inbound, media: MediaRef) -> MediaOutcome:
        kind = inbound.route.type
        detail = ""
        for attempt in range(1, self._attempts + 1):
            try:
                data, mime = await self._download(tenant.whatsapp_token.reveal(), media)
            except _Final as final:
                return self._notice(final.reason, kind, final.detail, attempt, final.size)
            except _Retry as exc:
                detail = str(exc)
            except AddressRefused as exc:  # no retry makes a private address public
                return self._notice("download_failed", kind, f"url refused: {exc}", attempt)
            except (HttpError, TimeoutError) as exc:  # refused, reset, cut short, timed out: try again
                detail = type(exc).__name__
            except ValueError as exc:  # a url from Meta that is not http(s), or not one path: another lookup may fix it
                detail = str(exc)[:100]
            else:
                key = media_key(
                    tenant.tenant_id, kind, inbound.route.timestamp, inbound.route.wamid, extension_for(mime)
                )
                mime = mime or "application/octet-stream"
                metadata = {"wamid": inbound.route.wamid, "media-id": media.media_id}
                await self._objects.put(MEDIA_BUCKET, key, data, content_type=mime, metadata=metadata)
                url = await self._objects.presigned_get(MEDIA_BUCKET, key, expires=PRESIGN_SECONDS)
                self._counts["bytes_stored"] += len(data)
                return MediaOutcome(reason="stored", url=url, key=key, size=len(data), attempts=attempt, mime=mime)
            if attempt < self._attempts:
                self._counts["retries"] += 1
                history.note("media-retried", f"attempt {attempt}: {detail}")  # the message's trail: wabridge trace
                # Exponential backoff, full ±50 % jitter so many messages failing together do not retry in step.
                await anyio.sleep(self._backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        return self._notice("download_failed", kind, detail, self._attempts)

    def _notice(self, reason: str, kind: str, detail: str, attempts: int, size: int = 0) -> MediaOutcome:
        limit = f"{self._max_bytes / (1024 * 1024):g}"
        text = NOTICES[reason].format(kind=kind or "file", limit=limit)
        return MediaOutcome(reason=reason, notice=text, size=size, attempts=attempts, detail=detail[:200])

    async def _download(self, token: str, media: MediaRef) -> tuple[bytes, str | None]:
        auth = {"Authorization": f"Bearer {token}"}
        found = await self._lookup(auth, media.media_id)
        if found.file_size is not None and found.file_size > self._max_bytes:
            raise _Final("too_large", f"file_size {found.file_size}", found.file_size)
        try:
            response = await self._get(found.url, auth, self._max_bytes, self._downloads)
        except BodyTooLarge:  # Meta's file_size was wrong or absent: reading stopped at the limit
            raise _Final("too_large", f"more than {self._max_bytes} bytes", self._max_bytes + 1) from None
        status = response.status
        if status != 200:
            if status in RETRYABLE_DOWNLOAD or status >= 500:
                raise _Retry(f"download HTTP {status}")
            if status == 401:
                raise _Final("unauthorized", "download HTTP 401")
            raise _Final("download_failed", f"download HTTP {status}")
        data = response.body
        expected = [d for d in (media.sha256_digest(), found.sha256) if d is not None]
        actual = hashlib.sha256(data).digest()
        if any(d != actual for d in expected):
            raise _Final("sha256_mismatch", f"got {actual.hex()[:16]}…")
        return data, found.mime or media.mime

    async def _get(self, url: str, auth: dict[str, str], max_body: int, http: Http1Pools | None = None) -> Reply:
        """GET `url`, following up to MAX_REDIRECTS redirects. The token goes only to the origin of the url it came
        with: from a redirect to another origin (a CDN) on, it is not sent. A redirect from https to http is refused:
        the bytes (and Meta's url) would then travel in clear."""
        headers, origin, scheme = auth, None, ""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            here = f"{parts.scheme}://{parts.netloc}"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if origin is None:
                origin = here  # the token's origin
            elif here != origin:
                headers = {}  # and not back: once the url left the token's origin, it is not sent again
            if scheme == "https" and parts.scheme != "https":
                raise _Final("download_failed", "redirect from https to http refused")
            scheme = parts.scheme
            pools = self._http if http is None else http  # (not `http or`: an Http1Pools with no pool yet is falsy)
            response = await pools.request(here, "GET", target, headers, max_body=max_body)
            location = response.header("location")
            if response.status not in REDIRECTS or not location:
                return response
            url = urljoin(url, location)
        raise _Retry(f"more than {MAX_REDIRECTS} redirects")

    async def _lookup(self, auth: dict[str, str], media_id: str) -> _Lookup:
        response = await self._get(f"{self._graph}/{media_id}", auth, LOOKUP_MAX_BODY)
        status, body = response.status, response.body
        if status in FINAL_LOOKUP:
            raise _Final(FINAL_LOOKUP[status], f"lookup HTTP {status}")
        if status != 200:
            if status == 429 or status >= 500 or status == 408:
                raise _Retry(f"lookup HTTP {status}")
            raise _Final("download_failed", f"lookup HTTP {status}")
        try:
            info = _decode_lookup(body)
            url = info["url"]
            size = info.get("file_size")
            return _Lookup(
                url=str(url),
                mime=info.get("mime_type"),
                sha256=sha256_digest(info.get("sha256")),
                file_size=int(size) if size is not None else None,
            )
        except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
            raise _Retry(f"lookup answer unreadable: {type(exc).__name__}") from None
