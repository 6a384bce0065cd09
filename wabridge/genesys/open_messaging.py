"""Post one encoded Genesys Open Messaging message: `await open_messaging.post_message(tenant, body) -> Posted`; and one
receipt for a message an agent sent: `await open_messaging.receipt(tenant, body)`.

POST {api}/api/v2/conversations/messages/{integrationId}/inbound/open/message?prefetchConversationId=true with the
body as given (the codecs encode it; this module never decodes or logs it: it holds customer text). A receipt goes to
…/inbound/open/receipt (codecs/receipts.py builds it) through the same request path: token, budget, retries, far end.
What each answer does (a table, `OUTCOMES`, not a chain of ifs):
  2xx              → Posted(genesys_message_id, conversation_id or None); for a receipt, nothing, unless the
                     answer says `"status":"Failed"` for a receipt that was not itself Failed (reference.md §3: a 2xx
                     may carry a failure; Genesys echoes the receipt, so a Failed receipt's echo says Failed too):
                     PostFailed(permanent=True)
  401              → drop the token, log in again, retry once (not counted as an attempt); a second 401 with the
                     fresh token is permanent: the OAuth client lacks the permission, no retry will fix it.
  429              → sleep Retry-After (capped; backoff when absent), retry; not counted as an attempt, since the
                     budget (ratelimit.py) is what should keep us under the limit, but at most `rate_limited_max`
                     times per message so a misconfigured budget cannot hold a message forever.
  408, 5xx,        → back off (exponential from `backoff_base`, equal jitter) and retry: a blip; after `attempts`
  timeouts, errors   tries it is an outage of the tenant's Genesys (far_end.py): the message is held in place, the
                     tenant's messages take turns probing, and all go once Genesys answers; past the far-end hold
                     PostFailed(permanent=False): tracked `failed`, replayable.
  other 4xx        → PostFailed(permanent=True) at once, with the Genesys error body kept (bounded).
A login refused (400/401/403 from /oauth/token) is permanent too; a login that times out or answers 5xx is an attempt.
Each tenant has its own HTTP/1.1 keep-alive pool; at most `max_clients` pools, the least recently used closed first
(once its in-flight requests finish).

HTTP client: http/client.py, a keep-alive pool with httptools parsing, chosen for its CPU per request
(docs/decisions.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

import anyio
import msgspec

from wabridge.engine import history
from wabridge.engine.backoff import Backoff
from wabridge.engine.far_end import FarEnd, FarEndDown
from wabridge.genesys.auth import LoginFailed, TokenProvider
from wabridge.genesys.ratelimit import RateBudget
from wabridge.http.client import Http1Pools, HttpError
from wabridge.ports import Posted, PostFailed, TenantConfig

log = logging.getLogger("wabridge.genesys.delivery")  # the logger name operators already filter on

MESSAGE_PATH = "/api/v2/conversations/messages/{integration_id}/inbound/open/message?prefetchConversationId=true"
RECEIPT_PATH = "/api/v2/conversations/messages/{integration_id}/inbound/open/receipt"

DELIVERED, RELOGIN, RATE_LIMITED, RETRY, REJECTED = "delivered", "relogin", "rate-limited", "retry", "rejected"
OUTCOMES = {401: RELOGIN, 408: RETRY, 429: RATE_LIMITED}


def outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return DELIVERED
    return OUTCOMES.get(status, RETRY if status >= 500 else REJECTED)


class PostStatistics(msgspec.Struct, frozen=True):
    delivered: int
    failed: int
    retries: int  # backoffs after 408/5xx/timeouts/unreachable
    rate_limited: int  # 429s waited out
    relogins: int  # 401s answered by a new token
    open_pools: int  # per-tenant HTTP pools currently kept
    receipts: int = 0  # receipts Genesys took
    receipts_failed: int = 0


class _Reply(msgspec.Struct):
    id: str = ""
    conversationId: str | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode


class _ReceiptStatus(msgspec.Struct):
    """The one field read of a receipt and of Genesys's answer to it; anything else in either is ignored."""

    status: object = None


_decode_receipt_status = msgspec.json.Decoder(_ReceiptStatus).decode


