"""The sending side of `wabridge sim meta`: what the bridge's outbound direction talks to (reference.md §4).
`MetaSim` mounts it; the HTTP server, the token check and the clock are MetaSim's.

  POST /[{version}/]{phone_number_id}/messages
        Bearer token (401, code 190); a configured phone number id (any, when none is configured; else 400, code 100).
        A send (text, image/video/audio/document/sticker, template, interactive, reaction, location, contacts) is
        validated and answered {messaging_product, contacts:[{input, wa_id}], messages:[{id: wamid}]}; a read mark
        or typing indicator ({status:"read", message_id, typing_indicator?}) is answered {"success":true}.
        A bad body: 400, code 100, the fault named in error_data.details.
  POST /[{version}/]{phone_number_id}/media
        multipart messaging_product=whatsapp, type (the MIME type), file → {"id"}; the size limit of the type checked.
        Ids of the types the Graph side serves are its self-describing ids, so an upload also resolves there.
  The 24-hour window: per phone number and customer, from the customer's last message (`sim meta send
        --sim-url`, `POST /sim/window`, or `customer_wrote`). A free-form send outside it is answered 200 with a
        wamid, then gets one `failed` status with 131047, as Meta does; templates are always allowed.
  Throttling: a token bucket per phone number, `rate` sends per second (80 by default, Meta's); over it 400, 130429.
        It runs on the sim's clock, so a test can hold the clock still and count exactly.
  Status webhooks: for each accepted send sent → delivered → read, `status_delay` apart, signed with the number's
        app secret and POSTed to `bridge_url`, one status per POST; a non-2xx answer is retried `status_retries` times
        with doubling backoff, then given up (Meta keeps trying for days; a test wants an end). Quirks, drawn from a
        seeded generator in the order sends arrive: `out_of_order` (two neighbours swapped), `duplicate` (one posted
        twice), `early` (the first one posted, and answered, before the send's own HTTP answer).

Control, under /sim (MetaSim routes them here):
  GET  /sim/sent                 every accepted send in order: wamid, phone_number_id, to, type, body, failure
  GET  /sim/statuses             every status POST: wamid, status, attempt, answer (HTTP status or error name), body
  GET  /sim/reads                every read mark and typing indicator in order: phone_number_id, message_id, typing
  GET  /sim/uploads              every accepted media upload: id, mime, size, sha256
  POST /sim/window               {"phone_number_id", "wa_id", "at"?: unix seconds | "ago"?: seconds}; default: now
  POST /sim/faults               {"target":"messages"|"media", "status"?, "code"?, "latency_ms"?, "count"?
                                 (-1 = until cleared), "async"?: true = accept, then a `failed` status with `code`}
  POST /sim/reset                forget sends, statuses, uploads, windows, buckets and faults
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from wabridge.engine.tasks import Tasks
from wabridge.http.client import Http1Pool, HttpError
from wabridge.sim import webhooks

WINDOW = 24 * 3600.0
MAX_SEND_BODY = 64 * 1024
MAX_UPLOAD_BODY = 100 * 1024 * 1024 + 64 * 1024  # the largest file (a document) and the multipart around it
MAX_RECORDS = 100_000
MAX_CALLBACK_DATA = 512
_VERSION = re.compile(r"^v\d+\.\d+$")
_GraphAnswer = tuple[int, str, bytes]
JSON = "application/json"

# code → (title, details), as Meta words them (error-codes reference); the title is also the message.
ERRORS: dict[int, tuple[str, str]] = {
    2: ("Service temporarily unavailable", "Temporary due to downtime or due to being overloaded."),
    4: ("Too many API calls", "The app has reached its API call rate limit."),
    100: ("Invalid parameter", "The request included one or more unsupported or misspelled parameters."),
    190: ("Invalid OAuth access token", "Invalid OAuth access token - Cannot parse access token"),
    80007: ("Rate limit issues", "The WhatsApp Business Account has reached its rate limit."),
    130429: (
        "Rate limit hit",
        "Message failed to send because there were too many messages sent from this phone "
        "number in a short period of time",
    ),
    131000: ("Something went wrong", "Message failed to send due to an unknown error."),
    131026: (
        "Message undeliverable",
        "Unable to deliver message. Reasons can include: the recipient phone number "
        "is not a WhatsApp phone number; the recipient has not accepted the new terms.",
    ),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    ),
    131048: (
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages "
        "can be sent from this phone number.",
    ),
    131050: (
        "User stopped marketing messages",
        "Unable to deliver the message. This recipient has chosen to stop "
        "receiving marketing messages on WhatsApp from your business.",
    ),
    131053: ("Media upload error", "Unable to upload the media used in the message."),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone number to the same "
        "phone number in a short period of time.",
    ),
    133016: (
        "Account register deregister rate limit exceeded",
        "Registration or Deregistration failed because there were too many attempts for this phone number.",
    ),
}

MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
FREE_FORM_TYPES = (*MEDIA_TYPES, "text", "interactive", "reaction", "location", "contacts")
_MB = 1024 * 1024
_DOCUMENT_MIMES = (
    "text/plain",
    "application/pdf",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
)
UPLOAD_LIMITS: dict[str, int] = {
    "image/jpeg": 5 * _MB,
    "image/png": 5 * _MB,
    "video/mp4": 16 * _MB,
    "video/3gpp": 16 * _MB,
    "audio/aac": 16 * _MB,
    "audio/amr": 16 * _MB,
    "audio/mpeg": 16 * _MB,
    "audio/mp4": 16 * _MB,
    "audio/ogg": 16 * _MB,
    "image/webp": 500 * 1024,  # a sticker: 100 KB static, 500 KB animated
    **dict.fromkeys(_DOCUMENT_MIMES, 100 * _MB),
}


def body_limit(what: str) -> int:
    """The largest request body a send ("messages") or an upload ("media") may have; past it, 413."""
    return MAX_UPLOAD_BODY if what == "media" else MAX_SEND_BODY


class Invalid(ValueError):
    """A body Meta would refuse with code 100; the text goes to error_data.details."""


def graph_error(
    code: int, details: str | None = None, *, title: str | None = None, type_: str = "OAuthException"
) -> bytes:
    known_title, known_details = ERRORS.get(code, ("Simulated error", "Injected by the simulator."))
    return msgspec.json.encode(
        {
            "error": {
                "message": f"(#{code}) {title or known_title}",
                "type": type_,
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details or known_details},
                "fbtrace_id": "Sim" + secrets.token_urlsafe(16),
            }
        }
    )


def wamid_for(wa_id: str) -> str:
    """A wamid shaped like Meta's: base64 of a small record naming the recipient and an 18-hex-digit message id."""
    digits = wa_id.encode()[:64]
    raw = b"\x1c\x18" + bytes([len(digits)]) + digits + b"\x15\x02\x00\x11\x18\x12"
    raw += secrets.token_hex(9).upper().encode() + b"\x00"
    return "wamid." + base64.b64encode(raw).decode()


