"""`wabridge replay`: deliver again the messages that failed, once the cause is fixed.

Takes the tracked messages in `failed` (Genesys refused them or stayed down for 3 attempts) and `dead-lettered`
state, optionally for one tenant, one direction and a time window, and relays each once more, in the order they were
received. Idempotent: a message that is `delivered` by now (an earlier replay, or Meta sent it again) is not sent
again. `--direction out` replays the agents' messages to WhatsApp (refused by Meta, or dead-lettered): each is sent
again from the Genesys webhook kept on its row, and a new receipt tells the agent how it went. `--status
dead-lettered` also moves the whole webhooks waiting in the dead-letter queues (of the chosen directions) back into
their shards, for a running worker to take.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

import anyio

from wabridge.codecs.results import Inbound, unpack_result
from wabridge.engine.settings import SettingsError, load_settings
from wabridge.ports import TrackingStatus

REPLAYABLE = (TrackingStatus.FAILED, TrackingStatus.DEAD_LETTERED)
BATCH = 1000


def register(sub) -> None:
    p = sub.add_parser("replay", help="re-deliver failed or dead-lettered messages", description=__doc__)
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--status", choices=REPLAYABLE, help="only messages in this state (default: both)")
    p.add_argument(
        "--direction",
        choices=("in", "out"),
        help="in: customers' messages to Genesys; out: agents' messages to WhatsApp (default: both)",
    )
    p.add_argument("--since", type=_instant, help="received at or after this ISO-8601 time")
    p.add_argument("--until", type=_instant, help="received before this ISO-8601 time")
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed, send nothing")
    p.set_defaults(func=run)


def _instant(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.width, self.done = total, width, 0
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.since and args.until and args.since >= args.until:
        raise SettingsError("--since must be before --until")
    return anyio.run(_replay, settings, args)


async def _replay(settings, args) -> int:
    from wabridge.actors.worker import Worker
    from wabridge.adapters.backends import open_backends
    from wabridge.cli.assembly import saas_adapters

    statuses = (args.status,) if args.status else REPLAYABLE
    directions = {"in": ("inbound",), "out": ("outbound",)}.get(args.direction, ("inbound", "outbound"))
    async with open_backends(settings) as backends:
        rows = []
        since = args.since
        for direction in directions:
            args.since = since
            while True:
                page = await backends.store.list_tracking(
                    tenant_id=args.tenant,
                    statuses=statuses,
                    since=args.since,
                    until=args.until,
                    limit=BATCH,
                    direction=direction,
                )
                rows.extend(page)
                if len(page) < BATCH or args.since is None:
                    break  # without a moving window the store's limit is the page; more is a second run
                args.since = page[-1].created_at + 1e-6
        rows.sort(key=lambda r: r.created_at)
        moved = 0
        if TrackingStatus.DEAD_LETTERED in statuses and not args.dry_run:
            queues = {"inbound": backends.queue, "outbound": backends.outbound}
            for direction in directions:
                moved += await _requeue_dead_letters(queues[direction], args.tenant)
        if args.dry_run:
            for row in rows:
                print(
                    f"{row.tenant_id}\t{row.direction}\t{row.wamid}\t{row.status}\t{_iso(row.created_at)}\t"
                    f"{row.error or ''}"
                )
            print(f"{len(rows)} message(s) would be replayed")
            return 0
        counts = {"delivered": 0, "failed": 0, "duplicate": 0, "skipped": 0}
        tenants: dict[str, object] = {}
        progress = Progress(len(rows))
        # far_end_hold 0: an operator's replay while Genesys or Meta is still down fails fast, not in 1 h
        async with saas_adapters(backends, far_end_hold=0) as saas:
            worker = Worker(backends, saas)
            async with worker.started():
                for row in rows:
                    outcome = await _replay_one(worker, backends.store, tenants, row)
                    counts[outcome] = counts.get(outcome, 0) + 1
                    progress.step(f"{row.wamid} {outcome}")
        progress.close()
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        print(
            f"replayed {len(rows)} message(s): {summary or 'nothing to do'}"
            + (f"; {moved} dead-lettered webhook(s) moved back to the queue" if moved else "")
        )
        return 1 if counts["failed"] else 0


async def _replay_one(worker, store, tenants: dict, row) -> str:
    if row.payload is None:
        return "skipped"  # nothing kept to send again (a message that could not be read in the first place)
    if row.tenant_id not in tenants:
        tenants[row.tenant_id] = await store.get_tenant(row.tenant_id)
    tenant = tenants[row.tenant_id]
    if tenant is None:
        return "skipped"
    if row.direction == "outbound":
        return await _replay_outbound(worker, tenant, row)
    result = unpack_result(row.payload)
    if not isinstance(result, Inbound):
        return "skipped"
    return await worker.relay.relay(tenant, result, row.created_at or time.time(), replay=True)


async def _replay_outbound(worker, tenant, row) -> str:
    """An agent's message, from the Genesys webhook body its row keeps, through the worker's sender."""
    from wabridge.codecs.outbound import decode_outbound
    from wabridge.codecs.outbound_results import Send
    from wabridge.engine.history import Trail
    from wabridge.ports import MessageEventKind

    try:
        result = decode_outbound(row.payload)
    except ValueError:
        return "skipped"
    if not isinstance(result, Send):
        return "skipped"  # a skip is refused again the same way: nothing a replay changes
    with Trail(row.tenant_id, row.wamid, None, worker.tracker, direction="outbound") as trail:
        trail.note(MessageEventKind.REPLAYED)
        outcome = await worker.sender.handle(tenant, result, row.payload, row.created_at or time.time(), replay=True)
    return outcome


async def _requeue_dead_letters(queue, tenant_id: str | None) -> int:
    moved = 0
    while True:
        letters = await queue.dead_letters(100)
        if not letters:
            return moved
        for letter in letters:
            if tenant_id and letter.tenant_id != tenant_id:
                continue  # left unsettled: it returns to the dead-letter queue
            await letter.retry()
            moved += 1
        if all(tenant_id and letter.tenant_id != tenant_id for letter in letters):
            return moved


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
