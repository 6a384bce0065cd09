"""Objects in a directory: the embedded adapter, for running wabridge with no S3 server.

Layout under `{data_dir}/objects/`:
  {bucket}/{key}          the bytes, exactly as put (so an operator can open them)
  .meta/{bucket}/{key}    {"content_type", "metadata"} as JSON (a separate tree: no key can collide with it)
  .tmp/                   partial writes; each file is written there, fsynced, then renamed into place, so a reader
                          sees the old object or the new one, never half of one
  (and `{data_dir}/objects.key`, 32 random bytes, 0600: the HMAC key of the signed URLs)

Genesys must download media by URL, so `presigned_get` returns a URL the bridge serves itself:
`{media_base_url}/objects/{bucket}/{key}?expires=<unix>&signature=<hex HMAC-SHA256 of "bucket/key\\nexpires">`.
The ingress routes `GET /objects/…` to `open_signed`, which checks the signature in constant time, then the expiry.
Every process sharing the data directory shares the key file, so a URL made by a worker is honoured by the ingress.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from pathlib import Path
from urllib.parse import quote, unquote

import anyio.to_thread
import msgspec

from wabridge.engine.settings import Settings
from wabridge.ports import MEDIA_BUCKET, MEDIA_OUTBOUND_BUCKET, WEBHOOKS_BUCKET, WEBHOOKS_OUTBOUND_BUCKET

BUCKETS = (WEBHOOKS_BUCKET, MEDIA_BUCKET, WEBHOOKS_OUTBOUND_BUCKET, MEDIA_OUTBOUND_BUCKET)
KEY_FILE = "objects.key"
KEY_BYTES = 32
MAX_KEY_LENGTH = 1024  # S3's limit, kept here so a key that works embedded also works on S3
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # S3's limit, likewise
_MAX_EXPIRES_DIGITS = 12  # a Unix time has 10 digits until the year 2286: longer is not ours
# Left unquoted in URLs: the characters object_keys leaves in a key, so the URL path is the key itself.
_URL_SAFE = "/~=+-._"


class ObjectMeta(msgspec.Struct, frozen=True):
    content_type: str
    metadata: dict[str, str] = {}


_meta_encoder = msgspec.json.Encoder()
_meta_decoder = msgspec.json.Decoder(ObjectMeta)


class DirectoryObjects:
    """The Objects port on a local directory, with HMAC-signed expiring URLs served by the bridge."""

    def __init__(self, settings: Settings, *, fsync: bool = True) -> None:
        self._data_dir = Path(settings.data_dir)
        self._root = self._data_dir / "objects"
        self._base_url = settings.media_base_url
        # fsync before rename: the archive of a webhook must survive a power cut once put() returned.
        self._fsync = fsync
        self._signing_key: bytes | None = None

    def __repr__(self) -> str:  # never the signing key
        return f"DirectoryObjects(root={str(self._root)!r})"

    @property
    def root(self) -> Path:
        return self._root

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        for bucket in BUCKETS:
            (self._root / bucket).mkdir(parents=True, exist_ok=True)
            (self._root / ".meta" / bucket).mkdir(parents=True, exist_ok=True)
        (self._root / ".tmp").mkdir(parents=True, exist_ok=True)
        self._signing_key = load_signing_key(self._data_dir / KEY_FILE)

    # --- the port ---------------------------------------------------------------------------------------------------

    async def put(
        self, bucket: str, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        path = self._path(bucket, key)
        meta = _meta_encoder.encode(ObjectMeta(content_type, dict(metadata or {})))
        await anyio.to_thread.run_sync(self._put_sync, bucket, key, path, data, meta)

    def _put_sync(self, bucket: str, key: str, path: Path, data: bytes, meta: bytes) -> None:
        # The sidecar first: whoever sees the new bytes also finds a sidecar (maybe a newer one, never none).
        self._write_atomic(self._meta_path(bucket, key), meta)
        self._write_atomic(path, data)

    async def get(self, bucket: str, key: str) -> bytes:
        data, _ = await self._read(bucket, key, with_meta=False)
        return data

    async def stat(self, bucket: str, key: str) -> ObjectMeta:
        """Content type and metadata of a stored object; KeyError when absent."""
        path = self._meta_path(bucket, key)
        try:
            raw = await anyio.to_thread.run_sync(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(f"{bucket}/{key}") from None
        return _meta_decoder.decode(raw)

    async def presigned_get(self, bucket: str, key: str, *, expires: float = 3600) -> str:
        self._path(bucket, key)  # refuses to sign a key it would refuse to serve
        seconds = max(1, min(int(expires), MAX_PRESIGN_SECONDS))
        deadline = str(int(time.time()) + seconds)
        signature = self._sign(bucket, key, deadline)
        path = f"/objects/{bucket}/{quote(key, safe=_URL_SAFE)}"
        return f"{self._base_url}{path}?expires={deadline}&signature={signature}"

    async def open_signed(self, bucket: str, key: str, expires: str, signature: str) -> tuple[bytes, str]:
        """Serve a signed URL: (content, content type). PermissionError (403) for a bad or expired signature or a
        key that could never be signed; KeyError (404) when the signed object is gone.
        `key` may come from the URL path decoded or still percent-encoded: both are tried against the signature."""
        if not (expires.isascii() and expires.isdigit() and len(expires) <= _MAX_EXPIRES_DIGITS):
            raise PermissionError("malformed expiry")
        candidates = [key] if "%" not in key else [key, unquote(key)]
        signed = next((k for k in candidates if self._signature_matches(bucket, k, expires, signature)), None)
        if signed is None:
            raise PermissionError("bad signature")
        if int(expires) < time.time():
            raise PermissionError("signature expired")
        try:
            self._path(bucket, signed)
        except ValueError:
            raise PermissionError("invalid object key") from None
        return await self._read(bucket, signed, with_meta=True)

    async def ping(self) -> bool:
        try:
            return self._signing_key is not None and await anyio.to_thread.run_sync(self._writable)
        except OSError:
            return False

    async def close(self) -> None:
        self._signing_key = None

    # --- internals --------------------------------------------------------------------------------------------------

    def _writable(self) -> bool:
        return os.access(self._root / ".tmp", os.W_OK) and all((self._root / b).is_dir() for b in BUCKETS)

    def _sign(self, bucket: str, key: str, expires: str) -> str:
        if self._signing_key is None:
            raise RuntimeError("DirectoryObjects used before open()")
        message = f"{bucket}/{key}\n{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def _signature_matches(self, bucket: str, key: str, expires: str, signature: str) -> bool:
        if bucket not in BUCKETS:
            return False
        expected = self._sign(bucket, key, expires)
        return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))

    def _path(self, bucket: str, key: str) -> Path:
        """Where `key` lives; ValueError for a bucket or key that could escape the bucket directory."""
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}")
        if not key or len(key.encode()) > MAX_KEY_LENGTH:
            raise ValueError("object key must be 1 to 1024 bytes")
        if "\\" in key or "\x00" in key or key.startswith("/"):
            raise ValueError(f"invalid object key {key!r}")
        segments = key.split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"invalid object key {key!r}")
        return self._root.joinpath(bucket, *segments)

    def _meta_path(self, bucket: str, key: str) -> Path:
        return self._root.joinpath(".meta", bucket, *key.split("/"))

    async def _read(self, bucket: str, key: str, *, with_meta: bool) -> tuple[bytes, str]:
        path = self._path(bucket, key)
        meta_path = self._meta_path(bucket, key)

        def read() -> tuple[bytes, str]:
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise KeyError(f"{bucket}/{key}") from None
            if not with_meta:
                return data, ""
            try:
                return data, _meta_decoder.decode(meta_path.read_bytes()).content_type
            except FileNotFoundError:
                return data, "application/octet-stream"

        return await anyio.to_thread.run_sync(read)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._root / ".tmp" / f"{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if self._fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def load_signing_key(path: Path) -> bytes:
    """The shared HMAC key: read it, or create it once. Written to a temp file and hard-linked into place, so
    processes starting together agree on one key and none ever reads a half-written file."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process won: then its key is the key
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise RuntimeError(f"{path} holds {len(key)} bytes, expected {KEY_BYTES}: remove it to make a new one")
    return key
