"""The agent's file, on its way to the customer: download it from Genesys, keep a copy, check it, upload it to Meta.

    media_id = await agent_media.upload(tenant, send, phone_number_id)   # then meta_bodies.meta_body(…, media id)

1. Download `send.media.url` at once (Genesys's download links may not live long), through the GenesysFiles port
   (genesys/files.py: the tenant's OAuth token only to Genesys's own hosts, redirects, private addresses refused
   unless WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS). Reading stops past Meta's limit for the type (receipts.MEDIA_LIMITS):
   a larger file is never held whole.
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
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from wabridge.codecs.object_keys import extension_for, media_key
from wabridge.codecs.outbound_results import MediaToFetch, Send
from wabridge.codecs.receipts import MEDIA_LIMITS, Reason, bare_mime, media_problem
from wabridge.engine import history
from wabridge.engine.backoff import Backoff
from wabridge.ports import (
    MEDIA_OUTBOUND_BUCKET,
    FetchFailed,
    FileTooLarge,
    GenesysFiles,
    MetaGraphApi,
    Objects,
    SendRefused,
    TenantConfig,
)

GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/unknown"})


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
        graph: MetaGraphApi,
        files: GenesysFiles,
        *,
        attempts: int = 3,
        backoff: float = 0.5,
        concurrency: int = 8,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if attempts < 1 or concurrency < 1:
            raise ValueError("attempts and concurrency must be at least 1")
        self._objects, self._graph, self._files = objects, graph, files
        self._attempts, self._backoff, self._sleep, self._clock = attempts, Backoff(backoff), sleep, clock
        self._slots = anyio.Semaphore(concurrency)
        self._counts = {"uploaded": 0, "refused": 0, "retries": 0, "bytes_stored": 0}

    def statistics(self) -> AgentMediaStatistics:
        return AgentMediaStatistics(**self._counts)

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
        except FileTooLarge:
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
        """(bytes, Content-Type); FileTooLarge past `max_bytes`; MediaRefused when it cannot be had."""
        relogged = False
        attempt = 0
        while True:
            attempt += 1
            try:
                file = await self._files.download(tenant, url, max_bytes)
            except FetchFailed as failed:
                detail = failed.detail
                if failed.reason == "unauthorized" and not relogged:
                    relogged = True  # the token was dropped: log in again, once, before anything counts as a failure
                    continue
                if failed.reason == "refused":
                    raise MediaRefused(
                        Reason("GeneralError", f"The agent's file was not downloaded: {detail}")
                    ) from None
                if failed.final:
                    raise MediaRefused(
                        Reason("GeneralError", f"The agent's file could not be downloaded: {detail}")
                    ) from None
            else:
                return file.data, file.content_type
            if attempt >= self._attempts:
                raise MediaRefused(
                    Reason("GeneralError", f"The agent's file could not be downloaded: {detail} ({attempt} tries)")
                )
            self._counts["retries"] += 1
            history.note("media-retried", f"agent file, attempt {attempt}: {detail}")
            await self._sleep(self._backoff.delay(attempt))
