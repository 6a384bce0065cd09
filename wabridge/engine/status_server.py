"""`/metrics` and `/healthz` for a process that has no HTTP edge of its own (a worker).

The ingress serves its metrics on its own port; a worker runs this tiny HTTP/1.0 responder on
`WABRIDGE_METRICS_PORT` (default: the HTTP port + 1; 0 turns it off), so Prometheus scrapes deliveries by outcome,
retries, dead letters, mailbox depths and handler latency from where they happen. One request per connection,
bounded request size: it is a scrape endpoint, not a web server.
"""

from __future__ import annotations

import asyncio
import contextlib

from wabridge.engine import metrics
from wabridge.engine.logs import get_logger

log = get_logger("status")
MAX_REQUEST = 8192  # bytes of request head read before answering


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
        method, path, *_ = head[:MAX_REQUEST].decode("latin-1").split(" ", 2)
        if method != "GET":
            status, ctype, body = "405 Method Not Allowed", "text/plain", b""
        elif path.split("?", 1)[0] == "/metrics":
            status, ctype, body = "200 OK", metrics.CONTENT_TYPE, metrics.REGISTRY.render()
        elif path.split("?", 1)[0] == "/healthz":
            status, ctype, body = "200 OK", "text/plain", b"ok"
        else:
            status, ctype, body = "404 Not Found", "text/plain", b""
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve_status(host: str, port: int):
    """Serve until the block exits; port 0 means not at all."""
    if port <= 0:
        yield None
        return
    try:
        server = await asyncio.start_server(_answer, host, port, limit=MAX_REQUEST)
    except OSError as exc:  # the port is taken: metrics are worth a warning, not a worker that will not start
        log.warning("worker metrics not served on %s:%d: %s (set WABRIDGE_METRICS_PORT)", host, port, exc)
        yield None
        return
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
