"""Fuzzing the HTTP ingress over real sockets: `wabridge serve --role ingress`'s own code path (Granian embedded, one
worker) in a subprocess, sent hostile requests by raw asyncio streams, several keep-alive connections in parallel,
each pipelining batches of requests.

What must hold, whatever is sent (`Report.problems` names each breach):
  - no answer is a 5xx other than 503;
  - every well-formed request gets an answer (no connection dropped under a pipelined batch);
  - nothing unsigned is accepted: a 200 needs a body signed with one of the tenants' app secrets, or a GET handshake
    with a tenant's verify token (or one of the operational GETs);
  - the ingress logs no traceback, no error, and at most one line per request;
  - afterwards the ingress is alive: a normal signed webhook is answered 200 and found in the queue.

`python -m tests.fuzz.ingress --requests 100000` is the long run (`make fuzz`, with the servers);
tests/fuzz/test_ingress_fuzz.py runs the same generator shorter on both backends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wabridge.engine.settings import settings_environment
from wabridge.codecs.routing import decode_queued
from wabridge.ports import GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"

# Three tenants: acme and initech share one Meta app (so one body may be split between them), globex has its own.
ACME_NUMBER, GLOBEX_NUMBER, INITECH_NUMBER, UNKNOWN_NUMBER = "1234567890", "1122334455667", "5550001", "999000999"
ACME_SECRET, GLOBEX_SECRET = "fuzz-acme-secret", "fuzz-globex-secret"
SECRETS = (ACME_SECRET, GLOBEX_SECRET)
SECRET_OF = {ACME_NUMBER: ACME_SECRET, INITECH_NUMBER: ACME_SECRET, GLOBEX_NUMBER: GLOBEX_SECRET}
VERIFY_TOKENS = {"acme": "verify-acme", "globex": "verify-globex", "initech": "verify-initech"}


def tenants() -> list[TenantConfig]:
    return [
        TenantConfig(
            tenant_id=tenant_id, phone_number_ids=(number,), app_secret=Secret(SECRET_OF[number]),
            verify_token=Secret(VERIFY_TOKENS[tenant_id]), whatsapp_token=Secret("wa-token"),
            genesys_api_url="https://api.mypurecloud.ie", genesys_login_url="https://login.mypurecloud.ie",
            genesys_integration_id=f"integration-{tenant_id}", credentials=(GenesysCredential("c", Secret("s")),),
        )  # fmt: skip
        for tenant_id, number in (("acme", ACME_NUMBER), ("globex", GLOBEX_NUMBER), ("initech", INITECH_NUMBER))
    ]


def hub_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_by_us(body: bytes, signature: str | None) -> bool:
    """Whether one of the tenants' Meta apps signed `body`: then a 200 may be right (a number nobody owns is kept)."""
    return signature is not None and any(signature.lower() == hub_signature(body, s) for s in SECRETS)


# --- the cases ------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str  # the mutation, for the report
    request: bytes  # the whole raw HTTP request
    signed: bool  # a 200 is allowed: a body signed by one of our apps, a right verify token, an operational GET
    solo: bool = False  # on a connection of its own: the server may close it (413, malformed HTTP)
    must_answer: bool = True  # well-formed HTTP: no answer is a dropped connection
    hang_up: str = ""  # solo only: "eof" (half-close after sending) or "close" (gone mid-body)


def corpus_bodies() -> list[bytes]:
    """Every webhook envelope in the peer corpora (pywa files hold several, by name)."""
    found: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if "entry" in value and "object" in value:
                found.append(value)
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in sorted(CORPUS.rglob("*.json")):
        with contextlib.suppress(ValueError):
            walk(json.loads(path.read_text()))
    return [json.dumps(v).encode() for v in found]


DEEP = re.compile(rb'"@@deep:(\\d+):([\\[{])@@"')


def _nesting(depth: int, kind: bytes) -> bytes:
    opener, closer = (b"[", b"]") if kind == b"[" else (b'{"a":', b"}")
    return opener * depth + b"1" + closer * depth


