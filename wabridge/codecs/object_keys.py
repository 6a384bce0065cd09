"""Object keys: where a raw webhook and a media file live in their bucket, built from data Meta sent us.

  webhooks-inbound   {tenant}/{YYYY-MM-DD}/{webhook id}.json         (one webhook per object)
                     {tenant}/{YYYY-MM-DD}/{segment id}.ndjson       (the ingress's archive: many per object)
  media-inbound      {tenant}/{media type}/{YYYY-MM-DD}/{message id}.{ext}     (the seed's shape)

Every part comes from outside (tenant ids from config, wamids and mime types from Meta), so each is made safe to be
one path segment: characters outside a small safe set are escaped as `~XX` (hex of each UTF-8 byte; `~` escapes
itself), which keeps distinct inputs distinct — two wamids never share a key — and leaves no `/`, `\\` or `..`.
Dates are UTC, so a key never depends on the host's time zone.
"""

from __future__ import annotations

import hashlib
import time
from datetime import date

# Safe in an S3 key, a URL path segment (after quoting "+" and "=") and a POSIX or Windows file name.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+")
# S3 keys are at most 1024 bytes and file names 255: a longer part keeps a prefix plus a hash of the whole.
MAX_PART = 120

# Meta's media types, per its size-limit list, and the usual documents. Unknown types fall back to "bin".
MIME_EXTENSIONS: dict[str, str] = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/3gpp": "3gp",
    "video/3gp": "3gp",
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/aac": "aac",
    "audio/amr": "amr",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/wav": "wav",
    "application/pdf": "pdf",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/zip": "zip",
    "text/plain": "txt",
    "text/csv": "csv",
    "application/json": "json",
}
FALLBACK_EXTENSION = "bin"


def extension_for(mime_type: str | None) -> str:
    """`audio/ogg; codecs=opus` → `ogg`; unknown or missing → `bin`."""
    if not mime_type:
        return FALLBACK_EXTENSION
    essence = mime_type.split(";", 1)[0].strip().lower()
    return MIME_EXTENSIONS.get(essence, FALLBACK_EXTENSION)


def key_part(value: str) -> str:
    """One safe, non-empty path segment that stands for `value` and for no other value."""
    out = []
    for ch in value:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"~{b:02X}" for b in ch.encode())
    part = "".join(out)
    if part.strip(".") == "":  # "", ".", "..": a traversal or an empty segment
        part = "".join(f"~{b:02X}" for b in value.encode()) or "~"
    if len(part) > MAX_PART:
        part = f"{part[: MAX_PART - 17]}-{hashlib.sha256(value.encode()).hexdigest()[:16]}"
    return part


def utc_day(when: float | date | str) -> str:
    """`YYYY-MM-DD` in UTC from Unix seconds, a date, or a string already in that form."""
    if isinstance(when, str):
        return date.fromisoformat(when).isoformat()  # validates: never a free-form string in a key
    if isinstance(when, date):
        return when.isoformat()
    return time.strftime("%Y-%m-%d", time.gmtime(when))


def webhook_key(tenant_id: str, received_at: float, webhook_id: str) -> str:
    """Key of one raw webhook body in the webhooks bucket."""
    return f"{key_part(tenant_id)}/{utc_day(received_at)}/{key_part(webhook_id)}.json"


def archive_segment_key(tenant_id: str, received_at: float, segment_id: str) -> str:
    """Key of one archive segment (newline-delimited records of raw webhooks, see actors/archive.py)."""
    return f"{key_part(tenant_id)}/{utc_day(received_at)}/{key_part(segment_id)}.ndjson"


def media_key(tenant_id: str, media_type: str, day: float | date | str, message_id: str, ext: str) -> str:
    """Key of one media file in the media bucket; `ext` without the dot (see `extension_for`)."""
    ext = key_part(ext.lstrip(".").lower()) if ext.strip(".") else FALLBACK_EXTENSION
    return f"{key_part(tenant_id)}/{key_part(media_type.lower())}/{utc_day(day)}/{key_part(message_id)}.{ext}"
