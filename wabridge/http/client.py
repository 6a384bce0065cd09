"""A lean HTTP/1.1 keep-alive client for the bridge's hottest request: the Genesys POST, one per customer message.

    pool = Http1Pool("https://api.mypurecloud.com", limit=32, timeout=10.0)
    reply = await pool.request("POST", "/api/v2/…?prefetchConversationId=true", headers, body)
    reply.status, reply.header("retry-after"), reply.body

    pools = Http1Pools(max_pools=256, limit=32, timeout=10.0)   # one pool per origin (or per tenant and origin)
    reply = await pools.request("https://api.mypurecloud.com", "POST", target, headers, body, key=(tenant_id,))

Why not aiohttp here: the HTTP client was the largest single cost of a message in the worker, and this one costs
about a third of aiohttp's CPU per request (docs/decisions.md).
What it is: a connection pool per origin (at most `limit` connections, idle ones reused, LIFO, for up to
`idle_timeout`), requests framed by hand (a fixed head, Content-Length), responses parsed by httptools (llhttp, the
parser uvicorn uses: Content-Length, chunked, keep-alive rules). Nothing else: no redirects, cookies, proxies or
compression — Genesys's inbound API needs none of them. TLS through the standard `ssl` module, one verifying context
for the process (`default_ssl_context`).

Hardening, for a client that also fetches URLs it did not choose (media):
  - no proxies: `unused_proxy(os.environ)` names a proxy variable this client would bypass, and `wabridge serve`
    refuses to start on it (one line, exit 2) unless NO_PROXY=* says direct connections are meant;
  - a request whose reused keep-alive connection turns out closed by the peer before one byte of the answer came is
    sent once more on a fresh connection (`Http1Pool.request`), as other keep-alive clients do;
  - an answer's head is bounded (MAX_HEADERS headers, MAX_HEAD_BYTES bytes), 1xx interim answers are skipped, HEAD
    answers carry no body, an origin with user-info (user:password@) is refused, never put into Host;
  - `public_only` pools connect only to public addresses (`refused_address`), checked on what the host name
    resolved to, and connect to exactly the addresses checked, so a second DNS answer cannot slip in between.

Used for every request the worker makes per message: the Genesys POST (open_messaging.py), the OAuth login (auth.py),
the media lookup and download from Meta (meta/media.py, which follows redirects itself) and the media put to S3
(adapters/objects/s3.py, signed by miniopy's SigV4 signer).

Errors: `HttpError` when no complete answer came (refused, reset, closed early, malformed, over a limit;
`AddressRefused`: a non-public address in a `public_only` pool); `TimeoutError` when `timeout` passed (connecting,
waiting for a slot, or for the answer). A connection is reused only after a complete answer that allows keep-alive;
any error or cancellation closes it, since its state is unknown.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl as ssl_module
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

USER_AGENT = b"wabridge"
MAX_BODY = 1 << 20  # bytes of a response body kept; Genesys answers are a few hundred bytes
MAX_HEADERS = 100  # header lines of an answer (interim answers' included): Genesys and Meta send ~20
MAX_HEAD_BYTES = 64 * 1024  # bytes of an answer's head: what a server may make the client hold before any body
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 addresses that carry an IPv4 address in their last 32 bits


class HttpError(Exception):
    """The request got no complete answer (connection refused, reset or closed early, or a malformed response)."""


class ReplyTooLarge(HttpError):
    """The answer's body passed the request's `max_body`: reading stopped there and the connection was closed."""


class AddressRefused(HttpError):
    """A `public_only` pool's host resolved to an address it may not reach (private, loopback, link-local, …)."""


@functools.cache
def default_ssl_context() -> ssl_module.SSLContext:
    """The TLS context of every pool not given its own: the system's CAs, certificates and host names verified.
    One per process: a context holds the parsed CA store (~1 MB) and its session cache, worth sharing."""
    return ssl_module.create_default_context()


def unused_proxy(env: Mapping[str, str]) -> str | None:
    """The proxy variable set in `env` that this client would not honour (it never tunnels), or None. NO_PROXY=*
    says every connection is meant to be direct; anything narrower cannot be checked against the hosts (tenants'
    Genesys regions, Meta's CDNs) the bridge will reach, so it does not count."""
    if any(env.get(name, "").strip() == "*" for name in ("NO_PROXY", "no_proxy")):
        return None
    for name in PROXY_VARIABLES:
        for variant in (name, name.lower()):
            if env.get(variant, "").strip():
                return variant
    return None


