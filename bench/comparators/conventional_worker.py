"""The conventional worker most teams would write behind `fastapi_ingress.py`: the other half of the conventional
pipeline the bridge is measured against end to end.

`python -m bench.comparators.conventional_worker` with
  BENCH_AMQP_URL, BENCH_QUEUE        the quorum queue the FastAPI ingress publishes to
  BENCH_REDIS_URL, BENCH_KEY_PREFIX  conversation mappings and OAuth tokens, under the prefix
  BENCH_DATABASE_URL, BENCH_TABLE    the tracking table (created here if missing)
  BENCH_GENESYS_TENANTS              JSON {phone_number_id: {tenant_id, integration_id, client_id, client_secret,
                                     genesys_url}}
  BENCH_HTTP                         aiohttp (default) or httpx: the pooled keep-alive client to Genesys
  BENCH_PREFETCH                     messages in flight (default 256)

Per webhook, each in a task of its own (aio-pika's consumer, manual ack): a pydantic parse of the Meta webhook; for
each text message one Redis MGET of the customer's conversation mapping and the tenant's token (a login under a lock
when the token is missing, cached in Redis with its expiry); the Open Messaging body the bridge sends (the same JSON:
`wabridge/sim/genesys.py` accepts it) POSTed to Genesys, asking for the conversation id on a first contact and
caching it; one asyncpg INSERT of the tracking row; the ack after the insert. Any failure: nack with requeue.
What it does not do, as the bridge does: no per-customer ordering (a customer's messages race in parallel tasks), no
de-duplication before sending (a redelivered webhook is sent again), no archive of the raw webhook, no media.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import redis.asyncio as redis
from pydantic import BaseModel, Field

# --- Meta's webhook, as much of it as the worker reads -------------------------------------------------------------


class Profile(BaseModel):
    name: str = ""


class Contact(BaseModel):
    wa_id: str
    profile: Profile | None = None


class Text(BaseModel):
    body: str


class Message(BaseModel):
    from_: str = Field(alias="from")
    id: str
    timestamp: str
    type: str
    text: Text | None = None


class Metadata(BaseModel):
    phone_number_id: str
    display_phone_number: str = ""


class Value(BaseModel):
    messaging_product: str
    metadata: Metadata
    contacts: list[Contact] = []
    messages: list[Message] = []
    statuses: list[dict[str, Any]] = []


class Change(BaseModel):
    field: str
    value: Value


class Entry(BaseModel):
    id: str
    changes: list[Change]


class Webhook(BaseModel):
    object: str
    entry: list[Entry]


# --- Genesys Open Messaging (OpenInboundNormalizedMessage) ----------------------------------------------------------


class FromParty(BaseModel):
    id: str
    idType: str = "Phone"
    nickname: str | None = None
    firstName: str | None = None
    lastName: str | None = None


class ChannelMetadata(BaseModel):
    customAttributes: dict[str, str]


class Channel(BaseModel):
    messageId: str
    time: str
    from_: FromParty = Field(serialization_alias="from")
    metadata: ChannelMetadata


class OpenMessage(BaseModel):
    channel: Channel
    text: str
    metadata: dict[str, str]


def open_message(message: Message, value: Value) -> OpenMessage:
    """The body the bridge's transform makes of a text message (wabridge/codecs/transform.py)."""
    name = next((c.profile.name for c in value.contacts if c.wa_id == message.from_ and c.profile), "")
    first, _, last = name.partition(" ")
    moment = datetime.fromtimestamp(int(message.timestamp), UTC)
    sender = FromParty(id=message.from_, nickname=name or None, firstName=first or None, lastName=last or None)
    custom = {"phone_number_id": value.metadata.phone_number_id,
              "display_phone_number": value.metadata.display_phone_number}  # fmt: skip
    channel = Channel(messageId=message.id, time=moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"), from_=sender,
                      metadata=ChannelMetadata(customAttributes=custom))  # fmt: skip
    return OpenMessage(channel=channel, text=message.text.body if message.text else "", metadata={"type": "text"})


# --- the HTTP client: aiohttp or httpx, both pooled and keep-alive --------------------------------------------------


