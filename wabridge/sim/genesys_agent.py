"""The agent's side of `wabridge sim genesys` (reference.md §3): what Genesys sends the bridge, and what it takes back.

Genesys → bridge (the agent):
  POST /sim/agent/send[?wait=true]   {conversationId | to{id[,idType]}, type: text|attachment|template|typing, text,
                                     url, mediaType, mime, filename, data (base64), template{id "namespace@name",
                                     language, parameters{name: text}, text, header{type, text|url+mime}, footer}, …}
                                     → an OpenOutboundNormalizedMessage (fresh id, to = the customer the bridge sent
                                     inbound for that conversation), signed `X-Hub-Signature-256: sha256=<digest>`
                                     (HMAC-SHA256 with the outbound secret, base64 like Genesys's sample, or hex) and
                                     POSTed to the bridge's webhook: 10 s to answer; a timeout, a refused connection,
                                     429 or 5xx is tried again up to 5 times, 5 s apart; any other answer is final.
                                     202 with the record at once, or the finished record with ?wait=true.
  GET  /sim/downloads/{id}           an attachment's bytes, for a valid bearer token only (like a Genesys download)
  GET  /sim/agent/outbound[?conversationId=…]   every outbound message: body, attempts and answers, receipts in order,
                                     and who fetched its attachment
  GET  /sim/agent/events             the typing events the bridge sent; /sim/agent/unmatched-receipts: receipts that
                                     name no message this sim sent (or name it under another integration)
Bridge → Genesys:
  POST /api/v2/conversations/messages/{integrationId}/inbound/open/receipt   a receipt for an outbound message
  POST /api/v2/conversations/messages/{integrationId}/inbound/open/event     a typing event from the customer
                                     both checked like the message endpoint (token, rate limit, integration), the
                                     body validated strictly, then 202 with the normalized body echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import random
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from wabridge.engine.tasks import Tasks
from wabridge.sim.genesys import FromParty, NonEmpty, SchemaError, conversation_id_for, genesys_error, new_id

DEFAULT_WEBHOOK_PATH = "/webhook/genesys/{tenantId}"
RETRYABLE = frozenset({429}) | frozenset(range(500, 600))
IdType = Literal["Phone", "Email", "Opaque"]
_encode = msgspec.json.Encoder().encode
_GenesysAnswer = tuple[int, bytes, tuple[tuple[str, str], ...]]


# --- what the bridge sends back: receipts and typing events -----------------------------------------------------
# Unknown fields are ignored (as Genesys does; the captured receipts carry channel.platform, from, metadata, …), but
# every documented field is typed and an explicit null is refused, like the message endpoint.

ReasonCode = Literal[
    "MessageExpired",
    "RateLimited",
    "MessageNotAllowed",
    "GeneralError",
    "UnsupportedMessage",
    "UnknownMessage",
    "InvalidMessageStructure",
    "InvalidDestination",
    "ServerError",
    "MediaTypeNotAllowed",
    "InvalidMediaContentLength",
    "RecipientOptedOut",
    "DataFiltered",
]


class Reason(msgspec.Struct):
    code: ReasonCode
    message: str  # required by the schema, even if empty


class ReceiptTo(msgspec.Struct):
    id: NonEmpty
    idType: IdType


class ReceiptChannel(msgspec.Struct):
    to: ReceiptTo
    time: datetime


class Receipt(msgspec.Struct, omit_defaults=True):
    id: NonEmpty  # the Genesys id of the outbound message
    channel: ReceiptChannel
    status: Literal["Delivered", "Failed", "Sent", "Published", "Removed"]
    direction: Literal["Outbound"]
    isFinalReceipt: bool
    reasons: list[Reason] = []


class Typing(msgspec.Struct, omit_defaults=True):
    type: Literal["On"]
    duration: Annotated[int, msgspec.Meta(ge=0)] = 0


class Event(msgspec.Struct):
    eventType: Literal["Typing"]
    typing: Typing


class EventChannel(msgspec.Struct, omit_defaults=True):
    from_: FromParty = msgspec.field(name="from")
    time: datetime
    messageId: str = ""


class InboundEvent(msgspec.Struct):
    channel: EventChannel
    events: Annotated[list[Event], msgspec.Meta(min_length=1)]


def _decode(body: bytes, kind: type) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise SchemaError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"malformed JSON: {exc}") from None


def _utc(moment: datetime, where: str) -> None:
    if moment.utcoffset() != timedelta(0):
        raise SchemaError(f"{where} must be an ISO-8601 UTC timestamp - at `$.{where}`")


def validate_receipt(body: bytes) -> Receipt:
    receipt = _decode(body, Receipt)
    _utc(receipt.channel.time, "channel.time")
    if receipt.reasons and receipt.status != "Failed":
        raise SchemaError("reasons are only allowed with status Failed - at `$.reasons`")
    return receipt


def validate_event(body: bytes) -> InboundEvent:
    event = _decode(body, InboundEvent)
    _utc(event.channel.time, "channel.time")
    return event


# --- what the agent sends: the send request, and the outbound record --------------------------------------------


class Party(msgspec.Struct, forbid_unknown_fields=True):
    id: NonEmpty
    idType: IdType | None = None


class TemplateHeader(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["Text", "Media"] = "Text"
    text: str = ""
    url: str = ""
    mime: str = ""
    mediaType: Literal["Image", "Video", "Audio", "File"] | None = None
    parameters: dict[str, str] = {}


class TemplateSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^[^@]+@[^@]+$")]  # WhatsApp: namespace@name
    language: str = "en_US"
    parameters: dict[str, str] = {}  # body placeholders, name → text, in order
    text: str = ""  # the rendered body, as the agent saw it
    header: TemplateHeader | None = None
    footer: str = ""


class SendSpec(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["text", "attachment", "template", "typing"] = "text"
    conversationId: str = ""
    to: Party | None = None
    integrationId: str = ""
    tenantId: str = ""  # the webhook path's tenant; default: the sim's --tenant
    secret: str = ""  # default: the sim's --outbound-secret
    webhookUrl: str = ""  # default: --bridge-url + --webhook-path
    originatingEntity: Literal["Human", "Bot"] = "Human"
    text: str = ""
    url: str = ""  # an attachment somewhere else; empty: the sim serves `data` at /sim/downloads/{id}
    mediaType: Literal["Image", "Video", "Audio", "File", "Link"] | None = None
    mime: str = ""
    filename: str = ""
    data: str = ""  # base64 of the attachment's bytes; empty: a small generated file of `mime`
    template: TemplateSpec | None = None
    duration: Annotated[int, msgspec.Meta(ge=0)] = 5000  # typing


@dataclass
class Download:
    data: bytes
    mime: str
    filename: str
    fetches: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outbound:
    id: str
    integration_id: str
    conversation_id: str
    to_id: str
    url: str
    body: bytes
    created_at: float
    state: str = "sending"  # → delivered (2xx) | rejected (another final answer) | gave-up (retries spent)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "integrationId": self.integration_id,
            "conversationId": self.conversation_id,
            "toId": self.to_id,
            "webhookUrl": self.url,
            "createdAt": self.created_at,
            "state": self.state,
            "body": msgspec.json.decode(self.body),
            "attempts": self.attempts,
            "receipts": self.receipts,
        }

    def latest_receipt(self) -> dict[str, Any] | None:
        return self.receipts[-1] if self.receipts else None


@dataclass
class AgentConfig:
    bridge_url: str = "http://127.0.0.1:8080"
    webhook_path: str = DEFAULT_WEBHOOK_PATH
    tenant: str = ""
    outbound_secret: str = ""
    signature_encoding: Literal["base64", "hex"] = "base64"
    answer_timeout: float = 10.0
    retry_interval: float = 5.0
    max_retries: int = 5
    webhook_headers: dict[str, str] = field(default_factory=dict)  # Genesys's static `webhookHeaders`
    nickname: str = "Open Messaging Integration"


def sign(body: bytes, secret: str, encoding: str = "base64") -> str:
    """The `X-Hub-Signature-256` value Genesys sends: HMAC-SHA256 of the raw body, base64 (its sample) or hex."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return "sha256=" + (digest.hex() if encoding == "hex" else base64.b64encode(digest).decode())


