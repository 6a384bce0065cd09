"""`wabridge sim meta`: a stand-in for Meta — the Graph media endpoints, and a sender of signed webhooks.

Graph side (what the media actor talks to), served by `MetaSim`:
  GET  /{version}/{media_id}       Bearer token → {messaging_product, url, mime_type, sha256 (hex), file_size, id}
                                   401 wrong/missing token, 404 unknown or forced-missing id
  GET  /media/{media_id}?expires=&sig=   same Bearer → the bytes; 403 once the url is older than 5 minutes
  POST /sim/faults                 {"media_status": 404|500|…, "count": n, "phase": "lookup"|"download"}
                                   {"corrupt": n}  serve n downloads with one byte flipped (sha256 mismatch)
                                   {"file_size": bytes, "count": n}  understate/overstate file_size in n lookups
                                   {"missing": [media ids]}  those ids answer 404 from now on
  DELETE /sim/faults               clear every fault
  GET  /sim/stats                  counters: lookups, downloads, bytes_served, unauthorized, expired, faults_served
  POST /sim/clock                  {"advance": seconds}: age issued urls without waiting

Media ids are the self-describing ids of `webhooks.py`, so webhooks built anywhere resolve here.
The HTTP server is a small asyncio HTTP/1.1 server (keep-alive, Content-Length only): a simulator needs port 0,
in-process start/stop per test and streamed bodies, which Granian's embed API does not offer simply.

Sending side (what the bridge's outbound direction talks to): `meta_send.Outbound`, mounted here —
  POST /[{version}/]{phone_number_id}/messages and /media, the 24-hour window, throttling, faults by code, and
  signed status webhooks POSTed to the bridge (`bridge_url`); see that module for the endpoints under /sim.
  POST /sim/reset                  forget everything both sides recorded, and every fault

Sender side: `send_kinds` (one signed webhook per message, or batches) and `run_load` (open loop, see its doc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import httpx
import msgspec

from wabridge.sim import meta_send, webhooks

URL_TTL = 300.0  # Meta: a media url is valid for 5 minutes
MAX_HEADER_BYTES = 64 * 1024
MAX_CONTROL_BODY = 64 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# A POST /sim/faults naming any of these is a fault of the sending side; the rest are the media side's.
_SEND_FAULT_KEYS = {"target", "status", "code", "latency_ms", "async"}


class SimStats(msgspec.Struct, frozen=True):
    lookups: int = 0  # Graph lookups answered 200
    downloads: int = 0  # downloads started (200)
    bytes_served: int = 0
    unauthorized: int = 0
    expired: int = 0
    not_found: int = 0
    faults_served: int = 0


@dataclass
class _Fault:
    phase: str  # "lookup" | "download"
    status: int
    remaining: int


@dataclass
class _Faults:
    statuses: list[_Fault] = field(default_factory=list)
    corrupt: int = 0
    file_size: int | None = None
    file_size_count: int = 0
    missing: set[str] = field(default_factory=set)

    def take_status(self, phase: str) -> int | None:
        for fault in self.statuses:
            if fault.phase == phase and fault.remaining > 0:
                fault.remaining -= 1
                return fault.status
        return None


class MetaSim:
    """The Graph media endpoints on loopback. `async with MetaSim(port=0) as sim:` then point the bridge's
    `graph_api_url` at `sim.graph_url`. `tokens` empty accepts any non-empty bearer token.
    The sending side is `sim.outbound` (meta_send.Outbound): `numbers` maps each phone number id to its app secret
    (empty: any number, signed with `app_secret`), status webhooks go to `bridge_url`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Iterable[str] = (),
        version: str = "v23.0",
        url_ttl: float = URL_TTL,
        clock: Callable[[], float] = time.time,
        numbers: Mapping[str, str] | None = None,
        app_secret: str | None = None,
        bridge_url: str | None = None,
        rate: float = 80.0,
        quirks: meta_send.Quirks | None = None,
        status_delay: float = 0.05,
        status_retries: int = 3,
        retry_backoff: float = 0.2,
        open_windows: bool = False,
    ) -> None:
        self.host, self.port, self.version = host, port, version
        self._tokens = frozenset(tokens)
        self._url_ttl = url_ttl
        self._clock = clock
        self._skew = 0.0
        self._url_key = secrets.token_bytes(32)  # signs download urls; a fresh sim never honours an old sim's url
        self._faults = _Faults()
        self._stats: dict[str, int] = dict.fromkeys(SimStats.__struct_fields__, 0)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.outbound = meta_send.Outbound(
            self._authorized,
            self._now,
            dict(numbers or {}),
            app_secret,
            bridge_url,
            rate,
            quirks or meta_send.Quirks(),
            status_delay,
            status_retries,
            retry_backoff,
            open_windows,
        )

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> MetaSim:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEADER_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            # Let every handler see its aborted connection and return: a handler still pending when the loop
            # ends gets cancelled, and Python 3.11's stream callback then logs a spurious CancelledError.
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=5)
            await self._server.wait_closed()
            self._server = None
        await self.outbound.close()

    async def __aenter__(self) -> MetaSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/{self.version}"

    # --- control (also over HTTP) ---------------------------------------------------------------------------------

    def stats(self) -> SimStats:
        return SimStats(**self._stats)

    def inject(
        self,
        *,
        media_status: int | None = None,
        count: int = 1,
        phase: str = "lookup",
        corrupt: int = 0,
        file_size: int | None = None,
        missing: Iterable[str] = (),
    ) -> None:
        if phase not in ("lookup", "download"):
            raise ValueError("phase must be 'lookup' or 'download'")
        if media_status is not None:
            self._faults.statuses.append(_Fault(phase, int(media_status), int(count)))
        self._faults.corrupt += int(corrupt)
        if file_size is not None:
            self._faults.file_size, self._faults.file_size_count = int(file_size), int(count)
        self._faults.missing.update(missing)

    def clear_faults(self) -> None:
        self._faults = _Faults()

    def advance_clock(self, seconds: float) -> None:
        self._skew += seconds

    def _now(self) -> float:
        return self._clock() + self._skew

    def _count(self, name: str, n: int = 1) -> None:
        self._stats[name] += n

    # --- HTTP -----------------------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                send = meta_send.Outbound.route(method, urlsplit(target).path)
                limit = MAX_CONTROL_BODY if send is None else meta_send.body_limit(send[1])
                if "transfer-encoding" in headers:  # Content-Length only: a chunked body would be misread as requests
                    await _respond(writer, 411, _json({"error": "send a Content-Length"}), close=True)
                    return
                declared = headers.get("content-length", "0")
                length = int(declared) if declared.isdigit() else limit + 1  # unreadable: refuse it
                if length > limit:
                    await _respond(writer, 413, _json({"error": "body too large"}), close=True)
                    return
                body = await reader.readexactly(length) if length else b""
                payload: bytes | _Sized
                try:
                    if send is not None:
                        status, content_type, payload = await self.outbound.handle(*send, headers, body)
                    else:
                        status, content_type, payload = self._route(method, target, headers, body)
                except Exception as exc:  # a simulator bug answers 500 rather than hanging the client
                    status, content_type, payload = 500, "application/json", _json({"error": repr(exc)[:200]})
                close = headers.get("connection", "").lower() == "close"
                await _respond(writer, status, payload, content_type=content_type, close=close)
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.discard(writer)
            self._handlers.discard(handler)
            writer.close()

    def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes | _Sized]:
        url = urlsplit(target)
        parts = [p for p in url.path.split("/") if p]
        json_type = "application/json"
        if parts[:1] == ["sim"]:
            return self._control(method, parts[1:], body)
        if method != "GET":
            return 405, json_type, _json({"error": "method not allowed"})
        if len(parts) == 2 and parts[0] == "media":
            return self._download(parts[1], parse_qs(url.query), headers)
        if len(parts) == 2 and parts[0] == self.version:
            return self._lookup(parts[1], headers)
        return 404, json_type, _graph_error(404, "Unknown path")

    def _control(self, method: str, parts: list[str], body: bytes) -> tuple[int, str, bytes | _Sized]:
        json_type = "application/json"
        try:
            args = json.loads(body) if body else {}
            if (answer := self.outbound.control(method, parts, args)) is not None:
                return answer
            if method == "GET" and parts == ["stats"]:
                return 200, json_type, msgspec.json.encode(self.stats())
            if method == "POST" and parts == ["faults"] and args.keys() & _SEND_FAULT_KEYS:
                self.outbound.inject(**args)
                return 200, json_type, _json({"ok": True})
            if method == "POST" and parts == ["faults"]:
                self.inject(**args)
                return 200, json_type, _json({"ok": True})
            if method == "DELETE" and parts == ["faults"]:
                self.clear_faults()
                self.outbound.faults.clear()
                return 200, json_type, _json({"ok": True})
            if method == "POST" and parts == ["reset"]:
                self.clear_faults()
                self._stats = dict.fromkeys(SimStats.__struct_fields__, 0)
                self.outbound.reset()
                return 200, json_type, _json({"ok": True})
            if method == "POST" and parts == ["clock"]:
                self.advance_clock(float(args["advance"]))
                return 200, json_type, _json({"ok": True})
        except (ValueError, TypeError, KeyError, AttributeError, msgspec.ValidationError) as exc:  # a non-object too
            return 400, json_type, _json({"error": str(exc)})
        return 404, json_type, _json({"error": "unknown control endpoint"})

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return not self._tokens or token.strip() in self._tokens

    def _lookup(self, media_id: str, headers: dict[str, str]) -> tuple[int, str, bytes | _Sized]:
        json_type = "application/json"
        if not self._authorized(headers):
            self._count("unauthorized")
            return 401, json_type, _graph_error(190, "Invalid OAuth access token.")
        forced = self._faults.take_status("lookup")
        if forced is not None:
            self._count("faults_served")
            return forced, json_type, _graph_error(forced, "Simulated fault")
        try:
            mime, size = webhooks.parse_media_id(media_id)
        except webhooks.UnknownMedia:
            mime = None
        if mime is None or media_id in self._faults.missing:
            self._count("not_found")
            return 404, json_type, _graph_error(100, "Unsupported get request. Object does not exist.")
        if self._faults.file_size_count > 0 and self._faults.file_size is not None:
            self._faults.file_size_count -= 1
            size = self._faults.file_size
        expires = int(self._now() + self._url_ttl)
        url = f"{self.base_url}/media/{media_id}?expires={expires}&sig={self._url_sig(media_id, expires)}"
        self._count("lookups")
        return (
            200,
            json_type,
            _json(
                {
                    "messaging_product": "whatsapp",
                    "url": url,
                    "mime_type": mime,
                    "sha256": webhooks.sha256_hex(media_id),
                    "file_size": size,
                    "id": media_id,
                }
            ),
        )

    def _url_sig(self, media_id: str, expires: int) -> str:
        return hmac.new(self._url_key, f"{media_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _download(
        self, media_id: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, str, bytes | _Sized]:
        json_type = "application/json"
        if not self._authorized(headers):
            self._count("unauthorized")
            return 401, json_type, _graph_error(190, "Invalid OAuth access token.")
        try:
            expires = int(query["expires"][0])
            sig = query["sig"][0]
        except (KeyError, ValueError, IndexError):
            return 403, json_type, _graph_error(403, "Missing or malformed signature")
        if not hmac.compare_digest(sig, self._url_sig(media_id, expires)):
            return 403, json_type, _graph_error(403, "Bad signature")
        if self._now() > expires:
            self._count("expired")
            return 403, json_type, _graph_error(403, "URL signature expired")
        forced = self._faults.take_status("download")
        if forced is not None:
            self._count("faults_served")
            return forced, json_type, _graph_error(forced, "Simulated fault")
        if media_id in self._faults.missing:
            self._count("not_found")
            return 404, json_type, _graph_error(404, "Not found")
        mime, size = webhooks.parse_media_id(media_id)
        chunks = webhooks.iter_media_bytes(media_id)
        if self._faults.corrupt > 0:
            self._faults.corrupt -= 1
            chunks = _corrupted(chunks)
        self._count("downloads")
        return 200, mime, _Sized(chunks, size, lambda n: self._count("bytes_served", n))