def customer_key(to: str) -> str:
    """`+1 555-0100` and `15550100` are one customer; a BSUID stays as written."""
    digits = re.sub(r"[\s+\-()]", "", to)
    return digits if digits.isdigit() else to


# --- validation -----------------------------------------------------------------------------------------------------


def _obj(doc: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise Invalid(f"Param {where}{key} must be an object")
    return value


def _text(doc: dict[str, Any], key: str, where: str = "", *, limit: int | None = None, required: bool = True) -> None:
    value = doc.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value):
        raise Invalid(f"Param {where}{key} is required and must be a non-empty string")
    if limit is not None and len(value) > limit:
        raise Invalid(f"Param {where}{key} must be at most {limit} characters long.")


def validate_read(doc: dict[str, Any]) -> None:
    if doc.get("status") != "read":
        raise Invalid("Param status must be 'read'")
    _text(doc, "message_id")
    indicator = doc.get("typing_indicator")
    if indicator is not None and (not isinstance(indicator, dict) or indicator.get("type") != "text"):
        raise Invalid('Param typing_indicator must be {"type": "text"}')


def validate_send(doc: dict[str, Any]) -> str:
    """The message type of a send body Meta would accept; raises Invalid otherwise."""
    _text(doc, "to")
    if doc.get("recipient_type", "individual") != "individual":
        raise Invalid("Param recipient_type must be 'individual'")
    kind = doc.get("type", "text")  # Meta's default
    if kind not in (*FREE_FORM_TYPES, "template"):
        raise Invalid(f"Param type must be one of {', '.join((*FREE_FORM_TYPES, 'template'))}")
    if "context" in doc:
        _text(_obj(doc, "context"), "message_id", "context.")
    callback = doc.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback.encode()) > MAX_CALLBACK_DATA):
        raise Invalid(f"Param biz_opaque_callback_data must be a string of at most {MAX_CALLBACK_DATA} bytes")
    if kind == "contacts":  # the one payload that is a list
        cards = doc.get("contacts")
        if not isinstance(cards, list) or not cards or not all(isinstance(c, dict) and c.get("name") for c in cards):
            raise Invalid("Param contacts must be a non-empty list of contacts, each with a name")
        return kind
    payload = _obj(doc, kind)
    where = f"{kind}."
    if kind == "text":
        _text(payload, "body", where, limit=4096)
        if not isinstance(payload.get("preview_url", False), bool):
            raise Invalid("Param text.preview_url must be a boolean")
    elif kind in MEDIA_TYPES:
        _validate_media(kind, payload)
    elif kind == "template":
        _text(payload, "name", where)
        _text(_obj(payload, "language", where), "code", f"{where}language.")
        components = payload.get("components", [])
        if not isinstance(components, list):
            raise Invalid("Param template.components must be a list")
        for i, component in enumerate(components):
            if not isinstance(component, dict) or component.get("type") not in ("header", "body", "button"):
                raise Invalid(f"Param template.components[{i}].type must be header, body or button")
            if not isinstance(component.get("parameters", []), list):
                raise Invalid(f"Param template.components[{i}].parameters must be a list")
            if component["type"] == "button" and ("sub_type" not in component or "index" not in component):
                raise Invalid(f"Param template.components[{i}] (a button) needs sub_type and index")
    elif kind == "interactive":
        _validate_interactive(payload)
    elif kind == "reaction":
        _text(payload, "message_id", where)
        if not isinstance(payload.get("emoji"), str):  # "" removes the reaction
            raise Invalid("Param reaction.emoji must be a string")
    elif kind == "location":
        for key in ("latitude", "longitude"):
            if not isinstance(payload.get(key), (int, float)) or isinstance(payload.get(key), bool):
                raise Invalid(f"Param location.{key} must be a number")
    return kind


