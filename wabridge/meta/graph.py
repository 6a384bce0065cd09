"""The Meta Graph port for the outbound direction: send a message, upload a media file, mark a message read.

    wamid = await graph.send(tenant, phone_number_id, body)                  # POST {base}/{number}/messages
    media_id = await graph.upload(tenant, phone_number_id, data, mime, filename)   # POST {base}/{number}/media
    ok = await graph.mark_read(tenant, phone_number_id, wamid, typing=False)  # best effort, never a refusal

Every call carries `Bearer tenant.whatsapp_token` to `base_url` (settings.graph_api_url, so a simulator can stand in).
Bodies are passed as given and never logged: they hold customer text. What each failed answer does is
`receipts.disposition(status, Meta's error code)`, not a chain of ifs here:
  throttled   HTTP 429, or 130429 / 131056 / 4 / 80007 / 133016: wait Retry-After when given, else 1 s doubling to
              60 s, and try again: the caller waits, so the customer's order holds. Past `throttle_max_wait` (15 min)
              in all → SendRefused(RateLimited). A read mark does not wait (it is not worth stalling a lane for).
  transient   5xx, Meta's "try again" codes, timeouts, refused or broken connections: a few quick tries with
              backoff, then an outage of the tenant's Meta (far_end.py, FarEnd("meta")): held in place, one probe at
              a time, all resume when it answers; past the hold → SendRefused(ServerError, "... down for N s").
  final       any other answer (a 4xx): SendRefused(reason_for(code, Meta's message, its details)) at once.
Meta's error body ({"error": {"message", "type", "code", "error_data": {"details"}, "error_subcode"}}) is read
totally: any body, or none, gives a code (or None) and words (or None), never an exception.

No idempotency key exists at Meta: a send retried after a lost answer (a timeout, a connection cut after the request
went out) may reach the customer twice. Only those retries carry the risk; a refusal or a throttle answer is a
request Meta did not take.

Send budget: `tenant.send_rate_per_second` sends per phone number per 1-second window (Meta's 80/s by default), counted
in the Cache port at `sendrate:{phone_number_id}:{second}` so every bridge process shares one count, reserved in
blocks as ratelimit.py does (a twentieth of the budget, at most 16 a round trip, never more than the budget in all);
spent → wait for the next window. 0 = no budget. Cache down: counted in process (N processes may then send N× the
budget; Meta's 130429 and the throttle path catch the overshoot). Read marks and uploads are not budgeted: Meta counts
messages.

HTTP client: http/client.py, as open_messaging.py and media.py use: a send is one per agent message, the same hot path
as the Genesys POST (docs/decisions.md). One keep-alive pool per tenant (open_messaging.py's choice), so one tenant's
burst never takes every connection to Meta; uploads have their own pools with a longer timeout (up to 100 MB go up in
one request).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

import anyio
import msgspec

from wabridge.codecs import receipts
from wabridge.codecs.object_keys import extension_for
from wabridge.codecs.receipts import Reason
from wabridge.engine import history
from wabridge.engine.backoff import Backoff
from wabridge.engine.budget import Reservations
from wabridge.engine.far_end import FarEnd, FarEndDown
from wabridge.http.client import Http1Pools, HttpError
from wabridge.ports import Cache, SendRefused, TenantConfig

log = logging.getLogger(__name__)

SEND_WINDOW = 1.0  # seconds: Meta's throughput limit is per second
THROTTLE = Backoff(1.0, 60.0, jitter=None)  # the pauses while throttled without a Retry-After
_MESSAGE_CODE = re.compile(r"^\(#\d+\)\s*")  # Meta prefixes its message with the code, reason_for adds it again


class GraphStatistics(msgspec.Struct, frozen=True):
    sent: int  # sends Meta accepted
    refused: int  # sends and uploads that ended in SendRefused
    throttled: int  # throttle answers waited out
    retries: int  # quick retries after 5xx / timeouts / connection errors
    uploads: int  # media uploads Meta accepted
    read_marks: int  # read marks (and typing indicators) Meta accepted
    read_marks_failed: int  # read marks given up (refused, throttled, Meta down past the hold)
    budget_waits: int  # times a send found its number's budget spent and waited for the next window
    open_pools: int


# --- Meta's error body ---------------------------------------------------------------------------------------------


def meta_error(content: bytes) -> tuple[object, str | None, str | None]:
    """(code, words, details) of a Graph error body; (None, None, None) for anything that is not one. The code is as
    Meta wrote it (receipts.disposition / reason_for read any value)."""
    try:
        doc = msgspec.json.decode(content)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None, None, None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None, None, None
    message = error.get("message")
    title = _MESSAGE_CODE.sub("", message).strip() if isinstance(message, str) else None
    if not title and isinstance(error.get("error_user_title"), str):
        title = error["error_user_title"]
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    if not isinstance(details, str):
        details = error.get("error_user_msg") if isinstance(error.get("error_user_msg"), str) else None
    return error.get("code"), title or None, details


def _int_code(code: object) -> int | None:
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 12:
        return int(code)
    return None


class _Id(msgspec.Struct):
    id: str = ""


class _SendAnswer(msgspec.Struct):
    messages: list[_Id] = []


_decode_send = msgspec.json.Decoder(_SendAnswer).decode
_decode_upload = msgspec.json.Decoder(_Id).decode


# --- the per-number send budget -------------------------------------------------------------------------------------


def budget_key(phone_number_id: str, window: int) -> str:
    """The Cache adapter adds the deployment's key prefix."""
    return f"sendrate:{phone_number_id}:{window}"


