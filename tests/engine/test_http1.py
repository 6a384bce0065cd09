"""http/client.py against real sockets: a tiny asyncio server answers with exactly the bytes each test chooses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from wabridge.http.client import ReplyTooLarge, Http1Pool, Http1Pools, HttpError

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on a free port; yields its origin and the list of connections it accepted (by number)."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get(b"Content-Length", b"0")))
    return lines[0], headers, body


def answer(status: int, body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), b"".join(extra), body)


async def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    seen = []

    async def handler(reader, writer):
        while True:
            line, headers, body = await read_request(reader)
            seen.append((line, headers, body))
            writer.write(answer(202, b'{"id":"m1"}', b"Retry-After: 7\r\n"))

    async with serving(handler) as (origin, accepted):
        pool = Http1Pool(origin, limit=4)
        for n in range(5):
            reply = await pool.request("POST", f"/api/x?n={n}", {"Authorization": "Bearer t"}, b'{"a":1}')
            assert (reply.status, reply.body, reply.header("retry-after")) == (202, b'{"id":"m1"}', "7")
        await pool.request("GET", "/media/1", {})
        await pool.aclose()
    assert accepted == [0]
    assert seen[5][0] == b"GET /media/1 HTTP/1.1" and b"Content-Length" not in seen[5][1]
    line, headers, body = seen[4]
    assert line == b"POST /api/x?n=4 HTTP/1.1"
    assert headers[b"Authorization"] == b"Bearer t" and headers[b"Content-Length"] == b"7"
    assert headers[b"Host"] == origin.removeprefix("http://").encode()
    assert body == b'{"a":1}'


async def test_chunked_answer_is_read_whole() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async with serving(handler) as (origin, _):
        pool = Http1Pool(origin)
        assert (await pool.request("GET", "/", {})).body == b"hello world"
        await pool.aclose()


async def test_connection_close_answer_is_not_reused() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(answer(200, b"ok", b"Connection: close\r\n"))
        await writer.drain()

    async with serving(handler) as (origin, accepted):
        pool = Http1Pool(origin)
        for _ in range(3):
            assert (await pool.request("GET", "/", {})).body == b"ok"
        await pool.aclose()
    assert accepted == [0, 1, 2]


async def test_body_ending_with_the_connection_is_read() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with serving(handler) as (origin, _):
        pool = Http1Pool(origin)
        assert (await pool.request("GET", "/", {})).body == b"until the end"
        await pool.aclose()


async def test_server_closing_before_answering_is_an_http_error_and_the_next_request_reconnects() -> None:
    calls = 0

    async def handler(reader, writer):
        nonlocal calls
        await read_request(reader)
        calls += 1
        if calls == 1:
            return  # closes without a byte of answer
        writer.write(answer(200, b"second"))
        await writer.drain()
        await reader.read()

    async with serving(handler) as (origin, accepted):
        pool = Http1Pool(origin)
        with pytest.raises(HttpError, match="closed before the answer"):
            await pool.request("POST", "/", {}, b"x")
        assert (await pool.request("POST", "/", {}, b"x")).body == b"second"
        await pool.aclose()
    assert accepted == [0, 1]


async def test_idle_connection_closed_by_the_server_is_not_used_again() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(answer(200, b"ok"))
        await writer.drain()  # then the handler returns: the server closes the kept-alive connection

    async with serving(handler) as (origin, accepted):
        pool = Http1Pool(origin)
        assert (await pool.request("GET", "/", {})).status == 200
        await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
        assert (await pool.request("GET", "/", {})).status == 200
        await pool.aclose()
    assert accepted == [0, 1]


async def test_slow_server_times_out_and_its_connection_is_dropped() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    async with serving(handler) as (origin, _):
        pool = Http1Pool(origin, timeout=0.2)
        with pytest.raises(TimeoutError):
            await pool.request("POST", "/", {}, b"x")
        assert pool._open == set() and pool._idle == []
        await pool.aclose()


async def test_refused_connection_is_an_http_error() -> None:
    async with serving(read_request) as (origin, _):
        pass  # the server is gone: its port refuses
    pool = Http1Pool(origin, timeout=2)
    with pytest.raises(HttpError, match="cannot connect"):
        await pool.request("GET", "/", {})


async def test_malformed_and_oversized_answers_are_http_errors() -> None:
    answers = [b"NOT HTTP AT ALL\r\n\r\n", answer(200, b"x" * 100), answer(200, b"y" * 100), answer(200, b"z" * 50)]

    async def handler(reader, writer):
        await read_request(reader)
        writer.write(answers.pop(0))
        await writer.drain()
        await reader.read()

    async with serving(handler) as (origin, _):
        pool = Http1Pool(origin, max_body=10)
        with pytest.raises(HttpError, match="malformed"):
            await pool.request("GET", "/", {})
        with pytest.raises(ReplyTooLarge, match="over 10 bytes"):
            await pool.request("GET", "/", {})
        with pytest.raises(ReplyTooLarge, match="over 99 bytes"):  # a request's own limit wins over the pool's
            await pool.request("GET", "/", {}, max_body=99)
        assert (await pool.request("GET", "/", {}, max_body=50)).body == b"z" * 50  # exactly the limit is kept
        await pool.aclose()


async def test_at_most_limit_connections_are_opened() -> None:
    async def handler(reader, writer):
        while True:
            await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(answer(200, b"ok"))

    async with serving(handler) as (origin, accepted):
        pool = Http1Pool(origin, limit=3)
        replies = await asyncio.gather(*(pool.request("GET", "/", {}) for _ in range(12)))
        assert {r.status for r in replies} == {200}
        await pool.aclose()
    assert len(accepted) == 3


async def test_pools_past_their_cap_close_the_least_recent_one_once_its_requests_are_done() -> None:
    release = asyncio.Event()

    async def handler(reader, writer):
        while True:
            line, _, _ = await read_request(reader)
            if line.startswith(b"GET /slow"):
                await release.wait()
            writer.write(answer(200, line.split(b" ")[1]))

    async with serving(handler) as (origin_a, accepted_a), serving(handler) as (origin_b, _):
        pools = Http1Pools(max_pools=1, limit=4)
        slow = asyncio.create_task(pools.request(origin_a, "GET", "/slow", {}))
        await asyncio.sleep(0.05)
        # A second origin retires the first pool while /slow is still in flight on it: that request is not cut.
        assert (await pools.request(origin_b, "GET", "/b", {})).body == b"/b"
        assert len(pools) == 1
        release.set()
        assert (await slow).body == b"/slow"
        # The retired pool was closed after its last request: origin A now gets a new pool and a new connection.
        assert (await pools.request(origin_a, "GET", "/again", {})).body == b"/again"
        assert len(accepted_a) == 2
        # Keys keep pools apart on one origin (one tenant's connections are never another's).
        await pools.request(origin_a, "GET", "/t1", {}, key="t1")
        assert len(accepted_a) == 3
        await pools.aclose()


async def test_header_with_a_line_break_is_refused_before_sending() -> None:
    pool = Http1Pool("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="line break"):
        await pool.request("GET", "/", {"X-Evil": "a\r\nInjected: yes"})
    for target in ("/a b", "/a\r\nInjected: yes", "no-slash"):
        with pytest.raises(ValueError, match="not a request target"):
            await pool.request("GET", target, {})


@pytest.mark.parametrize("origin", ["ftp://example.com", "http://"])
async def test_only_http_origins(origin: str) -> None:
    with pytest.raises(ValueError):
        Http1Pool(origin)


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 / localhost, signed by itself, and its key: (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


async def test_https_verifies_the_server_and_keeps_the_connection(tmp_path) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    accepted = []

    async def handler(reader, writer):
        accepted.append(1)
        try:
            while True:
                await read_request(reader)
                writer.write(answer(200, b"secure"))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = ssl.create_default_context(cafile=cert)
        pool = Http1Pool(f"https://localhost:{port}", ssl=trusting)
        for _ in range(3):
            assert (await pool.request("GET", "/", {})).body == b"secure"
        await pool.aclose()
        assert accepted == [1]
        # The default context (the system's CAs) does not trust this certificate: the request fails, nothing leaks.
        stranger = Http1Pool(f"https://localhost:{port}", timeout=5)
        with pytest.raises(HttpError, match="cannot connect"):
            await stranger.request("GET", "/", {})
        await stranger.aclose()
    finally:
        server.close()
        await server.wait_closed()