# --- HTTP plumbing --------------------------------------------------------------------------------------------------


class _Sized:
    """A streamed body whose length is known up front (Content-Length), counting what was written."""

    def __init__(self, chunks: Iterator[bytes], size: int, on_sent: Callable[[int], None]) -> None:
        self.chunks, self.size, self.on_sent = chunks, size, on_sent


def _corrupted(chunks: Iterator[bytes]) -> Iterator[bytes]:
    first = bytearray(next(chunks))
    first[-1] ^= 0xFF
    yield bytes(first)
    yield from chunks


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _graph_error(code: int, message: str) -> bytes:
    return _json({"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Sim"}})


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes | _Sized,
    *,
    content_type: str = "application/json",
    close: bool = False,
) -> None:
    size = body.size if isinstance(body, _Sized) else len(body)
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {size}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    writer.write(head.encode())
    if isinstance(body, _Sized):
        for chunk in body.chunks:
            writer.write(chunk)
            body.on_sent(len(chunk))
            await writer.drain()
    else:
        writer.write(body)
    await writer.drain()


# --- sender ---------------------------------------------------------------------------------------------------------

SEND_KINDS = (*webhooks.ALL_KINDS, "status", "bsuid")  # plus a receipt and a sender known only by user id


class SendSummary(msgspec.Struct, frozen=True):
    posts: int
    messages: int
    statuses: dict[str, int]  # HTTP status (or error name) → count


