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

The Meta route is in ingress_meta.py, the Genesys route in ingress_genesys.py (mixins of IngressApp), the HMACs in
ingress_signatures.py, the request keys in ingress_keys.py, the metrics in ingress_metrics.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from wabridge.actors.archive import MAX_BYTES as ARCHIVE_MAX_BYTES
from wabridge.actors.archive import ArchiveWriter
from wabridge.actors.directory import TenantDirectory
from wabridge.actors.ingress_genesys import GenesysWebhooks
from wabridge.actors.ingress_meta import MetaWebhooks
from wabridge.actors.ingress_metrics import (
    ARCHIVE_BYTES,
    ARCHIVE_FAILURES,
    ARCHIVES_RUNNING,
    DISCONNECTS,
    OUTBOUND_WEBHOOKS,
    REQUESTS,
    TENANT_HIT_RATIO,
    TENANT_LOOKUPS,
)
from wabridge.engine import heap, metrics, process_metrics
from wabridge.engine.settings import Settings
from wabridge.http.server import (
    JSON,
    BadContentLength,
    ClientGone,
    RequestTooLarge,
    Response,
    query_params,
    read_body,
    text,
)
from wabridge.ports import WEBHOOKS_OUTBOUND_BUCKET, BackendUnavailable

log = logging.getLogger("wabridge.ingress")

WEBHOOK_PATH = "/webhook/meta"
GENESYS_WEBHOOK_PATH = "/webhook/genesys"  # + /{tenantId}: the integration's outboundNotificationWebhookUrl
CLOSE_DEADLINE = 10.0  # seconds the archive's last segments get at shutdown
BODY_TIMEOUT = 30.0  # seconds a request's body may take to arrive (Meta sends at most 3 MB, at once)


class IngressApp(MetaWebhooks, GenesysWebhooks):
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
            except RequestTooLarge:
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
            path_tenant = path[len(WEBHOOK_PATH) + 1 :] or None  # /webhook/{tenant}: optional for Meta
            if path_tenant is not None and "/" in path_tenant:
                return "other", text(404, "not found")
            if method == "POST":
                return "webhook", await self._guarded(self.receive_webhook(path_tenant, headers, body))
            if method == "GET":
                return "handshake", await self._guarded(self.handshake(path_tenant, query))
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
