"""Objects on S3 (MinIO in production, SeaweedFS in tests), through miniopy-async.

Except the put, the one call made per media message (and per archive segment): it is signed by miniopy's own SigV4
signer and sent over http/client.py, path-style (`/{bucket}/{key}`, as MinIO and SeaweedFS serve it): about half
the worker's CPU per put of miniopy's own transport (docs/decisions.md).

Four private buckets, `{prefix}webhooks-inbound`, `{prefix}media-inbound` and their outbound pair, made
at `open()` if absent; callers name the plain bucket (ports.WEBHOOKS_BUCKET, …) and this adapter applies the prefix.
No bucket policy is ever set, so the only way to read an object without the keys is a presigned URL (Genesys downloads
media with one).

Failing fast matters more than retrying here: the ingress answers 503 and a worker leaves its message unacked, and
both retry on their own schedule. So the HTTP session has short connect timeouts and no retry layer (miniopy's
default session retries 5xx five times with 5-minute timeouts), and every network failure becomes
BackendUnavailable.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit
from xml.etree import ElementTree

import aiohttp
from miniopy_async.api import Minio
from miniopy_async.credentials.credentials import Credentials
from miniopy_async.error import InvalidResponseError, S3Error, ServerError
from miniopy_async.helpers import normalize_headers, quote
from miniopy_async.signer import sign_v4_s3

from wabridge.codecs.object_keys import extension_for, key_part, media_key, utc_day, webhook_key
from wabridge.engine.settings import Settings
from wabridge.http.client import Http1Pool, HttpError
from wabridge.ports import (
    MEDIA_BUCKET,
    MEDIA_OUTBOUND_BUCKET,
    WEBHOOKS_BUCKET,
    WEBHOOKS_OUTBOUND_BUCKET,
    BackendUnavailable,
)

__all__ = ["S3Objects", "extension_for", "key_part", "media_key", "utc_day", "webhook_key"]

PORT = "objects"
BUCKETS = (WEBHOOKS_BUCKET, MEDIA_BUCKET, WEBHOOKS_OUTBOUND_BUCKET, MEDIA_OUTBOUND_BUCKET)
# S3 refuses presigned URLs valid longer than 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_ABSENT_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}
_BUSY_CODES = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout"}
_OWNED_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
HASH_INLINE_BYTES = 256 * 1024  # a body this small is hashed on the loop (µs), a larger one in a thread (as miniopy)


class S3Objects:
    """The Objects port on an S3 server. `open()` before use, `close()` after (it closes the HTTP session)."""

    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        max_connections: int = 64,
    ) -> None:
        if not settings.s3_endpoint or settings.s3_access_key is None or settings.s3_secret_key is None:
            raise ValueError("S3Objects needs s3_endpoint, s3_access_key and s3_secret_key")
        self._settings = settings
        self._prefix = settings.s3_bucket_prefix
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections  # bounds concurrent requests (each client queues beyond it)
        self._client: Minio | None = None
        self._puts: Http1Pool | None = None

    def __repr__(self) -> str:  # never the keys
        return f"S3Objects(endpoint={self._settings.s3_endpoint!r}, prefix={self._prefix!r})"

    def bucket_name(self, bucket: str) -> str:
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}")
        return self._prefix + bucket

    async def open(self) -> None:
        if self._client is None:
            self._client = self._make_client()
            self._puts = Http1Pool(
                self._settings.s3_endpoint or "",
                limit=self._max_connections,
                timeout=self._read_timeout,
                connect_timeout=self._connect_timeout,
            )
        for bucket in BUCKETS:
            await self._ensure_bucket(self.bucket_name(bucket))

    def _make_client(self) -> Minio:
        s = self._settings
        parts = urlsplit(s.s3_endpoint or "")
        # The session is made here, inside the running loop, so aiohttp binds it to that loop.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            timeout=aiohttp.ClientTimeout(
                connect=self._connect_timeout, sock_connect=self._connect_timeout, sock_read=self._read_timeout
            ),
        )
        assert s.s3_access_key is not None and s.s3_secret_key is not None
        return Minio(
            parts.netloc,
            access_key=s.s3_access_key.reveal(),
            secret_key=s.s3_secret_key.reveal(),
            secure=parts.scheme == "https",
            # Given, so miniopy never asks the server for a bucket's location (one round trip per presign).
            region=s.s3_region,
            session=session,
        )

    async def _ensure_bucket(self, name: str) -> None:
        client = self._require()
        async with _translated(f"make bucket {name}"):
            if await client.bucket_exists(name):
                return
            try:
                await client.make_bucket(name)
            except S3Error as exc:
                # Another process made it between our check and our make: that is the outcome we wanted.
                if exc.code in _OWNED_CODES:
                    return
                # SeaweedFS answers a make racing another process's with other codes (NoSuchBucket, seen with four
                # processes opening four buckets at once): the bucket is there a moment later, or the error stands.
                for pause in (0.1, 0.2, 0.4, 0.8):
                    await asyncio.sleep(pause)
                    if await client.bucket_exists(name):
                        return
                raise

    async def put(
        self, bucket: str, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        self._require()
        assert self._puts is not None
        name = self.bucket_name(bucket)
        path = f"/{name}/{quote(key)}"
        endpoint = urlsplit(self._puts.origin + path)
        secure = endpoint.scheme == "https"
        # Metadata headers come back as lists of values: one line each, joined with commas as the signer joins them.
        headers = {
            "Host": endpoint.netloc,
            "Content-Type": content_type,
            "Content-Length": str(len(data)),
            **{
                k: v if isinstance(v, str) else ",".join(v)
                for k, v in normalize_headers(dict(metadata) if metadata else None).items()
            },
        }
        # What miniopy sends: over TLS an unsigned payload with its MD5, in clear the payload's SHA-256.
        digest = await _hash(_md5_base64 if secure else _sha256_hex, data)
        if secure:
            headers["Content-MD5"], content_sha256 = digest, "UNSIGNED-PAYLOAD"
        else:
            content_sha256 = digest
        date = datetime.now(UTC).replace(microsecond=0)
        headers["x-amz-content-sha256"] = content_sha256
        headers["x-amz-date"] = date.strftime("%Y%m%dT%H%M%SZ")
        signed = sign_v4_s3(
            "PUT", endpoint, self._settings.s3_region, headers, self._credentials(), content_sha256, date
        )
        # The pool writes Host and Content-Length itself.
        sent = {k: v for k, v in dict(signed).items() if k not in ("Host", "Content-Length")}
        async with _translated(f"put {bucket}/{key}"):  # what miniopy's answers raise, translated as for its calls
            reply = await self._puts.request("PUT", path, sent, data)
            if reply.status >= 500:
                raise ServerError(f"HTTP {reply.status}", reply.status)
            if not 200 <= reply.status < 300:
                raise _s3_error(reply.status, reply.body, name, key)

    def _credentials(self) -> Credentials:
        s = self._settings
        assert s.s3_access_key is not None and s.s3_secret_key is not None
        return Credentials(s.s3_access_key.reveal(), s.s3_secret_key.reveal())

    async def get(self, bucket: str, key: str) -> bytes:
        client = self._require()
        async with _translated(f"get {bucket}/{key}"):
            try:
                response = await client.get_object(self.bucket_name(bucket), key)
            except S3Error as exc:
                if exc.code in _ABSENT_CODES:
                    raise KeyError(f"{bucket}/{key}") from None
                raise
            try:
                return await response.read()
            finally:
                response.release()

    async def open_signed(self, bucket: str, key: str, expires: str, signature: str) -> tuple[bytes, str]:
        """Presigned URLs point at S3 itself, which serves them: none reaches the bridge's `/objects/…`."""
        raise KeyError("objects on S3 are served by S3")

    async def presigned_get(self, bucket: str, key: str, *, expires: float = 3600) -> str:
        """Signing is local (the region is configured): no round trip, so it works while the server is down."""
        client = self._require()
        seconds = max(1, min(int(expires), MAX_PRESIGN_SECONDS))
        async with _translated(f"presign {bucket}/{key}"):
            return await client.presigned_get_object(self.bucket_name(bucket), key, expires=timedelta(seconds=seconds))

    async def ping(self) -> bool:
        """True when the server answers and our webhooks bucket is there."""
        if self._client is None:
            return False
        try:
            return await self._client.bucket_exists(self.bucket_name(WEBHOOKS_BUCKET))
        except (TimeoutError, aiohttp.ClientError, OSError, S3Error, ServerError, InvalidResponseError):
            return False

    async def close(self) -> None:
        client, self._client = self._client, None
        puts, self._puts = self._puts, None
        if puts is not None:
            await puts.aclose()
        if client is not None:
            await client.close_session()

    def _require(self) -> Minio:
        if self._client is None:
            raise RuntimeError("S3Objects used before open()")
        return self._client