class OpenMessagingClient:
    def __init__(
        self,
        tokens: TokenProvider,
        budget: RateBudget | None = None,
        *,
        attempts: int = 3,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 120.0,
        rate_limited_max: int = 5,
        max_clients: int = 256,
        connections_per_tenant: int = 32,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        far_end: FarEnd | None = None,
    ) -> None:
        self._tokens = tokens
        self.far_end = far_end if far_end is not None else FarEnd("genesys")
        self._budget = budget
        self._attempts = attempts
        self._backoff = Backoff(backoff_base, backoff_max)  # equal jitter: spreads retries, keeps a floor
        self._retry_after_max = retry_after_max
        self._rate_limited_max = rate_limited_max
        self._sleep = sleep
        self._pools = Http1Pools(max_pools=max_clients, limit=connections_per_tenant, timeout=timeout)
        self._counts = {
            "delivered": 0,
            "failed": 0,
            "retries": 0,
            "rate_limited": 0,
            "relogins": 0,
            "receipts": 0,
            "receipts_failed": 0,
        }

    def statistics(self) -> PostStatistics:
        return PostStatistics(**self._counts, open_pools=len(self._pools))

    async def post_message(self, tenant: TenantConfig, body: bytes) -> Posted:
        try:
            _, content = await self._through_far_end(tenant, MESSAGE_PATH, body)
        except PostFailed:
            self._counts["failed"] += 1
            raise
        self._counts["delivered"] += 1
        return _posted(content, tenant.tenant_id)

    async def receipt(self, tenant: TenantConfig, body: bytes) -> None:
        """POST one receipt (codecs/receipts.py's `receipt_body`); returns once Genesys took it. Raises PostFailed
        as `post_message` does, and also for a 2xx whose answer says Failed when the receipt did not."""
        try:
            status, content = await self._through_far_end(tenant, RECEIPT_PATH, body)
            if _status(content) == "Failed" and _status(body) != "Failed":
                raise PostFailed(
                    f"genesys answered the receipt HTTP {status} with status Failed",
                    1,
                    True,
                    status=status,
                    body=content,
                )
        except PostFailed:
            self._counts["receipts_failed"] += 1
            raise
        self._counts["receipts"] += 1

    async def _through_far_end(self, tenant: TenantConfig, path: str, body: bytes) -> tuple[int, bytes]:
        return await self.far_end.through(
            tenant.tenant_id, lambda: self._post(tenant, path, body), past_hold=lambda why: PostFailed(why, 0)
        )

    async def _post(self, tenant: TenantConfig, path: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` to the tenant's endpoint at `path` (a *_PATH template) until a 2xx: its status and body."""
        origin, target = genesys_endpoint(tenant.genesys_api_url, tenant.genesys_integration_id, path)
        attempts = rate_limited = 0
        relogged = False
        while True:
            attempts += 1
            credential = await self._budget.acquire(tenant) if self._budget else tenant.credentials[0]
            status, content, error, retry_after = None, b"", "", None
            try:
                token = await self._tokens.token(tenant, credential)
            except LoginFailed as exc:
                if exc.permanent:
                    raise PostFailed(str(exc), attempts, True, status=exc.status) from None
                outcome, error = RETRY, str(exc)
            else:
                try:
                    # A tenant's own pool: one tenant's slow Genesys org never takes another's connections.
                    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                    reply = await self._pools.request(origin, "POST", target, headers, body, key=tenant.tenant_id)
                    status, content, retry_after = reply.status, reply.body, reply.header("retry-after")
                except TimeoutError:
                    outcome, error = RETRY, "genesys timed out"
                except (HttpError, ValueError) as exc:  # ValueError: an api url that is not http(s)
                    outcome, error = RETRY, f"genesys unreachable ({exc})"
                else:
                    outcome, error = outcome_of(status), f"genesys answered HTTP {status}"
            match outcome:
                case "delivered":
                    assert status is not None
                    return status, content
                case "relogin":
                    await self._tokens.invalidate(tenant, credential, token)
                    if relogged:
                        raise PostFailed(f"{error} with a fresh token", attempts, True, status=status, body=content)
                    relogged = True
                    self._counts["relogins"] += 1
                    attempts -= 1
                case "rate-limited":
                    rate_limited += 1
                    if rate_limited > self._rate_limited_max:
                        raise PostFailed(f"{error} {rate_limited} times", attempts, status=status, body=content)
                    attempts -= 1
                    self._counts["rate_limited"] += 1
                    history.note("rate-limited", f"{error}, Retry-After {retry_after}")
                    await self._sleep(self._retry_after(retry_after, rate_limited))
                case "rejected":
                    raise PostFailed(error, attempts, True, status=status, body=content)
                case _:
                    if attempts >= self._attempts:  # not a blip: Genesys is down (far_end.py holds the message)
                        raise FarEndDown(PostFailed(error, attempts, status=status, body=content))
                    self._counts["retries"] += 1
                    history.note("retried", f"attempt {attempts}: {error}")  # the message's trail: wabridge trace
                    log.info("delivery retry tenant=%s attempt=%d: %s", tenant.tenant_id, attempts, error)
                    await self._sleep(self._backoff.delay(attempts))

    async def aclose(self) -> None:
        await self._pools.aclose()

    # --- internals -------------------------------------------------------------------------------------------------

    def _retry_after(self, header: str | None, times: int) -> float:
        try:
            seconds = float(header) if header is not None else self._backoff.delay(times)
        except ValueError:  # an HTTP-date: Genesys sends seconds, so this is not worth parsing
            seconds = self._backoff.delay(times)
        return min(max(seconds, 0.0), self._retry_after_max)


@functools.lru_cache(maxsize=1024)
def genesys_endpoint(api_url: str, integration_id: str, path: str = MESSAGE_PATH) -> tuple[str, str]:
    """(origin, request target) of a tenant's endpoint at `path` (MESSAGE_PATH, RECEIPT_PATH). Cached: it is the same
    for every message of a tenant, and URL parsing per message is work the hot path need not do."""
    api = urlsplit(api_url)
    # Quoted: the integration id comes from tenant configuration, and must stay one path segment.
    integration = quote(integration_id, safe="")
    return f"{api.scheme}://{api.netloc}", api.path.rstrip("/") + path.format(integration_id=integration)


def _status(content: bytes) -> object:
    """The top-level `status` of a JSON object, or None (not JSON, not an object, none there)."""
    try:
        return _decode_receipt_status(content).status
    except msgspec.DecodeError:  # ValidationError included: a JSON array, a string
        return None


def _posted(content: bytes, tenant_id: str) -> Posted:
    try:
        reply = _decode_reply(content)
    except msgspec.DecodeError:
        # Genesys took it: failing now would make the bridge send it again, a duplicate. Keep going without an id.
        log.warning("delivery accepted but the reply was unreadable tenant=%s", tenant_id)
        return Posted("", None)
    return Posted(reply.id, reply.conversationId)
