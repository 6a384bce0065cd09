"""A customer's media file from Meta's Graph API: one try, for actors/media.py (the MetaMediaApi port).

Two steps with the tenant's WhatsApp token: `GET {graph_api_url}/{media_id}` answers a url, size, mime and sha256;
`GET <url>` (same token, valid 5 minutes) answers the bytes. What each answer means (a data table: FINAL_LOOKUP /
RETRYABLE_DOWNLOAD below) comes out as `FetchFailed(final=…)`; the caller decides about retries (each retry starts
again from the lookup, so an expired url is replaced).

Redirects are followed (Meta's download url may send us to a CDN); the token is never sent to another origin than
the one it was meant for (aiohttp's rule too), and never from https to http. The download url comes from Meta's
answer, not from our settings: it is fetched from public addresses only, unless `allow_private_urls` (simulators).
The size limit is enforced while the body is read.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import msgspec

from wabridge.codecs.results import sha256_digest
from wabridge.http.client import AddressRefused, Http1Pools, HttpError, Reply, ReplyTooLarge
from wabridge.ports import FetchedFile, FetchFailed, TenantConfig

# Step-1 answers that no retry can change, and the outcome reason each becomes.
FINAL_LOOKUP: dict[int, str] = {
    400: "not_found",
    404: "not_found",
    410: "not_found",
    401: "unauthorized",
    403: "unauthorized",
}
# Step-2 answers worth another try (which starts with a fresh lookup, so a fresh url).
RETRYABLE_DOWNLOAD = {403, 404, 408, 410, 425, 429}
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
LOOKUP_MAX_BODY = 64 * 1024  # the lookup's JSON is a few hundred bytes
MAX_ORIGINS = 64  # HTTP pools kept: the Graph API, Meta's download hosts, CDNs it redirects to

_decode_lookup = msgspec.json.Decoder(dict).decode


def _final(reason: str, detail: str, size: int = 0) -> FetchFailed:
    return FetchFailed(detail, final=True, reason=reason, size=size)


def _retry(detail: str) -> FetchFailed:
    return FetchFailed(detail, final=False)


class MetaMedia:
    """Fetches media for any tenant through one set of HTTP pools."""

    def __init__(
        self, graph_api_url: str, *, timeout: float = 30.0, concurrency: int = 32, allow_private_urls: bool = False
    ) -> None:
        self._graph = graph_api_url.rstrip("/")
        # `timeout` bounds one request, body included
        self._http = Http1Pools(max_pools=MAX_ORIGINS, limit=concurrency, timeout=timeout, connect_timeout=5.0)
        self._downloads = Http1Pools(
            max_pools=MAX_ORIGINS,
            limit=concurrency,
            timeout=timeout,
            connect_timeout=5.0,
            public_only=not allow_private_urls,
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._downloads.aclose()

    async def fetch(self, tenant: TenantConfig, media_id: str, max_bytes: int) -> FetchedFile:
        try:
            return await self._fetch(tenant.whatsapp_token.reveal(), media_id, max_bytes)
        except AddressRefused as exc:  # no retry makes a private address public
            raise _final("download_failed", f"url refused: {exc}") from None
        except (HttpError, TimeoutError) as exc:  # refused, reset, cut short, timed out: try again
            raise _retry(type(exc).__name__) from None
        except ValueError as exc:  # a url from Meta that is not http(s), or not one path: another lookup may fix it
            raise _retry(str(exc)[:100]) from None

    async def _fetch(self, token: str, media_id: str, max_bytes: int) -> FetchedFile:
        auth = {"Authorization": f"Bearer {token}"}
        url, mime, sha256, file_size = await self._lookup(auth, media_id)
        if file_size is not None and file_size > max_bytes:
            raise _final("too_large", f"file_size {file_size}", file_size)
        try:
            response = await self._get(url, auth, max_bytes, self._downloads)
        except ReplyTooLarge:  # Meta's file_size was wrong or absent: reading stopped at the limit
            raise _final("too_large", f"more than {max_bytes} bytes", max_bytes + 1) from None
        status = response.status
        if status != 200:
            if status in RETRYABLE_DOWNLOAD or status >= 500:
                raise _retry(f"download HTTP {status}")
            if status == 401:
                raise _final("unauthorized", "download HTTP 401")
            raise _final("download_failed", f"download HTTP {status}")
        return FetchedFile(response.body, mime, sha256)

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
                raise _final("download_failed", "redirect from https to http refused")
            scheme = parts.scheme
            pools = self._http if http is None else http  # (not `http or`: an Http1Pools with no pool yet is falsy)
            response = await pools.request(here, "GET", target, headers, max_body=max_body)
            location = response.header("location")
            if response.status not in REDIRECTS or not location:
                return response
            url = urljoin(url, location)
        raise _retry(f"more than {MAX_REDIRECTS} redirects")

    async def _lookup(self, auth: dict[str, str], media_id: str) -> tuple[str, str | None, bytes | None, int | None]:
        """(download url, mime, sha256, file_size) from Meta's answer about `media_id`."""
        response = await self._get(f"{self._graph}/{media_id}", auth, LOOKUP_MAX_BODY)
        status, body = response.status, response.body
        if status in FINAL_LOOKUP:
            raise _final(FINAL_LOOKUP[status], f"lookup HTTP {status}")
        if status != 200:
            if status == 429 or status >= 500 or status == 408:
                raise _retry(f"lookup HTTP {status}")
            raise _final("download_failed", f"lookup HTTP {status}")
        try:
            info = _decode_lookup(body)
            url = info["url"]
            size = info.get("file_size")
            return (
                str(url),
                info.get("mime_type"),
                sha256_digest(info.get("sha256")),
                int(size) if size is not None else None,
            )
        except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
            raise _retry(f"lookup answer unreadable: {type(exc).__name__}") from None
