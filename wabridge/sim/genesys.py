"""`wabridge sim genesys`: a stand-in for Genesys Cloud's OAuth login and Open Messaging inbound API.

What it does like the real service (reference.md §2):
  POST /oauth/token          Basic client_id:client_secret + grant_type=client_credentials → {access_token,
                             token_type:"bearer", expires_in}. With no `--client` configured any non-empty client id
                             and secret are accepted (a demo needs no set-up); with some, only those.
  POST /api/v2/conversations/messages/{integrationId}/inbound/open/message[?prefetchConversationId=true]
                             bearer token checked (401 bad or expired), integration checked when `--integration` is
                             given (404 otherwise), the body validated as OpenInboundNormalizedMessage (400 with a
                             Genesys-style error body), then 200 with OpenMessageNormalizedMessage; conversationId is
                             stable per integration + from.id. Unknown fields are ignored, as Genesys does.
  Rate limit                 per OAuth client (Genesys counts per client, not per endpoint), default 300 requests per
                             wall-clock minute window (windows aligned on Unix time, like the bridge's budget keys);
                             over it: 429, `Retry-After: <seconds to the next window>`, code
                             too.many.requests.retry.after.
What it adds for tests:
  GET /sim/messages[?conversationId=…]   what it accepted, oldest first, with media fetch results (--fetch-media)
  GET /sim/conversations                 {conversationId: {integrationId, fromId, messages}}
  GET /sim/stats                         counters (logins, requests, accepted, rejected, rate_limited, …)
  POST /sim/revoke-tokens                every token issued so far stops working (401), as after a revocation or a
                                         restart of the service: the next login gives a working one
  POST /sim/faults                       {"status":503,"count":3} | {"latency_ms":200,"count":10} |
                                         {"status":429,"retry_after":2} | "target":"login" to hit the login instead;
                                         count -1 = until cleared. DELETE /sim/faults clears; POST /sim/reset clears
                                         all.
The agent's side (genesys_agent.py, reference.md §3): POST /sim/agent/send sends a signed outbound webhook to the
bridge, retried the way Genesys retries; the receipt and typing-event endpoints take the bridge's answers;
GET /sim/agent/outbound shows each outbound message with its attempts and receipts, and /sim/conversations each
conversation's `timeline`, both directions in time order.

The HTTP server is a minimal asyncio HTTP/1.1 one (keep-alive, Content-Length or chunked bodies): it runs in-process
(`async with GenesysSim() as sim`) or as a subprocess (`start_genesys_sim()`), and validation is one msgspec decode.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import functools
import hashlib
import math
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec

from wabridge.engine.tasks import Tasks

MESSAGE_PATH = re.compile(r"^/api/v2/conversations/messages/([^/]+)/inbound/open/message$")
RECEIPT_OR_EVENT_PATH = re.compile(r"^/api/v2/conversations/messages/([^/]+)/inbound/open/(receipt|event)$")
DOWNLOAD_PATH = re.compile(r"^/sim/downloads/([^/]+)$")
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024  # Genesys's per-attachment limit
MEDIA_FETCH_CONCURRENCY = 8
_CONVERSATION_NAMESPACE = uuid.UUID("5b8a6c1e-3f0a-4c1e-9a57-0d4f1f6c2b11")

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


# --- the documented schema (OpenInboundNormalizedMessage) --------------------------------------------------------
# Optional fields default to "" / [] / {} rather than None: an explicit null is rejected, which is stricter than
# Genesys may be but catches an encoder that forgot omit_defaults. omit_defaults keeps the echoed reply lean.


class FromParty(msgspec.Struct, omit_defaults=True):
    id: NonEmpty
    idType: Literal["Phone", "Email", "Opaque"]
    nickname: str = ""
    firstName: str = ""
    lastName: str = ""
    image: str = ""


class ChannelMetadata(msgspec.Struct, omit_defaults=True):
    customAttributes: dict[str, str] = {}


class InboundChannel(msgspec.Struct, omit_defaults=True):
    messageId: NonEmpty
    time: datetime
    from_: FromParty = msgspec.field(name="from")
    metadata: ChannelMetadata = msgspec.field(default_factory=ChannelMetadata)


class Attachment(msgspec.Struct, omit_defaults=True):
    mediaType: Literal["Image", "Video", "Audio", "File", "Link"]
    url: NonEmpty
    mime: NonEmpty  # required by the real schema (OpenContentAttachment: mediaType, url, mime)
    filename: str = ""
    text: str = ""
    sha256: str = ""
    id: str = ""


class ContentItem(msgspec.Struct, omit_defaults=True):
    attachment: Attachment
    contentType: str = "Attachment"


class InboundMessage(msgspec.Struct):
    channel: InboundChannel
    text: str = ""
    content: list[ContentItem] = []
    metadata: dict[str, str] = {}


class ReplyParty(msgspec.Struct):
    id: str


class ReplyChannel(msgspec.Struct, omit_defaults=True):
    id: str
    platform: str
    type: str
    messageId: str
    to: ReplyParty
    from_: FromParty = msgspec.field(name="from")
    time: datetime | None = None


class OpenMessageNormalizedMessage(msgspec.Struct, omit_defaults=True):
    id: str
    channel: ReplyChannel
    type: str
    direction: str
    text: str = ""
    content: list[ContentItem] = []
    metadata: dict[str, str] = {}
    conversationId: str | None = None


_decode_message = msgspec.json.Decoder(InboundMessage).decode
_encode = msgspec.json.Encoder().encode


class SchemaError(ValueError):
    pass


def validate_inbound(body: bytes) -> InboundMessage:
    """Decode and check a body the way the inbound endpoint does; raises SchemaError with the reason."""
    try:
        message = _decode_message(body)
    except msgspec.ValidationError as exc:
        raise SchemaError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"malformed JSON: {exc}") from None
    if not message.text and not message.content:
        raise SchemaError("a message must have text or content")
    if message.channel.time.utcoffset() != timedelta(0):
        raise SchemaError("channel.time must be an ISO-8601 UTC timestamp - at `$.channel.time`")
    for i, item in enumerate(message.content):
        if not item.attachment.url.startswith(("https://", "http://")):
            raise SchemaError(f"attachment url must be absolute http(s) - at `$.content[{i}].attachment.url`")
    return message


def genesys_error(status: int, code: str, message: str) -> bytes:
    """The body shape Genesys answers errors with."""
    return _encode(
        {
            "message": message,
            "code": code,
            "status": status,
            "messageParams": {},
            "contextId": str(uuid.uuid4()),
            "details": [],
            "errors": [],
        }
    )


@functools.lru_cache(maxsize=100_000)  # a SHA-1 per message was a fifth of the simulator's CPU with new_id
def conversation_id_for(integration_id: str, from_id: str) -> str:
    return str(uuid.uuid5(_CONVERSATION_NAMESPACE, f"{integration_id}\x00{from_id}"))


def new_id() -> str:
    """A random (version 4) UUID's hex, from Python's generator: `uuid4()` asks the kernel for 16 bytes each time,
    and the simulator shares the machine with the bridge it measures. Unique enough for ids, not for secrets."""
    return uuid.UUID(int=random.getrandbits(128), version=4).hex


# --- state ----------------------------------------------------------------------------------------------------------


@dataclass
class SimStats:
    logins: int = 0
    login_rejected: int = 0
    requests: int = 0
    accepted: int = 0
    rejected: int = 0  # 400
    unauthorized: int = 0  # 401
    not_found: int = 0  # 404
    rate_limited: int = 0  # 429 from the rate limit (injected ones count in `faults`)
    faults: int = 0
    receipts: int = 0  # receipts accepted from the bridge
    events: int = 0  # typing events accepted from the bridge
    outbound_attempts: int = 0  # webhook POSTs to the bridge, retries included


@dataclass
class Fault:
    status: int | None = None
    latency_ms: float = 0
    count: int = 1  # -1: until cleared
    retry_after: int = 1
    target: str = "api"  # or "login"


class FaultSpec(msgspec.Struct, forbid_unknown_fields=True):
    status: int | None = None
    latency_ms: float = 0
    count: int = 1
    retry_after: int = 1
    target: Literal["api", "login"] = "api"


@dataclass
class Received:
    id: str
    integration_id: str
    conversation_id: str
    from_id: str
    message_id: str
    received_at: float
    body: bytes
    media: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "integrationId": self.integration_id,
            "conversationId": self.conversation_id,
            "fromId": self.from_id,
            "messageId": self.message_id,
            "receivedAt": self.received_at,
            "body": msgspec.json.decode(self.body),
            "media": self.media,
        }


_GenesysAnswer = tuple[int, bytes, tuple[tuple[str, str], ...]]


class GenesysSim:
    """The simulator as an in-process server: `async with GenesysSim(port=0) as sim: … sim.url …`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clients: Mapping[str, str] | None = None,
        integrations: Iterable[str] = (),
        token_lifetime: int = 86_400,
        rate_limit: int = 300,
        rate_window: float = 60.0,
        fetch_media: bool = False,
        max_messages: int = 100_000,
        faults: Iterable[Fault] = (),
        bridge_url: str = "http://127.0.0.1:8080",
        webhook_path: str = "/webhook/genesys/{tenantId}",
        tenant: str = "",
        outbound_secret: str = "",
        signature_encoding: Literal["base64", "hex"] = "base64",
        answer_timeout: float = 10.0,
        retry_interval: float = 5.0,
        max_retries: int = 5,
        webhook_headers: Mapping[str, str] | None = None,
    ) -> None:
        from wabridge.sim.genesys_agent import Agent, AgentConfig  # it imports this module

        self.host, self.port = host, port
        self.clients = dict(clients or {})
        self.integrations = frozenset(integrations)
        self.token_lifetime = token_lifetime
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.fetch_media = fetch_media
        self.stats = SimStats()
        self.received: deque[Received] = deque(maxlen=max_messages)  # oldest dropped past the bound
        self._faults: list[Fault] = list(faults)
        self._tokens: dict[str, tuple[str, float]] = {}  # token → (client_id, expires at, monotonic)
        self._windows: dict[str, tuple[int, int]] = {}  # client_id → (window index, requests in it)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._media_tasks = Tasks("sim genesys media downloads")
        self._media_slots = asyncio.Semaphore(MEDIA_FETCH_CONCURRENCY)
        self._http: Any = None
        config = AgentConfig(
            bridge_url,
            webhook_path,
            tenant,
            outbound_secret,
            signature_encoding,
            answer_timeout,
            retry_interval,
            max_retries,
            dict(webhook_headers or {}),
        )
        self.agent = Agent(self, config, max_messages)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> GenesysSim:
        if self.fetch_media:
            import httpx

            self._http = httpx.AsyncClient(timeout=30.0, follow_redirects=True)
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_HEAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, self._media_tasks.close(), return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        await self.agent.aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> GenesysSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- test helpers -----------------------------------------------------------------------------------------------

    def add_fault(self, **spec: Any) -> None:
        """Same keywords as `POST /sim/faults`: status, latency_ms, count, retry_after, target."""
        self._faults.append(Fault(**msgspec.structs.asdict(msgspec.convert(spec, FaultSpec))))

    def clear_faults(self) -> None:
        self._faults.clear()

    def reset(self) -> None:
        self.received.clear()
        self._faults.clear()
        self.stats = SimStats()
        self.agent.reset()

    def messages(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        return [r.as_json() for r in self.received if conversation_id in (None, r.conversation_id)]

    def conversations(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in self.received:
            conv = out.setdefault(
                r.conversation_id, {"integrationId": r.integration_id, "fromId": r.from_id, "messages": []}
            )
            conv["messages"].append(r.id)
        self.agent.add_to_conversations(out)
        return out

    async def wait_media(self) -> None:
        """Until every attachment download started so far has finished (--fetch-media)."""
        await self._media_tasks.wait()

    # --- HTTP/1.1 -----------------------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or spoke something that is not HTTP/1.1: drop the connection
        except asyncio.CancelledError:
            # Only stop() cancels these; ending quietly keeps asyncio's stream callback from reporting the
            # cancellation as an unhandled error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        else:
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                await _write(writer, (413, genesys_error(413, "request.entity.too.large", "body too large"), ()), False)
                return False
            body = await reader.readexactly(length)
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        response = await self._dispatch(method, target, headers, body)
        await _write(writer, response, keep_alive)
        return keep_alive

    async def _dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _GenesysAnswer:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if method == "POST" and (match := MESSAGE_PATH.match(path)):
            return await self._inbound(match.group(1), query, headers, body)
        if method == "POST" and path == "/oauth/token":
            return await self._login(headers, body)
        if method == "POST" and (match := RECEIPT_OR_EVENT_PATH.match(path)):
            return await self._receipt_or_event(match.group(1), match.group(2), headers, body)
        if method == "GET" and (match := DOWNLOAD_PATH.match(path)):
            return self.agent.download(match.group(1), self._grant(headers) is not None)
        if path.startswith("/sim/agent/"):
            return await self.agent.control(method, path, query, body)
        if path.startswith("/sim/"):
            return self._control(method, path, query, body)
        self.stats.not_found += 1
        return 404, genesys_error(404, "not.found", f"no resource at {method} {path}"), ()

    # --- login ------------------------------------------------------------------------------------------------------

    async def _login(self, headers: dict[str, str], body: bytes) -> _GenesysAnswer:
        if (faulted := await self._apply_fault("login")) is not None:
            return faulted
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        try:
            client_id, _, client_secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            client_id = client_secret = ""
        form = parse_qs(body.decode("latin-1"))
        if form.get("grant_type") != ["client_credentials"]:
            return (
                400,
                _encode({"error": "unsupported_grant_type", "description": "grant_type must be client_credentials"}),
                (),
            )
        known = self.clients.get(client_id) if self.clients else client_secret
        if (
            scheme.lower() != "basic"
            or not client_id
            or not client_secret
            or not known
            or not secrets.compare_digest(known, client_secret)
        ):
            self.stats.login_rejected += 1
            return 401, _encode({"error": "invalid_client", "description": "client not found or bad secret"}), ()
        self.stats.logins += 1
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        if len(self._tokens) > 10_000:  # bounded: forget expired tokens before adding more
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
        self._tokens[token] = (client_id, now + self.token_lifetime)
        reply = {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime}
        return 200, _encode(reply), ()

    # --- inbound message --------------------------------------------------------------------------------------------

    async def _inbound(self, integration_id: str, query: dict, headers: dict[str, str], body: bytes) -> _GenesysAnswer:
        self.stats.requests += 1
        if (refused := await self._admit(integration_id, headers)) is not None:
            return refused
        try:
            message = validate_inbound(body)
        except SchemaError as exc:
            self.stats.rejected += 1
            return 400, genesys_error(400, "bad.request", f"The request could not be understood: {exc}"), ()
        return 200, self._accept(integration_id, message, body, query.get("prefetchConversationId") == ["true"]), ()

    def _grant(self, headers: dict[str, str]) -> tuple[str, float] | None:
        """The (client id, expiry) of a live bearer token in `headers`, or None."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        grant = self._tokens.get(token) if scheme.lower() == "bearer" else None
        return grant if grant is not None and grant[1] > time.monotonic() else None

    async def _admit(self, integration_id: str, headers: dict[str, str]) -> _GenesysAnswer | None:
        """What every Open Messaging API call goes through: faults, token, the client's rate limit, integration."""
        if (faulted := await self._apply_fault("api")) is not None:
            return faulted
        grant = self._grant(headers)
        if grant is None:
            self.stats.unauthorized += 1
            return 401, genesys_error(401, "bad.credentials", "Invalid login credentials."), ()
        if (limited := self._count_request(grant[0])) is not None:
            return limited
        if self.integrations and integration_id not in self.integrations:
            self.stats.not_found += 1
            return 404, genesys_error(404, "not.found", f"integration {integration_id} not found"), ()
        return None

    async def _receipt_or_event(
        self, integration_id: str, kind: str, headers: dict[str, str], body: bytes
    ) -> _GenesysAnswer:
        self.stats.requests += 1
        if (refused := await self._admit(integration_id, headers)) is not None:
            return refused
        return (self.agent.receipt if kind == "receipt" else self.agent.event)(integration_id, body)

    def _count_request(self, client_id: str) -> _GenesysAnswer | None:
        if self.rate_limit <= 0:
            return None
        now = time.time()
        window = int(now // self.rate_window)
        seen_window, count = self._windows.get(client_id, (window, 0))
        count = count + 1 if seen_window == window else 1
        self._windows[client_id] = (window, count)
        if count <= self.rate_limit:
            return None
        self.stats.rate_limited += 1
        retry_after = max(1, math.ceil((window + 1) * self.rate_window - now))
        body = genesys_error(
            429,
            "too.many.requests.retry.after",
            f"Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds",
        )
        return 429, body, (("Retry-After", str(retry_after)),)

    def _accept(self, integration_id: str, message: InboundMessage, body: bytes, prefetch: bool) -> bytes:
        self.stats.accepted += 1
        channel = message.channel
        conversation_id = conversation_id_for(integration_id, channel.from_.id)
        genesys_id = new_id()
        record = Received(
            genesys_id, integration_id, conversation_id, channel.from_.id, channel.messageId, time.time(), body
        )
        self.received.append(record)
        if self._http is not None:
            for item in message.content:
                self._media_tasks.start(self._fetch(record, item.attachment.url))
        reply = OpenMessageNormalizedMessage(
            id=genesys_id,
            channel=ReplyChannel(
                id=genesys_id,
                platform="Open",
                type="Private",
                messageId=channel.messageId,
                to=ReplyParty(integration_id),
                from_=channel.from_,
                time=channel.time,
            ),
            type="Text",
            direction="Inbound",
            text=message.text,
            content=message.content,
            metadata=message.metadata,
            conversationId=conversation_id if prefetch else None,
        )
        return _encode(reply)

    async def _fetch(self, record: Received, url: str) -> None:
        """Download an attachment as Genesys would, keeping only what proves it worked."""
        async with self._media_slots:
            digest, size = hashlib.sha256(), 0
            try:
                async with self._http.stream("GET", url) as response:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_ATTACHMENT_BYTES:
                            record.media.append({"url": url, "status": response.status_code, "error": "over 25 MB"})
                            return
                        digest.update(chunk)
                record.media.append(
                    {"url": url, "status": response.status_code, "size": size, "sha256": digest.hexdigest()}
                )
            except Exception as exc:  # a sim records failures rather than dying of them
                record.media.append({"url": url, "status": None, "error": f"{type(exc).__name__}: {exc}"})

    # --- faults and control -----------------------------------------------------------------------------------------

    async def _apply_fault(self, target: str) -> _GenesysAnswer | None:
        fault = next((f for f in self._faults if f.target == target), None)
        if fault is None:
            return None
        if fault.count > 0:
            fault.count -= 1
            if fault.count == 0:
                self._faults.remove(fault)
        self.stats.faults += 1
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.status is None:
            return None
        headers: tuple[tuple[str, str], ...] = ()
        if fault.status == 429:
            headers = (("Retry-After", str(fault.retry_after)),)
            return 429, genesys_error(429, "too.many.requests.retry.after", "Rate limit exceeded (injected)"), headers
        if fault.status == 401:
            return 401, genesys_error(401, "bad.credentials", "Invalid login credentials."), ()
        return fault.status, genesys_error(fault.status, "injected.fault", "injected by the simulator"), headers

    def _control(self, method: str, path: str, query: dict, body: bytes) -> _GenesysAnswer:
        if method == "GET" and path == "/sim/messages":
            conversation = query.get("conversationId", [None])[0]
            return 200, _encode(self.messages(conversation)), ()
        if method == "GET" and path == "/sim/conversations":
            return 200, _encode(self.conversations()), ()
        if method == "GET" and path == "/sim/stats":
            return 200, _encode(asdict(self.stats)), ()
        if method == "POST" and path == "/sim/faults":
            try:
                spec = msgspec.json.decode(body, type=FaultSpec)
            except msgspec.DecodeError as exc:
                return 400, genesys_error(400, "bad.request", str(exc)), ()
            self._faults.append(Fault(**msgspec.structs.asdict(spec)))
            return 200, _encode({"faults": len(self._faults)}), ()
        if method == "DELETE" and path == "/sim/faults":
            self.clear_faults()
            return 200, b'{"faults":0}', ()
        if method == "POST" and path == "/sim/reset":
            self.reset()
            return 200, b"{}", ()
        if method == "POST" and path == "/sim/revoke-tokens":
            revoked = len(self._tokens)
            self._tokens.clear()
            return 200, _encode({"revoked": revoked}), ()
        return 404, genesys_error(404, "not.found", f"no resource at {method} {path}"), ()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are expected
            return b"".join(chunks)
        total += size
        if total > MAX_BODY_BYTES:
            raise ValueError("chunked body too large")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _write(writer: asyncio.StreamWriter, response: _GenesysAnswer, keep_alive: bool) -> None:
    status, body, extra = response
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    if not any(name.lower() == "content-type" for name, _ in extra):  # downloads name their own
        head.append("Content-Type: application/json")
    head += [f"{name}: {value}" for name, value in extra]
    head += [f"Content-Length: {len(body)}", "Connection: keep-alive" if keep_alive else "Connection: close"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


# --- command line and subprocess ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port (printed on start)")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="accepted OAuth client (repeatable); none given: any id:secret is accepted",
    )
    parser.add_argument(
        "--integration",
        action="append",
        default=[],
        metavar="ID",
        help="known integration id (repeatable); none given: any id is accepted",
    )
    parser.add_argument("--token-lifetime", type=int, default=86_400, metavar="SECONDS")
    parser.add_argument(
        "--rate-limit", type=int, default=300, metavar="N", help="requests per window per client; 0 = off"
    )
    parser.add_argument("--rate-window", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument(
        "--fetch-media", action="store_true", help="download every attachment url and record the result"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="STATUS[:COUNT]",
        help="answer the next COUNT (default 1, -1 = always) API requests with STATUS",
    )
    parser.add_argument("--latency-ms", type=float, default=0, help="delay every API request this long")
    parser.add_argument("--max-messages", type=int, default=100_000, help="received messages kept (oldest dropped)")
    agent = parser.add_argument_group("the agent's side (POST /sim/agent/send)")
    agent.add_argument("--bridge-url", default="http://127.0.0.1:8080", metavar="URL", help="where the bridge listens")
    agent.add_argument("--webhook-path", default="/webhook/genesys/{tenantId}", metavar="PATH")
    agent.add_argument(
        "--tenant", default="", metavar="ID", help="tenant id in the webhook path (a send may name another)"
    )
    agent.add_argument(
        "--outbound-secret",
        default="",
        metavar="TOKEN",
        help="the integration's outbound signature secret token (HMAC-SHA256 key)",
    )
    agent.add_argument(
        "--signature-encoding",
        choices=["base64", "hex"],
        default="base64",
        help="X-Hub-Signature-256 digest encoding: base64 (Genesys's sample) or hex",
    )
    agent.add_argument("--answer-timeout", type=float, default=10.0, metavar="SECONDS")
    agent.add_argument("--retry-interval", type=float, default=5.0, metavar="SECONDS")
    agent.add_argument("--max-retries", type=int, default=5, help="after a timeout, 429 or 5xx")
    agent.add_argument(
        "--webhook-header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a static header on every webhook (the integration's webhookHeaders)",
    )
    from wabridge.sim.genesys_agent import add_agent_arguments

    add_agent_arguments(parser)


def sim_from_args(args: argparse.Namespace) -> GenesysSim:
    clients = {}
    for spec in args.client:
        client_id, sep, client_secret = spec.partition(":")
        if not sep or not client_id or not client_secret:
            raise SystemExit(f"wabridge sim genesys: --client must be ID:SECRET, got {spec.split(':')[0]}:…")
        clients[client_id] = client_secret
    faults = []
    for spec in args.fault:
        status, _, count = spec.partition(":")
        faults.append(Fault(status=int(status), count=int(count or 1)))
    if args.latency_ms:
        faults.append(Fault(latency_ms=args.latency_ms, count=-1))
    return GenesysSim(
        host=args.host,
        port=args.port,
        clients=clients,
        integrations=args.integration,
        token_lifetime=args.token_lifetime,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        fetch_media=args.fetch_media,
        max_messages=args.max_messages,
        faults=faults,
        bridge_url=args.bridge_url,
        webhook_path=args.webhook_path,
        tenant=args.tenant,
        outbound_secret=args.outbound_secret,
        signature_encoding=args.signature_encoding,
        answer_timeout=args.answer_timeout,
        retry_interval=args.retry_interval,
        max_retries=args.max_retries,
        webhook_headers=dict(h.partition(":")[::2] for h in args.webhook_header),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM. The first stdout line is `genesys sim listening on <url>`."""
    if getattr(args, "genesys_command", None) == "agent":
        from wabridge.sim.genesys_agent import run_agent_send

        return run_agent_send(args)
    sim = sim_from_args(args)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with sim:
            print(f"genesys sim listening on {sim.url}", flush=True)
            await stop.wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return 0


class SimProcess:
    """A simulator in its own process (so a benchmark does not share the bridge's event loop)."""

    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process, self.url = process, url

    def _get(self, path: str) -> Any:
        import httpx

        return httpx.get(self.url + path, timeout=10).json()

    def messages(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        return self._get("/sim/messages" + (f"?conversationId={conversation_id}" if conversation_id else ""))

    def conversations(self) -> dict[str, Any]:
        return self._get("/sim/conversations")

    def stats(self) -> dict[str, int]:
        return self._get("/sim/stats")

    def add_fault(self, **spec: Any) -> None:
        import httpx

        httpx.post(self.url + "/sim/faults", json=spec, timeout=10).raise_for_status()

    def agent_send(self, wait: bool = False, **spec: Any) -> dict[str, Any]:
        """`POST /sim/agent/send`: the outbound record (finished with `wait`, which can take Genesys's whole
        retry schedule)."""
        import httpx

        response = httpx.post(
            self.url + "/sim/agent/send",
            params={"wait": "true"} if wait else None,
            json=spec,
            timeout=None if wait else 10,
        )
        response.raise_for_status()
        return response.json()

    def outbound(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        return self._get("/sim/agent/outbound" + (f"?conversationId={conversation_id}" if conversation_id else ""))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


def start_genesys_sim(port: int = 0, *, host: str = "127.0.0.1", **options: Any) -> SimProcess:
    """Start `python -m wabridge.sim.genesys` and wait until it listens. Options are the GenesysSim keywords."""
    argv = [sys.executable, "-m", "wabridge.sim.genesys", "--host", host, "--port", str(port)]
    for client_id, client_secret in (options.pop("clients", None) or {}).items():
        argv += ["--client", f"{client_id}:{client_secret}"]
    for integration in options.pop("integrations", ()):
        argv += ["--integration", integration]
    if options.pop("fetch_media", False):
        argv.append("--fetch-media")
    for name, value in (options.pop("webhook_headers", None) or {}).items():
        argv += ["--webhook-header", f"{name}:{value}"]
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith("genesys sim listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"the Genesys simulator did not start (exit {process.poll()})")
    return SimProcess(process, line.rsplit(" ", 1)[1].strip())


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="wabridge sim genesys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