class LoadReport(msgspec.Struct, frozen=True):
    intended: int  # rate × duration
    sent: int
    skipped: int  # not sent: more than `max_pending` requests were already waiting (the target is far behind)
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    elapsed_s: float
    achieved_rate: float


def customer_wa_id(n: int) -> str:
    return f"1555{n % 10_000_000:07d}"


def build_item(kind: str, customer: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(messages, statuses) for one send of `kind` (one of SEND_KINDS) by customer number `customer`."""
    wa_id = customer_wa_id(customer)
    if kind == "status":
        return [], [webhooks.status(webhooks.new_wamid(), recipient_id=wa_id)]
    if kind == "bsuid":
        return [webhooks.message("text", wa_id=None, user_id=f"US.{customer:019d}")], []
    return [webhooks.message(kind, wa_id=wa_id)], []


def build_body(phone_number_id: str, kinds: Sequence[str], customer: int) -> bytes:
    messages: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    for kind in kinds:
        m, s = build_item(kind, customer)
        messages += m
        statuses += s
    return webhooks.webhook(phone_number_id, messages, statuses=statuses)


def _headers(body: bytes, app_secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": webhooks.sign(body, app_secret)}


async def _post(client: httpx.AsyncClient, url: str, body: bytes, app_secret: str) -> str:
    try:
        response = await client.post(url, content=body, headers=_headers(body, app_secret))
        return str(response.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def send_kinds(
    url: str,
    app_secret: str,
    phone_number_id: str,
    *,
    kinds: Sequence[str] = SEND_KINDS,
    customers: int = 1,
    count: int = 1,
    batch: int = 1,
    timeout: float = 10.0,
    sim_url: str | None = None,
) -> SendSummary:
    """`count` rounds of every kind in `kinds`, customers taking turns message by message; `batch` messages per POST
    (one by one by default, as Meta mostly does). Sent in order, one POST at a time. With `sim_url` (a MetaSim's base
    url) each customer who wrote has their 24-hour window opened there, as writing to a business does."""
    rounds = [kind for _ in range(count) for kind in kinds]
    items = [(kind, n % customers) for n, kind in enumerate(rounds)]
    counts: dict[str, int] = {}
    posts = messages = 0
    async with httpx.AsyncClient(timeout=timeout) as client:
        for start in range(0, len(items), batch):
            group = items[start : start + batch]
            msgs: list[dict[str, Any]] = []
            stats: list[dict[str, Any]] = []
            for kind, customer in group:
                m, s = build_item(kind, customer)
                msgs += m
                stats += s
            body = webhooks.webhook(phone_number_id, msgs, statuses=stats)
            if sim_url is not None:  # the customer wrote, whatever the bridge then answers
                for wa_id in dict.fromkeys(m["from"] for m in msgs if "from" in m):
                    window = {"phone_number_id": phone_number_id, "wa_id": wa_id}
                    await client.post(f"{sim_url}/sim/window", json=window)
            code = await _post(client, url, body, app_secret)
            counts[code] = counts.get(code, 0) + 1
            posts += 1
            messages += len(msgs)
    return SendSummary(posts=posts, messages=messages, statuses=counts)


async def run_load(
    url: str,
    app_secret: str,
    phone_number_id: str,
    *,
    rate: float,
    duration: float,
    kinds: Sequence[str] = ("text",),
    customers: int = 100,
    concurrency: int = 64,
    max_pending: int | None = None,
    timeout: float = 10.0,
) -> LoadReport:
    """Open-loop load: request i is due at start + i/rate whatever happened to earlier ones, and its latency is
    measured from that due time — so a stalled server shows up as latency instead of silently lowering the rate
    (coordinated omission). `concurrency` workers each hold one keep-alive connection; due requests wait in a
    queue of `max_pending` (default 16 × concurrency), and a request due while that queue is full is skipped
    and counted rather than queued without bound.

    The requests go over plain asyncio streams, not httpx: measured here (2 shared cores, load average 3.5) httpx
    topped out near 200-260 requests/s, far below the bridge, because httpcore re-tries a failing `import sniffio`
    per request and scans its pool per request; a raw keep-alive writer costs a few tens of µs."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    target = urlsplit(url)
    if target.scheme != "http" or not target.hostname:
        raise ValueError("load mode speaks plain http:// (put TLS in front of the bridge, not in the generator)")
    total = int(rate * duration)
    max_pending = max_pending or 16 * concurrency
    latencies: list[float] = []
    counts: dict[str, int] = {}
    skipped = 0
    send, receive = anyio.create_memory_object_stream[tuple[int, float]](max_pending)

    async def worker(due_requests: anyio.abc.ObjectReceiveStream[tuple[int, float]]) -> None:
        conn = _WebhookConnection(target.hostname or "", target.port or 80, target.path or "/", timeout)
        try:
            async with due_requests:
                async for i, due in due_requests:
                    body = build_body(phone_number_id, (kinds[i % len(kinds)],), i % customers)
                    code = await conn.post(body, webhooks.sign(body, app_secret))
                    latencies.append(time.perf_counter() - due)
                    counts[code] = counts.get(code, 0) + 1
        finally:
            conn.close()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker, receive.clone())
        receive.close()  # the workers hold clones: the stream ends when `send` closes and they drained it
        async with send:
            for i in range(total):
                due = start + i / rate
                await anyio.sleep(max(0.0, due - time.perf_counter()))
                try:
                    send.send_nowait((i, due))
                except anyio.WouldBlock:
                    skipped += 1
    elapsed = time.perf_counter() - start
    latencies.sort()
    return LoadReport(
        intended=total,
        sent=len(latencies),
        skipped=skipped,
        statuses=counts,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        p999_ms=_percentile(latencies, 0.999),
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
        elapsed_s=elapsed,
        achieved_rate=len(latencies) / elapsed if elapsed else 0.0,
    )


