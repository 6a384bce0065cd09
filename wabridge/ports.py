"""The ports between wabridge and what it runs on (four infrastructure ports, and the two SaaS it bridges), and the
records that cross them.

Each port has a production adapter on a real server and an embedded adapter (no server); one contract suite
(tests/contract/) runs against both. Actors depend on these Protocols only, never on an adapter module.

  Queue    RabbitMQ quorum queues, sharded by tenant    | SQLite (WAL) table with the same semantics
  Cache    Redis, with a local LRU in front (lru.py)     | an in-process TTL map
  Store    PostgreSQL (asyncpg)                          | SQLite (WAL)
  Objects  S3 / MinIO / SeaweedFS (miniopy-async)        | a directory, with HMAC-signed expiring URLs

Error contract: an adapter raises `BackendUnavailable` when its server cannot be reached (the caller decides:
the ingress answers 503, a worker leaves the message unacked); every other exception is a bug or bad input.

The SaaS ports, split by caller as the Store is (genesys/ and meta/ are the HTTP adapters; wabridge/sim/* stands in
for the far ends in tests and the demo):
  GenesysApi    Open Messaging: a customer's message in, a receipt for an agent's message
  GenesysFiles  an agent's attachment, downloaded with the tenant's token where it belongs
  MetaGraphApi  the agent's side of the Graph API: sends, media uploads, read marks
  MetaMediaApi  a customer's media file: Meta's lookup, then its download url
Their refusals are `PostFailed` (Genesys), `SendRefused` (Meta) and `FetchFailed` (one try at a file).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from wabridge.codecs.receipts import Reason
from wabridge.engine.secrets import Secret


class BackendUnavailable(ConnectionError):
    """The server behind a port is down or unreachable; the operation may succeed later."""

    def __init__(self, port: str, detail: str) -> None:
        super().__init__(f"{port} unavailable: {detail}")
        self.port = port


# --- records --------------------------------------------------------------------------------------------------------


class GenesysCredential(msgspec.Struct, frozen=True):
    """One Genesys OAuth client. Each has its own rate budget, so a tenant may hold several."""

    client_id: str
    client_secret: Secret


class TenantConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything wabridge knows about one tenant. Secrets are `Secret`s: reprs and logs never show them."""

    tenant_id: str
    phone_number_ids: tuple[str, ...]
    app_secret: Secret  # Meta app secret: HMAC key of X-Hub-Signature-256
    verify_token: Secret  # Meta webhook verification handshake
    whatsapp_token: Secret  # Graph API bearer token (media downloads)
    genesys_api_url: str  # https://api.<region>
    genesys_login_url: str  # https://login.<region>
    genesys_integration_id: str
    credentials: tuple[GenesysCredential, ...]
    rate_limit_per_minute: int = 300  # per credential: Genesys's default client-credentials budget
    # The outbound half; defaults, so a tenant stored before it reads fine.
    genesys_webhook_secret: Secret | None = None  # the integration's outbound secret token (HMAC key)
    send_rate_per_second: int = 80  # Meta send budget per phone number, across processes; 0 = no budget
    read_marks: bool = True  # mark the customer's latest inbound message read when an agent answers
    # The queue shard its messages go to (`tenants add` places it); None: the queue's hash of the tenant id, as for
    # the tenants stored before placement existed. Never changed by itself: a move could reorder queued messages.
    shard: int | None = None


class TrackingStatus(enum.StrEnum):
    """A tracking row's status. A StrEnum: the database, the CLI and the JSON output see the same strings."""

    RECEIVED = "received"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD_LETTERED = "dead-lettered"
    DUPLICATE = "duplicate"
    UNROUTED = "unrouted"


class TrackingRecord(msgspec.Struct, kw_only=True):
    """One row of message_tracking, unique per (tenant_id, wamid). A later write for the same key updates it."""

    wamid: str
    tenant_id: str
    status: str  # a TrackingStatus value
    direction: str = "inbound"
    type: str = ""  # Meta message type (text, image, …)
    conversation_id: str | None = None
    genesys_message_id: str | None = None
    attempts: int = 0
    error: str | None = None
    # The per-message work item, kept for failed/dead-lettered rows so `wabridge replay` can send it again.
    payload: bytes | None = None
    duplicates: int = 0  # times the message came again after it was settled (Meta retries, redeliveries)
    created_at: float = 0.0  # Unix seconds; 0 = now
    updated_at: float = 0.0
    # Where it came from, for `wabridge trace` / `messages` (migration 5): filled by the write that happens anyway;
    # None on older rows and on writes that do not know it (a later write keeps what an earlier one set).
    webhook_id: str | None = None  # the ingress's id of the webhook (its queue message id is `{webhook_id}:{tenant}`)
    shard: int | None = None
    archive_key: str | None = None  # the raw body in `webhooks-inbound`: `{segment key}#{line}`
    received_at: float | None = None  # when the ingress read the webhook
    customer_id: str | None = None  # the customer's ordering-lane key (Route.sender_id)
    media_key: str | None = None  # our copy of the customer's media in `media-inbound`
    # Outbound rows only (migration 6), kept by a later write with None like `webhook_id`.
    meta_ids: str | None = None  # the wamids Meta gave each part, space-separated, in part order
    meta_status: str | None = None  # JSON text written by the status handler (actors/statuses.py)


