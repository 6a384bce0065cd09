"""http/client.py hardened: one TLS context, proxies refused at start-up, a request resent when its kept-alive
connection was already closed, head limits, 1xx and bodiless answers, user-info, the public-address guard — against
hand-written byte-exact servers and against HTTP servers the project did not write (uvicorn/h11, aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import ssl
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.engine.test_http1 import _self_signed, answer, read_request, serving
from wabridge.http import client as http1
from wabridge.http.client import Http1Pool, Http1Pools, HttpError

pytestmark = pytest.mark.anyio


# --- one TLS context ----------------------------------------------------------------------------------------------------


def test_every_pool_shares_one_verifying_tls_context() -> None:
    pools = [Http1Pool("https://api.mypurecloud.com"), Http1Pool("https://graph.facebook.com:8443"),
             Http1Pools(limit=2)._options.get("ssl") or Http1Pool("https://api.mypurecloud.ie")]  # fmt: skip
    contexts = {id(p._ssl) for p in pools}
    assert len(contexts) == 1
    context = pools[0]._ssl
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert Http1Pool("http://127.0.0.1:9")._ssl is None


# --- proxies: refused at start-up, never bypassed in silence --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, "HTTPS_PROXY"),
        ({"http_proxy": "http://proxy:3128"}, "http_proxy"),
        ({"ALL_PROXY": "socks5://proxy:1080", "NO_PROXY": "localhost,.internal"}, "ALL_PROXY"),  # narrower: no
        ({"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "*"}, None),  # every connection meant direct
        ({"HTTPS_PROXY": ""}, None),
        ({}, None),
    ],
)
def test_a_proxy_variable_is_named_unless_no_proxy_covers_every_host(env: dict[str, str], named: str | None) -> None:
    assert http1.unused_proxy(env) == named


def test_serve_refuses_to_start_with_a_proxy_it_would_bypass(monkeypatch, capsys, tmp_path) -> None:
    from wabridge.cli import main

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in [n for n in os.environ if n.startswith("WABRIDGE_")]:
        monkeypatch.delenv(name)  # embedded settings: start-up would stop at no other check first
    monkeypatch.setenv("WABRIDGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert main(["serve", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTPS_PROXY is set" in err and "NO_PROXY=*" in err
    # NO_PROXY=* says direct connections are meant: start-up goes on (to the next check, which stops it here).
    monkeypatch.setenv("NO_PROXY", "*")
    assert main(["serve", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


# --- a kept-alive connection the peer had already closed ---------------------------------------------------------------


async def test_a_request_on_a_reused_connection_closed_without_a_byte_is_sent_again_on_a_fresh_one() -> None:
    seen: list[tuple[int, bytes]] = []

    async def handler(reader, writer):
        connection = len(accepted) - 1
        line, _, body = await read_request(reader)
        seen.append((connection, body))
        writer.write(answer(200, b"first"))
        await writer.drain()
        line, _, body = await read_request(reader)  # the next request on the kept-alive connection:
        seen.append((connection, body))
        # closed without a byte of answer, as a server does that just timed the idle connection out

    async with serving(handler) as (origin, accepted):
        pool = Http1Pool(origin)
        assert (await pool.request("POST", "/", {}, b"one")).body == b"first"
        assert (await pool.request("POST", "/", {}, b"two")).body == b"first"  # no error reached the caller
        await pool.aclose()
    assert accepted == [0, 1]
    assert seen == [(0, b"one"), (0, b"two"), (1, b"two")]


async def test_a_reused_connection_that_broke_mid_answer_is_an_error_and_is_not_sent_again() -> None:
    requests = 0

    async def handler(reader, writer):
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(answer(200, b"first"))
        await writer.drain()
        await read_request(reader)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # part of an answer: the server did see the request
        await writer.drain()

    async with serving(handler) as (origin, accepted):
        pool = Http1Pool(origin)
        await pool.request("POST", "/", {}, b"x")
        with pytest.raises(HttpError, match="closed before the answer"):
            await pool.request("POST", "/", {}, b"x")
        await pool.aclose()
    assert requests == 2 and accepted == [0]


# --- limits, 1xx, bodiless answers, user-info -------------------------------------------------------------------------


def answering(*answers: bytes) -> contextlib.AbstractAsyncContextManager[tuple[str, list[int]]]:
    """A server that answers each request on a connection with the next of `answers`, byte for byte."""
    queue = list(answers)

    async def handler(reader, writer):
        while queue:
            await read_request(reader)
            for part in queue.pop(0).split(b"<flush>"):  # <flush>: a separate write, so a separate read
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.01)
        await reader.read()

    return serving(handler)


async def test_an_answer_with_too_many_headers_or_too_large_a_head_is_an_http_error() -> None:
    many = b"".join(b"X-H%d: v\r\n" % n for n in range(http1.MAX_HEADERS + 1))
    huge = b"X-Big: " + b"a" * (http1.MAX_HEAD_BYTES + 1) + b"\r\n"
    dribbled = b"X-Big: " + b"<flush>".join([b"b" * 16_000] * 5) + b"\r\n"  # one line, in pieces, never finished in one
    async with answering(answer(200, b"ok", many), answer(200, b"ok", huge), answer(200, b"ok", dribbled),
                               ) as (origin, _):  # fmt: skip
        for _ in range(3):
            pool = Http1Pool(origin)
            with pytest.raises(HttpError, match="answer head over"):
                await pool.request("GET", "/", {})
            await pool.aclose()
    # Right at the limits is fine.
    enough = b"".join(b"X-H%d: v\r\n" % n for n in range(http1.MAX_HEADERS - 1))  # and Content-Length
    async with answering(answer(200, b"ok", enough)) as (origin, _):
        pool = Http1Pool(origin)
        assert (await pool.request("GET", "/", {})).header("x-h98") == "v"
        await pool.aclose()


async def test_interim_answers_are_skipped_and_the_final_one_is_read() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    async with answering(
        cont + early + answer(201, b"together", b"X-Final: yes\r\n"),  # all in one read
        cont + b"<flush>" + early + b"<flush>" + answer(202, b"apart"),  # each in its own read
    ) as (origin, accepted):
        pool = Http1Pool(origin)
        reply = await pool.request("POST", "/", {}, b"x")
        assert (reply.status, reply.body, reply.header("x-final"), reply.header("link")) == (201, b"together", "yes",
                                                                                              None)  # fmt: skip
        reply = await pool.request("POST", "/", {}, b"x")
        assert (reply.status, reply.body) == (202, b"apart")
        await pool.aclose()
    assert accepted == [0]  # and the connection stayed usable


async def test_a_head_answer_has_no_body_whatever_its_content_length_says() -> None:
    async with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", answer(200, b"next")) as (
        origin, accepted,
    ):  # fmt: skip
        pool = Http1Pool(origin, timeout=5)
        reply = await pool.request("HEAD", "/", {})
        assert (reply.status, reply.body, reply.header("content-length")) == (200, b"", "5000")
        assert (await pool.request("GET", "/", {})).body == b"next"  # the connection is in step for the next one
        await pool.aclose()
    assert accepted == [0]


@pytest.mark.parametrize("origin", ["http://user:secret@127.0.0.1:9", "https://token@example.com"])
def test_an_origin_with_user_info_is_refused_never_sent_in_host(origin: str) -> None:
    with pytest.raises(ValueError, match="user-info") as refused:
        Http1Pool(origin)
    assert "secret" not in str(refused.value) and "token" not in str(refused.value)


# --- the public-address guard ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fe80::1%2", "link-local"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("157.240.22.35", None), ("2a03:2880:f12f:83:face:b00c:0:25de", None), ("8.8.8.8", None),
    ],
)  # fmt: skip
def test_only_public_addresses_pass_the_guard(address: str, reason: str | None) -> None:
    assert http1.refused_address(address) == reason


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # the literal, and a name: judged by what it resolves to
async def test_a_public_only_pool_refuses_a_loopback_host_without_connecting(host: str) -> None:
    async def handler(reader, writer):
        await read_request(reader)

    async with serving(handler) as (origin, accepted):
        port = origin.rsplit(":", 1)[1]
        pool = Http1Pool(f"http://{host}:{port}", public_only=True)
        with pytest.raises(http1.AddressRefused, match="loopback address"):
            await pool.request("GET", "/", {})
        await pool.aclose()
        # The same pool without the guard reaches it: the refusal is the guard's, not the network's.
        open_pool = Http1Pool(f"http://{host}:{port}", timeout=2)
        with contextlib.suppress(HttpError, TimeoutError):
            await open_pool.request("GET", "/", {})
        await open_pool.aclose()
    assert len(accepted) == 1


async def test_the_guard_connects_to_the_address_it_checked_not_to_a_second_dns_answer(monkeypatch) -> None:
    """DNS rebinding: the name answers an allowed address to the check, then a forbidden one. The pool resolves once
    and connects to what it checked."""

    async def handler(reader, writer):
        await read_request(reader)
        writer.write(answer(200, b"checked"))
        await writer.drain()

    async with serving(handler) as (origin, accepted):
        port = int(origin.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        answers = iter(["127.0.0.1", "10.255.255.1"])

        async def rebinding(host, port, *args, **kwargs):
            import socket

            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

        monkeypatch.setattr(loop, "getaddrinfo", rebinding)
        monkeypatch.setattr(http1, "refused_address", lambda a: "private" if a.startswith("10.") else None)
        pool = Http1Pool(f"http://rebind.example:{port}", public_only=True, timeout=3)
        assert (await pool.request("GET", "/", {})).body == b"checked"
        await pool.aclose()
    assert accepted == [0]


# --- servers the project did not write ----------------------------------------------------------------------------------


async def asgi_app(scope, receive, send):
    """uvicorn's side: one route per behaviour under test."""
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    body = b""
    while True:  # reading the body is what makes uvicorn answer `Expect: 100-continue`
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, headers, parts = 200, [(b"content-type", b"text/plain")], [b"hello"]
    if path == "/client":
        parts = [str(scope["client"][1]).encode()]
    elif path == "/echo":
        parts = [body]
    elif path == "/chunks":
        parts = [b"part-%d;" % n for n in range(50)]  # no length: h11 frames it chunked
    elif path == "/many-headers":
        headers += [(b"x-h%d" % n, b"v") for n in range(150)]
    elif path == "/big-header":
        headers.append((b"x-big", b"a" * 70_000))
    elif path == "/empty":
        status, parts = 204, []
    elif path == "/cached":
        status, parts, headers = 304, [], [(b"etag", b'"v1"')]
    if path not in ("/chunks", "/empty", "/cached"):
        headers.append((b"content-length", str(sum(map(len, parts))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for n, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part, "more_body": n < len(parts) - 1})
    if not parts:
        await send({"type": "http.response.body", "body": b""})
    del method


@contextlib.contextmanager
def uvicorn_server(**options) -> Iterator[str]:
    """uvicorn (its h11 protocol) in a thread of its own, so it serves while a test holds this loop still."""
    import uvicorn

    config = uvicorn.Config(asgi_app, host="127.0.0.1", port=0, http="h11", lifespan="off", log_level="error",
                            **options)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.asynccontextmanager
async def aiohttp_server() -> AsyncIterator[str]:
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        body = await request.read()
        if path == "/client":
            return web.Response(text=str(request.transport.get_extra_info("peername")[1]))
        if path == "/echo":
            return web.Response(body=body)
        if path == "/chunks":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for n in range(50):
                await response.write(b"part-%d;" % n)
            await response.write_eof()
            return response
        if path == "/many-headers":
            return web.Response(text="hello", headers={f"x-h{n}": "v" for n in range(150)})
        if path == "/big-header":
            return web.Response(text="hello", headers={"x-big": "a" * 70_000})
        if path == "/empty":
            return web.Response(status=204)
        if path == "/cached":
            return web.Response(status=304, headers={"etag": '"v1"'})
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture(params=["uvicorn", "aiohttp"])
async def server(request) -> AsyncIterator[str]:
    if request.param == "uvicorn":
        with uvicorn_server() as origin:
            yield origin
    else:
        async with aiohttp_server() as origin:
            yield origin


async def test_keep_alive_reuses_one_connection(server: str) -> None:
    pool = Http1Pool(server)
    ports = {(await pool.request("GET", "/client", {})).body for _ in range(5)}
    echoed = await pool.request("POST", "/echo", {"Content-Type": "application/json"}, b'{"a":1}')
    await pool.aclose()
    assert len(ports) == 1 and echoed.body == b'{"a":1}'


async def test_a_chunked_answer_is_read_whole(server: str) -> None:
    pool = Http1Pool(server)
    reply = await pool.request("GET", "/chunks", {})
    assert reply.body == b"".join(b"part-%d;" % n for n in range(50))
    assert (await pool.request("GET", "/", {})).body == b"hello"  # in step after the last chunk
    await pool.aclose()


@pytest.mark.parametrize("path", ["/many-headers", "/big-header"])
async def test_too_many_or_too_large_headers_are_an_http_error(server: str, path: str) -> None:
    pool = Http1Pool(server)
    with pytest.raises(HttpError, match="answer head over"):
        await pool.request("GET", path, {})
    assert (await pool.request("GET", "/", {})).body == b"hello"  # a fresh connection for the next request
    await pool.aclose()


async def test_100_continue_is_skipped_for_the_final_answer(server: str) -> None:
    pool = Http1Pool(server, timeout=5)
    reply = await pool.request("POST", "/echo", {"Expect": "100-continue"}, b"the body")
    assert (reply.status, reply.body) == (200, b"the body")
    assert (await pool.request("GET", "/", {})).body == b"hello"
    await pool.aclose()


@pytest.mark.parametrize(("method", "path", "status"), [("HEAD", "/", 200), ("GET", "/empty", 204),
                                                        ("GET", "/cached", 304)])  # fmt: skip
async def test_answers_without_a_body_end_at_their_head(server: str, method: str, path: str, status: int) -> None:
    pool = Http1Pool(server, timeout=5)
    ports = set()
    for _ in range(2):
        reply = await pool.request(method, path, {})
        assert (reply.status, reply.body) == (status, b"")
        ports.add((await pool.request("GET", "/client", {})).body)
    await pool.aclose()
    assert len(ports) == 1  # the connection stayed in step throughout


def wait_for_peer_close(pool: Http1Pool) -> None:
    """Block this thread (and so the event loop: the pool cannot notice) until the peer closed the idle connection:
    its socket turns readable with nothing to read."""
    (connection,) = pool._idle
    assert connection.transport is not None
    fd = connection.transport.get_extra_info("socket").fileno()
    readable, _, _ = select.select([fd], [], [], 30)
    assert readable, "the server did not close the idle connection"


async def test_uvicorn_closing_an_idle_connection_as_the_next_request_goes_out_costs_the_caller_nothing() -> None:
    with uvicorn_server(timeout_keep_alive=0.2) as origin:
        pool = Http1Pool(origin, timeout=10)
        first = (await pool.request("GET", "/client", {})).body
        wait_for_peer_close(pool)
        # The pool still holds the connection as idle (the loop has not seen the close): the request goes out on it,
        # meets the close, and is sent again on a new connection.
        second = await pool.request("POST", "/echo", {}, b"once more")
        assert second.status == 200 and second.body == b"once more"
        assert (await pool.request("GET", "/client", {})).body != first  # a new connection since
        await pool.aclose()


# --- HTTPS against a server that is not ours --------------------------------------------------------------------------


async def test_https_against_uvicorn_with_the_shared_context_refuses_an_unknown_certificate(tmp_path) -> None:
    cert, key = _self_signed(tmp_path)
    with uvicorn_server(ssl_certfile=cert, ssl_keyfile=key) as origin:
        https = origin.replace("http://127.0.0.1", "https://localhost")
        trusting = ssl.create_default_context(cafile=cert)
        pool = Http1Pool(https, ssl=trusting)
        assert (await pool.request("GET", "/", {})).body == b"hello"
        await pool.aclose()
        stranger = Http1Pool(https, timeout=5)  # the shared default context: the system's CAs only
        with pytest.raises(HttpError, match="cannot connect"):
            await stranger.request("GET", "/", {})
        await stranger.aclose()