class _WebhookConnection:
    """One keep-alive HTTP/1.1 connection that POSTs webhooks; reconnects after any failure."""

    def __init__(self, host: str, port: int, path: str, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"User-Agent: wabridge-sim-meta\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, signature: str) -> str:
        try:
            with anyio.fail_after(self.timeout):
                return await self._exchange(body, signature)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
            self.close()
            return type(exc).__name__

    async def _exchange(self, body: bytes, signature: str) -> str:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"X-Hub-Signature-256: {signature}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        self.writer.write(self.prefix + head + body)
        await self.writer.drain()
        status_line, _, rest = (await self.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        status = status_line.split(b" ", 2)[1].decode()
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in rest.split(b"\r\n") if line)
        }
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while size := int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")
        else:
            await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


# --- CLI (wabridge/cli/sim.py mounts this under `wabridge sim meta`) -----------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="meta_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True
    serve = sub.add_parser("serve", help="serve the Graph media endpoints until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8091)
    serve.add_argument("--token", action="append", default=[], help="accepted bearer token (repeat); none = any")
    serve.add_argument("--version", default="v23.0", help="Graph API version in the path")
    serve.add_argument(
        "--phone-number",
        action="append",
        default=[],
        metavar="ID[=SECRET]",
        help="a phone number id the sending side knows, with its app secret (repeat); none = any",
    )
    serve.add_argument(
        "--app-secret",
        default=os.environ.get("WABRIDGE_SIM_APP_SECRET"),
        help="app secret of the numbers given without one (or WABRIDGE_SIM_APP_SECRET)",
    )
    serve.add_argument("--bridge-url", help="where status webhooks go, e.g. http://127.0.0.1:8080/webhook/meta")
    serve.add_argument("--rate", type=float, default=80.0, help="sends per second per number before 130429; 0 = off")
    serve.add_argument(
        "--open-windows",
        action="store_true",
        help="every customer counts as having written just now (no 131047 without set-up)",
    )
    serve.add_argument("--status-delay", type=float, default=0.05, help="seconds between a send's statuses")
    serve.add_argument("--out-of-order", type=float, default=0.0, help="probability a send's statuses are swapped")
    serve.add_argument("--duplicate", type=float, default=0.0, help="probability one status is posted twice")
    serve.add_argument(
        "--early", type=float, default=0.0, help="probability the first status is posted before the send is answered"
    )
    serve.add_argument("--seed", type=int, help="seed of the quirks, for a reproducible run")
    send = sub.add_parser("send", help="send signed webhooks of every message type, or a constant-rate load")
    send.add_argument("--url", required=True, help="the bridge's webhook URL")
    send.add_argument(
        "--app-secret",
        default=os.environ.get("WABRIDGE_SIM_APP_SECRET"),
        help="Meta app secret (or WABRIDGE_SIM_APP_SECRET, which stays out of the process list)",
    )
    send.add_argument("--phone-number-id", required=True)
    send.add_argument(
        "--kinds", help=f"'all' or a comma list of: {','.join(SEND_KINDS)} (default: all; text under load)"
    )
    send.add_argument("--customers", type=int, default=1)
    send.add_argument("--count", type=int, default=1, help="rounds of every kind")
    send.add_argument("--batch", type=int, default=1, help="messages per POST")
    send.add_argument("--rate", type=float, help="load mode: webhooks per second (open loop)")
    send.add_argument("--duration", type=float, default=10.0, help="load mode: seconds")
    send.add_argument("--concurrency", type=int, default=64, help="load mode: connections")
    send.add_argument(
        "--sim-url", help="a running `sim meta serve` (its base url) told who wrote, opening their 24-hour window"
    )


def _kinds(text: str) -> tuple[str, ...]:
    if text == "all":
        return SEND_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in SEND_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown kind {(unknown or [text])[0]!r}; choose from {','.join(SEND_KINDS)}")
    return kinds


def run(args: argparse.Namespace) -> int:
    if args.meta_command == "serve":
        try:  # as the Genesys simulator: on the machine it shares with a bench, its CPU is taken from the bridge
            import uvloop

            return uvloop.run(_serve_forever(args))
        except ImportError:
            return asyncio.run(_serve_forever(args))
    if not args.app_secret:
        print("wabridge sim meta send: --app-secret or WABRIDGE_SIM_APP_SECRET is required", file=sys.stderr)
        return 2
    try:
        kinds = _kinds(args.kinds or ("text" if args.rate else "all"))
    except ValueError as exc:
        print(f"wabridge sim meta send: {exc}", file=sys.stderr)
        return 2
    if args.rate:
        report = asyncio.run(
            run_load(
                args.url,
                args.app_secret,
                args.phone_number_id,
                rate=args.rate,
                duration=args.duration,
                kinds=kinds,
                customers=args.customers,
                concurrency=args.concurrency,
            )
        )
        print(msgspec.json.encode(report).decode())
        statuses = report.statuses
    else:
        summary = asyncio.run(
            send_kinds(
                args.url,
                args.app_secret,
                args.phone_number_id,
                kinds=kinds,
                customers=args.customers,
                count=args.count,
                batch=args.batch,
                sim_url=args.sim_url,
            )
        )
        print(msgspec.json.encode(summary).decode())
        statuses = summary.statuses
    total = sum(statuses.values())
    return 0 if total and statuses.get("200", 0) == total else 1


class MetaSimProcess:
    """The Graph endpoints in a child process (`python -m wabridge.sim.meta serve`), so a benchmark's simulator does
    not share the measured process's event loop. `with MetaSimProcess(tokens=[…]) as graph_url: …`"""

    def __init__(
        self, *, port: int = 0, tokens: Iterable[str] = (), version: str = "v23.0", args: Sequence[str] = ()
    ) -> None:
        self.argv = [sys.executable, "-m", "wabridge.sim.meta", "serve", "--port", str(port), "--version", version]
        for token in tokens:
            self.argv += ["--token", token]  # test tokens only: a child's argv is visible to local users
        self.argv += args  # further `serve` options: the sending side's knobs
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "graph_api_url=" not in line:
            self.__exit__()
            raise RuntimeError(f"meta sim did not start: {line!r}")
        return line.split("graph_api_url=", 1)[1].split()[0]

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wabridge sim meta")
    add_arguments(parser)
    return run(parser.parse_args(argv))


async def _serve_forever(args: argparse.Namespace) -> int:
    numbers = dict([*n.split("=", 1), ""][:2] for n in args.phone_number)
    quirks = meta_send.Quirks(args.out_of_order, args.duplicate, args.early, args.seed)
    async with MetaSim(
        host=args.host,
        port=args.port,
        tokens=args.token,
        version=args.version,
        numbers={n: secret or args.app_secret or "" for n, secret in numbers.items()},
        app_secret=args.app_secret,
        bridge_url=args.bridge_url,
        rate=args.rate,
        quirks=quirks,
        status_delay=args.status_delay,
        open_windows=args.open_windows,
    ) as sim:
        print(f"meta sim: graph_api_url={sim.graph_url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