class Contact(msgspec.Struct, frozen=True):
    """A customer's latest inbound message: the number they wrote to and its wamid, what an agent's answer is sent
    from and marks read. `at` is when it was received (Unix seconds); an older one never replaces a newer."""

    phone_number_id: str
    wamid: str
    at: float


class MessageEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One unusual step in a message's life (a retry, a hold, a hand-back, parking, a dead letter, a replay): the
    happy path writes none, its tracking row tells it all. `wamid` is empty for a step of the whole webhook (parking
    handles webhooks, not messages): `wabridge trace` finds those by `webhook_id`."""

    tenant_id: str
    wamid: str = ""
    webhook_id: str = ""
    direction: str = "inbound"  # "outbound" once the bridge sends the business's messages to Meta
    at: float  # Unix seconds
    event: str  # a MessageEventKind value
    detail: str = ""  # an error, a reason: never message text or a secret


class MessageEventKind:
    RETRIED = "retried"  # a Genesys attempt failed and was tried again
    RATE_LIMITED = "rate-limited"  # Genesys answered 429 and the post waited
    MEDIA_RETRIED = "media-retried"  # a media download from Meta failed and was tried again
    HELD = "held"  # held in place while the tenant's Genesys was down
    FAILED = "failed"  # tracked failed (the row's error is overwritten should a replay deliver it)
    HANDED_BACK = "handed-back"  # unfinished: its webhook went back to the queue (or to parking) for another attempt
    DEAD_LETTERED = "dead-lettered"  # unfinished on the last attempt: the webhook went to the dead-letter queue
    PARKED = "parked"  # its webhook was kept in the store while its tenant was held back
    FED = "fed"  # its parked webhook was handed to the tenant again
    BURIED = "buried"  # its parked webhook went to the dead-letter queue
    REPLAYED = "replayed"  # `wabridge replay` sent it again


class ParkedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A queue message kept in the store while its tenant is held back (actors/parking.py), fed back in `seq` order."""

    seq: int  # ascending in the order parked, unique in the table
    shard: int
    tenant_id: str
    message_id: str
    body: bytes
    attempt: int  # the queue's attempt count it carries (1 on first delivery)


class MessageToPark(msgspec.Struct, frozen=True):
    """A queue message to keep in the store (`ParkingStore.park`), before the store gives it its `seq`."""

    tenant_id: str
    message_id: str
    body: bytes
    attempt: int


class ParkingFence(msgspec.Struct, frozen=True):
    """Where a tenant's parking episode began: that queue message stays unacked until what came before it is settled
    (actors/parking.py)."""

    tenant_id: str
    message_id: str


# --- Queue ----------------------------------------------------------------------------------------------------------


class QueueMessage(Protocol):
    """One message handed to a consumer. Exactly one of ack / retry / dead_letter settles it; until then it is
    unacked and the broker redelivers it if the consumer dies."""

    tenant_id: str
    message_id: str
    body: bytes
    shard: int
    attempt: int  # 1 on first delivery; the queue dead-letters after `delivery_limit` attempts

    async def ack(self) -> None: ...

    async def retry(self) -> None:
        """Hand it back for redelivery (counts as an attempt; past the limit it is dead-lettered)."""

    async def dead_letter(self, reason: str) -> None:
        """Move it to the dead-letter queue now, keeping `reason`."""


class Consumer(Protocol):
    async def stop(self) -> None:
        """Stop taking new queue messages; unsettled ones go back to the queue."""


