"""The Queue port embedded: one SQLite file (WAL) under settings.data_dir, with the RabbitMQ adapter's semantics.

- Shards: the tenant's placed shard when the publisher gives one, else `zlib.crc32(tenant_id) % shards` (stable
  across processes and restarts; not the broker's hash, which does not need to match because the two adapters
  never share messages).
- Durability: `publish` returns after the COMMIT (synchronous=FULL). Every write goes through one writer task that
  takes all pending operations from a bounded buffer and runs them in one transaction on one worker thread (group
  commit: one fsync for many publishes, and the event loop never blocks on the disk).
- Order: rows carry an autoincrement `seq`; a shard is read in `seq` order, and a retried row keeps its place.
- One consumer per shard across processes: a lease row per shard, renewed every LEASE_RENEW seconds, expiring after
  LEASE_TTL; a lease whose process is gone from this host is taken at once (a restarted worker does not wait).
  Taking a shard returns its unacked rows to ready, so messages held by a dead consumer are delivered again.
- Attempts: counted when a row is delivered. A row that comes back (retry, consumer stopped or crashed) once it has
  been delivered `delivery_limit` times becomes a dead letter with reason `delivery_limit` (RabbitMQ's x-death word).
- Several processes may publish into the same file (busy_timeout); a lock held past it raises BackendUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sqlite3
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from wabridge.adapters.queue.placement import placed_shard
from wabridge.engine.settings import Settings
from wabridge.engine.tasks import Tasks
from wabridge.ports import BackendUnavailable, QueueMessage

log = logging.getLogger(__name__)

PORT = "queue"
FILE_NAME = "queue.sqlite3"
BUSY_TIMEOUT_MS = 5000  # another process holding the write lock longer than this is treated as an outage
MAX_PENDING = 8192  # operations waiting for the writer; more callers wait for room
MAX_BATCH = 2048  # operations per transaction
LEASE_TTL = 10.0  # s without renewal before another process may take a shard
LEASE_RENEW = 1.0  # s between lease renewals; also how soon a waiting consumer notices a released shard
POLL = 0.05  # s between looks for rows published by another process

READY, LEASED, DEAD, DEAD_TAKEN = 0, 1, 2, 3
HOST = socket.gethostname()  # a lease held by a dead pid on this host is taken at once, not after LEASE_TTL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    shard INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS queue_messages_by_shard ON queue_messages (state, shard, seq);
CREATE TABLE IF NOT EXISTS queue_leases (
    shard INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""

T = TypeVar("T")


def shard_of(tenant_id: str, shards: int) -> int:
    return zlib.crc32(tenant_id.encode()) % shards


class SqliteQueueMessage:
    __slots__ = (
        "_owner",
        "_queue",
        "_seq",
        "_settled",
        "attempt",
        "body",
        "message_id",
        "reason",
        "shard",
        "tenant_id",
    )

    def __init__(self, queue: SqliteQueue, row: tuple[Any, ...], owner: str | None) -> None:
        self._seq, self.shard, self.tenant_id, self.message_id, self.body, self.attempt, self.reason = row
        self._queue = queue
        self._owner = owner  # the consumer's lease token; None for a dead letter taken for inspection
        self._settled = False
        if owner is None:
            self.shard = -1

    def __repr__(self) -> str:
        return f"SqliteQueueMessage(tenant_id={self.tenant_id!r}, message_id={self.message_id!r}, shard={self.shard})"

    async def ack(self) -> None:
        await self._settle(lambda db: db.execute("DELETE FROM queue_messages WHERE seq = ?", (self._seq,)))

    async def retry(self) -> None:
        if self._owner is None:  # a dead letter goes back to its shard as a fresh message
            await self._settle(
                lambda db: db.execute(
                    "UPDATE queue_messages SET state = ?, attempts = 0, reason = NULL WHERE seq = ?", (READY, self._seq)
                )
            )
            self._queue._wakeup.set()
            return
        await self._settle(lambda db: _return_rows(db, self._queue.delivery_limit, "seq = ?", (self._seq,)))
        self._queue._wakeup.set()

    async def dead_letter(self, reason: str) -> None:
        if self._owner is None:
            return await self.ack()
        await self._settle(
            lambda db: db.execute(
                "UPDATE queue_messages SET state = ?, reason = ? WHERE seq = ?", (DEAD, reason, self._seq)
            )
        )

    async def _settle(self, write: Callable[[sqlite3.Connection], Any]) -> None:
        if self._settled:
            return
        self._settled = True
        consumer = self._queue._settling(self)
        # Shielded from a cancelled handler; a closed queue is fine: the row is delivered again (at-least-once).
        writing = asyncio.ensure_future(self._queue._write(write))
        writing.add_done_callback(_read_error)  # still read if the handler is cancelled while it runs
        with contextlib.suppress(BackendUnavailable):
            await asyncio.shield(writing)
        if consumer is not None:
            consumer.settled(self._seq)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read_error(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _return_rows(db: sqlite3.Connection, limit: int, where: str, args: tuple[Any, ...]) -> None:
    """Leased rows go back to ready, or to the dead letters once they have had their `limit` deliveries."""
    db.execute(
        f"UPDATE queue_messages SET state = ?, reason = 'delivery_limit' WHERE state = ? AND attempts >= ? AND {where}",
        (DEAD, LEASED, limit, *args),
    )
    db.execute(f"UPDATE queue_messages SET state = ? WHERE state = ? AND {where}", (READY, LEASED, *args))


class SqliteConsumer:
    """One task that holds shard leases and feeds `handler` one task per row, in `seq` order."""

    def __init__(
        self,
        queue: SqliteQueue,
        handler: Callable[[QueueMessage], Awaitable[None]],
        shards: Sequence[int],
        prefetch: int,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._shards = tuple(shards)
        self._prefetch = prefetch
        self.owner = uuid.uuid4().hex
        self.owned: frozenset[int] = frozenset()
        self._unsettled: set[int] = set()
        self._handling = Tasks("sqlite consumer handlers")  # one per queue message, cancelled when the consumer stops
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sqlite-consumer")

    def settled(self, seq: int) -> None:
        self._unsettled.discard(seq)
        self._queue._wakeup.set()

    async def _run(self) -> None:
        renewed = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - renewed >= LEASE_RENEW:
                    self.owned = await self._queue._write(self._lease)
                    renewed = time.monotonic()
                room = self._prefetch - len(self._unsettled)
                rows = (
                    await self._queue._write(functools.partial(self._take, room=room))
                    if self.owned and room > 0
                    else []
                )
            except BackendUnavailable as exc:
                log.warning("sqlite queue consumer: %s", exc)
                rows = []
            for row in rows:
                self._deliver(SqliteQueueMessage(self._queue, row, self.owner))
            if not rows:
                self._queue._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queue._wakeup.wait(), POLL)

    def _lease(self, db: sqlite3.Connection) -> frozenset[int]:
        now = time.time()
        owned = []
        for shard in self._shards:
            holder = db.execute(
                "SELECT host, pid FROM queue_leases WHERE shard = ? AND owner <> ?", (shard, self.owner)
            ).fetchone()
            if holder is not None and holder[0] == HOST and not _alive(holder[1]):
                # Its process is gone from this machine: no need to wait for the lease to expire.
                db.execute("DELETE FROM queue_leases WHERE shard = ?", (shard,))
            db.execute(
                "INSERT INTO queue_leases (shard, owner, expires, host, pid) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (shard) DO UPDATE SET owner = excluded.owner, expires = excluded.expires, "
                "host = excluded.host, pid = excluded.pid "
                "WHERE queue_leases.owner = excluded.owner OR queue_leases.expires < ?",
                (shard, self.owner, now + LEASE_TTL, HOST, os.getpid(), now),
            )
            if db.execute("SELECT owner FROM queue_leases WHERE shard = ?", (shard,)).fetchone()[0] == self.owner:
                owned.append(shard)
                if shard not in self.owned:  # newly taken: what the previous owner held unacked is ready again
                    _return_rows(db, self._queue.delivery_limit, "shard = ?", (shard,))
        return frozenset(owned)

    def _take(self, db: sqlite3.Connection, room: int) -> list[tuple[Any, ...]]:
        marks = ",".join("?" * len(self.owned))
        rows = db.execute(
            f"SELECT seq, shard, tenant_id, message_id, body, attempts + 1, reason FROM queue_messages "
            f"WHERE state = ? AND shard IN ({marks}) ORDER BY seq LIMIT ?",
            (READY, *self.owned, room),
        ).fetchall()
        db.executemany(
            "UPDATE queue_messages SET state = ?, attempts = attempts + 1 WHERE seq = ?",
            [(LEASED, row[0]) for row in rows],
        )
        return rows

    def _deliver(self, queue_message: SqliteQueueMessage) -> None:
        self._unsettled.add(queue_message._seq)
        # Tasks start in creation order, so handler invocations keep the shard's order.
        self._handling.start(self._handle(queue_message))

    async def _handle(self, queue_message: SqliteQueueMessage) -> None:
        try:
            await self._handler(queue_message)
        except Exception:
            log.exception("queue handler failed on %r; handing it back", queue_message)
            with contextlib.suppress(BackendUnavailable):
                await queue_message.retry()

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self._handling.close()
        owned, self.owned = self.owned, frozenset()

        def release(db: sqlite3.Connection) -> None:
            for shard in owned:
                _return_rows(db, self._queue.delivery_limit, "shard = ?", (shard,))
            db.execute("DELETE FROM queue_leases WHERE owner = ?", (self.owner,))

        with contextlib.suppress(BackendUnavailable):
            await self._queue._write(release)
        self._queue._consumers.discard(self)


class SqliteQueue:
    """`name` makes a second, independent queue in a file of its own (the outbound one: `queue-outbound.sqlite3`):
    its own writer, shards and leases, so neither direction's writes wait on the other's. None is the main queue."""

    def __init__(self, settings: Settings, *, name: str | None = None) -> None:
        self.path = settings.data_dir / (FILE_NAME if name is None else f"queue-{name}.sqlite3")
        self.shards = settings.shards
        self.delivery_limit = settings.delivery_limit
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        # Pending writes; None asks the writer to finish.
        self._pending: asyncio.Queue[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]] | None] | None
        self._pending = None
        self._writer: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._consumers: set[SqliteConsumer] = set()

    def __repr__(self) -> str:
        return f"SqliteQueue(path={str(self.path)!r}, shards={self.shards})"

    async def open(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds customer messages
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-queue")
        self._db = await self._in_thread(self._connect)
        self._pending = asyncio.Queue(MAX_PENDING)
        self._writer = asyncio.create_task(self._write_batches(), name="sqlite-queue-writer")
        # Dead letters taken by a process that ended before settling them are dead letters again.
        await self._write(
            lambda db: db.execute("UPDATE queue_messages SET state = ? WHERE state = ?", (DEAD, DEAD_TAKEN))
        )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # publish promises durability: the WAL is synced on commit
        db.executescript(_SCHEMA)
        return db

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        if self._pending is None or self._writer is None:
            raise BackendUnavailable(PORT, "queue not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._pending.put((operation, future))
        return await future

    async def _write_batches(self) -> None:
        assert self._pending is not None
        finishing = False
        while not finishing:
            batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
            while not batch or (len(batch) < MAX_BATCH and not self._pending.empty()):
                item = await self._pending.get() if not batch else self._pending.get_nowait()
                if item is None:
                    finishing = True
                    break
                batch.append(item)
            if not batch:
                continue
            try:
                results = await self._in_thread(functools.partial(self._transaction, [op for op, _ in batch]))
            except sqlite3.Error as exc:
                failure = BackendUnavailable(PORT, f"sqlite: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(value) if ok else future.set_exception(value)

    def _transaction(self, operations: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        db = self._db
        assert db is not None
        results: list[tuple[bool, Any]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for operation in operations:
                try:  # a failed statement leaves no trace in SQLite, so the others may still commit
                    results.append((True, operation(db)))
                except sqlite3.OperationalError:
                    raise  # locked / disk trouble: the whole batch fails
                except Exception as exc:
                    results.append((False, exc))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return results

    def _settling(self, queue_message: SqliteQueueMessage) -> SqliteConsumer | None:
        for consumer in self._consumers:
            if consumer.owner == queue_message._owner:
                return consumer
        return None

    async def publish(self, tenant_id: str, body: bytes, *, message_id: str, shard: int | None = None) -> None:
        shard = self._shard(tenant_id, shard)
        await self._write(
            lambda db: db.execute(
                "INSERT INTO queue_messages (shard, tenant_id, message_id, body) VALUES (?, ?, ?, ?)",
                (shard, tenant_id, message_id, body),
            )
        )
        self._wakeup.set()

    async def bury(
        self, tenant_id: str, body: bytes, *, message_id: str, reason: str, shard: int | None = None
    ) -> None:
        shard = self._shard(tenant_id, shard)
        await self._write(
            lambda db: db.execute(
                "INSERT INTO queue_messages (shard, tenant_id, message_id, body, state, reason)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (shard, tenant_id, message_id, body, DEAD, reason),
            )
        )

    def _shard(self, tenant_id: str, shard: int | None) -> int:
        placed = placed_shard(str(self.path), shard, self.shards)
        return shard_of(tenant_id, self.shards) if placed is None else placed

    async def consume(
        self,
        handler: Callable[[QueueMessage], Awaitable[None]],
        *,
        shards: Sequence[int] | None = None,
        prefetch: int = 256,
    ) -> SqliteConsumer:
        selected = tuple(range(self.shards)) if shards is None else tuple(shards)
        if any(not 0 <= s < self.shards for s in selected):
            raise ValueError(f"shards must be within 0..{self.shards - 1}, got {selected}")
        if self._writer is None:
            raise BackendUnavailable(PORT, "queue not open")
        consumer = SqliteConsumer(self, handler, selected, prefetch)
        self._consumers.add(consumer)
        consumer.start()
        return consumer

    async def dead_letters(self, limit: int = 100) -> list[SqliteQueueMessage]:
        def take(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = db.execute(
                "SELECT seq, shard, tenant_id, message_id, body, attempts, reason FROM queue_messages "
                "WHERE state = ? ORDER BY seq LIMIT ?",
                (DEAD, limit),
            ).fetchall()
            db.executemany("UPDATE queue_messages SET state = ? WHERE seq = ?", [(DEAD_TAKEN, r[0]) for r in rows])
            return rows

        return [SqliteQueueMessage(self, row, None) for row in await self._write(take)]

    async def ping(self) -> bool:
        try:
            await self._write(lambda db: db.execute("SELECT 1").fetchone())
        except BackendUnavailable:
            return False
        return True

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        if self._writer is not None:
            assert self._pending is not None
            writer, self._writer = self._writer, None  # new writes are refused from here on
            await self._pending.put(None)  # the writes queued before it still land
            await writer
            while not self._pending.empty():  # put while the sentinel waited for room: refused, not left hanging
                item = self._pending.get_nowait()
                if item is not None and not item[1].done():
                    item[1].set_exception(BackendUnavailable(PORT, "queue closed"))
        if self._db is not None:
            await self._in_thread(self._db.close)
            self._db = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
