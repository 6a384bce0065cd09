"""Tracking writes: rows/s for one batched write_tracking vs one INSERT each, same run (target ≥ 50,000 rows/s).

Strategies for a batch of BATCH new rows on PostgreSQL:
  one INSERT each     the baseline: BATCH awaited single-row upserts
  executemany         asyncpg's pipelined executemany of the single-row upsert
  COPY + INSERT       copy_records_to_table into a temp staging table, then INSERT … SELECT … ON CONFLICT
  unnest (the store)  one INSERT … SELECT FROM unnest(arrays) … ON CONFLICT: what PostgresStore.write_tracking does
and SQLite's write_tracking through its one-thread executor. rows/s = BATCH / median.
    .venv/bin/python -m pytest bench/test_store_bench.py --benchmark-min-time=0.05
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
import os
import uuid

import asyncpg
import pytest
import uvloop

from wabridge.ports import TrackingRecord
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings
from wabridge.adapters.store.postgres import PostgresStore
from wabridge.adapters.store.sqlite import SqliteStore

BATCH = 500
ADMIN_URL = os.environ.get("WABRIDGE_DATABASE_URL")
needs_postgres = pytest.mark.skipif(not ADMIN_URL, reason="needs the real PostgreSQL")
_serial = itertools.count()

SINGLE_ROW = """
INSERT INTO message_tracking AS t (tenant_id, wamid, conversation_id, direction, type, status, attempts, error,
                                   genesys_message_id, payload, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11), to_timestamp($12))
ON CONFLICT (tenant_id, wamid) DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
    error = EXCLUDED.error, updated_at = EXCLUDED.updated_at
WHERE EXCLUDED.status <> 'duplicate'
"""


def batch() -> list[TrackingRecord]:
    n = next(_serial)
    return [
        TrackingRecord(wamid=f"wamid.HBgL{n:06d}{i:04d}", tenant_id="acme", status="delivered", type="text",
                       conversation_id="5f1c7a52-0000-4000-8000-000000000001", attempts=1,
                       genesys_message_id=f"g{n}-{i}", created_at=1.7e9 + i, updated_at=1.7e9 + i)
        for i in range(BATCH)
    ]  # fmt: skip


def rows(records: list[TrackingRecord]) -> list[tuple]:
    return [
        (r.tenant_id, r.wamid, r.conversation_id, r.direction, r.type, r.status, r.attempts, r.error,
         r.genesys_message_id, r.payload, r.created_at, r.updated_at)
        for r in records
    ]  # fmt: skip


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pg(loop):
    name = f"bench_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    loop.run_until_complete(admin(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    url = ADMIN_URL.rpartition("/")[0] + "/" + name
    store = PostgresStore(Settings(database_url=Secret(url), secret_key=Secret(generate_key())))
    loop.run_until_complete(store.open())
    loop.run_until_complete(store.migrate())
    conn = loop.run_until_complete(asyncpg.connect(url))
    yield store, conn
    loop.run_until_complete(conn.close())
    loop.run_until_complete(store.close())
    loop.run_until_complete(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_rounds(benchmark, loop, write) -> None:
    benchmark.extra_info["rows_per_round"] = BATCH
    benchmark.pedantic(lambda records: loop.run_until_complete(write(records)), setup=lambda: ((batch(),), {}),
                       rounds=15, warmup_rounds=2)  # fmt: skip


@pytest.mark.servers
@needs_postgres
def test_postgres_one_insert_each(benchmark, loop, pg):
    _, conn = pg

    async def write(records):
        for row in rows(records):
            await conn.execute(SINGLE_ROW, *row)

    run_rounds(benchmark, loop, write)


@pytest.mark.servers
@needs_postgres
def test_postgres_executemany(benchmark, loop, pg):
    _, conn = pg
    run_rounds(benchmark, loop, lambda records: conn.executemany(SINGLE_ROW, rows(records)))


@pytest.mark.servers
@needs_postgres
def test_postgres_copy_then_insert(benchmark, loop, pg):
    _, conn = pg
    columns = ("tenant_id", "wamid", "conversation_id", "direction", "type", "status", "attempts", "error",
               "genesys_message_id", "payload", "created_at", "updated_at")  # fmt: skip

    async def write(records):
        async with conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS tracking_staging (LIKE message_tracking INCLUDING DEFAULTS)"
                " ON COMMIT DELETE ROWS"
            )
            staged = [(*r[:10], datetime.fromtimestamp(r[10], timezone.utc), datetime.fromtimestamp(r[11], timezone.utc))
                      for r in rows(records)]  # fmt: skip
            await conn.copy_records_to_table("tracking_staging", records=staged, columns=columns)
            await conn.execute(
                "INSERT INTO message_tracking AS t SELECT * FROM tracking_staging ON CONFLICT (tenant_id, wamid)"
                " DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts, error = EXCLUDED.error,"
                " updated_at = EXCLUDED.updated_at WHERE EXCLUDED.status <> 'duplicate'"
            )

    run_rounds(benchmark, loop, write)


@pytest.mark.servers
@needs_postgres
def test_postgres_store_write_tracking_unnest(benchmark, loop, pg):
    store, _ = pg
    run_rounds(benchmark, loop, store.write_tracking)
    last = loop.run_until_complete(store.list_tracking(limit=10_000))
    assert len(last) >= 15 * BATCH


def test_sqlite_store_write_tracking(benchmark, loop, tmp_path):
    store = SqliteStore(Settings(data_dir=tmp_path, secret_key=Secret(generate_key())))
    loop.run_until_complete(store.open())
    loop.run_until_complete(store.migrate())
    try:
        run_rounds(benchmark, loop, store.write_tracking)
    finally:
        loop.run_until_complete(store.close())

