"""The few HTTP pieces the ingress needs on top of Granian's RSGI: a response record, a bounded body read, a query.

RSGI hands the raw body as bytes (`await proto()`) or as chunks (`async for chunk in proto`); there is no framework
between it and the HMAC check. A body over the limit is refused from its Content-Length before a byte is read, and a
chunked body is counted while it streams, so a 3 MB limit never costs more than 3 MB of memory. A client that
hangs up before its body is whole is `ClientGone` (Granian raises ProtocolClosed): nobody is left to answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from granian.rsgi import ProtocolClosed

TEXT = [("content-type", "text/plain; charset=utf-8")]
JSON = [("content-type", "application/json")]


class Response(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def text(status: int, body: str | bytes = b"") -> Response:
    return Response(status, TEXT, body.encode() if isinstance(body, str) else body)


class RequestTooLarge(Exception):
    pass


class BadContentLength(Exception):
    pass


class ClientGone(Exception):
    """The client closed the connection before the body was whole."""


async def read_body(proto: Any, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole request body, at most `limit` bytes. Raises RequestTooLarge, BadContentLength or ClientGone."""
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 19:  # int() refuses "²", and 5k digits
            raise BadContentLength(declared[:32])
        if int(declared) > limit:
            raise RequestTooLarge()
        try:
            return await proto()  # the server frames the body by Content-Length: it cannot run past it
        except ProtocolClosed:
            raise ClientGone() from None
    chunks: list[bytes] = []
    size = 0
    # A chunked body cut short simply ends here (Granian 2.8 raises nothing): the signature then fails on it.
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def query_params(query: str, *, max_fields: int = 16) -> dict[str, str]:
    """First value of each field; bounded, so a huge query string costs nothing."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, max_num_fields=max_fields):
        params.setdefault(name, value)
    return params