class Http:
    async def post(self, url: str, body: bytes | str, headers: dict[str, str]) -> tuple[int, bytes]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class AiohttpClient(Http):
    def __init__(self, connections: int) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=60))

    async def post(self, url: str, body: bytes | str, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.session.post(url, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def close(self) -> None:
        await self.session.close()


class HttpxClient(Http):
    def __init__(self, connections: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(limits=limits, timeout=30)

    async def post(self, url: str, body: bytes | str, headers: dict[str, str]) -> tuple[int, bytes]:
        response = await self.client.post(url, content=body, headers=headers)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


# --- the worker ---------------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.tenants: dict[str, dict[str, str]] = json.loads(env["BENCH_GENESYS_TENANTS"])
        self.prefix = env.get("BENCH_KEY_PREFIX", "conv:")
        self.table = env.get("BENCH_TABLE", "conventional_tracking")
        self.prefetch = int(env.get("BENCH_PREFETCH", "256"))
        self.logins: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        self.redis = redis.Redis.from_url(self.env["BENCH_REDIS_URL"], max_connections=self.prefetch)
        self.db = await asyncpg.create_pool(self.env["BENCH_DATABASE_URL"], min_size=4, max_size=16)
        await self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (tenant_id text NOT NULL, wamid text NOT NULL, "
            "conversation_id text NOT NULL, genesys_id text NOT NULL, status text NOT NULL, error text, "
            "created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, wamid))"
        )
        connections = self.prefetch
        self.http: Http = (
            HttpxClient(connections) if self.env.get("BENCH_HTTP") == "httpx" else AiohttpClient(connections)
        )
        self.connection = await aio_pika.connect_robust(self.env["BENCH_AMQP_URL"])
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await channel.declare_queue(self.env["BENCH_QUEUE"], durable=True,
                                            arguments={"x-queue-type": "quorum"})  # fmt: skip
        await queue.consume(self.on_message)

    async def close(self) -> None:
        await self.connection.close()
        await self.http.close()
        await self.db.close()
        await self.redis.aclose()

    async def on_message(self, delivery: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            hook = Webhook.model_validate_json(delivery.body)
            for entry in hook.entry:
                for change in entry.changes:
                    for message in change.value.messages:
                        if message.type == "text":
                            await self.deliver(message, change.value)
        except Exception as exc:
            print(f"conventional worker: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            await delivery.nack(requeue=True)
            return
        await delivery.ack()

    async def deliver(self, message: Message, value: Value) -> None:
        tenant = self.tenants[value.metadata.phone_number_id]
        conversation_key = f"{self.prefix}conv:{tenant['tenant_id']}:{message.from_}"
        token_key = f"{self.prefix}token:{tenant['client_id']}"
        conversation, token = await self.redis.mget(conversation_key, token_key)
        if token is None:
            token = await self.login(tenant, token_key)
        url = f"{tenant['genesys_url']}/api/v2/conversations/messages/{tenant['integration_id']}/inbound/open/message"
        if conversation is None:
            url += "?prefetchConversationId=true"
        body = open_message(message, value).model_dump_json(by_alias=True, exclude_none=True)
        headers = {"Authorization": f"Bearer {token.decode() if isinstance(token, bytes) else token}",
                   "Content-Type": "application/json"}  # fmt: skip
        status, answer = await self.http.post(url, body, headers)
        if status == 401:  # the token was revoked or expired early: log in again, once
            token = await self.login(tenant, token_key, stale=token)
            headers["Authorization"] = f"Bearer {token.decode() if isinstance(token, bytes) else token}"
            status, answer = await self.http.post(url, body, headers)
        if status >= 300:
            raise RuntimeError(f"Genesys answered {status}: {answer[:200]!r}")
        reply = json.loads(answer)
        if conversation is None:
            conversation = reply.get("conversationId", "")
            await self.redis.set(conversation_key, conversation, ex=86400)
        await self.db.execute(
            f"INSERT INTO {self.table} (tenant_id, wamid, conversation_id, genesys_id, status) "
            "VALUES ($1, $2, $3, $4, 'delivered') ON CONFLICT DO NOTHING",
            tenant["tenant_id"], message.id,
            conversation.decode() if isinstance(conversation, bytes) else conversation, reply["id"],
        )  # fmt: skip

    async def login(self, tenant: dict[str, str], token_key: str, stale: Any = None) -> bytes | str:
        """One login at a time per client; whoever waited reads the token the first one cached."""
        async with self.logins.setdefault(tenant["client_id"], asyncio.Lock()):
            token = await self.redis.get(token_key)
            if token is not None and token != stale:
                return token
            basic = base64.b64encode(f"{tenant['client_id']}:{tenant['client_secret']}".encode()).decode()
            status, answer = await self.http.post(
                f"{tenant['genesys_url']}/oauth/token", "grant_type=client_credentials",
                {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            if status != 200:
                raise RuntimeError(f"login answered {status}")
            grant = json.loads(answer)
            await self.redis.set(token_key, grant["access_token"], ex=max(60, int(grant["expires_in"]) - 60))
            return grant["access_token"]


async def _main() -> None:
    import signal

    worker = Worker(dict(os.environ))
    await worker.open()
    print("conventional worker: consuming", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await worker.close()


def main() -> int:
    import uvloop

    uvloop.run(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