def _validate_media(kind: str, media: dict[str, Any]) -> None:
    where = f"{kind}."
    if ("id" in media) == ("link" in media):
        raise Invalid(f"Param {where}id or {where}link is required, not both")
    if "id" in media:
        _text(media, "id", where)
    else:
        _text(media, "link", where)
        if not media["link"].startswith(("https://", "http://")):
            raise Invalid(f"Param {where}link must be an http(s) URL")
    if "caption" in media:
        if kind in ("audio", "sticker"):
            raise Invalid(f"Param {where}caption is not allowed for {kind}")
        _text(media, "caption", where, limit=1024, required=False)
    if "filename" in media:
        if kind != "document":
            raise Invalid(f"Param {where}filename is only allowed for documents")
        _text(media, "filename", where, limit=240)


def _validate_interactive(payload: dict[str, Any]) -> None:
    kind = payload.get("type")
    action = _obj(payload, "action", "interactive.")
    if kind in ("button", "list"):
        _text(_obj(payload, "body", "interactive."), "text", "interactive.body.", limit=1024)
    if kind == "button":
        buttons = action.get("buttons")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            raise Invalid("Param interactive.action.buttons must hold 1 to 3 buttons")
        for i, button in enumerate(buttons):
            reply = button.get("reply") if isinstance(button, dict) else None
            if not isinstance(reply, dict):
                raise Invalid(f"Param interactive.action.buttons[{i}].reply must be an object")
            _text(reply, "id", f"interactive.action.buttons[{i}].reply.", limit=256)
            _text(reply, "title", f"interactive.action.buttons[{i}].reply.", limit=20)
    elif kind == "list":
        _text(action, "button", "interactive.action.", limit=20)
        sections = action.get("sections")
        if not isinstance(sections, list) or not sections:
            raise Invalid("Param interactive.action.sections must be a non-empty list")
        if not all(isinstance(s, dict) and isinstance(s.get("rows"), list) for s in sections):
            raise Invalid("Param interactive.action.sections[].rows must be a list")
        rows = [row for s in sections for row in s["rows"]]
        if not 1 <= len(rows) <= 10 or not all(isinstance(r, dict) and r.get("id") and r.get("title") for r in rows):
            raise Invalid("Param interactive.action.sections must hold 1 to 10 rows, each with id and title")
    elif kind not in ("cta_url", "flow", "product", "product_list", "location_request_message", "address_message"):
        raise Invalid("Param interactive.type is not a known interactive type")


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str, bytes]]:
    """name → (the part's Content-Type, its bytes). Small on purpose: form fields and one file, as Meta takes."""
    boundary = content_type.partition("boundary=")[2].split(";")[0].strip().strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise Invalid("the upload must be multipart/form-data")
    parts: dict[str, tuple[str, bytes]] = {}
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.decode("latin-1").partition(":") for line in head.strip().split(b"\r\n"))
        }
        name = re.search(r'\bname="([^"]*)"', headers.get("content-disposition", ""))
        if name:
            parts[name.group(1)] = (headers.get("content-type", ""), data.removesuffix(b"\r\n"))
    return parts


