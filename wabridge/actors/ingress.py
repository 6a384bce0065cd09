"""The webhook ingress: Meta POSTs here; the answer is 200 only once the payload is durable in the queue.

One request, in order (nothing in the payload is trusted before step 3):
  1. the body is read with a bound (413 past settings.max_body_bytes, from Content-Length or while streaming; a client
     gone before its body is whole is counted and answered nothing);
  2. `phone_number_id`s are read through a tiny view (codecs/routing.py) — only to pick the tenants, and so the keys;
  3. the X-Hub-Signature-256 HMAC over the raw bytes is checked with every such tenant's app secret (401 if any fails);
     then, signed, the whole body must be UTF-8 (400), which the view, skipping what it does not need, did not check;
  4. the raw body is appended to the tenant's archive segment (actors/archive.py: put in the background, many
     webhooks per object; bounded; a failure is logged and counted, never blocks) — once under `_shared` instead
     when it holds more than that tenant's part, so no tenant's prefix holds another's customers;
  5. one queue message per tenant is published, and the answer waits for the broker's confirm (503 if it cannot).
A body no tenant owns is answered 200 (Meta would retry it for 7 days otherwise), archived and tracked `unrouted`,
when one of the tenants' Meta apps signed it; 401 otherwise.

Genesys's outbound webhook (an agent's message to a customer) comes to `POST /webhook/genesys/{tenantId}`:
the tenant by id (404), its integration's outbound secret (401 when it has none), the X-Hub-Signature-256 HMAC over
the raw bytes in base64 or hex (401), then the body must be a JSON object (400; what it asks for is the worker's to
decide); archived in `webhooks-outbound`, published to the outbound queue, 200 once confirmed (503 if not).

400 or 401: a 400 says "signed, but malformed", so only a signed body earns one. A body the view cannot read names no
key, so it is checked as one nobody owns: 400 when one of the tenants' Meta apps (or the tenant in the path) signed
it, else 401. An unsigned sender thus learns nothing of its JSON; an unreadable body costs the same bounded HMACs as
an unrouted one. What the caller controls never reaches a 500: those are our bugs, logged with their traceback.

Error contract (as courier's): the caller's bad input gets a 4xx and a log line; our own backends being down gets a
503, so Meta retries and nothing acknowledged is ever lost. Duplicates are possible (Meta retries, multi-tenant
partial failures): the workers de-duplicate by wamid.

`IngressApp` is a Granian RSGI application; cli/assembly.py runs it. With one worker (the default) it runs on
Granian's embedded server in the `wabridge serve` process itself (`serve_embedded`); with more, each Granian worker
process builds its own with `app_factory()` and opens its own backends in `__rsgi_init__` through the opener the
assembly gave it (`serve_processes`).
`handle(method, path, query, headers, body)` is the whole request logic without HTTP, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from hashlib import sha256
from typing import Any

import msgspec

from wabridge.actors.archive import MAX_BYTES as ARCHIVE_MAX_BYTES
from wabridge.actors.archive import ArchiveWriter
from wabridge.actors.directory import TenantDirectory
from wabridge.codecs.routing import (
    MalformedWebhook,
    QueuedWebhook,
    Routing,
    encode_queued,
    read_routing,
    split_by_tenant,
    without_lone_surrogates,
)
from wabridge.engine import heap, metrics, process_metrics
from wabridge.engine.settings import Settings
from wabridge.http.server import (
    JSON,
    BadContentLength,
    BodyTooLarge,
    ClientGone,
    Response,
    query_params,
    read_body,
    text,
)
from wabridge.ports import (
    WEBHOOKS_OUTBOUND_BUCKET,
    BackendUnavailable,
    TenantConfig,
    TrackingRecord,
    TrackingStatus,
)

log = logging.getLogger("wabridge.ingress")

WEBHOOK_PATH = "/webhook/meta"
GENESYS_WEBHOOK_PATH = "/webhook/genesys"  # + /{tenantId}: the integration's outboundNotificationWebhookUrl
MAX_QUEUE_MESSAGE_ID = 255  # bytes: an AMQP short string (message_id)
UNROUTED_ARCHIVE_TENANT = "_unrouted"  # archive prefix of bodies no tenant owns (tracked with tenant_id "")
# Archive prefix of bodies that hold more than one tenant's part (tenants of one Meta app, or numbers nobody owns):
# kept once there, never copied under each tenant, whose prefix holds its own customers' messages only.
SHARED_ARCHIVE_TENANT = "_shared"
MAX_CHALLENGE = 1024  # characters; Meta sends a short number
CLOSE_DEADLINE = 10.0  # seconds the archive's last segments get at shutdown
# Before the signature check every phone_number_id a body names costs a directory lookup: bounded per request. One
# Meta app's webhook concerns the numbers of its business accounts, a handful; ids are ~15 digits.
MAX_NUMBERS = 100
MAX_KEY = 128  # characters of a tenant id or phone_number_id worth looking up
BODY_TIMEOUT = 30.0  # seconds a request's body may take to arrive (Meta sends at most 3 MB, at once)
# A body no tenant owns is kept only when one of our Meta apps signed it; this many app secrets are tried at most, so
# an unsigned body costs a bounded number of HMACs (tenants of one Meta app share its secret: usually a handful).
MAX_UNROUTED_SECRETS = 16

REQUESTS = metrics.REGISTRY.counter(
    "wabridge_ingress_requests_total", "HTTP requests answered by the ingress", ("route", "status")
)
PUBLISH_SECONDS = metrics.REGISTRY.histogram(
    "wabridge_ingress_publish_seconds", "Time from publish to the broker's confirm, per queued webhook"
)
ARCHIVE_FAILURES = metrics.REGISTRY.counter(
    "wabridge_ingress_archive_failures_total",
    "Raw webhooks not archived (failed, or dropped at the bound)",
    ("reason",),
)
ARCHIVES_RUNNING = metrics.REGISTRY.gauge("wabridge_ingress_archives_running", "Archive segment puts in flight")
ARCHIVE_BYTES = metrics.REGISTRY.gauge(
    "wabridge_ingress_archive_pending_bytes", "Raw webhook bytes buffered or being put by the archive"
)
UNROUTED = metrics.REGISTRY.counter(
    "wabridge_ingress_unrouted_total", "Webhook changes whose phone_number_id no tenant owns"
)
DISCONNECTS = metrics.REGISTRY.counter(
    "wabridge_ingress_disconnects_total", "Requests whose client hung up before its body was whole (not answered)"
)
QUEUED = metrics.REGISTRY.counter("wabridge_ingress_queued_total", "Queue messages confirmed by the broker")
TENANT_LOOKUPS = metrics.REGISTRY.counter(
    "wabridge_tenant_lookups_total", "Tenant directory lookups by the tier that answered", ("tier",)
)
TENANT_HIT_RATIO = metrics.REGISTRY.gauge(
    "wabridge_tenant_cache_hit_ratio",
    "Share of tenant lookups answered by the in-process cache",
    multiprocess_mode="livemin",  # several ingress processes: the coldest cache's
)
OUTBOUND_WEBHOOKS = metrics.REGISTRY.counter(
    "wabridge_outbound_webhooks_total", "Genesys outbound webhooks (agent messages) answered, by outcome", ("outcome",)
)


def _signature_ok(secret: str, body: bytes, header: str) -> bool:
    if not header.isascii():
        return False  # compare_digest takes ASCII text only; no HMAC of ours is anything else
    expected = "sha256=" + hmac.new(secret.encode(), body, sha256).hexdigest()
    return hmac.compare_digest(expected, header.lower())  # Meta sends lowercase hex; case is not part of the proof


_ANY_JSON = msgspec.json.Decoder()


def _genesys_signature_ok(secret: str, body: bytes, header: str) -> bool:
    """`sha256=<digest>`: Genesys's own sample encodes the HMAC in base64, one peer in hex (reference.md §3). Both are
    the same proof, so either is taken; both are compared, in constant time, whichever matches."""
    scheme, _, digest = header.partition("=")  # the first `=`: base64's padding stays in the digest
    digest = digest.strip()
    if scheme.strip().lower() != "sha256" or not digest or not digest.isascii():
        return False  # compare_digest takes ASCII text only
    mac = hmac.new(secret.encode(), body, sha256).digest()
    as_base64 = hmac.compare_digest(base64.b64encode(mac).decode(), digest)
    as_hex = hmac.compare_digest(mac.hex(), digest.lower())
    return as_base64 | as_hex


def _json(code: int, **fields: str) -> Response:
    return Response(code, JSON, msgspec.json.encode(fields))


def _readable_text(body: bytes) -> bool:
    """Whether the body is UTF-8 throughout. Meta escapes all non-ASCII, so `isascii` (C speed, no copy) answers for
    nearly every webhook; the decode, also in C, only for the rest."""
    if body.isascii():
        return True
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _could_be_stored(key: str) -> bool:
    """Whether a tenant id or phone_number_id from the request could be one the store holds: PostgreSQL text never
    holds NUL (asking for one fails the query, a 500 before any signature check), so no tenant has such a key; nor one
    longer than MAX_KEY (an unsigned body must not make the cache and the store look up a megabyte)."""
    return len(key) <= MAX_KEY and "\x00" not in key


def _printable(value: str) -> str:
    return value.replace("\x00", "\ufffd")  # for the tracking row of a body nobody owns: PostgreSQL refuses NUL


def _routing_or_none(body: bytes) -> Routing | None:
    try:
        return read_routing(body)
    except MalformedWebhook:
        return None


def _new_webhook_id(received_at: float) -> str:
    # Time first (archive keys sort by arrival), then 40 random bits: unique per POST without coordination.
    return f"{int(received_at * 1000):011x}{os.urandom(5).hex()}"


class IngressApp:
    """The RSGI application. Give it open `backends` (tests), or let `__rsgi_init__` open them (Granian workers)."""

    def __init__(
        self,
        settings: Settings,
        backends: Any = None,
        *,
        max_archive_bytes: int = ARCHIVE_MAX_BYTES,
        opener: Callable[[Settings, asyncio.Event], AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self._opener = opener  # without `backends`: opens them at start (cli/assembly.py gives open_backends_when_up)
        self.body_timeout = BODY_TIMEOUT
        self.directory: TenantDirectory | None = None
        self.archive: ArchiveWriter | None = None
        self.outbound_archive: ArchiveWriter | None = None
        self._max_archive_bytes = max_archive_bytes
        self._exit = contextlib.AsyncExitStack()
        self._ok = {route: REQUESTS.labels(route, "200") for route in ("webhook", "genesys", "handshake", "healthz")}
        if backends is not None:
            self._bind(backends)

    # --- life cycle -------------------------------------------------------------------------------------------

    def _bind(self, backends: Any) -> None:
        self.backends = backends
        self.directory = TenantDirectory(backends.store, backends.cache, self.settings.secret_box())
        directory = self.directory
        for tier, field in (("local", "local_hits"), ("cache", "cache_hits"), ("store", "store_lookups")):
            TENANT_LOOKUPS.labels(tier).set_function(lambda f=field: getattr(directory.statistics(), f))
        TENANT_HIT_RATIO.set_function(lambda: directory.statistics().hit_ratio)
        self.archive = archive = ArchiveWriter(
            backends.objects,
            on_failure=lambda reason, n: ARCHIVE_FAILURES.labels(reason).inc(n),
            max_bytes=self._max_archive_bytes,
        )
        # A writer of its own: a segment is one bucket's object, and the agents' messages are kept apart from the
        # customers' (another bucket, its own retention). Its bound is its own too: a flood of either direction
        # while S3 is down cannot drop the other's archive.
        self.outbound_archive = outbound = ArchiveWriter(
            backends.objects,
            on_failure=lambda reason, n: ARCHIVE_FAILURES.labels(reason).inc(n),
            max_bytes=self._max_archive_bytes,
            bucket=WEBHOOKS_OUTBOUND_BUCKET,
        )
        ARCHIVES_RUNNING.set_function(lambda: archive.puts_running + outbound.puts_running)
        ARCHIVE_BYTES.set_function(lambda: archive.pending_bytes + outbound.pending_bytes)

    async def start(self, stopping: asyncio.Event | None = None) -> bool:
        """Open the backends, waiting for servers that are down; False when `stopping` was set first."""
        await self._exit.enter_async_context(process_metrics.watching())  # event-loop lag, until aclose
        if self.backends is None:
            if self._opener is None:
                raise RuntimeError("IngressApp needs its backends, or an opener for them (cli/assembly.py)")
            backends = await self._exit.enter_async_context(self._opener(self.settings, stopping or asyncio.Event()))
            if backends is None:
                return False
            self._bind(backends)
        return True

    async def aclose(self) -> None:
        """Put the archive's last segments (bounded by CLOSE_DEADLINE), then close what we opened."""
        archives = [a.aclose(CLOSE_DEADLINE) for a in (self.archive, self.outbound_archive) if a is not None]
        await asyncio.gather(*archives)  # side by side: the two together take one CLOSE_DEADLINE at most
        await self._exit.aclose()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if not loop.is_running():  # in a Granian worker process; embedded, serve_embedded started the app already
            loop.run_until_complete(self.start())
        heap.freeze_startup_heap()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if not loop.is_running():  # embedded, serve_embedded closes the app once the server has stopped
            loop.run_until_complete(self.aclose())

    # --- RSGI -------------------------------------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        headers = scope.headers
        body = b""
        if scope.method == "POST":
            route = "genesys" if scope.path.startswith(GENESYS_WEBHOOK_PATH + "/") else "webhook"
            try:
                async with asyncio.timeout(self.body_timeout):
                    body = await read_body(proto, headers, self.settings.max_body_bytes)
            except TimeoutError:
                # A body promised by Content-Length that never comes (or trickles): a slow client holds no
                # connection and no memory past this.
                REQUESTS.labels(route, "408").inc()
                proto.response_bytes(408, [("connection", "close")], b"request body timed out")
                return
            except BodyTooLarge:
                REQUESTS.labels(route, "413").inc()
                if route == "genesys":
                    OUTBOUND_WEBHOOKS.labels("too_large").inc()
                proto.response_bytes(413, [("connection", "close")], b"payload too large")
                return
            except BadContentLength:
                REQUESTS.labels(route, "400").inc()
                proto.response_bytes(400, [], b"bad content-length")
                return
            except ClientGone:
                # Nothing of ours failed: no log line. Answered all the same (a half-closed client still reads it),
                # as Granian would answer 500 for a request left without one.
                DISCONNECTS.inc()
                proto.response_bytes(400, [("connection", "close")], b"incomplete body")
                return
        try:
            response = await self.handle(scope.method, scope.path, scope.query_string, headers, body)
        except Exception:  # our bug, never the caller's: logged whole, answered 500 so Meta retries
            log.exception("ingress failed on %s %s", scope.method, scope.path[:100])
            REQUESTS.labels("other", "500").inc()
            response = text(500, "internal error")
        proto.response_bytes(*response)

    async def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one request; the body is already read (and within the limit)."""
        route, response = await self._route(method, path, query, headers, body)
        if response.status == 200 and route in self._ok:
            self._ok[route].inc()
        else:
            REQUESTS.labels(route, str(response.status)).inc()
        return response

    async def _route(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[str, Response]:
        if path.startswith(GENESYS_WEBHOOK_PATH + "/"):
            tenant_id = path[len(GENESYS_WEBHOOK_PATH) + 1 :]
            if not tenant_id or "/" in tenant_id:
                return "other", text(404, "not found")
            if method != "POST":
                return "other", text(405, "method not allowed")
            return "genesys", await self.receive_genesys(tenant_id, headers, body)
        if path == WEBHOOK_PATH or path.startswith(WEBHOOK_PATH + "/"):
            tenant_id = path[len(WEBHOOK_PATH) + 1 :] or None
            if tenant_id is not None and "/" in tenant_id:
                return "other", text(404, "not found")
            if method == "POST":
                return "webhook", await self._guarded(self.receive_webhook(tenant_id, headers, body))
            if method == "GET":
                return "handshake", await self._guarded(self.handshake(tenant_id, query))
            return "other", text(405, "method not allowed")
        if method != "GET":
            return "other", text(405 if path in ("/healthz", "/readyz", "/metrics") else 404, "")
        if path == "/healthz":
            return "healthz", text(200, "ok")
        if path == "/readyz":
            return "readyz", await self.readiness()
        if path == "/metrics":
            return "metrics", Response(200, [("content-type", metrics.CONTENT_TYPE)], metrics.REGISTRY.render())
        if path.startswith("/objects/"):
            return "objects", await self.serve_object(path, query)
        return "other", text(404, "not found")

    async def _guarded(self, answer: Any) -> Response:
        try:
            return await answer
        except BackendUnavailable as exc:
            log.warning("answering 503: %s", exc)
            return text(503, "backend unavailable, retry later")

    # --- Meta: the verification handshake ---------------------------------------------------------------------

    async def handshake(self, tenant_id: str | None, query: str) -> Response:
        try:
            params = query_params(query)
        except ValueError:
            return text(400, "bad query")
        challenge = params.get("hub.challenge", "")
        token = params.get("hub.verify_token", "")
        if params.get("hub.mode") != "subscribe" or not token or len(challenge) > MAX_CHALLENGE:
            return text(403, "forbidden")
        assert self.directory is not None
        if tenant_id is not None:
            tenant = await self.directory.by_id(tenant_id) if _could_be_stored(tenant_id) else None
            candidates = [tenant] if tenant is not None else []
        else:
            candidates = await self.directory.all()
        matched = False
        for tenant in candidates:  # no early exit: the time taken does not tell which tenant matched
            matched |= hmac.compare_digest(tenant.verify_token.reveal().encode(), token.encode())
        return text(200, challenge) if matched else text(403, "forbidden")

    # --- Meta: a webhook --------------------------------------------------------------------------------------

    async def receive_webhook(self, path_tenant_id: str | None, headers: Mapping[str, str], body: bytes) -> Response:
        received_at = time.time()
        signature = headers.get("x-hub-signature-256") or ""
        if signature[:7].lower() != "sha256=":
            return text(401, "missing signature")
        assert self.directory is not None
        path_tenant = None
        if path_tenant_id is not None:
            path_tenant = await self.directory.by_id(path_tenant_id) if _could_be_stored(path_tenant_id) else None
            if path_tenant is None:
                return text(404, "unknown tenant")
            if not _signature_ok(path_tenant.app_secret.reveal(), body, signature):
                return text(401, "bad signature")
        decoded = body  # what is queued: the raw bytes, unless they had to be repaired to decode at all
        routing = _routing_or_none(body)
        if routing is None:
            repaired = without_lone_surrogates(body)
            routing = _routing_or_none(repaired) if repaired is not None else None
            if routing is None:
                if path_tenant is None and not await self._signed_by_a_tenant_app(body, signature):
                    return text(401, "bad signature")  # see the module docstring: 400 is for signed bodies only
                return text(400, "malformed webhook")
            decoded = repaired
        owners: dict[str, TenantConfig] = {}  # phone_number_id → owner
        unknown: list[str] = []
        if len(routing.phone_number_ids) > MAX_NUMBERS:
            return text(400, "malformed webhook: too many phone numbers")  # each costs a lookup before the HMAC
        for number in routing.phone_number_ids:
            tenant = await self.directory.by_phone_number(number) if _could_be_stored(number) else None
            if tenant is None:
                unknown.append(number)
            else:
                owners[number] = tenant
        tenants = {t.tenant_id: t for t in owners.values()}
        if path_tenant is not None and (routing.unlabelled_changes or not routing.phone_number_ids):
            tenants.setdefault(path_tenant.tenant_id, path_tenant)
        if not tenants:
            if path_tenant is None and not await self._signed_by_a_tenant_app(body, signature):
                return text(401, "bad signature")  # nobody's, and not from Meta for us either: nothing is kept
        elif not self._verified(tenants.values(), body, signature, skip=path_tenant):
            return text(401, "bad signature")
        if not _readable_text(decoded):
            return text(400, "malformed webhook: not UTF-8")  # the worker could not read it: Meta must know now
        if not tenants:
            return await self._unrouted(routing.message_ids, unknown, body, received_at)
        if unknown:
            UNROUTED.inc(len(unknown))
            log.warning("webhook partly unrouted: no tenant owns phone_number_id %s", [n[:64] for n in unknown[:8]])
        if len(tenants) == 1 and not unknown:
            parts = {next(iter(tenants)): decoded}  # the raw signed bytes, untouched (unless repaired)
        else:
            fallback = path_tenant.tenant_id if path_tenant is not None else next(iter(tenants))
            try:
                parts = split_by_tenant(decoded, {n: t.tenant_id for n, t in owners.items()}, fallback=fallback)
            except MalformedWebhook:  # the split reads no more than the view did: should it ever, 400, not a 500
                return text(400, "malformed webhook")
        await self._enqueue(parts, body, received_at, shared=len(tenants) > 1 or bool(unknown))
        return text(200, "ok")

    def _verified(self, tenants: Any, body: bytes, signature: str, *, skip: TenantConfig | None) -> bool:
        checked: dict[str, bool] = {}  # tenants of one Meta app share its secret: one HMAC per secret
        for tenant in tenants:
            if skip is not None and tenant.tenant_id == skip.tenant_id:
                continue  # already verified from the path
            secret = tenant.app_secret.reveal()
            ok = checked.get(secret)
            if ok is None:
                ok = checked[secret] = _signature_ok(secret, body, signature)
            if not ok:
                return False
        return True

    async def _signed_by_a_tenant_app(self, body: bytes, signature: str) -> bool:
        """Whether one of our tenants' Meta apps signed this body (a number of that app no tenant has claimed yet):
        only then is it worth keeping, and answering 200 so Meta stops resending it."""
        assert self.directory is not None
        secrets = dict.fromkeys(t.app_secret.reveal() for t in await self.directory.all())
        matched = False
        for secret in list(secrets)[:MAX_UNROUTED_SECRETS]:  # no early exit: the time taken tells nothing
            matched |= _signature_ok(secret, body, signature)
        return matched

    async def _enqueue(self, parts: dict[str, bytes], raw: bytes, received_at: float, *, shared: bool) -> None:
        webhook_id = _new_webhook_id(received_at)
        publishes = []
        assert self.archive is not None
        # The raw body (the signed evidence) once under `_shared` when it holds more than one tenant's part.
        shared_key = self.archive.append(SHARED_ARCHIVE_TENANT, webhook_id, received_at, raw) if shared else None
        for tenant_id, part in parts.items():
            key = shared_key if shared_key is not None else self.archive.append(tenant_id, webhook_id, received_at, raw)
            message = encode_queued(QueuedWebhook(tenant_id, received_at, key, part))
            publishes.append(self._publish(tenant_id, message, f"{webhook_id}:{tenant_id}"))
        if len(publishes) == 1:
            await publishes[0]
        else:
            await asyncio.gather(*publishes)  # one failure → 503: Meta resends all, workers drop duplicates

    async def _publish(self, tenant_id: str, message: bytes, message_id: str) -> None:
        started = time.perf_counter()
        await self.backends.queue.publish(tenant_id, message, message_id=message_id)
        PUBLISH_SECONDS.observe(time.perf_counter() - started)
        QUEUED.inc()

    async def _unrouted(self, wamids: tuple[str, ...], numbers: list[str], body: bytes, received_at: float) -> Response:
        """Nobody owns this body: keep it (archive + tracking) and answer 200 so Meta stops resending it."""
        webhook_id = _new_webhook_id(received_at)
        UNROUTED.inc(max(len(numbers), 1))
        assert self.archive is not None
        self.archive.append(UNROUTED_ARCHIVE_TENANT, webhook_id, received_at, body)
        if not wamids:
            # No customer message in it (an account or template update, a number's statuses): nothing to track.
            log.info("webhook %s without customer messages archived: no tenant owns it", webhook_id)
            return text(200, "ok")
        reason = f"no tenant owns phone_number_id {', '.join(n[:64] for n in numbers[:4]) or '(none in payload)'}"
        reason = _printable(reason)
        records = [
            TrackingRecord(
                wamid=wamid,
                tenant_id="",
                status=TrackingStatus.UNROUTED,
                error=reason,
                created_at=received_at,
                updated_at=received_at,
                webhook_id=webhook_id,
                received_at=received_at,
            )
            for wamid in dict.fromkeys(_printable(w[:256]) for w in wamids[:1000])  # Meta's maximum of updates per POST
        ]
        await self.backends.store.write_tracking(records)
        log.warning("unrouted webhook %s: %s", webhook_id, reason)
        return text(200, "ok")

    # --- Genesys: an agent's message ----------------------------------------------------------------------------------

    async def receive_genesys(self, tenant_id: str, headers: Mapping[str, str], body: bytes) -> Response:
        outcome, response = await self._genesys_webhook(tenant_id, headers, body)
        OUTBOUND_WEBHOOKS.labels(outcome).inc()
        return response

    async def _genesys_webhook(self, tenant_id: str, headers: Mapping[str, str], body: bytes) -> tuple[str, Response]:
        received_at = time.time()
        assert self.directory is not None and self.outbound_archive is not None
        try:
            tenant = await self.directory.by_id(tenant_id) if _could_be_stored(tenant_id) else None
            if tenant is None:
                return "unknown_tenant", _json(404, error="unknown tenant")
            if tenant.genesys_webhook_secret is None:
                return "no_secret", _json(401, error="no Genesys webhook secret is configured for this tenant")
            signature = headers.get("x-hub-signature-256") or ""
            if not _genesys_signature_ok(tenant.genesys_webhook_secret.reveal(), body, signature):
                return "bad_signature", _json(401, error="missing or bad signature")
            # Signed: only now is the body read, whole, only to refuse what is not a JSON object. Whole, not through
            # the codec's typed decoder, which skips the fields it does not know unchecked (bad UTF-8, 1e400 there):
            # what one field passes, another would refuse (tests/fuzz/test_outbound_ingress_fuzz.py).
            try:
                whole = _ANY_JSON.decode(body)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
                return "malformed", _json(400, error=f"malformed webhook: {exc}"[:200])
            if not isinstance(whole, dict):
                return "malformed", _json(400, error="malformed webhook: not a JSON object")
            genesys_id = whole.get("id")
            webhook_id = _new_webhook_id(received_at)
            # The Genesys id names the queue message when it can (Genesys retries one message up to 5 times);
            # one too long for AMQP's short string, or none, gets this POST's id, as inbound webhooks do.
            usable = isinstance(genesys_id, str) and genesys_id and "\x00" not in genesys_id
            message_id = f"{genesys_id}:{tenant.tenant_id}" if usable else ""
            if not message_id or len(message_id.encode()) > MAX_QUEUE_MESSAGE_ID:
                message_id = f"{webhook_id}:{tenant.tenant_id}"
            key = self.outbound_archive.append(tenant.tenant_id, webhook_id, received_at, body)
            message = encode_queued(QueuedWebhook(tenant.tenant_id, received_at, key, body))
            await self.backends.outbound.publish(tenant.tenant_id, message, message_id=message_id)
        except BackendUnavailable as exc:
            log.warning("answering Genesys 503: %s", exc)
            return "unavailable", _json(503, error="backend unavailable, retry later")
        return "queued", _json(200, status="ok")

    # --- operations -------------------------------------------------------------------------------------------

    async def readiness(self) -> Response:
        checks = await self.backends.readiness()
        status = 200 if all(checks.values()) else 503
        return Response(status, JSON, msgspec.json.encode(checks))

    async def serve_object(self, path: str, query: str) -> Response:
        """Signed URLs of the embedded object store (Genesys downloads media here); 404 when objects are on S3."""
        bucket, _, key = path[len("/objects/") :].partition("/")
        if not bucket or not key:
            return text(404, "not found")
        try:
            params = query_params(query)
            content, content_type = await self.backends.objects.open_signed(
                bucket, key, params.get("expires", ""), params.get("signature", "")
            )
        except (PermissionError, ValueError):
            return text(403, "forbidden")
        except KeyError:
            return text(404, "not found")
        return Response(200, [("content-type", content_type)], content)
