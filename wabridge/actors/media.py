"""The media actor's work: fetch a customer's media from Meta, keep it in `media-inbound`, hand Genesys a URL.

Meta's download (the MetaMediaApi port; meta/media.py) is two steps with the tenant's WhatsApp token: a lookup
answers a url, size, mime and sha256, the url (valid 5 minutes) answers the bytes. The bytes go to the Objects port
at the seed's key `{tenant}/{type}/{YYYY-MM-DD}/{wamid}.{ext}` (object_keys.media_key), and a presigned URL valid
one hour replaces the `media:<id>` placeholder in the Genesys attachment.

What can go wrong, and what happens (a data table: meta/media.py FINAL_LOOKUP / RETRYABLE_DOWNLOAD):
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
"""

from __future__ import annotations

import hashlib

import anyio
import msgspec

from wabridge.codecs.genesys import OpenInboundNormalizedMessage
from wabridge.codecs.media_placeholder import media_as_text, with_media_url
from wabridge.codecs.object_keys import extension_for, media_key
from wabridge.codecs.results import Inbound, MediaRef
from wabridge.engine import history
from wabridge.engine.backoff import Backoff
from wabridge.ports import MEDIA_BUCKET, FetchFailed, MetaMediaApi, Objects, TenantConfig

GENESYS_MAX_ATTACHMENT = 25 * 1024 * 1024  # Genesys refuses inbound attachments above 25 MB
PRESIGN_SECONDS = 3600.0  # Genesys fetches the attachment soon after delivery; an hour covers its retries

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


class MediaFetcher:
    """Fetches media for any tenant through the MetaMediaApi port, at most `concurrency` files at once."""

    def __init__(
        self,
        objects: Objects,
        meta: MetaMediaApi,
        *,
        attempts: int = 3,
        backoff: float = 0.2,
        max_bytes: int = GENESYS_MAX_ATTACHMENT,
        concurrency: int = 32,
    ) -> None:
        if attempts < 1 or concurrency < 1 or max_bytes < 1:
            raise ValueError("attempts, concurrency and max_bytes must be at least 1")
        self._objects = objects
        self.meta = meta
        self._attempts, self._backoff, self._max_bytes = attempts, Backoff(backoff), max_bytes
        self._slots = anyio.Semaphore(concurrency)
        self._counts = {"stored": 0, "notices": 0, "retries": 0, "bytes_stored": 0}

    def statistics(self) -> MediaStatistics:
        return MediaStatistics(**self._counts)

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
                data, mime = await self._download(tenant, media)
            except FetchFailed as failed:
                if failed.final:
                    return self._notice(failed.reason, kind, failed.detail, attempt, failed.size)
                detail = failed.detail
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
                await anyio.sleep(self._backoff.delay(attempt))  # jittered: messages failing together spread
        return self._notice("download_failed", kind, detail, self._attempts)

    def _notice(self, reason: str, kind: str, detail: str, attempts: int, size: int = 0) -> MediaOutcome:
        limit = f"{self._max_bytes / (1024 * 1024):g}"
        text = NOTICES[reason].format(kind=kind or "file", limit=limit)
        return MediaOutcome(reason=reason, notice=text, size=size, attempts=attempts, detail=detail[:200])

    async def _download(self, tenant: TenantConfig, media: MediaRef) -> tuple[bytes, str | None]:
        found = await self.meta.fetch(tenant, media.media_id, self._max_bytes)
        expected = [d for d in (media.sha256_digest(), found.sha256) if d is not None]
        actual = hashlib.sha256(found.data).digest()
        if any(d != actual for d in expected):
            raise FetchFailed(f"got {actual.hex()[:16]}…", final=True, reason="sha256_mismatch")
        return found.data, found.content_type or media.mime