class SendBudget:
    """`await budget.acquire(phone_number_id, rate)` before each send: at most `rate` per window across processes."""

    def __init__(
        self,
        cache: Cache | None,
        *,
        window_s: float = SEND_WINDOW,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.window_s, self._clock, self._sleep = window_s, clock, sleep
        # The key names its window, so the TTL only bounds memory: a second more than the window keeps a count alive
        # for a process whose clock runs a little behind.
        self._reservations = Reservations(cache, ttl=window_s + 1.0)
        self.waits = 0

    @property
    def local_counts(self) -> int:
        return self._reservations.local_counts

    async def acquire(self, phone_number_id: str, rate: int) -> None:
        if rate <= 0:
            return
        while True:
            window = int(self._clock() // self.window_s)
            if await self._reservations.take(budget_key(phone_number_id, window), window, rate):
                return
            self.waits += 1
            # Just past the boundary, so the next count lands in the new window even with a coarse clock.
            await self._sleep(max(0.0, (window + 1) * self.window_s - self._clock()) + 0.001)


# --- the port -------------------------------------------------------------------------------------------------------


class MetaGraph:
    def __init__(
        self,
        cache: Cache | None,
        *,
        base_url: str,
        timeout: float = 10.0,
        upload_timeout: float = 120.0,
        far_end: FarEnd | None = None,
        attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        throttle_max_wait: float = 900.0,
        max_clients: int = 256,
        connections_per_tenant: int = 32,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        base = urlsplit(base_url.rstrip("/"))
        self._origin, self._prefix = f"{base.scheme}://{base.netloc}", base.path
        self.far_end = far_end if far_end is not None else FarEnd("meta")
        self._attempts, self._backoff = attempts, Backoff(backoff_base, backoff_max)  # equal jitter: spread, a floor
        self._throttle_max_wait = throttle_max_wait
        self._sleep = sleep
        self.budget = SendBudget(cache, clock=clock, sleep=sleep)
        self._pools = Http1Pools(max_pools=max_clients, limit=connections_per_tenant, timeout=timeout)
        self._uploads = Http1Pools(max_pools=max_clients, limit=8, timeout=upload_timeout)
        self._counts = dict.fromkeys(
            ("sent", "refused", "throttled", "retries", "uploads", "read_marks", "read_marks_failed"), 0
        )

    def statistics(self) -> GraphStatistics:
        return GraphStatistics(
            **self._counts, budget_waits=self.budget.waits, open_pools=len(self._pools) + len(self._uploads)
        )

    async def aclose(self) -> None:
        await self._pools.aclose()
        await self._uploads.aclose()

    async def send(self, tenant: TenantConfig, phone_number_id: str, body: bytes) -> str:
        """The wamid Meta gave the message. Raises SendRefused (final), BackendUnavailable (a drain while held)."""

        async def step() -> bytes:
            return await self._call(
                tenant,
                phone_number_id,
                "messages",
                body,
                "application/json",
                budget=True,
                throttle_max_wait=self._throttle_max_wait,
            )

        content = await self._through(tenant, step)
        self._counts["sent"] += 1
        try:
            answer = _decode_send(content)
            wamid = answer.messages[0].id if answer.messages else ""
        except (msgspec.DecodeError, msgspec.ValidationError):
            wamid = ""
        if not wamid:
            # Meta took it: raising now would make the caller send it again, a duplicate the customer sees.
            log.warning(
                "meta accepted a send without a readable wamid tenant=%s number=%s", tenant.tenant_id, phone_number_id
            )
        return wamid

    async def upload(
        self, tenant: TenantConfig, phone_number_id: str, data: bytes, mime: str, filename: str | None
    ) -> str:
        """The media id Meta gave the file (valid 30 days). Raises SendRefused, BackendUnavailable."""
        body, content_type = multipart(data, mime, filename)

        async def step() -> bytes:
            return await self._call(
                tenant,
                phone_number_id,
                "media",
                body,
                content_type,
                budget=False,
                throttle_max_wait=self._throttle_max_wait,
            )

        content = await self._through(tenant, step)
        try:
            media_id = _decode_upload(content).id
        except (msgspec.DecodeError, msgspec.ValidationError):
            media_id = ""
        if not media_id:
            self._counts["refused"] += 1
            raise SendRefused(Reason("GeneralError", "WhatsApp answered the media upload without a media id"), 200)
        self._counts["uploads"] += 1
        return media_id

    async def mark_read(self, tenant: TenantConfig, phone_number_id: str, wamid: str, *, typing: bool = False) -> bool:
        """Mark the customer's message `wamid` (and the earlier ones) read; with `typing`, show the typing indicator
        too. Best effort: False when Meta refused or was down past the hold (a line is logged, it is counted);
        only a drain's BackendUnavailable comes out."""
        doc: dict[str, object] = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
        if typing:
            doc["typing_indicator"] = {"type": "text"}
        body = msgspec.json.encode(doc)

        async def step() -> bytes:
            return await self._call(
                tenant, phone_number_id, "messages", body, "application/json", budget=False, throttle_max_wait=0.0
            )

        try:
            await self.far_end.through(tenant.tenant_id, step, past_hold=_meta_down)
        except SendRefused as refused:
            self._counts["read_marks_failed"] += 1
            log.info(
                "read mark not taken tenant=%s number=%s: %s",
                tenant.tenant_id,
                phone_number_id,
                refused.reason.message[:200],
            )
            return False
        self._counts["read_marks"] += 1
        return True

    # --- internals -------------------------------------------------------------------------------------------------

    async def _through(self, tenant: TenantConfig, step: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            return await self.far_end.through(tenant.tenant_id, step, past_hold=_meta_down)
        except SendRefused as refused:
            self._counts["refused"] += 1
            log.info(
                "meta refused tenant=%s status=%s code=%s reason=%s",
                tenant.tenant_id,
                refused.status,
                refused.code,
                refused.reason.code,
            )
            raise

    async def _call(
        self,
        tenant: TenantConfig,
        phone_number_id: str,
        what: str,
        body: bytes,
        content_type: str,
        *,
        budget: bool,
        throttle_max_wait: float,
    ) -> bytes:
        """One request, tried until Meta takes it (its answer's body), refuses it (SendRefused) or is down
        (FarEndDown, for far_end.py to hold)."""
        # Quoted: the number comes from configuration and must stay one path segment.
        target = f"{self._prefix}/{quote(phone_number_id, safe='')}/{what}"
        headers = {"Authorization": f"Bearer {tenant.whatsapp_token.reveal()}", "Content-Type": content_type}
        pools = self._uploads if what == "media" else self._pools
        tries = throttles = 0
        waited = 0.0
        while True:
            if budget:
                await self.budget.acquire(phone_number_id, tenant.send_rate_per_second)
            status, content, retry_after = None, b"", None
            try:
                reply = await pools.request(self._origin, "POST", target, headers, body, key=tenant.tenant_id)
                status, content, retry_after = reply.status, reply.body, reply.header("retry-after")
                error = f"HTTP {status}"
            except TimeoutError:
                error = "timed out"
            except (HttpError, ValueError) as exc:  # ValueError: a graph url that is not http(s)
                error = f"unreachable ({exc})"
            if status is not None and 200 <= status < 300:
                return content
            code, words, details = meta_error(content)
            if code is not None:
                error += f" code {str(code)[:20]}"
            match receipts.disposition(status, code):
                case "throttled":
                    if waited >= throttle_max_wait:
                        text = receipts.reason_for(code, words, details).message
                        raise SendRefused(
                            Reason(receipts.THROTTLED_REASON, f"{text} (throttled for {waited:.0f} s)"),
                            status,
                            _int_code(code),
                        )
                    throttles += 1
                    delay = min(self._throttle_delay(retry_after, throttles), throttle_max_wait - waited)
                    waited += delay
                    self._counts["throttled"] += 1
                    history.note("throttled", f"meta {error}, waiting {delay:.1f} s")
                    log.info(
                        "meta throttled tenant=%s number=%s (%s): waiting %.1f s",
                        tenant.tenant_id,
                        phone_number_id,
                        error,
                        delay,
                    )
                    await self._sleep(delay)
                case "transient":
                    tries += 1
                    if tries >= self._attempts:  # not a blip: Meta is down for this tenant (far_end.py holds it)
                        reason = Reason(receipts.SERVER_REASON, f"WhatsApp {error} ({tries} tries)")
                        raise FarEndDown(SendRefused(reason, status, _int_code(code)))
                    self._counts["retries"] += 1
                    history.note("retried", f"meta try {tries}: {error}")
                    log.info("meta retry tenant=%s try=%d: %s", tenant.tenant_id, tries, error)
                    await self._sleep(self._backoff.delay(tries))
                case _:
                    raise SendRefused(receipts.reason_for(code, words, details), status, _int_code(code))

    @staticmethod
    def _throttle_delay(header: str | None, times: int) -> float:
        try:
            seconds = float(header) if header is not None else None
        except ValueError:  # an HTTP-date: not worth parsing, the backoff serves
            seconds = None
        if seconds is None or not 0 <= seconds < float("inf"):
            seconds = THROTTLE.delay(times)
        return min(seconds, THROTTLE.cap)


def _meta_down(why: str) -> SendRefused:
    """What a message that waited past the far end's hold gets (`why`: "meta down for N s: ...")."""
    return SendRefused(Reason(receipts.SERVER_REASON, f"WhatsApp unavailable: {why}"[: receipts.REASON_MESSAGE_MAX]))


def multipart(data: bytes, mime: str, filename: str | None) -> tuple[bytes, str]:
    """(body, Content-Type) of Meta's upload form: messaging_product, type, and the file with its name and type."""
    boundary = "wabridge-" + secrets.token_hex(16)
    while boundary.encode() in data:  # 128 random bits: never in practice, but then the form would be misread
        boundary = "wabridge-" + secrets.token_hex(16)
    mime = "".join(c for c in mime if c.isascii() and c.isprintable() and c not in '"\\') or "application/octet-stream"
    name = filename or f"file.{extension_for(mime)}"
    # The HTML form encoding of a file name: quote, CR and LF escaped, so the name cannot end the header early.
    name = name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="messaging_product"\r\n\r\nwhatsapp\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\n{mime}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    )
    body = b"".join((head.encode(), data, f"\r\n--{boundary}--\r\n".encode()))
    return body, f"multipart/form-data; boundary={boundary}"