def _png() -> bytes:
    """A valid 1×1 PNG: a bridge that checks what it uploads to Meta gets a real image by default."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def _media_type(mime: str) -> str:
    kind = mime.split("/", 1)[0]
    return {"image": "Image", "video": "Video", "audio": "Audio"}.get(kind, "File")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Agent:
    """The outbound half of one GenesysSim: builds, signs and delivers agent messages, keeps receipts and events."""

    def __init__(self, sim: Any, config: AgentConfig, max_messages: int = 100_000) -> None:
        self.sim, self.config, self.max_messages = sim, config, max_messages
        self.outbound: OrderedDict[str, Outbound] = OrderedDict()
        self.downloads: dict[str, Download] = {}
        self.events: list[dict[str, Any]] = []  # typing events the bridge sent, oldest first
        self.unmatched_receipts: list[dict[str, Any]] = []  # receipts naming no message the sim sent
        self._tasks = Tasks("sim genesys agent webhooks")
        self._http: Any = None

    async def aclose(self) -> None:
        await self._tasks.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def reset(self) -> None:
        self.outbound.clear()
        self.downloads.clear()
        self.events.clear()
        self.unmatched_receipts.clear()

    # --- sending ----------------------------------------------------------------------------------------------------

    def _customer(self, spec: SendSpec) -> tuple[str, str, str, str]:
        """(integration id, conversation id, to.id, to.idType): the customer as the bridge presented them inbound."""
        for r in reversed(self.sim.received):
            if spec.conversationId and r.conversation_id != spec.conversationId:
                continue
            if spec.to is not None and r.from_id != spec.to.id:
                continue
            if spec.integrationId and r.integration_id != spec.integrationId:
                continue
            id_type = msgspec.json.decode(r.body)["channel"]["from"]["idType"]
            return r.integration_id, r.conversation_id, r.from_id, id_type
        for o in reversed(self.outbound.values()):  # a conversation the agent started (proactive)
            if spec.to is None and o.conversation_id == spec.conversationId:
                to = msgspec.json.decode(o.body)["channel"]["to"]
                return o.integration_id, o.conversation_id, to["id"], to["idType"]
        if spec.to is None:
            raise SchemaError(f"no conversation {spec.conversationId or '(none given)'}: give to.id and integrationId")
        # With one configured integration a proactive message needs no integrationId.
        integration = spec.integrationId or (
            next(iter(self.sim.integrations)) if len(self.sim.integrations) == 1 else ""
        )
        if not integration:
            raise SchemaError(f"{spec.to.id} never wrote in: give integrationId")
        id_type = spec.to.idType or ("Phone" if spec.to.id.isdigit() else "Opaque")
        return integration, conversation_id_for(integration, spec.to.id), spec.to.id, id_type

    def build(self, spec: SendSpec) -> tuple[str, str, str, bytes]:
        """(message id, integration id, conversation id, body) for a send request; raises SchemaError."""
        integration, conversation, to_id, id_type = self._customer(spec)
        message_id = new_id()
        body: dict[str, Any] = {
            "id": message_id,
            "channel": {
                "id": integration,
                "platform": "Open",
                "type": "Private",
                "messageId": message_id,
                "to": {"id": to_id, "idType": id_type},
                "from": {"nickname": self.config.nickname, "id": integration, "idType": "Opaque"},
                "time": _now(),
            },
            "conversationId": conversation,
            "direction": "Outbound",
        }
        if spec.type == "typing":
            body |= {
                "type": "Event",
                "events": [{"eventType": "Typing", "typing": {"type": "On", "duration": spec.duration}}],
            }
        elif spec.type == "text":
            if not spec.text:
                raise SchemaError("a text message needs text")
            body |= {"originatingEntity": spec.originatingEntity, "type": "Text", "text": spec.text}
        elif spec.type == "attachment":
            body |= {"originatingEntity": spec.originatingEntity, "type": "Text"}
            if spec.text:
                body["text"] = spec.text
            body["content"] = [{"contentType": "Attachment", "attachment": self._attachment(spec)}]
        else:
            if spec.template is None:
                raise SchemaError("a template message needs template{id, language, …}")
            body |= {"originatingEntity": spec.originatingEntity, "type": "Structured"}
            if spec.template.text:
                body["text"] = spec.template.text
            body["content"] = [{"contentType": "Notification", "template": self._template(spec.template)}]
        return message_id, integration, conversation, _encode(body)

    def _attachment(self, spec: SendSpec) -> dict[str, Any]:
        attachment_id = new_id()
        mime = spec.mime or "image/png"
        if spec.url:
            url, size = spec.url, None
        else:
            try:
                data = base64.b64decode(spec.data, validate=True) if spec.data else b""
            except binascii.Error:
                raise SchemaError("data must be base64") from None
            if not data:
                data = _png() if mime == "image/png" else random.Random(attachment_id).randbytes(1024)
            filename = spec.filename or f"attachment-{attachment_id[:8]}"
            self.downloads[attachment_id] = Download(data, mime, filename)
            url, size = f"{self.sim.url}/sim/downloads/{attachment_id}", len(data)
        attachment: dict[str, Any] = {
            "id": attachment_id,
            "mediaType": spec.mediaType or _media_type(mime),
            "url": url,
            "mime": mime,
        }
        if spec.filename or not spec.url:
            attachment["filename"] = spec.filename or f"attachment-{attachment_id[:8]}"
        if size is not None:
            attachment["contentSizeBytes"] = size
        return attachment

    @staticmethod
    def _template(spec: TemplateSpec) -> dict[str, Any]:
        template: dict[str, Any] = {"id": spec.id, "language": spec.language}
        if spec.header is not None:
            header: dict[str, Any] = {"type": spec.header.type}
            if spec.header.type == "Media":
                mime = spec.header.mime or "image/jpeg"
                header["media"] = {
                    "mediaType": spec.header.mediaType or _media_type(mime),
                    "url": spec.header.url,
                    "mime": mime,
                }
            elif spec.header.text:
                header["text"] = spec.header.text
            if spec.header.parameters:
                header["parameters"] = [{"name": k, "text": v} for k, v in spec.header.parameters.items()]
            template["header"] = header
        template["body"] = {"parameters": [{"name": k, "text": v} for k, v in spec.parameters.items()]}
        if spec.text:
            template["body"]["text"] = spec.text
        if spec.footer:
            template["footer"] = {"text": spec.footer}
        return template

    def webhook_url(self, spec: SendSpec) -> str:
        if spec.webhookUrl:
            return spec.webhookUrl
        tenant = spec.tenantId or self.config.tenant
        return self.config.bridge_url.rstrip("/") + self.config.webhook_path.format(tenantId=tenant)

    async def send(self, spec: SendSpec, *, wait: bool = False) -> Outbound:
        """Build the message, record it, and deliver it in the background (or until done with `wait`)."""
        message_id, integration, conversation, body = self.build(spec)
        record = Outbound(
            message_id,
            integration,
            conversation,
            msgspec.json.decode(body)["channel"]["to"]["id"],
            self.webhook_url(spec),
            body,
            time.time(),
        )
        record.downloads = [d for d in _download_ids(body) if d in self.downloads]
        self.outbound[message_id] = record
        while len(self.outbound) > self.max_messages:  # oldest dropped past the bound, with its files
            _, dropped = self.outbound.popitem(last=False)
            for download_id in dropped.downloads:
                self.downloads.pop(download_id, None)
        self._tasks.start(self._deliver(record, spec.secret or self.config.outbound_secret))
        if wait:
            await record.done.wait()
        return record

    async def _deliver(self, record: Outbound, secret: str) -> None:
        """Genesys's rule: 10 s to answer; a timeout, 429 or 5xx is tried again, up to 5 times, 5 s apart. A
        refused connection is treated like a timeout (Genesys cannot tell the two apart from the bridge's side)."""
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient()
        headers = {
            **self.config.webhook_headers,
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(record.body, secret, self.config.signature_encoding),
        }
        try:
            for attempt in range(1, self.config.max_retries + 2):
                if attempt > 1:
                    await asyncio.sleep(self.config.retry_interval)
                started = time.monotonic()
                note: dict[str, Any] = {"attempt": attempt, "at": time.time()}
                try:
                    answer = await self._http.post(
                        record.url, content=record.body, headers=headers, timeout=self.config.answer_timeout
                    )
                    note |= {"status": answer.status_code, "answer": answer.text[:2000]}
                except httpx.TimeoutException:
                    note |= {"status": None, "error": "timeout"}
                except httpx.TransportError as exc:
                    note |= {"status": None, "error": f"{type(exc).__name__}: {exc}"}
                note["elapsedMs"] = round((time.monotonic() - started) * 1000, 1)
                record.attempts.append(note)
                self.sim.stats.outbound_attempts += 1
                status = note["status"]
                if status is not None and status not in RETRYABLE:
                    record.state = "delivered" if 200 <= status < 300 else "rejected"
                    return
            record.state = "gave-up"
        finally:
            if record.state == "sending":
                record.state = "stopped"  # the sim stopped mid-delivery
            record.done.set()

    # --- receipts and events from the bridge ------------------------------------------------------------------------

    def receipt(self, integration_id: str, body: bytes) -> _GenesysAnswer:
        try:
            receipt = validate_receipt(body)
        except SchemaError as exc:
            self.sim.stats.rejected += 1
            return 400, genesys_error(400, "bad.request", f"The request could not be understood: {exc}"), ()
        self.sim.stats.receipts += 1
        entry = {
            "at": time.time(),
            "integrationId": integration_id,
            "status": receipt.status,
            "isFinalReceipt": receipt.isFinalReceipt,
            "reasons": [msgspec.structs.asdict(r) for r in receipt.reasons],
            "body": msgspec.json.decode(body),
        }
        record = self.outbound.get(receipt.id)
        if record is None or record.integration_id != integration_id:
            self.unmatched_receipts.append(entry)
            del self.unmatched_receipts[: -self.max_messages]
        else:
            record.receipts.append(entry)
        return 202, _encode(receipt), ()

    def event(self, integration_id: str, body: bytes) -> _GenesysAnswer:
        try:
            event = validate_event(body)
        except SchemaError as exc:
            self.sim.stats.rejected += 1
            return 400, genesys_error(400, "bad.request", f"The request could not be understood: {exc}"), ()
        self.sim.stats.events += 1
        from_id = event.channel.from_.id
        self.events.append(
            {
                "at": time.time(),
                "integrationId": integration_id,
                "fromId": from_id,
                "conversationId": conversation_id_for(integration_id, from_id),
                "body": msgspec.json.decode(body),
            }
        )
        del self.events[: -self.max_messages]
        return 202, _encode(event), ()

    # --- views and control --------------------------------------------------------------------------------------------

    def records(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        out = []
        for r in self.outbound.values():
            if conversation_id in (None, r.conversation_id):
                fetches = {d: self.downloads[d].fetches for d in r.downloads if d in self.downloads}
                out.append(r.as_json() | {"downloads": fetches})
        return out

    def add_to_conversations(self, out: dict[str, dict[str, Any]]) -> None:
        """Both directions per conversation, in time order: `timeline` beside the inbound-only `messages`."""

        def conversation(cid: str, integration: str, from_id: str) -> dict[str, Any]:
            return out.setdefault(cid, {"integrationId": integration, "fromId": from_id, "messages": []})

        for r in self.sim.received:
            message = msgspec.json.decode(r.body)
            conversation(r.conversation_id, r.integration_id, r.from_id).setdefault("timeline", []).append(
                {
                    "at": r.received_at,
                    "direction": "Inbound",
                    "kind": "message",
                    "id": r.id,
                    "messageId": r.message_id,
                    "text": message.get("text", ""),
                    "content": len(message.get("content", [])),
                }
            )
        for e in self.events:
            conversation(e["conversationId"], e["integrationId"], e["fromId"]).setdefault("timeline", []).append(
                {"at": e["at"], "direction": "Inbound", "kind": "typing"}
            )
        for o in self.outbound.values():
            message = msgspec.json.decode(o.body)
            latest = o.latest_receipt()
            conversation(o.conversation_id, o.integration_id, o.to_id).setdefault("timeline", []).append(
                {
                    "at": o.created_at,
                    "direction": "Outbound",
                    "kind": "typing" if message["type"] == "Event" else "message",
                    "id": o.id,
                    "type": message["type"],
                    "text": message.get("text", ""),
                    "content": len(message.get("content", [])),
                    "delivery": o.state,
                    "attempts": len(o.attempts),
                    "receipt": latest and latest["status"],
                    "reason": latest["reasons"][0] if latest and latest["reasons"] else None,
                }
            )
        for conv in out.values():
            conv.setdefault("timeline", []).sort(key=lambda entry: entry["at"])

    def download(self, download_id: str, token_ok: bool) -> _GenesysAnswer:
        found = self.downloads.get(download_id)
        if found is not None:
            found.fetches.append({"at": time.time(), "authorized": token_ok})
        if not token_ok:
            return 401, genesys_error(401, "bad.credentials", "Invalid login credentials."), ()
        if found is None:
            return 404, genesys_error(404, "not.found", f"no download {download_id}"), ()
        disposition = f'attachment; filename="{found.filename}"'
        return 200, found.data, (("Content-Type", found.mime), ("Content-Disposition", disposition))

    async def control(self, method: str, path: str, query: dict, body: bytes) -> _GenesysAnswer:
        if method == "GET" and path == "/sim/agent/outbound":
            return 200, _encode(self.records(query.get("conversationId", [None])[0])), ()
        if method == "GET" and path == "/sim/agent/events":
            return 200, _encode(self.events), ()
        if method == "GET" and path == "/sim/agent/unmatched-receipts":
            return 200, _encode(self.unmatched_receipts), ()
        if method == "POST" and path == "/sim/agent/send":
            try:
                spec = msgspec.json.decode(body, type=SendSpec)
                record = await self.send(spec, wait=query.get("wait") == ["true"])
            except (msgspec.DecodeError, SchemaError) as exc:
                return 400, genesys_error(400, "bad.request", str(exc)), ()
            return (200 if record.done.is_set() else 202), _encode(record.as_json()), ()
        return 404, genesys_error(404, "not.found", f"no resource at {method} {path}"), ()


def _download_ids(body: bytes) -> list[str]:
    message = msgspec.json.decode(body)
    return [item["attachment"]["id"] for item in message.get("content", []) if "attachment" in item]


# --- command line: `wabridge sim genesys agent send` ------------------------------------------------------------


def add_agent_arguments(parser: Any) -> None:
    agent = parser.add_subparsers(dest="genesys_command", metavar="agent", parser_class=type(parser))
    a = agent.add_parser("agent", help="act as the agent: send the bridge an outbound webhook")
    what = a.add_subparsers(dest="agent_command", metavar="send", parser_class=type(parser))
    what.required = True
    s = what.add_parser(
        "send",
        help="send one text, attachment, template or typing event",
        description="Through a running simulator (--sim: it records the attempts and the receipts), "
        "or straight to the bridge (--url, --secret, --tenant, --to, --integration).",
    )
    s.add_argument("kind", choices=["text", "attachment", "template", "typing"])
    s.add_argument(
        "value",
        nargs="?",
        default="",
        help="text: the text; attachment: an http(s) url, or a local file with --sim; template: namespace@name",
    )
    s.add_argument("--sim", metavar="URL", help="a running `wabridge sim genesys` to send through")
    s.add_argument("--url", metavar="URL", help="the bridge's base URL (default: the simulator's --bridge-url)")
    s.add_argument("--webhook-path", default=DEFAULT_WEBHOOK_PATH)
    s.add_argument("--secret", help="the integration's outbound secret token (default: the simulator's)")
    s.add_argument("--tenant", help="the tenant id in the webhook path (default: the simulator's)")
    s.add_argument("--conversation", default="", metavar="ID", help="a conversation the simulator knows")
    s.add_argument("--to", default="", metavar="CUSTOMER_ID", help="the customer id the bridge sent inbound")
    s.add_argument("--id-type", choices=["Phone", "Email", "Opaque"])
    s.add_argument("--integration", default="", metavar="ID")
    s.add_argument("--mime", default="")
    s.add_argument("--filename", default="")
    s.add_argument("--caption", default="", help="attachment: text sent with it")
    s.add_argument("--language", default="en_US", help="template language")
    s.add_argument("--param", action="append", default=[], metavar="NAME=TEXT", help="template body parameter")
    s.add_argument("--bot", action="store_true", help="originatingEntity Bot instead of Human")
    s.add_argument("--signature-encoding", choices=["base64", "hex"], default="base64")
    s.add_argument("--retry-interval", type=float, default=5.0, metavar="SECONDS")
    s.add_argument("--answer-timeout", type=float, default=10.0, metavar="SECONDS")
    s.add_argument("--max-retries", type=int, default=5)
    s.set_defaults(func=run_agent_send)


def _spec_from_args(args: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": args.kind, "originatingEntity": "Bot" if args.bot else "Human"}
    if args.conversation:
        spec["conversationId"] = args.conversation
    if args.to:
        spec["to"] = {"id": args.to} | ({"idType": args.id_type} if args.id_type else {})
    for key, value in (
        ("integrationId", args.integration),
        ("secret", args.secret),
        ("tenantId", args.tenant),
        ("mime", args.mime),
        ("filename", args.filename),
    ):
        if value:
            spec[key] = value
    if args.url:
        spec["webhookUrl"] = args.url.rstrip("/") + args.webhook_path.format(tenantId=args.tenant or "")
    if args.kind == "text":
        spec["text"] = args.value
    elif args.kind == "attachment":
        spec["text"] = args.caption
        if args.value.startswith(("http://", "https://")):
            spec["url"] = args.value
        elif args.value:
            with open(args.value, "rb") as fh:
                spec["data"] = base64.b64encode(fh.read()).decode()
            spec.setdefault("filename", args.value.rsplit("/", 1)[-1])
    elif args.kind == "template":
        params = dict(p.partition("=")[::2] for p in args.param)
        spec["template"] = {"id": args.value, "language": args.language, "parameters": params}
    return spec


def run_agent_send(args: Any) -> int:
    """Print the outbound record (body, attempts, answers) as JSON; exit 0 once the bridge took it (2xx)."""
    import httpx

    spec = _spec_from_args(args)
    if args.sim:
        answer = httpx.post(
            args.sim.rstrip("/") + "/sim/agent/send",
            params={"wait": "true"},
            json=spec,
            timeout=(args.answer_timeout + args.retry_interval) * (args.max_retries + 1) + 30,
        )
        print(answer.text)
        return 0 if answer.status_code == 200 and answer.json().get("state") == "delivered" else 1
    if not (args.url and args.secret and args.to):
        raise SystemExit("wabridge sim genesys agent send: without --sim, give --url, --secret, --tenant and --to")
    if "data" in spec:
        raise SystemExit("wabridge sim genesys agent send: a local file needs --sim (it serves the bytes)")
    from wabridge.sim.genesys import GenesysSim

    async def main() -> Outbound:
        sim = GenesysSim(
            integrations=[args.integration] if args.integration else [],
            tenant=args.tenant,
            signature_encoding=args.signature_encoding,
            retry_interval=args.retry_interval,
            answer_timeout=args.answer_timeout,
            max_retries=args.max_retries,
        )
        try:
            return await sim.agent.send(msgspec.convert(spec, SendSpec), wait=True)
        finally:
            await sim.agent.aclose()

    try:
        record = asyncio.run(main())
    except (SchemaError, msgspec.ValidationError) as exc:
        raise SystemExit(f"wabridge sim genesys agent send: {exc}") from None
    print(_encode(record.as_json()).decode())
    return 0 if record.state == "delivered" else 1