@asynccontextmanager
async def _translated(operation: str) -> AsyncIterator[None]:
    """Network failures and server-side faults become BackendUnavailable; the caller's own mistakes pass through."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError, ConnectionError, HttpError) as exc:
        if isinstance(exc, BackendUnavailable):
            raise
        raise BackendUnavailable(PORT, f"{operation}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise BackendUnavailable(PORT, f"{operation}: {type(exc).__name__}: {exc}") from exc
    except ServerError as exc:
        raise BackendUnavailable(PORT, f"{operation}: server error {exc.status_code}") from exc
    except InvalidResponseError as exc:
        # A non-XML answer: a proxy or a broken server in the way, not something the caller did.
        raise BackendUnavailable(PORT, f"{operation}: {exc}") from exc
    except S3Error as exc:
        if exc.code in _BUSY_CODES:
            raise BackendUnavailable(PORT, f"{operation}: {exc.code}") from exc
        raise


async def _hash(function: Callable[[bytes], str], data: bytes) -> str:
    return function(data) if len(data) <= HASH_INLINE_BYTES else await asyncio.to_thread(function, data)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5_base64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _s3_error(status: int, body: bytes, bucket: str, key: str) -> S3Error:
    """S3's XML error answer, read by miniopy's own parser; code None when the body is not S3's XML."""
    try:
        return S3Error.fromxml(None, body.decode(errors="replace"))  # type: ignore[arg-type]  # no aiohttp response
    except ElementTree.ParseError:
        return S3Error(
            None,
            f"HTTP {status}",
            None,
            None,
            None,
            None,  # type: ignore[arg-type]  # no aiohttp response: the put went over http/client.py
            bucket_name=bucket,
            object_name=key,
        )
