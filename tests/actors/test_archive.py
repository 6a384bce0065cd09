"""The raw-webhook archive writer (actors/archive.py): segments per tenant and day, put by size, by age and at
close; every body found again by its key; failures and the memory bound counted, never raised to the caller.
Runs on the embedded directory objects (the same Objects port as S3)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wabridge.actors.archive import ArchiveWriter, encode_record, read_archived
from wabridge.adapters.objects.directory import DirectoryObjects
from wabridge.ports import WEBHOOKS_BUCKET
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio

DAY = 1780876800.0  # 2026-06-08T00:00:00Z
BODY = b'{"object":"whatsapp_business_account","entry":[{"id":"1"}]}'


@pytest.fixture
async def objects(tmp_path: Path) -> AsyncIterator[DirectoryObjects]:
    store = DirectoryObjects(Settings(data_dir=tmp_path), fsync=False)
    await store.open()
    yield store
    await store.close()


def segments(objects: DirectoryObjects) -> list[Path]:
    return sorted((objects.root / WEBHOOKS_BUCKET).rglob("*.ndjson"))


def writer(objects: DirectoryObjects, failures: Counter[str], **options: float) -> ArchiveWriter:
    return ArchiveWriter(objects, on_failure=lambda reason, n: failures.update({reason: n}), **options)


async def test_bodies_of_one_tenant_and_day_share_one_segment_and_come_back_byte_for_byte(objects) -> None:
    failures: Counter[str] = Counter()
    archive = writer(objects, failures)
    bodies = [BODY, b'{"text":"caf\\u00e9 \xe2\x98\x95\\n"}', b"\xff\xfe not utf-8", b""]
    keys = [archive.append("acme", f"w{n}", DAY + n, body) for n, body in enumerate(bodies)]
    await archive.aclose(5)
    [segment] = segments(objects)
    assert segment.relative_to(objects.root / WEBHOOKS_BUCKET).parts[:2] == ("acme", "2026-06-08")
    assert [key.rpartition("#")[2] for key in keys] == ["0", "1", "2", "3"]
    assert [await read_archived(objects, key) for key in keys] == bodies
    assert not failures and archive.pending_bytes == 0


async def test_tenants_and_utc_days_get_segments_of_their_own(objects) -> None:
    archive = writer(objects, Counter())
    keys = [archive.append("acme", "a", DAY - 1, BODY), archive.append("acme", "b", DAY, BODY),
            archive.append("globex", "c", DAY, BODY)]
    await archive.aclose(5)
    assert len({key.partition("#")[0] for key in keys}) == 3
    assert [p.parent.name for p in segments(objects)].count("2026-06-08") == 2


async def test_a_segment_is_put_once_it_reaches_its_size_without_waiting_for_the_interval(objects) -> None:
    record = len(encode_record("w0", DAY, BODY))
    archive = writer(objects, Counter(), max_segment_bytes=3 * record, flush_interval=3600)
    keys = [archive.append("acme", f"w{n}", DAY, BODY) for n in range(7)]
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(segments(objects)) == 2:
            break
    assert len(segments(objects)) == 2  # two full segments of 3; the 7th body still buffered
    assert len({key.partition("#")[0] for key in keys}) == 3
    await archive.aclose(5)
    assert len(segments(objects)) == 3


async def test_a_segment_is_put_after_the_flush_interval_even_when_small(objects) -> None:
    archive = writer(objects, Counter(), flush_interval=0.2)
    key = archive.append("acme", "w", DAY, BODY)
    await asyncio.sleep(0.6)
    assert await read_archived(objects, key) == BODY
    await archive.aclose(5)


async def test_a_failed_put_counts_every_webhook_of_its_segment_and_frees_the_memory(objects) -> None:
    failures: Counter[str] = Counter()
    archive = writer(objects, failures)
    bucket = objects.root / WEBHOOKS_BUCKET
    bucket.rmdir()
    bucket.write_text("not a directory: every put in this bucket fails")
    for n in range(3):
        assert archive.append("acme", f"w{n}", DAY, BODY)  # the caller never sees the failure
    await archive.aclose(5)
    assert failures == Counter(failed=3) and archive.pending_bytes == 0


@pytest.fixture
async def proxied_s3(tmp_path: Path, proxy_factory) -> AsyncIterator:
    """(S3 objects on the real server through a proxy, the proxy): cut it to take S3 down."""
    from tests.contract.test_objects import remove_buckets, s3_settings
    from wabridge.adapters.objects.s3 import S3Objects

    proxy, url = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    settings = s3_settings(tmp_path, endpoint=url)
    s3 = S3Objects(settings)
    await s3.open()
    try:
        yield s3, proxy
    finally:
        await s3.close()
        await remove_buckets(s3_settings(tmp_path).replace(s3_bucket_prefix=settings.s3_bucket_prefix))


@pytest.mark.servers
async def test_segments_put_while_s3_is_down_are_put_once_it_is_back_and_nothing_is_counted_lost(proxied_s3) -> None:
    """A ten-second S3 outage used to lose every segment due meanwhile (their archive keys, already queued with the
    webhooks, named objects never written). They wait, inside the memory bound, and are put when S3 answers again."""
    s3, proxy = proxied_s3
    failures: Counter[str] = Counter()
    archive = writer(s3, failures, flush_interval=0.1)
    proxy.cut()
    keys = [archive.append("acme", f"w{n}", DAY, BODY) for n in range(3)]
    await asyncio.sleep(1.0)  # due, tried, failed, waiting
    assert archive.puts_running >= 1 and archive.pending_bytes > 0
    proxy.restore()
    await asyncio.wait_for(archive.flush(), 30)
    assert [await read_archived(s3, key) for key in keys] == [BODY] * 3
    assert failures == Counter() and archive.pending_bytes == 0
    await archive.aclose(5)


@pytest.mark.servers
async def test_a_segment_still_failing_at_close_is_counted_once_per_webhook(proxied_s3) -> None:
    s3, proxy = proxied_s3
    failures: Counter[str] = Counter()
    archive = writer(s3, failures)
    proxy.cut()
    for n in range(3):
        assert archive.append("acme", f"w{n}", DAY, BODY)
    await archive.aclose(0.5)
    assert failures == Counter(failed=3) and archive.pending_bytes == 0 and archive.puts_running == 0


async def test_past_the_memory_bound_bodies_are_dropped_and_counted_and_room_comes_back(objects) -> None:
    failures: Counter[str] = Counter()
    record = len(encode_record("w0", DAY, BODY))
    archive = writer(objects, failures, max_bytes=2 * record)
    keys = [archive.append("acme", f"w{n}", DAY, BODY) for n in range(4)]
    assert [bool(k) for k in keys] == [True, True, False, False] and failures == Counter(dropped=2)
    await archive.flush()
    assert archive.append("acme", "w9", DAY, BODY)  # the put freed its bytes
    await archive.aclose(5)


async def test_a_key_that_names_no_record_is_a_key_error(objects) -> None:
    archive = writer(objects, Counter())
    key = archive.append("acme", "w", DAY, BODY)
    await archive.aclose(5)
    for bad in (key.replace("#0", "#1"), key.partition("#")[0], "acme/2026-06-08/none.ndjson#0"):
        with pytest.raises(KeyError):
            await read_archived(objects, bad)
