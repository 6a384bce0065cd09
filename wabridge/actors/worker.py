"""The worker: consumes its shards of the queue and runs the tenant actors that deliver to Genesys.

    queue shard ─(shard order)─▶ its router mailbox ─▶ registry of supervised TenantActors ─▶ lanes ─▶ relay

The queue calls `_accept` for each queue message in shard order; `_accept` only puts it into its shard's bounded router
mailbox (no await in between, so the order survives), and one router task per shard hands queue messages to their
tenant's actor. A full tenant mailbox makes that shard's router wait, which stops taking from that shard:
backpressure all the way to the broker, whose prefetch window (per shard) bounds what this process holds.

One router per shard, not one for the worker, and within a shard a tenant held back (its Genesys rate budget spent
during a burst, its mailbox full) is parked (parking.py): its queue messages go to the store in order and come back to
it at its pace, and the shard's other tenants move on.

Drain (SIGTERM): stop routing and parking; every tenant actor finishes what its lanes admitted and settles its
queue messages; then the consumer stops, and whatever was never routed goes back to the queue unacked (what was parked
stays parked, for whoever consumes the shard next).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wabridge.actors.agent import AgentActor
from wabridge.actors.agent_media import AgentMedia
from wabridge.actors.contacts import Contacts
from wabridge.actors.directory import TenantDirectory
from wabridge.actors.identity import CustomerIdentity
from wabridge.actors.media import MediaFetcher
from wabridge.actors.outbound import OutboundSender
from wabridge.actors.parking import PARK_AFTER, POKE_EVERY, ShardParking, is_poke
from wabridge.actors.relay import Relay
from wabridge.actors.state import ConversationState
from wabridge.actors.statuses import StatusReceipts
from wabridge.actors.tenant import DEAD_LETTERS, TenantActor
from wabridge.actors.tracking import TrackingLookups, TrackingWriter
from wabridge.engine import process_metrics
from wabridge.engine.actor import mailbox_depths
from wabridge.engine.drain import Shutdown
from wabridge.engine.logs import get_logger
from wabridge.engine.mailbox import Mailbox, MailboxClosed
from wabridge.engine.metrics import REGISTRY, TopGauge
from wabridge.engine.registry import Registry
from wabridge.engine.status_server import serve_status
from wabridge.engine.supervisor import Supervisor
from wabridge.engine.tasks import Tasks, first_of
from wabridge.ports import GenesysApi, GenesysFiles, MetaGraphApi, MetaMediaApi, QueueMessage

if TYPE_CHECKING:
    from wabridge.adapters.backends import Backends  # the assembly's (cli/assembly.py): the ports it opened

log = get_logger("worker")

MAX_TENANT_ACTORS = 1000
TENANT_IDLE_TIMEOUT = 300.0  # s
# What the worker's parts count, read at scrape time from their statistics (deploy/grafana's dashboard). The deepest
# tenant mailboxes by tenant, a few only: a backed-up tenant shows by name however many tenants the worker holds.
REGISTRY.register(
    TopGauge(
        "wabridge_tenant_mailbox_depth",
        "Messages waiting in this worker's deepest tenant mailboxes.",
        "tenant",
        lambda: {name.removeprefix("tenant:"): n for name, n in mailbox_depths("tenant").items()},
        top=20,
    )
)
_MEDIA = REGISTRY.counter("wabridge_media_downloads_total", "Media files fetched from Meta, by result.", ["result"])
_MEDIA_RETRIES = REGISTRY.counter("wabridge_media_download_retries_total", "Media downloads from Meta tried again.")
_MEDIA_BYTES = REGISTRY.counter("wabridge_media_stored_bytes_total", "Bytes of media stored in object storage.")
_TENANT_LOOKUPS = REGISTRY.counter(
    "wabridge_tenant_lookups_total", "Tenant directory lookups by the tier that answered", ("tier",)
)


def _directory_count(worker: Worker, field: str) -> int:
    return int(getattr(worker.directory.statistics(), field))


def _export_statistics(worker: Worker) -> None:
    stats = [
        (_MEDIA.labels("stored"), lambda: worker.media.statistics().stored),
        (_MEDIA.labels("notice"), lambda: worker.media.statistics().notices),
        (_MEDIA_RETRIES.labels(), lambda: worker.media.statistics().retries),
        (_MEDIA_BYTES.labels(), lambda: worker.media.statistics().bytes_stored),
    ]
    for tier, field in (("local", "local_hits"), ("cache", "cache_hits"), ("store", "store_lookups")):
        stats.append((_TENANT_LOOKUPS.labels(tier), functools.partial(_directory_count, worker, field)))
    for child, read in stats:
        child.set_function(read)


@dataclass(frozen=True)
class SaaS:
    """The two far ends, through their ports (cli/assembly.py opens the HTTP adapters; tests may use others)."""

    genesys: GenesysApi
    genesys_files: GenesysFiles
    meta: MetaGraphApi
    meta_media: MetaMediaApi
    stop_holding: Callable[[], None]  # a drain: requests held through a far end's outage give up (back to the queue)


class Worker:
    def __init__(
        self, backends: Backends, saas: SaaS, *, shards: Sequence[int] | None = None, prefetch: int | None = None
    ) -> None:
        settings = backends.settings
        self.backends = backends
        self.saas = saas
        self.shards = shards
        self.prefetch = prefetch if prefetch is not None else settings.worker_prefetch
        self.directory = TenantDirectory(backends.store, backends.cache, settings.secret_box())
        self.media = MediaFetcher(backends.objects, saas.meta_media)
        self.tracker = TrackingWriter(backends.store)
        self.contacts = Contacts(backends.store)  # where each customer last wrote: where the agents' answers go from
        self.relay = Relay(
            backends.store,
            ConversationState(backends.cache, backends.store),
            self.media,
            saas.genesys,
            self.tracker,
            outage_hold=settings.outage_hold,
            contacts=self.contacts,
        )
        # The outbound direction: agents' answers to WhatsApp (agent.py, outbound.py), Meta's statuses of them back to
        # Genesys as receipts (statuses.py, run by the tenant actors, which take Meta's webhooks).
        self.agent_media = AgentMedia(backends.objects, saas.meta, saas.genesys_files)
        self.sender = OutboundSender(
            graph=saas.meta,
            media=self.agent_media,
            contacts=self.contacts,
            genesys=saas.genesys,
            tracker=self.tracker,
            seen=TrackingLookups(backends.store),
            outage_hold=settings.outage_hold,
        )
        self.statuses = StatusReceipts(backends.store, self.tracker, self.sender)
        self.identity = CustomerIdentity(backends.cache, backends.store)
        # One router mailbox per shard this worker consumes (module docstring): the consumer delivers from those only.
        shard_numbers = shards if shards is not None else range(backends.queue.shards)
        self._routers: dict[int, Mailbox[QueueMessage]] = {shard: Mailbox(self.prefetch) for shard in shard_numbers}
        self._agent_routers: dict[int, Mailbox[QueueMessage]] = {
            shard: Mailbox(self.prefetch) for shard in shard_numbers
        }
        self._router_died: asyncio.Future[None] | None = None
        self._handing_back = Tasks("worker hand-backs")  # queue messages whose actor crashed on them (`_on_failed`)
        self._parking: dict[int, ShardParking] = {}
        self._settings = settings
        _export_statistics(self)

    def _tenant_actor(self, tenant_id: str) -> TenantActor:
        return TenantActor(
            tenant_id,
            directory=self.directory,
            relay=self.relay,
            tracker=self.tracker,
            concurrency=self._settings.tenant_concurrency,
            max_pending=max(self.prefetch // 2, 1),
            delivery_limit=self._settings.delivery_limit,
            outage_hold=self._settings.outage_hold,
            take_back=self._take_back,
            identity=self.identity,
            statuses=self.statuses,
        )

    def _agent_actor(self, tenant_id: str) -> AgentActor:
        return AgentActor(
            tenant_id,
            directory=self.directory,
            sender=self.sender,
            tracker=self.tracker,
            concurrency=self._settings.tenant_concurrency,
            max_pending=max(self.prefetch // 2, 1),
            delivery_limit=self._settings.delivery_limit,
            outage_hold=self._settings.outage_hold,
        )

    def _take_back(self, queue_message: QueueMessage) -> bool:
        """A queue message its actor hands back: kept in front of its tenant's parked rows if it is parked
        (parking.py)."""
        parking = self._parking.get(queue_message.shard)
        return parking is not None and parking.take_back(queue_message)

    async def _accept(self, queue_message: QueueMessage) -> None:
        try:
            await self._routers[queue_message.shard].send(queue_message)
        except MailboxClosed:
            pass  # draining: left unsettled, it returns to the queue when the consumer stops

    async def _accept_outbound(self, queue_message: QueueMessage) -> None:
        try:
            await self._agent_routers[queue_message.shard].send(queue_message)
        except MailboxClosed:
            pass  # draining: left unsettled, it returns to the queue when the consumer stops

    def _on_failed(self, queue_message: Any, exc: BaseException) -> None:
        """A tenant actor crashed twice on this queue message (a bug the data triggers): it goes back to the queue, and
        on its last attempt to the dead-letter queue with the crash as the reason, instead of looping forever. The crash
        is charged to this queue message and to its tenant's actor only (the supervisor is per child): never the
        process."""
        if not hasattr(queue_message, "dead_letter"):
            return  # a mark (tenant.Settled), not a queue message
        if queue_message.attempt >= self._settings.delivery_limit:
            reason = f"crashed its tenant actor: {type(exc).__name__}: {exc}"[:300]
            DEAD_LETTERS.inc()
            log.error("delivery %s dead-lettered: %s", queue_message.message_id, reason)
            settle = queue_message.dead_letter(reason)
        else:
            log.error("tenant actor failed on %r: %s: %s; handing it back", queue_message, type(exc).__name__, exc)
            settle = queue_message.retry()
        self._handing_back.start(settle)

    async def _end_hand_backs(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """A drain waits for the hand-backs to be written; a failure or the drain's deadline cancels them (unsettled,
        their queue messages return to the queue when the consumer stops)."""
        if exc_type is None:
            await self._handing_back.wait()
        else:
            await self._handing_back.close()

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[Worker]:
        """The relay's writers running; closed (tracking flushed) on exit. The SaaS adapters are the assembly's."""
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.tracker)
            await stack.enter_async_context(self.contacts)
            yield self

    async def run(self, shutdown: Shutdown) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.started())
            await stack.enter_async_context(process_metrics.watching())
            await stack.enter_async_context(serve_status(self._settings.host, self._settings.worker_metrics_port))
            consumer = await self.backends.queue.consume(self._accept, shards=self.shards, prefetch=self.prefetch)
            stack.push_async_callback(consumer.stop)
            answers = await self.backends.outbound.consume(
                self._accept_outbound, shards=self.shards, prefetch=self.prefetch
            )
            stack.push_async_callback(answers.stop)
            stack.push_async_exit(self._end_hand_backs)  # before the consumers stop: settled on their channel
            # Per child: a tenant whose data crashes its actor is paused and restarted alone, never the worker.
            supervisor = await stack.enter_async_context(
                Supervisor("worker", max_restarts=5, period=10.0, per_child=True)
            )
            tenants: Registry[str] = await stack.enter_async_context(
                Registry(
                    supervisor,
                    self._tenant_actor,
                    kind="tenant",
                    max_live=MAX_TENANT_ACTORS,
                    idle_timeout=TENANT_IDLE_TIMEOUT,
                    capacity=self._settings.mailbox_size,
                    retries=1,
                    on_failed=self._on_failed,
                )
            )
            agents: Registry[str] = await stack.enter_async_context(
                Registry(
                    supervisor,
                    self._agent_actor,
                    kind="agent",
                    max_live=MAX_TENANT_ACTORS,
                    idle_timeout=TENANT_IDLE_TIMEOUT,
                    capacity=self._settings.mailbox_size,
                    retries=1,
                    on_failed=self._on_failed,
                )
            )
            log.info("worker consuming", extra={"shards": list(self.shards or range(self.backends.queue.shards))})
            self._parking = parking = {
                shard: ShardParking(
                    shard,
                    self.backends.store,
                    self.backends.queue,
                    tenants,
                    delivery_limit=self._settings.delivery_limit,
                    hold_back_limit=max(self.prefetch // 4, 1),
                    events=self.tracker.event,
                )
                for shard in self._routers
            }
            self._router_died = asyncio.get_running_loop().create_future()
            routing = Tasks("worker routing", log_failures=False)  # a router's death stops the worker: `_router_done`
            for shard, mailbox in self._routers.items():
                self._start_router(routing, shard, mailbox, parking[shard])
            routing.start(self._find_orphans(parking.values()), name="worker-parking-orphans")
            for shard, mailbox in self._agent_routers.items():
                self._start_agent_router(routing, shard, mailbox, agents)
            try:
                await first_of(self._router_died, shutdown.wait())
                if self._router_died.done():
                    self._router_died.result()  # a router died: raise its error, the process stops non-zero
            finally:
                log.info("worker draining")
                self.saas.stop_holding()  # held messages go back to the queue, for the next worker
                if not self._router_died.done():
                    self._router_died.cancel()  # routers cancelled from here on are not deaths
                for mailbox in [*self._routers.values(), *self._agent_routers.values()]:
                    mailbox.close()
                    mailbox.take_all()  # never routed: returned unacked when the consumer stops
                await routing.close()
                await asyncio.gather(*(shard_parking.close() for shard_parking in parking.values()))
            # Leaving the stack: the registry stops every tenant actor (each finishes its lanes and settles its
            # queue messages), then the supervisor, the consumer (unsettled queue messages go back), the writers and
            # clients.

    def _start_router(self, routing: Tasks, shard: int, mailbox: Mailbox[QueueMessage], parking: ShardParking) -> None:
        task = routing.start(self._route(mailbox, parking), name=f"worker-router-{shard}")
        task.add_done_callback(self._router_done)

    def _start_agent_router(
        self, routing: Tasks, shard: int, mailbox: Mailbox[QueueMessage], agents: Registry[str]
    ) -> None:
        task = routing.start(self._route_agents(mailbox, agents), name=f"worker-agent-router-{shard}")
        task.add_done_callback(self._router_done)

    async def _route_agents(self, router: Mailbox[QueueMessage], agents: Registry[str]) -> None:
        """The outbound queue's shard to its tenants' agent actors, in shard order. No parking: agents write at a
        human pace, and a tenant whose mailbox is full holds up its shard's router (backpressure to the broker)."""
        while True:
            queue_message = await router.receive()
            await self._hand_over(queue_message, agents, None)

    def _router_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._router_died is None or self._router_died.done():
            return
        self._router_died.set_exception(task.exception() or RuntimeError(f"{task.get_name()} ended"))

    async def _route(self, router: Mailbox[QueueMessage], parking: ShardParking) -> None:
        tenants = parking.tenants
        while True:
            queue_message = await router.receive()
            if not parking.loaded:
                await parking.load()  # the first queue message: this worker is the shard's active consumer now
            if is_poke(queue_message):
                await parking.load(again=True)
                await queue_message.ack()
                continue
            returned = parking.returned(queue_message)
            if parking.holds(queue_message.tenant_id):
                # Behind what is parked already; unless its actor handed it back to the queue just before the tenant
                # was parked (so it is older than every parked row): then in front of them.
                if not returned or not parking.take_back(queue_message, redelivered=True):
                    parking.park(queue_message)
                continue
            fence = parking.fence_awaited(queue_message.tenant_id)
            if fence is None:
                await self._hand_over(queue_message, tenants, parking)
            elif queue_message.message_id == fence:
                parking.fence_came(queue_message)  # the older ones are in; the parked rows come next
            else:
                await self._hand_over(queue_message, tenants, None)  # older than the parked rows: to the actor first

    @staticmethod
    async def _hand_over(queue_message: QueueMessage, tenants: Registry[str], parking: ShardParking | None) -> None:
        """To its tenant's actor, or parked if that tenant is held back (unless `parking` is None)."""
        while True:
            ref = await tenants.get(queue_message.tenant_id)
            try:
                if parking is None or len(ref.mailbox) < ref.mailbox.capacity:
                    await ref.tell(queue_message)
                    return
                # Full: a busy tenant takes one soon; one that takes nothing for PARK_AFTER is held back (parking.py).
                try:
                    async with asyncio.timeout(PARK_AFTER):
                        await ref.tell(queue_message)
                except TimeoutError:
                    parking.park(queue_message)
                return
            except MailboxClosed:
                continue  # the actor was stopped under us (the registry making room): its next one takes it

    async def _find_orphans(self, parking: Iterable[ShardParking]) -> None:
        """Parked rows nobody feeds (their worker restarted or was replaced) get a poke to their shard (parking.py)."""
        while True:
            for shard_parking in parking:
                await shard_parking.find_orphans()
            await asyncio.sleep(POKE_EVERY)
