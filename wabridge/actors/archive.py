"""The raw-webhook archive: bodies appended to per-tenant segments, each segment put as one object.

One S3 put per webhook cannot keep up with the ingress, and each put costs it more CPU than the request itself
(docs/decisions.md). So the archive groups bodies:

  webhooks-inbound   {tenant}/{YYYY-MM-DD}/{segment id}.ndjson

one JSON record a line, `{"id": webhook id, "received_at": Unix s, "body": the raw body as text}` (`body_b64`
instead when the bytes are not UTF-8), in arrival order. A segment is put when it reaches `max_segment_bytes` or is
`flush_interval` seconds old (at a random point of its second half, so that segments opened together are not put
together), whichever first, and at close. A webhook's archive key is `{segment key}#{line index}`
(`QueuedWebhook.archive_key`); `read_archived()` finds the body again.

Best-effort, as before: appending never waits and never fails the answer. A put that finds the object store down
(or not answering in PUT_TIMEOUT) is held through the outage (`engine.outage`: tried again, backing off to 5 s)
for as long as the ingress runs:
its bytes stay inside the `max_bytes` bound meanwhile, so an outage of up to that much traffic (~16 MB: a minute at
500 webhooks/s) costs the archive nothing, and the archive keys already queued find their segments once it is
back. Beyond the bound, new bodies are dropped and counted (`wabridge_ingress_archive_failures_total
{reason="dropped"}`). A put that fails otherwise (a refusal, a bug), or is still failing at close, is logged and
counted (`reason="failed"`, one per webhook in the segment). At most `max_puts` segment puts run at once; a full
segment waiting for a slot stays inside the `max_bytes` bound.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec

from wabridge.codecs.object_keys import archive_segment_key
from wabridge.engine.outage import hold_through_outage
from wabridge.engine.tasks import Tasks
from wabridge.ports import WEBHOOKS_BUCKET, BackendUnavailable

log = logging.getLogger("wabridge.ingress")

SEGMENT_BYTES = 1 << 20  # a segment is put once this big: ~2,000 webhooks of 500 B
FLUSH_INTERVAL = 1.0  # s: the longest a body waits in memory before its segment is put
MAX_BYTES = 16 << 20  # buffered + being put (~3 s of 10k/s webhooks); beyond it bodies are dropped (counted)
MAX_PUTS = 4  # segment puts at once
TICKS = 20  # due segments are looked for this often per flush interval: fine enough to keep their puts spread
PUT_TIMEOUT = 30.0  # s one segment put may take before it is tried again
KEY_SEPARATOR = "#"


class ArchiveRecord(msgspec.Struct, omit_defaults=True):
    """One line of a segment. Schema rule: new fields get defaults; readers ignore unknown ones."""

    id: str
    received_at: float
    body: str | None = None  # the raw bytes as text (Meta sends UTF-8 JSON): the exact bytes come back
    body_b64: str | None = None  # when the bytes are not UTF-8


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(ArchiveRecord)


def encode_record(webhook_id: str, received_at: float, body: bytes) -> bytes:
    try:
        record = ArchiveRecord(webhook_id, received_at, body=body.decode())
    except UnicodeDecodeError:
        record = ArchiveRecord(webhook_id, received_at, body_b64=base64.b64encode(body).decode())
    return _record_encoder.encode(record) + b"\n"  # JSON escapes newlines inside strings: one record, one line


def decode_record(line: bytes) -> tuple[ArchiveRecord, bytes]:
    record = _record_decoder.decode(line)
    body = base64.b64decode(record.body_b64) if record.body_b64 is not None else (record.body or "").encode()
    return record, body


async def read_archived(objects: Any, archive_key: str, *, bucket: str = WEBHOOKS_BUCKET) -> bytes:
    """The raw body archived under `archive_key` (`{segment key}#{index}`). KeyError when it is not there."""
    segment, _, index = archive_key.rpartition(KEY_SEPARATOR)
    if not segment or not index.isdigit():
        raise KeyError(archive_key)
    lines = (await objects.get(bucket, segment)).splitlines()
    if int(index) >= len(lines):
        raise KeyError(archive_key)
    return decode_record(lines[int(index)])[1]


def _new_segment_id(now: float) -> str:
    # Time first (keys sort by arrival), then 48 random bits: unique across Granian workers without coordination.
    return f"{int(now * 1000):011x}{os.urandom(6).hex()}"


class _Segment:
    __slots__ = ("day", "due", "key", "lines", "size", "tenant_id")

    def __init__(self, tenant_id: str, day: int, now: float, flush_interval: float) -> None:
        self.key = archive_segment_key(tenant_id, now, _new_segment_id(now))
        self.tenant_id = tenant_id
        self.day = day
        self.lines: list[bytes] = []
        self.size = 0
        # Put between half the interval and the whole of it, at random: the segments of tenants whose traffic began
        # together (a deployment's start, a burst) would otherwise all come due in the same tick, every interval,
        # and their puts arrive at the object store as one burst (docs/decisions.md).
        self.due = time.monotonic() + flush_interval * (0.5 + random.random() / 2)


class ArchiveWriter:
    """Appends raw bodies to segments and puts them in the background. `start()` inside the loop, `aclose()` at the
    end (flushes what is buffered, bounded by `deadline`)."""

    def __init__(
        self,
        objects: Any,
        *,
        on_failure: Callable[[str, int], None],
        max_segment_bytes: int = SEGMENT_BYTES,
        flush_interval: float = FLUSH_INTERVAL,
        max_bytes: int = MAX_BYTES,
        max_puts: int = MAX_PUTS,
        bucket: str = WEBHOOKS_BUCKET,  # the outbound ingress archives Genesys's webhooks in webhooks-outbound
    ) -> None:
        self._objects = objects
        self._bucket = bucket
        self._on_failure = on_failure  # (reason, webhooks): the ingress's counter, without importing it here
        self._max_segment_bytes = max_segment_bytes
        self._flush_interval = flush_interval
        self._max_bytes = max_bytes
        self._put_slots = asyncio.Semaphore(max_puts)
        self._open: dict[str, _Segment] = {}  # tenant id → its segment being filled
        self._bytes = 0  # buffered + being put
        self._puts = Tasks("archive puts")
        self._ticker: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def puts_running(self) -> int:
        return len(self._puts)

    def append(self, tenant_id: str, webhook_id: str, received_at: float, body: bytes) -> str:
        """Buffer one body; return its archive key (or "" when it was dropped at the bound)."""
        line = encode_record(webhook_id, received_at, body)
        if self._bytes + len(line) > self._max_bytes:
            self._dropped(webhook_id)
            return ""
        day = int(received_at // 86400)
        segment = self._open.get(tenant_id)
        if segment is None or segment.day != day:
            if segment is not None:
                self._put(segment)
            segment = self._open[tenant_id] = _Segment(tenant_id, day, received_at, self._flush_interval)
        index = len(segment.lines)
        segment.lines.append(line)
        segment.size += len(line)
        self._bytes += len(line)
        if segment.size >= self._max_segment_bytes:
            del self._open[tenant_id]
            self._put(segment)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="archive-flush")
        return f"{segment.key}{KEY_SEPARATOR}{index}"

    async def flush(self) -> None:
        """Put every open segment now and wait for all puts (tests, shutdown)."""
        for segment in list(self._open.values()):
            self._put(segment)
        self._open.clear()
        await self._puts.wait()

    async def aclose(self, deadline: float) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        try:
            async with asyncio.timeout(deadline):
                await self.flush()
        except TimeoutError:
            await self._puts.close()

    # --- inside ---

    async def _tick(self) -> None:
        """Puts segments older than the flush interval; runs while the writer is in use."""
        while True:
            await asyncio.sleep(self._flush_interval / TICKS)
            now = time.monotonic()
            for tenant_id, segment in list(self._open.items()):
                if now >= segment.due:
                    del self._open[tenant_id]
                    self._put(segment)

    def _put(self, segment: _Segment) -> None:
        self._puts.start(self._put_segment(segment))

    async def _put_segment(self, segment: _Segment) -> None:
        data = b"".join(segment.lines)
        segment.lines = []

        async def put() -> None:  # a slot per try, not held while waiting for the store to come back
            async with self._put_slots:
                try:
                    async with asyncio.timeout(PUT_TIMEOUT):
                        await self._objects.put(
                            self._bucket,
                            segment.key,
                            data,
                            content_type="application/x-ndjson",
                            metadata={"tenant-id": segment.tenant_id},
                        )
                except TimeoutError as exc:  # slow is down, for an archive: tried again like any outage
                    raise BackendUnavailable("objects", f"put took over {PUT_TIMEOUT:.0f} s") from exc

        try:
            await hold_through_outage(put, hold_for=math.inf, what=f"archive segment {segment.key}")
        except asyncio.CancelledError:  # closing with the store still down
            self._failed(segment, data, "still failing at close")
            raise
        except Exception as exc:  # counted and logged: an archive never decides an answer
            self._failed(segment, data, exc.__class__.__name__)
        finally:
            self._bytes -= segment.size

    def _failed(self, segment: _Segment, data: bytes, why: str) -> None:
        self._on_failure("failed", data.count(b"\n"))
        log.error("archive segment %s failed: %s", segment.key, why)

    def _dropped(self, webhook_id: str) -> None:
        self._on_failure("dropped", 1)
        now = time.monotonic()
        if now - self._last_drop_log > 1.0:  # one line a second at most, whatever the flood
            self._last_drop_log = now
            log.error("archive buffer at its bound (%d bytes): webhook %s not archived", self._max_bytes, webhook_id)
