"""The backend factory: each port gets its real adapter when its server is configured and its embedded one
otherwise, everything opened is closed again (also when opening fails half-way), and readiness tells which
backend is down without hanging."""

from __future__ import annotations

import asyncio
import os
import time

import anyio
import pytest

from wabridge.adapters.backends import Backends, adapter_kinds, open_backends, open_backends_when_up, readiness
from wabridge.ports import MEDIA_BUCKET, WEBHOOKS_BUCKET, BackendUnavailable, Cache, Objects, Queue, Store
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio


def s3_only(settings: Settings, endpoint: str) -> Settings:
    """Embedded everything except objects, which go to S3 at `endpoint`."""
    return settings.replace(
        s3_endpoint=endpoint,
        s3_access_key=Secret(os.environ["WABRIDGE_S3_ACCESS_KEY"]),
        s3_secret_key=Secret(os.environ["WABRIDGE_S3_SECRET_KEY"]),
        s3_bucket_prefix=f"b{os.urandom(5).hex()}-",
    )


async def exercise(backends: Backends) -> None:
    """One real operation per port, so 'opened' means usable."""
    await backends.objects.put(WEBHOOKS_BUCKET, "acme/day/w.json", b"{}", content_type="application/json")
    assert await backends.objects.get(WEBHOOKS_BUCKET, "acme/day/w.json") == b"{}"
    await backends.cache.set("probe", b"1", ttl=30)
    assert await backends.cache.get("probe") == b"1"
    assert await backends.store.list_tenants() == []
    await backends.queue.publish("acme", b"body", message_id="wamid.1")


async def forget_s3(settings: Settings) -> None:
    from tests.contract.test_objects import remove_buckets

    await remove_buckets(settings)


def test_unset_server_urls_select_every_embedded_adapter(embedded_settings: Settings) -> None:
    assert adapter_kinds(embedded_settings) == {
        "store": "SqliteStore", "cache": "MemoryCache", "queue": "SqliteQueue", "objects": "DirectoryObjects",
    }


def test_each_port_is_chosen_on_its_own(embedded_settings: Settings) -> None:
    mixed = embedded_settings.replace(redis_url="redis://127.0.0.1:1/0")
    assert adapter_kinds(mixed) == {
        "store": "SqliteStore", "cache": "RedisCache", "queue": "SqliteQueue", "objects": "DirectoryObjects",
    }


async def test_embedded_backends_open_work_and_report_ready(embedded_settings: Settings) -> None:
    from wabridge.adapters.cache.memory import MemoryCache
    from wabridge.engine.lru import LocalCache
    from wabridge.adapters.objects.directory import DirectoryObjects
    from wabridge.adapters.queue.sqlite import SqliteQueue
    from wabridge.adapters.store.sqlite import SqliteStore

    async with open_backends(embedded_settings) as backends:
        assert isinstance(backends.store, SqliteStore) and isinstance(backends.queue, SqliteQueue)
        assert isinstance(backends.objects, DirectoryObjects)
        assert isinstance(backends.cache, LocalCache) and isinstance(backends.cache.remote, MemoryCache)
        assert all(isinstance(p, t) for p, t in [(backends.queue, Queue), (backends.cache, Cache),
                                                 (backends.store, Store), (backends.objects, Objects)])
        assert backends.settings is embedded_settings
        await exercise(backends)
        everything = {"store": True, "cache": True, "queue": True, "outbound": True, "objects": True}
        assert await readiness(backends) == everything


async def test_leaving_the_block_closes_every_backend_even_on_error(embedded_settings: Settings) -> None:
    with pytest.raises(LookupError, match="the body failed"):
        async with open_backends(embedded_settings) as backends:
            await exercise(backends)
            raise LookupError("the body failed")
    closed = {"store": False, "cache": True, "queue": False, "outbound": False, "objects": False}
    assert await readiness(backends) == closed


async def test_embedded_data_survives_reopening_the_backends(embedded_settings: Settings) -> None:
    async with open_backends(embedded_settings) as backends:
        await backends.objects.put(MEDIA_BUCKET, "acme/keep.png", b"\x89PNG", content_type="image/png")
    async with open_backends(embedded_settings) as backends:
        assert await backends.objects.get(MEDIA_BUCKET, "acme/keep.png") == b"\x89PNG"


