"""The Store port on SQLite (stdlib sqlite3, WAL): what `wabridge serve` uses with no configuration.

Same schema, same rules as postgres.py (read its docstring: the duplicate rule, payload clearing, secrets sealed
per tenant+field). Timestamps are REAL Unix seconds. Several processes may open the same file: WAL lets readers run
beside the one writer, writes take the lock with BEGIN IMMEDIATE and wait up to BUSY_TIMEOUT for it, and a lock still
held after that is reported as BackendUnavailable (the caller retries later, as with a PostgreSQL outage).

Every call runs on one dedicated thread that owns the connection: the event loop never waits on the disk, and the
connection is never shared between threads. A large write inline would stall every other task; point reads cost more
through the thread but are rare (the cache answers hot keys), so one path for everything wins (docs/decisions.md).
synchronous=FULL, because write_tracking promises durability on return and a batch of hundreds of rows pays for one
fsync.

The tables' DDL is in sqlite_schema.py; the queries in sqlite_tenants.py, sqlite_customers.py, sqlite_tracking.py
and sqlite_parking.py, one mixin of the store each.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from wabridge.adapters.store.sqlite_customers import SqliteCustomers
from wabridge.adapters.store.sqlite_parking import SqliteParking
from wabridge.adapters.store.sqlite_schema import MIGRATIONS
from wabridge.adapters.store.sqlite_tenants import SqliteTenants
from wabridge.adapters.store.sqlite_tracking import SqliteTracking
from wabridge.engine.settings import Settings
from wabridge.ports import BackendUnavailable

T = TypeVar("T")

FILENAME = "wabridge.sqlite3"
BUSY_TIMEOUT = 5.0  # seconds another process may hold the write lock before we report the store unavailable


class SqliteStore(SqliteTenants, SqliteCustomers, SqliteTracking, SqliteParking):
    def __init__(self, settings: Settings) -> None:
        self.path = settings.data_dir / FILENAME
        self._box = settings.secret_box()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wabridge-sqlite")
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise RuntimeError("SqliteStore.open() was not called")
            try:
                return work(self._db)
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.rollback()
                if "locked" in str(exc) or "busy" in str(exc):
                    raise BackendUnavailable("store", f"sqlite: {exc}") from exc
                raise
            except BaseException:
                if self._db.in_transaction:
                    self._db.rollback()
                raise

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    # --- lifecycle ---

    async def open(self) -> None:
        def connect() -> None:
            if self._db is not None:
                return
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds tenant data: owner only
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    async def close(self) -> None:
        def disconnect() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, disconnect)
        self._thread.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._run(lambda db: db.execute("SELECT 1").fetchone()[0] == 1)
        except (BackendUnavailable, RuntimeError):
            return False

    async def migrate(self) -> int:
        def work(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")  # one migrator at a time across processes
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            for version, ddl in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in ddl.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))
            db.execute("COMMIT")
            return len(MIGRATIONS)

        return await self._run(work)