# --- state ----------------------------------------------------------------------------------------------------------


@dataclass
class Quirks:
    """How status webhooks misbehave, each a probability per accepted send, drawn from `seed`."""

    out_of_order: float = 0.0
    duplicate: float = 0.0
    early: float = 0.0
    seed: int | None = None


class FaultSpec(msgspec.Struct, forbid_unknown_fields=True):
    target: Literal["messages", "media"] = "messages"
    status: int | None = None
    code: int | None = None
    latency_ms: float = 0
    count: int = 1  # -1: until cleared
    async_: bool = msgspec.field(default=False, name="async")


@dataclass
class Sent:
    wamid: str
    phone_number_id: str
    to: str
    type: str
    body: dict[str, Any]
    at: float
    failure: int | None = None  # the code of the `failed` status it gets instead of delivery


@dataclass
class StatusPost:
    wamid: str
    status: str
    phone_number_id: str
    attempt: int
    answer: int | str  # the bridge's HTTP status, or the name of the error that stopped the POST
    at: float
    body: dict[str, Any]


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class Outbound:
    authorized: Callable[[dict[str, str]], bool]
    now: Callable[[], float]
    numbers: Mapping[str, str] = field(default_factory=dict)  # phone_number_id → its Meta app secret
    app_secret: str | None = None  # for numbers without their own (any number, when none is configured)
    bridge_url: str | None = None
    rate: float = 80.0
    quirks: Quirks = field(default_factory=Quirks)
    status_delay: float = 0.05
    status_retries: int = 3
    retry_backoff: float = 0.2
    open_windows: bool = False  # every customer counts as having just written (a demo without set-up)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.quirks.seed)
        self.sent: deque[Sent] = deque(maxlen=MAX_RECORDS)
        self.statuses: deque[StatusPost] = deque(maxlen=MAX_RECORDS)
        self.uploads: dict[str, dict[str, Any]] = {}
        self.reads: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)  # read marks and typing indicators, in order
        self.windows: dict[tuple[str, str], float] = {}
        self.faults: list[FaultSpec] = []
        self._buckets: dict[str, _Bucket] = {}
        self._tasks = Tasks("sim meta status webhooks")
        self._http: Http1Pool | None = None

    # --- control ----------------------------------------------------------------------------------------------------

    def customer_wrote(self, phone_number_id: str, wa_id: str, at: float | None = None) -> None:
        self.windows[(phone_number_id, customer_key(wa_id))] = self.now() if at is None else at

    def inject(self, **spec: Any) -> None:
        self.faults.append(msgspec.convert(spec, FaultSpec))

    def reset(self) -> None:
        self.sent.clear()
        self.statuses.clear()
        self.uploads.clear()
        self.reads.clear()
        self.windows.clear()
        self.faults.clear()
        self._buckets.clear()
        self.rng = random.Random(self.quirks.seed)

    async def wait_statuses(self) -> None:
        """Until every status webhook planned so far has been posted (or given up)."""
        await self._tasks.wait()

    async def close(self) -> None:
        await self._tasks.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
            await asyncio.sleep(
                0
            )  # the connections' close runs on the next loop turn: the bridge sees EOF before we go

    def control(self, method: str, parts: list[str], args: dict[str, Any]) -> _GraphAnswer | None:
        if method == "GET" and parts == ["sent"]:
            return 200, JSON, msgspec.json.encode(list(self.sent))
        if method == "GET" and parts == ["statuses"]:
            return 200, JSON, msgspec.json.encode(list(self.statuses))
        if method == "GET" and parts == ["reads"]:
            return 200, JSON, msgspec.json.encode(list(self.reads))
        if method == "GET" and parts == ["uploads"]:
            return 200, JSON, msgspec.json.encode([{"id": k, **v} for k, v in self.uploads.items()])
        if method == "POST" and parts == ["window"]:
            at = args.get("at")
            at = float(at) if at is not None else self.now() - float(args.get("ago", 0))
            self.customer_wrote(str(args["phone_number_id"]), str(args["wa_id"]), at)
            return 200, JSON, b'{"ok":true}'
        return None

    # --- routing ----------------------------------------------------------------------------------------------------

    @staticmethod
    def route(method: str, path: str) -> tuple[str, str] | None:
        """(phone_number_id, "messages" | "media") when the request is a send or an upload."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] and _VERSION.match(parts[0]):
            parts = parts[1:]
        if method == "POST" and len(parts) == 2 and parts[1] in ("messages", "media") and parts[0] != "sim":
            return parts[0], parts[1]
        return None

    async def handle(self, phone_number_id: str, what: str, headers: dict[str, str], body: bytes) -> _GraphAnswer:
        if not self.authorized(headers):
            return 401, JSON, graph_error(190)
        if self.numbers and phone_number_id not in self.numbers:
            return (
                400,
                JSON,
                graph_error(
                    100,
                    title=(
                        f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, "
                        "cannot be loaded due to missing permissions, or does not support this operation"
                    ),
                    type_="GraphMethodException",
                ),
            )
        fault = await self._take_fault(what)
        if fault is not None and (fault.status is not None or (fault.code is not None and not fault.async_)):
            status = fault.status or (401 if fault.code == 190 else 400)
            code = fault.code or (2 if status >= 500 else 131000)
            return status, JSON, graph_error(code)
        try:
            if what == "media":
                return self._upload(headers, body)
            return await self._message(phone_number_id, body, fault.code if fault and fault.async_ else None)
        except Invalid as exc:
            return 400, JSON, graph_error(100, str(exc))

    async def _take_fault(self, target: str) -> FaultSpec | None:
        fault = next((f for f in self.faults if f.target == target), None)
        if fault is None:
            return None
        fault.count -= 1
        if fault.count == 0:
            self.faults.remove(fault)
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        return fault

    # --- sends ------------------------------------------------------------------------------------------------------

    async def _message(self, phone_number_id: str, body: bytes, injected: int | None) -> _GraphAnswer:
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise Invalid("the body is not JSON") from None
        if not isinstance(doc, dict) or doc.get("messaging_product") != "whatsapp":
            raise Invalid("Param messaging_product is required and must be 'whatsapp'")
        if "status" in doc:  # a read mark, or a typing indicator (which also marks read)
            validate_read(doc)
            self.reads.append(
                {
                    "phone_number_id": phone_number_id,
                    "message_id": doc["message_id"],
                    "typing": "typing_indicator" in doc,
                    "at": self.now(),
                }
            )
            return 200, JSON, b'{"success":true}'
        kind = validate_send(doc)
        if not self._take_token(phone_number_id):
            return 400, JSON, graph_error(130429)
        to = doc["to"]
        sent = Sent(wamid_for(customer_key(to)), phone_number_id, to, kind, doc, self.now(), injected)
        if sent.failure is None and kind != "template" and not self._in_window(phone_number_id, to):
            sent.failure = 131047
        media = doc.get(kind, {}).get("id") if kind in MEDIA_TYPES else None
        if sent.failure is None and media is not None and not self._known_media(media):
            sent.failure = 131053
        self.sent.append(sent)
        await self._plan_statuses(sent)
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": customer_key(to)}],
            "messages": [{"id": sent.wamid}],
        }
        return 200, JSON, msgspec.json.encode(answer)

    def _take_token(self, phone_number_id: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.now()
        burst = max(self.rate, 1.0)  # a second's worth, and at least one send (a rate below 1/s still sends)
        bucket = self._buckets.setdefault(phone_number_id, _Bucket(burst, now))
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _in_window(self, phone_number_id: str, to: str) -> bool:
        last = self.windows.get((phone_number_id, customer_key(to)))
        return self.open_windows or (last is not None and self.now() - last < WINDOW)

    def _known_media(self, media_id: str) -> bool:
        if media_id in self.uploads:
            return True
        try:
            webhooks.parse_media_id(media_id)
        except webhooks.UnknownMedia:
            return False
        return True

    # --- uploads ----------------------------------------------------------------------------------------------------

    def _upload(self, headers: dict[str, str], body: bytes) -> _GraphAnswer:
        form = parse_multipart(body, headers.get("content-type", ""))
        if form.get("messaging_product", ("", b""))[1] != b"whatsapp":
            raise Invalid("Param messaging_product is required and must be 'whatsapp'")
        if "file" not in form:
            raise Invalid("Param file is required")
        mime = form["type"][1].decode("latin-1").strip() if "type" in form else form["file"][0]
        base = mime.split(";")[0].strip().lower()
        if base not in UPLOAD_LIMITS:
            raise Invalid(f"Param type must be one of the supported media types, not {mime!r}")
        data = form["file"][1]
        if not data:
            raise Invalid("Param file must not be empty")
        if len(data) > UPLOAD_LIMITS[base]:
            details = f"The file is {len(data)} bytes; {base} allows at most {UPLOAD_LIMITS[base]} bytes."
            return 400, JSON, graph_error(131053, details)
        served = "audio/ogg; codecs=opus" if base == "audio/ogg" else base
        if served in webhooks.MEDIA_MIMES.values():
            media_id = webhooks.media_id_for(served, len(data))  # the Graph side resolves it (with its own bytes)
        else:
            media_id = str(secrets.randbelow(9 * 10**15) + 10**15)  # 16 digits, like Meta's
        self.uploads[media_id] = {"mime": mime, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return 200, JSON, msgspec.json.encode({"id": media_id})

    # --- status webhooks --------------------------------------------------------------------------------------------

    async def _plan_statuses(self, sent: Sent) -> None:
        """Decide this send's statuses (and their quirks), post the early one now, and the rest in the background."""
        ts = self.now()
        callback = sent.body.get("biz_opaque_callback_data")
        category = "utility" if sent.type == "template" else "service"
        recipient = customer_key(sent.to)
        if sent.failure is not None:
            code = sent.failure
            title, details = ERRORS.get(code, ("Simulated error", "Injected by the simulator."))
            items = [
                webhooks.send_status(
                    sent.wamid,
                    "failed",
                    recipient_id=recipient,
                    ts=ts,
                    biz_opaque_callback_data=callback,
                    error=(code, title, details),
                )
            ]
        else:  # the timestamps tell the true order, whatever order the posts arrive in
            items = [
                webhooks.send_status(
                    sent.wamid,
                    status,
                    recipient_id=recipient,
                    ts=ts + i,
                    biz_opaque_callback_data=callback,
                    category=category,
                )
                for i, status in enumerate(("sent", "delivered", "read"))
            ]
        quirks, rng = self.quirks, self.rng
        if len(items) > 1 and rng.random() < quirks.out_of_order:
            i = rng.randrange(len(items) - 1)
            items[i], items[i + 1] = items[i + 1], items[i]
        if rng.random() < quirks.duplicate:
            i = rng.randrange(len(items))
            items.insert(rng.randint(i + 1, len(items)), items[i])
        early = rng.random() < quirks.early
        if self.bridge_url is None:
            return
        if early:
            await self._post(sent.phone_number_id, items.pop(0))
        self._tasks.start(self._post_all(sent.phone_number_id, items))

    async def _post_all(self, phone_number_id: str, items: list[dict[str, Any]]) -> None:
        for item in items:
            await asyncio.sleep(self.status_delay)
            await self._post(phone_number_id, item)

    async def _post(self, phone_number_id: str, item: dict[str, Any]) -> None:
        """One status webhook, retried on anything but a 2xx, `status_retries` times with doubling backoff."""
        assert self.bridge_url is not None
        if self._http is None:
            # The bridge's own lean client, not httpx: ~0.1 against ~1.5 ms of the simulator's CPU per status
            # webhook (three per send), which made this simulator the bench's ceiling at ~200 sends/s.
            self._http = Http1Pool(self.bridge_url, limit=64, timeout=10.0)
        body = webhooks.webhook(phone_number_id, statuses=[item])
        headers = {"Content-Type": "application/json"}
        secret = self.numbers.get(phone_number_id) or self.app_secret
        if secret:  # unsigned when no secret is known: the bridge must refuse it (401), which the record shows
            headers["X-Hub-Signature-256"] = webhooks.sign(body, secret)
        for attempt in range(1, self.status_retries + 2):
            try:
                answer: int | str = (await self._http.request("POST", _target(self.bridge_url), headers, body)).status
            except (HttpError, TimeoutError, OSError) as exc:
                answer = type(exc).__name__
            self.statuses.append(
                StatusPost(item["id"], item["status"], phone_number_id, attempt, answer, time.time(), item)
            )
            if isinstance(answer, int) and 200 <= answer < 300:
                return
            if attempt <= self.status_retries:
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))


def _target(url: str) -> str:
    """The request target (path and query) of the bridge's webhook URL."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