@pytest.mark.servers
async def test_configured_servers_select_every_real_adapter(server_settings: Settings) -> None:
    from wabridge.adapters.cache.redis import RedisCache
    from wabridge.adapters.objects.s3 import S3Objects
    from wabridge.adapters.queue.amqp import AmqpQueue
    from wabridge.adapters.store.postgres import PostgresStore

    try:
        async with open_backends(server_settings) as backends:
            assert isinstance(backends.store, PostgresStore) and isinstance(backends.queue, AmqpQueue)
            assert isinstance(backends.objects, S3Objects) and isinstance(backends.cache.remote, RedisCache)
            await exercise(backends)
            everything = {"store": True, "cache": True, "queue": True, "outbound": True, "objects": True}
            assert await readiness(backends) == everything
            await backends.queue.delete_topology()
            await backends.outbound.delete_topology()
    finally:
        await forget_s3(server_settings)


@pytest.mark.servers
async def test_a_backend_that_cannot_open_fails_the_start_and_the_others_are_closed(
    embedded_settings: Settings, proxy_factory
) -> None:
    proxy, url = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    proxy.cut()
    settings = s3_only(embedded_settings, url)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as failure:
        async with open_backends(settings):
            pytest.fail("the block must not run when a backend is down")
    assert failure.value.port == "objects"
    assert time.monotonic() - started < 5.0
    # The store and queue opened before the failure were closed: their SQLite files can be reopened at once.
    async with open_backends(embedded_settings) as backends:
        assert (await readiness(backends))["store"] is True


@pytest.mark.servers
async def test_opening_while_a_server_is_down_waits_for_it_and_opens_once_it_is_up(
    embedded_settings: Settings, proxy_factory
) -> None:
    proxy, url = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    proxy.cut()
    settings = s3_only(embedded_settings, url)
    opened = asyncio.Event()

    async def start() -> bool:
        async with open_backends_when_up(settings, asyncio.Event(), first_retry=0.05, max_retry=0.2) as backends:
            assert backends is not None
            opened.set()
            return (await readiness(backends))["objects"]

    try:
        starting = asyncio.create_task(start())
        await asyncio.sleep(1.0)  # several attempts, each refused
        assert not opened.is_set()
        proxy.restore()
        with anyio.fail_after(10):
            assert await starting is True
    finally:
        await forget_s3(settings)


@pytest.mark.servers
async def test_a_stop_while_waiting_for_a_server_ends_the_wait_at_once(
    embedded_settings: Settings, proxy_factory
) -> None:
    proxy, url = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    proxy.cut()
    stopping = asyncio.Event()

    async def start() -> Backends | None:
        async with open_backends_when_up(s3_only(embedded_settings, url), stopping, max_retry=30) as backends:
            return backends

    starting = asyncio.create_task(start())
    await asyncio.sleep(2.0)  # past the first retries: now in a long wait
    stopping.set()
    with anyio.fail_after(1):
        assert await starting is None


@pytest.mark.servers
async def test_a_misconfiguration_is_not_retried(embedded_settings: Settings) -> None:
    """Only a server that is down is waited for: credentials the server refuses fail the start at once."""
    settings = s3_only(embedded_settings, os.environ["WABRIDGE_S3_ENDPOINT"])
    settings = settings.replace(s3_secret_key=Secret("not-the-secret"))
    with anyio.fail_after(5), pytest.raises(Exception) as failure:  # noqa: PT011 - whatever the adapter raises
        async with open_backends_when_up(settings, asyncio.Event()):
            pytest.fail("the block must not run")
    assert not isinstance(failure.value, BackendUnavailable)
    assert "not-the-secret" not in str(failure.value)


@pytest.mark.servers
async def test_readiness_names_the_backend_that_went_down_and_answers_quickly(
    embedded_settings: Settings, proxy_factory
) -> None:
    proxy, url = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    settings = s3_only(embedded_settings, url)
    try:
        async with open_backends(settings) as backends:
            assert (await readiness(backends))["objects"] is True
            proxy.cut()
            started = time.monotonic()
            report = await readiness(backends, timeout=1.0)
            assert time.monotonic() - started < 2.0
            assert report == {"store": True, "cache": True, "queue": True, "outbound": True, "objects": False}
            proxy.restore()
            assert (await readiness(backends))["objects"] is True
    finally:
        await forget_s3(settings)


async def test_readiness_bounds_each_ping_by_the_timeout(embedded_settings: Settings) -> None:
    async with open_backends(embedded_settings) as backends:
        with anyio.fail_after(2):
            report = await readiness(backends, timeout=0.000001)
    # With a microsecond budget a ping that has to wait (threads, I/O) is cut short and reported as not ready.
    assert set(report) == {"store", "cache", "queue", "outbound", "objects"}
    assert report["store"] is False