class Generator:
    """Random cases from a seed: the same seed, the same requests (wamids aside)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.corpus = corpus_bodies()
        self.kinds = [
            (self._signed_mutation, 40), (self._signed_bytes_mutation, 12), (self._signed_random_bytes, 4),
            (self._signed_valid, 8), (self._chunked, 4), (self._unsigned, 10), (self._path_tenant, 6),
            (self._handshake, 4), (self._methods_and_paths, 6), (self._objects, 3), (self._many_messages, 0.3),
            (self._oversized_header, 0.4), (self._malformed_http, 1.5), (self._too_large, 0.2),
            (self._short_body, 0.6),
        ]  # fmt: skip
        self.weights = [w for _, w in self.kinds]

    def cases(self, n: int) -> Iterator[Case]:
        for _ in range(n):
            make = self.rng.choices(self.kinds, self.weights)[0][0]
            yield make()

    # --- bodies -----------------------------------------------------------------------------------------------------

    def number(self) -> str:
        return self.rng.choice((ACME_NUMBER, ACME_NUMBER, GLOBEX_NUMBER, INITECH_NUMBER, UNKNOWN_NUMBER))

    def webhook(self) -> tuple[Any, str]:
        """A real webhook as JSON, and the secret that signs it (its number's app, acme's for an unknown one)."""
        rng = self.rng
        if rng.random() < 0.3:
            value = json.loads(rng.choice(self.corpus))
            number = self.number()
            for entry in value.get("entry") or []:
                for change in entry.get("changes") or []:
                    with contextlib.suppress(AttributeError, TypeError):
                        change["value"]["metadata"]["phone_number_id"] = number
            return value, SECRET_OF.get(number, ACME_SECRET)
        number = self.number()
        kinds = rng.sample(webhooks.ALL_KINDS, rng.randint(1, 3))
        messages = [webhooks.message(k, wa_id=str(rng.randint(10**10, 10**11))) for k in kinds]
        statuses = [webhooks.status(webhooks.new_wamid())] if rng.random() < 0.2 else []
        entries = [webhooks.entry(number, messages, statuses=statuses)]
        if rng.random() < 0.2 and number in (ACME_NUMBER, INITECH_NUMBER):  # one app's two tenants, one body
            other = INITECH_NUMBER if number == ACME_NUMBER else ACME_NUMBER
            entries.append(webhooks.entry(other, [webhooks.message("text", wa_id="15550002222")]))
        if rng.random() < 0.1:
            entries.append(webhooks.entry(UNKNOWN_NUMBER, [webhooks.message("text", wa_id="15550003333")]))
        return json.loads(webhooks.envelope(entries)), SECRET_OF.get(number, ACME_SECRET)

    def odd_value(self, depth: int = 0) -> Any:
        rng = self.rng
        pick = rng.randrange(16)
        if pick == 0:
            return None
        if pick == 1:
            return rng.choice((True, False))
        if pick == 2:
            return rng.choice((0, -1, 2**63, -(2**64), 10**30))
        if pick == 3:
            return rng.choice((0.5, -1e308, 1e-320))
        if pick == 4:
            return ""
        if pick == 5:
            return rng.choice(("\ud83d", "\ude00x", "a\x00b", "\u202e", "../../etc/passwd", "%00", "\uffff"))
        if pick == 6:
            return "x" * rng.choice((1000, 70_000, 300_000))
        if pick == 7:
            return [] if depth > 2 else [self.odd_value(depth + 1) for _ in range(rng.randint(0, 4))]
        if pick == 8:
            return {} if depth > 2 else {self.odd_key(): self.odd_value(depth + 1) for _ in range(rng.randint(0, 3))}
        if pick == 9:
            return list(range(rng.choice((1000, 20_000))))
        if pick == 10:
            return self.nested(rng.choice((50, 500, 990, 1000, 3000)))
        if pick == 11:
            return "".join(chr(rng.randrange(0x10FFFF)) for _ in range(8))
        return rng.choice(("text", "image", "zz_unknown", "messages", "1234567890", "wamid.x"))

    def odd_key(self) -> str:
        return self.rng.choice(("zz_new_field", "", "\x00", "\ud83d", "type", "id", "messages", "phone_number_id"))

    def nested(self, depth: int) -> str:
        # A placeholder: Python's json cannot write 1,000 levels; body_bytes puts the nesting in as bytes.
        return f"@@deep:{depth}:{self.rng.choice('[{')}@@"

    def _nodes(self, value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
        yield path, value
        if isinstance(value, dict):
            for k, v in value.items():
                yield from self._nodes(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from self._nodes(v, (*path, i))

    def mutate(self, value: Any) -> tuple[Any, str]:
        """One change somewhere in the JSON tree: a wrong type, an odd value, an unknown field, a removed one."""
        rng = self.rng
        nodes = list(self._nodes(value))
        path, node = rng.choice(nodes[1:] or nodes)
        if not path:
            return self.odd_value(), "root"
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        how = rng.randrange(5)
        if how == 0 and isinstance(parent, dict):
            del parent[path[-1]]
            return value, f"drop:{path[-1]}"
        if how == 1 and isinstance(node, dict):
            node[self.odd_key()] = self.odd_value()
            return value, "add-field"
        if how == 2 and isinstance(node, str):
            at = rng.randint(0, len(node))
            parent[path[-1]] = node[:at] + rng.choice(("\ud83d", "\udc00", "\x00", "\ud83d\ude00", "\\", '"')) + node[at:]
            return value, "string"
        parent[path[-1]] = self.odd_value()
        return value, f"type:{path[-1]}"

    def body_bytes(self, value: Any) -> bytes:
        # Meta's way (compact, \\u escapes) or raw UTF-8 and spaces: both are JSON.
        if self.rng.random() < 0.7:
            body = json.dumps(value, separators=(",", ":")).encode()
        else:
            try:
                body = json.dumps(value, ensure_ascii=False, indent=self.rng.choice((None, 1))).encode()
            except UnicodeEncodeError:  # a lone surrogate cannot be raw UTF-8
                body = json.dumps(value).encode()
        return DEEP.sub(lambda m: _nesting(int(m[1]), m[2]), body)

    def bytes_mutation(self, body: bytes) -> tuple[bytes, str]:
        rng = self.rng
        quotes = [i for i in range(len(body)) if body[i] == 0x22] or [0]
        at = rng.choice(quotes) + 1  # just inside (or after) a string
        how = rng.randrange(9)
        if how == 0:
            return body[:at] + rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\xbd", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80")) + body[at:], "utf8"
        if how == 1:
            return body[:at] + rng.choice((b"\x00", b"\x01", b"\n", b"\x7f")) + body[at:], "control"
        if how == 2:
            return body[:at] + b"\\ud83d" + body[at:], "surrogate"
        if how == 3:  # a duplicate key in front of the real one
            key = rng.choice((b'"phone_number_id"', b'"messages"', b'"entry"', b'"changes"', b'"metadata"', b'"id"'))
            i = body.find(key)
            if i > 0:
                dup = key + b":" + rng.choice((b"5", b"null", b'"x"', b"[]", b"{}", b'"' + ACME_NUMBER.encode() + b'"'))
                return body[:i] + dup + b"," + body[i:], "duplicate-key"
            return body, "duplicate-key-none"
        if how == 4:
            return body.replace(b'"timestamp":', b'"n":1e400,"timestamp":', 1).replace(b'{"', b'{"big":1e400,"', 1), "1e400"
        if how == 5:
            return body[: rng.randrange(len(body) + 1)], "truncated"
        if how == 6:
            i = rng.randrange(len(body))
            return body[:i] + bytes([rng.randrange(256)]) + body[i + 1 :], "flip"
        if how == 7:
            return rng.choice((b"\xef\xbb\xbf", b" \n\t", b"[", b"\x00")) + body, "prefix"
        return body + rng.choice((b"x", b" ", b"}", b"\x00", b"\n" + body)), "suffix"

    # --- requests ---------------------------------------------------------------------------------------------------

    def post(self, body: bytes, signature: str | None, *, path: str = "/webhook/meta", chunked: bool = False,
             extra: list[tuple[str, str]] = ()) -> bytes:  # fmt: skip
        head = [f"POST {path} HTTP/1.1", "host: ingress", "content-type: application/json"]
        if signature is not None:
            head.append(f"x-hub-signature-256: {signature}")
        head += [f"{k}: {v}" for k, v in extra]
        if not chunked:
            head.append(f"content-length: {len(body)}")
            return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        head.append("transfer-encoding: chunked")
        out = [("\r\n".join(head) + "\r\n\r\n").encode("latin-1")]
        i = 0
        while i < len(body):
            n = self.rng.randint(1, 4096)
            out.append(f"{n if i + n <= len(body) else len(body) - i:x}\r\n".encode() + body[i : i + n] + b"\r\n")
            i += n
        out.append(b"0\r\n\r\n")
        return b"".join(out)

    def get(self, target: str, extra: list[tuple[str, str]] = ()) -> bytes:
        head = [f"GET {target} HTTP/1.1", "host: ingress", *(f"{k}: {v}" for k, v in extra)]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")

    def _signed_valid(self) -> Case:
        value, secret = self.webhook()
        body = self.body_bytes(value)
        return Case("valid", self.post(body, hub_signature(body, secret)), signed=True)

    def _signed_mutation(self) -> Case:
        value, secret = self.webhook()
        names = []
        for _ in range(self.rng.randint(1, 3)):
            value, name = self.mutate(value)
            names.append(name)
        body = self.body_bytes(value)
        return Case("json:" + "+".join(names), self.post(body, hub_signature(body, secret)), signed=True)

    def _signed_bytes_mutation(self) -> Case:
        value, secret = self.webhook()
        body, name = self.bytes_mutation(self.body_bytes(value))
        return Case("bytes:" + name, self.post(body, hub_signature(body, secret)), signed=True)

    def _signed_random_bytes(self) -> Case:
        body = self.rng.randbytes(self.rng.choice((0, 1, 16, 300, 5000)))
        return Case("random-bytes", self.post(body, hub_signature(body, self.rng.choice(SECRETS))), signed=True)

    def _many_messages(self) -> Case:
        number = self.rng.choice((ACME_NUMBER, UNKNOWN_NUMBER))
        messages = [webhooks.message("text", wa_id=f"1555{i:07d}") for i in range(1000)]
        body = webhooks.webhook(number, messages)
        return Case("1000-messages", self.post(body, hub_signature(body, ACME_SECRET)), signed=True)

    def _chunked(self) -> Case:
        value, secret = self.webhook()
        if self.rng.random() < 0.5:
            value, _ = self.mutate(value)
        body = self.body_bytes(value)
        return Case("chunked", self.post(body, hub_signature(body, secret), chunked=True), signed=True)

    def _unsigned(self) -> Case:
        value, secret = self.webhook()
        if self.rng.random() < 0.5:
            value, _ = self.mutate(value)
        body = self.body_bytes(value)
        if self.rng.random() < 0.3:
            body, _ = self.bytes_mutation(body)
        good = hub_signature(body, secret)
        signature, name = self.rng.choice([
            (None, "no-header"), ("", "empty"), ("sha256=", "prefix-only"), (good[:-1], "truncated"),
            (good[:20], "cut"), (good + "0", "longer"), ("sha256=" + "0" * 64, "zeros"),
            (hub_signature(body, "not-ours"), "other-secret"), (hub_signature(body + b" ", secret), "other-body"),
            ("sha1=" + good[7:47], "sha1"), ("sha256=" + good[7:].replace("a", "\u00e9"), "non-ascii"),
            (hub_signature(body, GLOBEX_SECRET if secret == ACME_SECRET else ACME_SECRET), "other-tenant"),
        ])  # fmt: skip
        return Case("unsigned:" + name, self.post(body, signature), signed=signed_by_us(body, signature))

    def _path_tenant(self) -> Case:
        value, secret = self.webhook()
        body = self.body_bytes(value)
        tenant = self.rng.choice(("acme", "globex", "initech", "ghost", "../acme", "acme%2F..", "%2e%2e", "acme%00",
                                  "%00", "..%2F..%2Fobjects", "a" * 3000, "acme/x", "%C3%A9", "%FF", "acme?x=1"))  # fmt: skip
        path_secret = {"acme": ACME_SECRET, "initech": ACME_SECRET, "globex": GLOBEX_SECRET}.get(tenant.split("?")[0])
        secret = path_secret if path_secret is not None and self.rng.random() < 0.6 else self.rng.choice((*SECRETS, "x"))
        signature = hub_signature(body, secret)
        request = self.post(body, signature, path=f"/webhook/meta/{tenant}")
        return Case(f"path-tenant:{tenant[:12]}", request, signed=signed_by_us(body, signature))

    def _handshake(self) -> Case:
        rng = self.rng
        tenant = rng.choice(("", "/acme", "/globex", "/ghost", "/..", "/%00", "/acme/.."))
        token = rng.choice((*VERIFY_TOKENS.values(), "", "nope", "verify-acme%00", "%FF", "x" * 5000))
        challenge = rng.choice(("1158201444", "", "x" * 2000, "%00", "%3Cscript%3E"))
        mode = rng.choice(("subscribe", "subscribe", "unsubscribe", ""))
        query = rng.choice((f"hub.mode={mode}&hub.verify_token={token}&hub.challenge={challenge}",
                            "hub.mode=subscribe&" * 50, "%", "&&&", "hub.challenge=1&" * 40))  # fmt: skip
        right = (mode == "subscribe" and token in VERIFY_TOKENS.values() and len(challenge) <= 1024
                 and tenant in ("", f"/{next(k for k, v in VERIFY_TOKENS.items() if v == token)}"))  # fmt: skip
        return Case("handshake", self.get(f"/webhook/meta{tenant}?{query}"), signed=right)

    def _methods_and_paths(self) -> Case:
        rng = self.rng
        method = rng.choice(("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "POST", "TRACE", "FOO"))
        path = rng.choice((
            "/webhook/meta", "/webhook/meta/", "/webhook/meta/acme/../globex", "/webhook/metaX", "/webhook/meta/..",
            "/webhook/meta/%2e%2e/%2e%2e/etc/passwd", "//webhook/meta", "/webhook//meta", "/healthz", "/readyz",
            "/metrics", "/", "/x" * 2000, "/%00", "/webhook/meta%00", "/webhook/meta/acme%00/x", "*",
            "/../../../etc/passwd", "/webhook/meta?x=" + "y" * 4000, "/objects", "/objects/",
        ))  # fmt: skip
        body = rng.choice((b"", b"{}", b"x" * 100))
        ops = method == "GET" and path in ("/healthz", "/readyz", "/metrics")
        head = [f"{method} {path} HTTP/1.1", "host: ingress", f"content-length: {len(body)}"]
        signature = hub_signature(body, ACME_SECRET) if rng.random() < 0.5 else None
        if signature is not None:
            head.append("x-hub-signature-256: " + signature)
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        return Case(f"method:{method}", request, signed=ops or signed_by_us(body, signature))

    def _objects(self) -> Case:
        target = self.rng.choice((
            "/objects/webhooks-inbound/../../etc/passwd", "/objects/../../../etc/passwd", "/objects/%2e%2e/%2e%2e/x",
            "/objects/media-inbound/acme/x.jpeg?expires=99999999999&signature=00", "/objects/media-inbound/",
            "/objects/media-inbound/..%2F..%2Fsecret?expires=1&signature=x", "/objects/a/b?expires=x&signature=y",
            "/objects/media-inbound/acme%00/x?expires=1&signature=y", "/objects/" + "a/" * 500 + "b",
            "/objects/media-inbound/..?expires=99999999999&signature=" + "0" * 64,
        ))  # fmt: skip
        return Case("objects", self.get(target), signed=False)

    def _oversized_header(self) -> Case:
        rng = self.rng
        body = webhooks.webhook(ACME_NUMBER, [webhooks.message("text")])
        if rng.random() < 0.5:
            extra = [("x-big", "y" * rng.choice((8_000, 70_000, 1_000_000)))]
        else:
            extra = [(f"x-h{i}", "v") for i in range(rng.choice((100, 2000)))]
        request = self.post(body, hub_signature(body, ACME_SECRET), extra=extra)
        return Case("oversized-header", request, signed=True, solo=True, must_answer=False)

    def _too_large(self) -> Case:
        body = b'{"entry":[],"pad":"' + b"x" * 3_200_000 + b'"}'
        request = self.post(body, hub_signature(body, ACME_SECRET), chunked=self.rng.random() < 0.5)
        return Case("too-large", request, signed=True, solo=True)

    def _short_body(self) -> Case:
        """Content-Length longer than the body: the client then half-closes, or hangs up mid-body."""
        body = webhooks.webhook(ACME_NUMBER, [webhooks.message("text")])
        request = self.post(body, hub_signature(body, ACME_SECRET))
        request = request[: len(request) - self.rng.randint(1, len(body))]
        return Case("short-body", request, signed=False, solo=True, must_answer=False,
                    hang_up=self.rng.choice(("eof", "close")))  # fmt: skip

    def _malformed_http(self) -> Case:
        rng = self.rng
        body = b'{"entry":[]}'
        sig = hub_signature(body, ACME_SECRET)
        request = rng.choice((
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ncontent-length: -1\r\n\r\n" + body,
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ncontent-length: abc\r\n\r\n" + body,
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ncontent-length: 12\r\ncontent-length: 13\r\n\r\n" + body,
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ntransfer-encoding: chunked\r\ncontent-length: 12\r\n\r\n"
            b"c\r\n" + body + b"\r\n0\r\n\r\n",
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n",
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\nx",
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ntransfer-encoding: gzip\r\n\r\n" + body,
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            b"POST /webhook/meta HTTP/9.9\r\nhost: i\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\nx-hub-signature-256: " + sig.encode() + b"\r\nbad header\r\n\r\n",
            b"POST /webhook/meta HTTP/1.1\nhost: i\ncontent-length: 12\n\n" + body,
            b"POST /webhook/meta HTTP/1.0\r\ncontent-length: 12\r\nx-hub-signature-256: " + sig.encode() + b"\r\n\r\n" + body,
            b"POST /webhook/meta HTTP/1.1\r\nhost: i\r\ntransfer-encoding: chunked\r\nx-hub-signature-256: "
            + sig.encode() + b"\r\n\r\nc;ext=1\r\n" + body + b"\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"GET /webhook/meta\xff\xfe HTTP/1.1\r\nhost: i\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nhost: i\r\nx-h: \xff\xfe\x80\r\n\r\n",
            b"HEAD /healthz HTTP/1.1\r\nhost: i\r\n\r\n",
            b"GET /webhook/meta?hub.challenge=<script> HTTP/1.1\r\nhost: i\r\n\r\n",  # not a URI: hyper's 400
        ))  # fmt: skip
        # obs-text (bytes 0x80-0xFF) in a header value is valid HTTP (RFC 9110 §5.5): that GET /healthz is an
        # operational GET, and its 200 is right.
        operational = request.startswith(b"GET /healthz ")
        return Case("malformed-http", request, signed=sig.encode() in request or operational, solo=True,
                    must_answer=False, hang_up="eof")  # fmt: skip


# --- the client: raw streams, pipelined batches ---------------------------------------------------------------------


class Dropped(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: (status, body). Raises Dropped when the connection ends first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Dropped(str(exc)[:80]) from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    try:
        if "content-length" in headers:
            return status, await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await reader.readexactly(size + 2))
                if size == 0:
                    return status, b"".join(chunks)
        return status, b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Dropped(str(exc)[:80]) from None


@dataclass
class Report:
    seed: int
    statuses: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    sent: int = 0
    solo_closed: int = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    def judge(self, case: Case, status: int) -> None:
        self.statuses[status] += 1
        self.last_status = status
        if status >= 500 and status != 503:
            self.problem(f"{case.name}: answered {status}")
        if status == 200 and not case.signed:
            self.problem(f"{case.name}: unsigned, answered 200: {case.request[:200]!r}")

    def summary(self) -> str:
        return (f"seed {self.seed}: {self.sent} requests, statuses {dict(sorted(self.statuses.items()))}, "
                f"{self.solo_closed} closed without an answer (malformed HTTP, hang-ups)")  # fmt: skip


async def send_batch(port: int, batch: list[Case], report: Report, timeout: float) -> None:
    """The batch pipelined on one keep-alive connection: written by one task while another reads the answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)

    async def write() -> None:
        with contextlib.suppress(ConnectionError):
            for case in batch:
                writer.write(case.request)
                await writer.drain()

    sending = asyncio.create_task(write())
    try:
        for n, case in enumerate(batch):
            try:
                status, _ = await asyncio.wait_for(read_response(reader), timeout)
            except (Dropped, TimeoutError) as exc:
                last = batch[n - 1].request[:300] if n else b""
                report.problem(f"{case.name}: connection dropped ({exc!r}) after {n} of {len(batch)} answers, "
                               f"the last answered: {last!r}")  # fmt: skip
                return
            report.judge(case, status)
    finally:
        sending.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def send_solo(port: int, case: Case, report: Report, timeout: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    try:
        try:
            writer.write(case.request)
            await writer.drain()
            if case.hang_up == "close":
                report.solo_closed += 1
                return
            if case.hang_up == "eof":
                writer.write_eof()
        except ConnectionError:
            report.solo_closed += 1
            return
        try:
            status, _ = await asyncio.wait_for(read_response(reader), timeout)
        except (Dropped, TimeoutError) as exc:
            report.solo_closed += 1
            if case.must_answer:
                report.problem(f"{case.name}: no answer ({exc!r})")
            return
        report.judge(case, status)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def hammer(port: int, cases: list[Case], report: Report, *, connections: int, batch: int,
                 timeout: float = 60.0) -> None:  # fmt: skip
    pipelined = [c for c in cases if not c.solo]
    work: asyncio.Queue = asyncio.Queue()
    for i in range(0, len(pipelined), batch):
        work.put_nowait(pipelined[i : i + batch])
    for case in cases:
        if case.solo:
            work.put_nowait(case)
    report.sent += len(cases)

    async def connection() -> None:
        while not work.empty():
            item = work.get_nowait()
            if isinstance(item, list):
                await send_batch(port, item, report, timeout)
            else:
                await send_solo(port, item, report, timeout)

    await asyncio.gather(*(connection() for _ in range(connections)))


# --- the served ingress ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def served_ingress(settings: Settings, log_path: Path) -> AsyncIterator[int]:
    """`serve_ingress(workers=1)` (Granian embedded, as `serve --role ingress` runs it) in a subprocess; its port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")} | settings_environment(settings)
    code = "from wabridge.engine.settings import load_settings\nfrom wabridge.cli.assembly import serve_ingress\n" \
           "serve_ingress(load_settings(), workers=1)\n"  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, Dropped, asyncio.IncompleteReadError):
                reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
                writer.write(b"GET /readyz HTTP/1.1\r\nhost: i\r\n\r\n")
                status, _ = await read_response(reader)
                writer.close()
                if status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the ingress did not start:\n{log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
        yield settings.port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def canary_queued(port: int, settings: Settings, report: Report) -> None:
    """The ingress still works: a normal signed webhook is answered 200 and reaches the queue."""
    from wabridge.adapters.backends import open_backends

    body = webhooks.webhook(ACME_NUMBER, [webhooks.message("text", text=f"canary {uuid.uuid4()}")])
    canary = Case("canary", Generator(0).post(body, hub_signature(body, ACME_SECRET)), signed=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(canary.request)
    status, _ = await asyncio.wait_for(read_response(reader), 60)
    writer.close()
    if status != 200:
        report.problem(f"canary answered {status}")
        return
    found = asyncio.Event()

    async def handler(queue_message: Any) -> None:
        if decode_queued(queue_message.body).body == body:
            found.set()
        await queue_message.ack()

    async with open_backends(settings, ports=("queue",)) as backends:
        consumer = await backends.queue.consume(handler)
        try:
            await asyncio.wait_for(found.wait(), 120)
        except TimeoutError:
            report.problem("canary answered 200 but not found in the queue")
        finally:
            await consumer.stop()


def log_problems(log_text: str, requests: int) -> list[str]:
    problems = []
    lines = log_text.splitlines()
    if "Traceback" in log_text:
        at = log_text.index("Traceback")
        problems.append(f"a traceback was logged: {log_text[max(0, at - 300) : at + 1500]}")
    errors = [line for line in lines if '"level":"error"' in line or '"level":"critical"' in line]
    if errors:
        problems.append(f"{len(errors)} error lines logged, the first: {errors[0][:1500]}")
    if len(lines) > requests + 20:  # + the start-up and shutdown lines
        problems.append(f"{len(lines)} log lines for {requests} requests")
    return problems


async def fuzz_ingress(settings: Settings, workdir: Path, *, requests: int, seed: int | None = None,
                       connections: int = 8, batch: int = 64) -> Report:  # fmt: skip
    """Serve the ingress on `settings`' backends (tenants put first), send `requests` cases, check what must hold."""
    from wabridge.adapters.backends import open_backends

    seed = random.randrange(2**32) if seed is None else seed
    report = Report(seed)
    settings = settings.replace(port=free_port())
    async with open_backends(settings) as backends:  # migrates the store
        for tenant in tenants():
            await backends.store.put_tenant(tenant)
    generator = Generator(seed)
    log_path = workdir / f"ingress-{seed}.log"
    try:
        async with served_ingress(settings, log_path) as port:
            left = requests
            while left > 0:  # in rounds: the cases of one round are held in memory at once
                cases = list(generator.cases(min(left, 5000)))
                left -= len(cases)
                await hammer(port, cases, report, connections=connections, batch=batch)
            await canary_queued(port, settings, report)
        for problem in log_problems(log_path.read_text(errors="replace"), requests):
            report.problem(problem)
    finally:
        if settings.amqp_url is not None:
            async with open_backends(settings, ports=("queue",)) as backends:
                with contextlib.suppress(Exception):
                    await backends.queue.delete_topology()  # the test's queues do not outlive it
    return report


# --- the long run: python -m tests.fuzz.ingress --requests 100000 ---------------------------------------------------


@contextlib.asynccontextmanager
async def server_settings(data_dir: Path) -> AsyncIterator[Settings]:
    """Settings on the servers that deploy/dev/services.sh announces, in a fresh database and prefixes of their own."""
    import asyncpg

    admin_url = os.environ["WABRIDGE_DATABASE_URL"]
    tag = f"fz{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{tag}" TEMPLATE template0')
    await conn.close()
    try:
        yield Settings(
            redis_url=os.environ["WABRIDGE_REDIS_URL"], database_url=Secret(admin_url.rpartition("/")[0] + "/" + tag),
            amqp_url=Secret(os.environ["WABRIDGE_AMQP_URL"]), s3_endpoint=os.environ["WABRIDGE_S3_ENDPOINT"],
            s3_access_key=Secret(os.environ["WABRIDGE_S3_ACCESS_KEY"]),
            s3_secret_key=Secret(os.environ["WABRIDGE_S3_SECRET_KEY"]), s3_bucket_prefix=f"{tag}-",
            key_prefix=f"{tag}:", queue_name=f"{tag}_INBOUND", secret_key=Secret(generate_key()), data_dir=data_dir,
        )  # fmt: skip
    finally:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{tag}" WITH (FORCE)')
        await conn.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.ingress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="per backend")
    parser.add_argument("--backend", choices=("embedded", "servers", "both"), default="both")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    failed = False
    for backend in ("embedded", "servers") if args.backend == "both" else (args.backend,):
        with tempfile.TemporaryDirectory(prefix="wabridge-fuzz-") as tmp:
            workdir = Path(tmp)
            started = time.monotonic()
            if backend == "embedded":
                settings = Settings(data_dir=workdir / "data", secret_key=Secret(generate_key()))
                report = await fuzz_ingress(settings, workdir, requests=args.requests, seed=args.seed,
                                            connections=args.connections)  # fmt: skip
            else:
                async with server_settings(workdir / "data") as settings:
                    report = await fuzz_ingress(settings, workdir, requests=args.requests, seed=args.seed,
                                                connections=args.connections)  # fmt: skip
            print(f"{backend}: {report.summary()} in {time.monotonic() - started:.0f} s", flush=True)
            for problem in report.problems:
                print(f"  PROBLEM {problem[:2000]}", flush=True)
            failed |= bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