@runtime_checkable
class Queue(Protocol):
    shards: int

    async def open(self) -> None:
        """Connect and declare the topology idempotently."""

    async def publish(self, tenant_id: str, body: bytes, *, message_id: str, shard: int | None = None) -> None:
        """Returns once the message is durable (publisher confirm); raises BackendUnavailable otherwise.
        Concurrent publishes are pipelined: each caller awaits only its own confirm. `shard`: the tenant's placed
        shard (TenantConfig.shard); None, or one out of range, routes by the hash of the tenant id."""

    async def consume(
        self,
        handler: Callable[[QueueMessage], Awaitable[None]],
        *,
        shards: Sequence[int] | None = None,
        prefetch: int = 256,
    ) -> Consumer:
        """Deliver messages of the given shards (all by default) to `handler`. One active consumer per shard
        across all processes, so a tenant's messages arrive in publish order."""

    async def bury(
        self, tenant_id: str, body: bytes, *, message_id: str, reason: str, shard: int | None = None
    ) -> None:
        """Put a message straight into the dead letters, keeping `reason`: one that left the queue (parked in the
        store, actors/parking.py) and then failed for good. Durable when it returns. `shard`: the one it came from,
        where a retry of the dead letter puts it back (None: the hash of the tenant id)."""

    async def dead_letters(self, limit: int = 100) -> list[QueueMessage]:
        """Take up to `limit` dead-lettered messages (settle each: ack drops it, retry republishes it)."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


# --- Cache ----------------------------------------------------------------------------------------------------------


@runtime_checkable
class Cache(Protocol):
    async def open(self) -> None:
        """Ready to serve. Clients that connect on first use have nothing to do here."""

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The keys that hold a value, in one round trip."""

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """`ttl` in seconds (> 0)."""

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """`set` for many keys, one `ttl`, in one round trip (not atomic: a failure may leave some set)."""

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        """True when this call created the key."""

    async def delete(self, key: str) -> None: ...

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        """Atomic counter, raised by `amount`; the TTL is set when the key is created."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


# --- Store ----------------------------------------------------------------------------------------------------------


class PhoneNumberTaken(ValueError):
    """A phone_number_id is already owned by another tenant."""


# The Store port is split by what its callers need: each role depends on the narrow port it uses (the tenant
# directory on TenantStore, conversation state and identity on CustomerStore, the tracking writer on TrackingStore,
# parking on ParkingStore); `Store` is all of them, what an adapter implements and what the wiring opens.


@runtime_checkable
class TenantStore(Protocol):
    # tenants (secrets encrypted at rest with the SecretBox)
    async def put_tenant(self, tenant: TenantConfig) -> None:
        """Insert or update; raises PhoneNumberTaken if another tenant owns one of its phone numbers. An update
        without a shard keeps the stored one."""

    async def get_tenant(self, tenant_id: str) -> TenantConfig | None: ...

    async def tenant_for_phone_number(self, phone_number_id: str) -> TenantConfig | None: ...

    async def list_tenants(self) -> list[TenantConfig]: ...

    async def remove_tenant(self, tenant_id: str) -> bool: ...


@runtime_checkable
class CustomerStore(Protocol):
    """Who the customers are: their conversations, their other ids, where they last wrote."""

    # conversation mappings
    async def get_conversation(self, tenant_id: str, wa_id: str) -> str | None: ...

    async def get_conversations(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(tenant_id, wa_id) → conversation id for those that have one, in one round trip."""

    async def put_conversation(self, tenant_id: str, wa_id: str, conversation_id: str) -> str:
        """Insert if absent and return the stored id (the existing one when another writer won)."""

    async def set_conversation(self, tenant_id: str, wa_id: str, conversation_id: str) -> None:
        """Overwrite: Genesys answered with the conversation id it uses."""

    async def set_conversations(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """`set_conversation` for many (tenant_id, wa_id, conversation_id) at once; the last row of a key wins."""

    # customer aliases: one customer known by two ids (phone number and BSUID, or an old and a new BSUID); each alias
    # names the customer's canonical id, the one their conversation is keyed on (actors/identity.py)
    async def get_aliases(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(tenant_id, alias_id) → canonical id for those that are aliases, in one round trip."""

    async def put_alias(self, tenant_id: str, alias_id: str, canonical_id: str) -> str:
        """Insert if absent and return the stored canonical id (the existing one when another writer won)."""

    # customer contacts: each customer's latest inbound message, for the agent's answers (the outbound half)
    async def set_contacts(self, rows: Sequence[tuple[str, str, str, str, float]]) -> None:
        """(tenant_id, customer_id, phone_number_id, wamid, at) upserted in one round trip; a row older (`at`) than
        the stored one changes nothing."""

    async def get_contacts(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Contact]:
        """(tenant_id, customer_id) → Contact for those that have one, in one round trip."""
        ...


@runtime_checkable
class TrackingStore(Protocol):
    """What became of each message, and the unusual steps of its life."""

    # message tracking
    async def write_tracking(self, records: Sequence[TrackingRecord]) -> None:
        """Upsert many rows in one round trip; durable when it returns."""

    async def touch_conversations(self, touches: Sequence[tuple[str, str, float]]) -> None:
        """(tenant_id, wa_id, unix time) → the conversation mapping's last_activity_at, many at once (coalesced by the
        caller, the tracking writer)."""

    async def get_tracking(self, tenant_id: str, wamid: str) -> TrackingRecord | None: ...

    async def get_tracking_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TrackingRecord]:
        """The rows of those (tenant_id, wamid) `keys` that are tracked, by key (absent ones are left out); one
        round trip."""
        ...

    async def list_tracking(
        self,
        *,
        tenant_id: str | None = None,
        statuses: Sequence[str] = (),
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
        customer_id: str | None = None,
        direction: str | None = None,
        newest_first: bool = False,
    ) -> list[TrackingRecord]:
        """Oldest first by created_at (replay's order), or newest first."""
        ...

    async def find_tracking(self, message_id: str, *, limit: int = 1000) -> list[TrackingRecord]:
        """The rows a message id names, any tenant: its wamid, its Genesys message id, or its webhook id (every
        message of that webhook). Oldest first."""
        ...

    # message events: the unusual steps of a message (MessageEvent), written in batches, best effort
    async def write_events(self, events: Sequence[MessageEvent]) -> None:
        """Append many in one round trip."""

    async def list_events(
        self, *, tenant_id: str, wamids: Sequence[str] = (), webhook_ids: Sequence[str] = (), limit: int = 1000
    ) -> list[MessageEvent]:
        """The tenant's events of those messages or of those webhooks, in time order."""
        ...


@runtime_checkable
class ParkingStore(Protocol):
    # parked messages: a worker takes the queue messages of a tenant that is held back (its Genesys rate budget
    # spent, its mailbox full) off its shard and keeps them here, in order, so the shard's other tenants are not held
    # up behind it; it feeds them back to the tenant in order and deletes each once settled.
    async def park(self, shard: int, messages: Sequence[MessageToPark], *, fences: Sequence[ParkingFence] = ()) -> None:
        """`messages` stored in the given order: each gets a higher seq than the ones before it and than anything
        parked before this call; one round trip, durable when it returns. Empty: nothing. `fences`, written in the
        same transaction: a tenant's parking episode began at that queue message, which stays unacked until what came
        before it is settled (actors/parking.py); a tenant that has a fence already keeps it."""

    async def parking_fences(self, shard: int) -> dict[str, str]:
        """Tenant → the message id of its fence, for the tenants of this shard that have one."""

    async def clear_fence(self, shard: int, tenant_id: str) -> None:
        """What came before the tenant's fence is settled: forget it (nothing when there is none)."""

    async def parked(self, shard: int, tenant_id: str, *, after: int = 0, limit: int = 100) -> list[ParkedMessage]:
        """The tenant's parked messages in this shard with seq > after, oldest first, at most `limit`."""

    async def parked_tenants(self, shard: int) -> dict[str, int]:
        """Tenants with messages parked in this shard → how many."""

    async def unpark(self, seqs: Sequence[int]) -> None:
        """Delete these (settled); unknown seqs are ignored. One round trip."""

    async def set_parked_attempt(self, seq: int, attempt: int) -> None:
        """The message is being handed to its tenant again: record its attempt count (ignored when gone, or when
        lower than the one recorded: two hand-backs of one message may be written out of order)."""


@runtime_checkable
class Store(TenantStore, CustomerStore, TrackingStore, ParkingStore, Protocol):
    async def open(self) -> None: ...

    async def migrate(self) -> None:
        """Create or upgrade the schema; safe to run any number of times."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


# --- Objects --------------------------------------------------------------------------------------------------------

WEBHOOKS_BUCKET = "webhooks-inbound"
MEDIA_BUCKET = "media-inbound"
# The outbound direction: Genesys's raw webhooks, and our copies of the agents' attachments.
WEBHOOKS_OUTBOUND_BUCKET = "webhooks-outbound"
MEDIA_OUTBOUND_BUCKET = "media-outbound"


@runtime_checkable
class Objects(Protocol):
    async def open(self) -> None:
        """Create the private buckets if absent."""

    async def put(
        self, bucket: str, key: str, data: bytes, *, content_type: str, metadata: dict[str, str] | None = None
    ) -> None: ...

    async def get(self, bucket: str, key: str) -> bytes:
        """Raises KeyError when absent."""

    async def presigned_get(self, bucket: str, key: str, *, expires: float = 3600) -> str:
        """A URL anyone holding it can GET until it expires (Genesys downloads media with it)."""

    async def open_signed(self, bucket: str, key: str, expires: str, signature: str) -> tuple[bytes, str]:
        """Serve one of this store's own signed URLs (the ingress's `/objects/…`): (content, content type).
        PermissionError for a bad or expired signature; KeyError when the object is gone, or when the store's URLs
        are served by the store itself (S3)."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


# --- the SaaS: Genesys Cloud and Meta's Graph API ---------------------------------------------------------------------

KEPT_BODY_BYTES = 4096  # of a Genesys error body, kept for the tracking row


class Posted(msgspec.Struct, frozen=True):
    genesys_message_id: str
    conversation_id: str | None = None


class PostFailed(Exception):
    """Genesys did not take the message. `permanent`: sending it again unchanged will not help."""

    def __init__(
        self, error: str, attempts: int, permanent: bool = False, *, status: int | None = None, body: bytes = b""
    ) -> None:
        super().__init__(error)
        self.error = error
        self.attempts = attempts
        self.permanent = permanent
        self.status = status
        self.body = body[:KEPT_BODY_BYTES]

    def __repr__(self) -> str:
        return f"PostFailed({self.error!r}, attempts={self.attempts}, permanent={self.permanent})"


class SendRefused(Exception):
    """Final: Meta did not take the request and trying again unchanged will not help. The agent gets a Failed
    receipt with `reason`."""

    def __init__(self, reason: Reason, status: int | None = None, code: int | None = None) -> None:
        super().__init__(reason.message)
        self.reason, self.status, self.code = reason, status, code

    def __repr__(self) -> str:
        return f"SendRefused({self.reason.code}, status={self.status}, code={self.code}, {self.reason.message!r})"


class FetchFailed(Exception):
    """One try at a file failed. `final`: no retry will change it; `reason` names what the customer's media became
    (actors/media.py NOTICES); `size`: what Meta announced, for a file too large."""

    def __init__(self, detail: str, *, final: bool, reason: str = "download_failed", size: int = 0) -> None:
        super().__init__(detail)
        self.detail, self.final, self.reason, self.size = detail, final, reason, size


class FileTooLarge(Exception):
    """The file is larger than the caller's `max_bytes`: reading stopped there."""


class FetchedFile(msgspec.Struct, frozen=True):
    data: bytes
    content_type: str | None  # as the far end named it, if it did
    sha256: bytes | None = None  # the digest Meta announced for it (MetaMediaApi)


class GenesysApi(Protocol):
    """Genesys Cloud Open Messaging for one tenant at a time: its token, its rate budget, its outages held."""

    async def post_message(self, tenant: TenantConfig, body: bytes) -> Posted:
        """POST a customer's message (an encoded Open Messaging message). Raises PostFailed."""

    async def receipt(self, tenant: TenantConfig, body: bytes) -> None:
        """POST a receipt for an agent's message (codecs/receipts.py). Raises PostFailed."""


class GenesysFiles(Protocol):
    async def download(self, tenant: TenantConfig, url: str, max_bytes: int) -> FetchedFile:
        """One try at an agent's attachment. Raises FetchFailed, FileTooLarge."""


class MetaGraphApi(Protocol):
    """The agent's side of Meta's Graph API, with the tenant's WhatsApp token; Meta's outages held."""

    async def send(self, tenant: TenantConfig, phone_number_id: str, body: bytes) -> str:
        """The wamid Meta gave the message. Raises SendRefused, BackendUnavailable (a drain while held)."""

    async def upload(
        self, tenant: TenantConfig, phone_number_id: str, data: bytes, mime: str, filename: str | None
    ) -> str:
        """The media id Meta gave the file. Raises SendRefused, BackendUnavailable."""

    async def mark_read(self, tenant: TenantConfig, phone_number_id: str, wamid: str, *, typing: bool = False) -> bool:
        """Best effort: False when Meta did not take it."""


class MetaMediaApi(Protocol):
    async def fetch(self, tenant: TenantConfig, media_id: str, max_bytes: int) -> FetchedFile:
        """One try at a customer's media file. Raises FetchFailed, FileTooLarge."""
