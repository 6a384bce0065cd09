"""Shared fixtures. Real servers come from `make test` (deploy/dev/services.sh), announced by WABRIDGE_* variables.

Isolation on the shared servers: every test gets its own PostgreSQL database, Redis key prefix, queue name and
bucket prefix, so tests never see each other's data and can run in any order.
Tests marked `servers` are skipped when the servers are not announced, unless WABRIDGE_REQUIRE_SERVERS=1
(set by `make test`), where a missing server is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

SERVER_VARS = ("WABRIDGE_REDIS_URL", "WABRIDGE_DATABASE_URL", "WABRIDGE_AMQP_URL", "WABRIDGE_S3_ENDPOINT")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _servers_announced() -> bool:
    return all(os.environ.get(v) for v in SERVER_VARS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _servers_announced():
        return
    if os.environ.get("WABRIDGE_REQUIRE_SERVERS") == "1":
        raise pytest.UsageError("WABRIDGE_REQUIRE_SERVERS=1 but the servers are not announced (run `make test`)")
    skip = pytest.mark.skip(reason="real servers not running: use `make test`")
    for item in items:
        if "servers" in item.keywords:
            item.add_marker(skip)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    """Settings that select every embedded adapter, with data under a fresh directory."""
    return Settings(data_dir=tmp_path / "data", secret_key=Secret(generate_key()), allow_private_media_urls=True)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    admin_url = os.environ["WABRIDGE_DATABASE_URL"]
    name = unique("t_")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    base, _, _ = admin_url.rpartition("/")
    yield f"{base}/{name}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def server_settings(tmp_path: Path, database_url: str) -> Iterator[Settings]:
    """Settings that select every real adapter, isolated from other tests by prefixes and a fresh database."""
    tag = unique("t")
    settings = Settings(
        redis_url=os.environ["WABRIDGE_REDIS_URL"],
        database_url=Secret(database_url),
        amqp_url=Secret(os.environ["WABRIDGE_AMQP_URL"]),
        s3_endpoint=os.environ["WABRIDGE_S3_ENDPOINT"],
        s3_access_key=Secret(os.environ["WABRIDGE_S3_ACCESS_KEY"]),
        s3_secret_key=Secret(os.environ["WABRIDGE_S3_SECRET_KEY"]),
        s3_bucket_prefix=f"{tag}-",
        key_prefix=f"{tag}:",
        queue_name=f"{tag}_INBOUND_WHATSAPP_MESSAGES",
        secret_key=Secret(generate_key()),
        data_dir=tmp_path / "data",
        allow_private_media_urls=True,  # the simulators' media urls are on 127.0.0.1
    )
    yield settings
    asyncio.run(leave_no_trace(settings))


async def leave_no_trace(settings: Settings) -> None:
    """The shared servers as the test found them: its buckets and its queues go. Left behind, they add up over a run
    (every bucket written is SeaweedFS volumes of its own, every quorum queue a Raft group in RabbitMQ) until the
    second half of the suite fails for want of volumes or waits on a crowded broker. Best effort: a test that cut a
    server leaves what it cannot reach."""
    import aiormq

    from tests.contract.test_objects import remove_buckets

    with contextlib.suppress(Exception):
        await remove_buckets(settings)
    assert settings.amqp_url is not None
    with contextlib.suppress(Exception):
        connection = await aiormq.connect(settings.amqp_url.reveal())
        try:
            channel = await connection.channel()
            for base in (settings.queue_name, f"{settings.queue_name}.outbound"):
                for name in [*(f"{base}.{shard}" for shard in range(settings.shards)), f"{base}.dead"]:
                    await channel.queue_delete(name)
                await channel.exchange_delete(base)
        finally:
            await connection.close()


@pytest.fixture
async def proxy_factory() -> AsyncIterator:
    """`await proxy_factory(url)` → (TcpProxy, url through the proxy). Cut it to take that server down."""
    from tests.proxy import TcpProxy, host_port, swap_port

    proxies: list[TcpProxy] = []

    async def make(url: str):
        proxy = await TcpProxy(*host_port(url)).start()
        proxies.append(proxy)
        return proxy, swap_port(url, proxy.port)

    yield make
    for p in proxies:
        await p.close()