def refused_address(address: str) -> str | None:
    """Why a URL from outside may not be fetched from `address` ("loopback", "private", "link-local", …), or None
    for a public address. An IPv4 address carried in IPv6 (mapped, 6to4, NAT64) is judged as itself."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, "is_" + kind):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


class Reply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str | None:
        """A response header by its lower-case name."""
        return self.headers.get(name)


class _PoolConnection(asyncio.Protocol):
    """One keep-alive connection: one request at a time; httptools calls the on_* methods while parsing."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._max_body = MAX_BODY
        self._waiter: asyncio.Future[Reply] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._no_body = False  # the answer to a HEAD: its Content-Length describes a body that does not come
        self._head_done = False
        self._head_count = 0  # header lines so far, interim answers' included
        self._head_bytes = 0  # bytes of the heads so far
        self.answering = False  # a byte of the answer to the current request arrived

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answering = True
        if self._parser is None:
            self._fail(HttpError("data from the server while no request was waiting"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("the server asked to upgrade the protocol"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, HttpError) else HttpError(f"malformed response: {exc}"))
        else:
            if not self._head_done:  # all of `data` was head: httptools holds an unfinished header line itself
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._fail(HttpError(f"answer head over {MAX_HEAD_BYTES} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._parser is not None and self._close_delimited():
            self.on_message_complete()  # a body that ends where the connection does (no length, not chunked)
            return
        self._waiter = None
        waiter.set_exception(HttpError(f"connection closed before the answer ({type(exc).__name__ if exc else 'EOF'})"))

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._head_count > MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            # httptools wraps what a callback raises in HttpParserCallbackError; data_received unwraps HttpErrors.
            raise HttpError(f"answer head over {MAX_HEADERS} headers or {MAX_HEAD_BYTES} bytes")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._head_done = True
        if self._no_body and self._parser is not None and self._parser.get_status_code() >= 200:
            self.on_message_complete()  # the rest of this connection's bytes go to the next request's parser

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            # httptools wraps what a callback raises in HttpParserCallbackError; data_received unwraps this one.
            raise ReplyTooLarge(f"response body over {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, parser = self._waiter, self._parser
        if parser is not None and parser.get_status_code() < 200:
            if parser.get_status_code() == 101:
                self._fail(HttpError("the server switched protocols"))
                return
            # 100 Continue, 103 Early Hints: interim answers; llhttp goes on with the final one on the same parser.
            self._headers, self._head_done = {}, False
            return
        self._waiter = self._parser = None
        if parser is not None and not parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            assert parser is not None
            waiter.set_result(Reply(parser.get_status_code(), self._headers, b"".join(self._body)))

    # --- the pool's side ---

    async def exchange(self, request: bytes, max_body: int, no_body: bool = False) -> Reply:
        assert self.transport is not None
        self._headers, self._body, self._size, self._max_body = {}, [], 0, max_body
        self._no_body, self._head_done, self._head_count, self._head_bytes = no_body, False, 0, 0
        self.answering = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter, self._parser = self._waiter, None, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _close_delimited(self) -> bool:
        """Whether the answer so far is a whole head whose body ends where the connection does (not a cut head)."""
        return self._head_done and "content-length" not in self._headers and "transfer-encoding" not in self._headers


class Http1Pool:
    """Keep-alive connections to one origin (scheme://host:port)."""

    def __init__(
        self,
        origin: str,
        *,
        limit: int = 32,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        idle_timeout: float = 30.0,
        ssl: ssl_module.SSLContext | None = None,
        max_body: int = MAX_BODY,
        public_only: bool = False,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        if "@" in parts.netloc:  # refused, not stripped: a URL's credentials are never sent, nor silently dropped
            raise ValueError(f"an origin with user-info (user:password@) is not fetched: …@{parts.hostname}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl or default_ssl_context()) if parts.scheme == "https" else None
        self._public_only = public_only
        self._host_header = parts.netloc.encode("idna")
        self._timeout = timeout
        self._connect_timeout = connect_timeout or timeout  # a dead host fails this fast, a slow answer may take longer
        self._idle_timeout = idle_timeout
        self._max_body = max_body
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_PoolConnection] = []
        self._open: set[_PoolConnection] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"Http1Pool({self.origin!r}, open={len(self._open)}, idle={len(self._idle)})"

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes = b"", *, max_body: int | None = None
    ) -> Reply:
        """Send one request (`target`: path and query) and return the whole answer; `ReplyTooLarge` past `max_body`
        bytes of body (the pool's when not given)."""
        if self._closed:
            raise HttpError("pool closed")
        if not target.startswith("/") or any(c in target for c in " \t\r\n"):
            raise ValueError(f"not a request target: {target[:80]!r}")  # a space or line break would split the line
        head = [
            f"{method} {target} HTTP/1.1\r\n".encode("latin-1"),
            b"Host: ",
            self._host_header,
            b"\r\nUser-Agent: ",
            USER_AGENT,
            b"\r\n",
        ]
        if body or method not in ("GET", "HEAD"):  # a GET without content carries no length (RFC 9110 §8.6)
            head += [b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"\r\n")
        head.append(body)
        request = b"".join(head)
        limit, no_body = max_body or self._max_body, method == "HEAD"
        async with asyncio.timeout(self._timeout), self._slots:
            connection = self._take_idle()
            if connection is not None:
                try:
                    return await self._exchange(connection, request, limit, no_body)
                except HttpError:
                    if connection.answering:
                        raise
                    # The peer closed this idle connection as the request went out (its close crossed the request
                    # on the wire), and nothing of an answer came: send it once more on a fresh connection, inside
                    # the same timeout, unseen by the caller. As in every keep-alive client, a POST can so arrive
                    # twice in the rare case the server did act on it and then closed without a byte of answer.
            return await self._exchange(await self._connect(), request, limit, no_body)

    async def _exchange(self, connection: _PoolConnection, request: bytes, max_body: int, no_body: bool) -> Reply:
        try:
            reply = await connection.exchange(request, max_body, no_body)
        except BaseException:
            connection.close()  # state unknown (cancelled mid-answer, or broken): never reused
            self._open.discard(connection)
            raise
        if connection.closed or self._closed:
            self._open.discard(connection)
            connection.close()
        else:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        return reply

    async def aclose(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _take_idle(self) -> _PoolConnection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to have been closed by the server
            if not connection.closed and now - connection.idle_since < self._idle_timeout:
                return connection
            self._open.discard(connection)
            connection.close()
        return None

    async def _connect(self) -> _PoolConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._public_only:
                    connection = await self._connect_public(loop)
                else:
                    _, connection = await loop.create_connection(
                        _PoolConnection,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl else None,
                    )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError is an OSError)
            raise HttpError(f"cannot connect to {self.origin}: {type(exc).__name__}") from exc
        self._open.add(connection)
        return connection

    async def _connect_public(self, loop: asyncio.AbstractEventLoop) -> _PoolConnection:
        """Resolve the host, refuse it if any address is not public (a name answering both kinds is not trusted),
        then connect to those very addresses in turn: TLS still checks the certificate against the host name."""
        found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for address in addresses:
            reason = refused_address(address)
            if reason is not None:
                raise AddressRefused(f"{self._host} is {address}, a {reason} address, not a public one")
        error: OSError = OSError(f"{self._host} resolved to no address")
        for address in addresses:
            try:
                _, connection = await loop.create_connection(
                    _PoolConnection,
                    address,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
                return connection
            except OSError as exc:
                error = exc
        raise error


class _Kept:
    __slots__ = ("pool", "retired", "users")

    def __init__(self, pool: Http1Pool) -> None:
        self.pool, self.users, self.retired = pool, 0, False


class Http1Pools:
    """Keep-alive pools by key, at most `max_pools`: a key is an origin, or (say) a tenant and an origin, so that one
    tenant's traffic never shares connections with another's. Past the cap the least recently used pool is retired,
    and closed once no request is using it (closing it at once would cut those requests). `pool_options` go to each
    Http1Pool (limit, timeout, connect_timeout, idle_timeout, ssl, max_body, public_only)."""

    def __init__(self, *, max_pools: int = 256, **pool_options: Any) -> None:
        if max_pools < 1:
            raise ValueError("max_pools must be at least 1")
        self._max_pools = max_pools
        self._options = pool_options
        self._kept: OrderedDict[Hashable, _Kept] = OrderedDict()
        self._retired: set[_Kept] = set()

    def __len__(self) -> int:
        return len(self._kept)

    def __repr__(self) -> str:
        return f"Http1Pools(kept={len(self._kept)}, retired={len(self._retired)})"

    async def request(
        self,
        origin: str,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes = b"",
        *,
        key: Hashable = (),
        max_body: int | None = None,
    ) -> Reply:
        """Http1Pool.request on the pool of (`key`, `origin`)."""
        full_key = (key, origin)
        kept = self._kept.get(full_key)
        if kept is None:
            kept = self._kept[full_key] = _Kept(Http1Pool(origin, **self._options))
            while len(self._kept) > self._max_pools:
                _, old = self._kept.popitem(last=False)
                old.retired = True
                if old.users:
                    self._retired.add(old)
                else:
                    await old.pool.aclose()
        else:
            self._kept.move_to_end(full_key)
        kept.users += 1
        try:
            return await kept.pool.request(method, target, headers, body, max_body=max_body)
        finally:
            kept.users -= 1
            if kept.retired and not kept.users and kept in self._retired:
                self._retired.discard(kept)
                await kept.pool.aclose()

    async def aclose(self) -> None:
        kept = list(self._kept.values()) + list(self._retired)
        self._kept.clear()
        self._retired.clear()
        for k in kept:
            await k.pool.aclose()
