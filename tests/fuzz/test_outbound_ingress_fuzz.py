"""Fuzzing the Genesys outbound webhook route, `POST /webhook/genesys/{tenantId}`, over real HTTP: the served ingress
of tests/fuzz/ingress.py (Granian embedded, in a subprocess), its client and its mutations, with cases of its own.

What must hold, whatever is sent:
  - no answer is a 5xx (the servers are up: not even a 503);
  - a body signed with the path tenant's Genesys webhook secret (hex or base64) that is a JSON object is answered
    200; everything else (unsigned, badly signed, another tenant's or the Meta app's secret, a tenant with no secret,
    an odd tenant id, not JSON, not an object, not UTF-8, nested past the decoder's depth, a number no double holds)
    is answered 4xx;
  - what was answered 200 is in that tenant's outbound queue exactly once, and nothing else is there;
  - the ingress logs no traceback and no error.

Seeds: the sample outbound bodies in ../shared/samples/genesys-open-messaging/ (read where they lie, never copied),
or a minimal text body when they are absent. `python -m tests.fuzz.test_outbound_ingress_fuzz --requests 100000` is
the long run (`make fuzz`); a failure prints the seed, WABRIDGE_FUZZ_SEED replays it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.fuzz import ingress as fz
from wabridge.codecs.outbound import decode_outbound
from wabridge.codecs.outbound_results import OutboundDecodeError
from wabridge.codecs.routing import decode_queued
from wabridge.ports import TenantConfig
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio

REQUESTS = int(os.environ.get("WABRIDGE_FUZZ_REQUESTS", "3000"))  # per backend
SEED = int(os.environ["WABRIDGE_FUZZ_SEED"]) if os.environ.get("WABRIDGE_FUZZ_SEED") else None

SAMPLES = fz.REPO.parent / "shared" / "samples" / "genesys-open-messaging"
# acme and globex have their integration's secret; initech has none (every POST for it is 401).
GENESYS_SECRETS = {"acme": "fuzz-genesys-acme", "globex": "fuzz-genesys-globex"}
TENANT_IDS = ("acme", "globex", "initech")
MAX_DEPTH = 1000  # msgspec's nesting limit; the cases nest well below it (≤ 520) or well above it (≥ 1500)


def outbound_tenants() -> list[TenantConfig]:
    return [
        msgspec.structs.replace(t, genesys_webhook_secret=Secret(GENESYS_SECRETS[t.tenant_id]))
        if t.tenant_id in GENESYS_SECRETS else t
        for t in fz.tenants()
    ]  # fmt: skip


def sample_bodies() -> list[dict[str, Any]]:
    """The real outbound bodies (text, each attachment type, template, menu, typing), each one a seed."""
    found = []
    for path in sorted(SAMPLES.glob("openmessaging-outbound-*.json")):
        with contextlib.suppress(ValueError):
            value = json.loads(path.read_text())
            if isinstance(value, dict) and "$schema" not in value:
                found.append(value)
    return found or [{
        "id": "seed", "channel": {"id": "integration", "platform": "Open", "type": "Private", "messageId": "seed",
                                  "to": {"id": "15551234567", "idType": "Phone"}, "time": "2026-01-01T00:00:00Z"},
        "conversationId": "conversation", "direction": "Outbound", "type": "Text", "text": "Hello",
        "originatingEntity": "Human",
    }]  # fmt: skip


# --- what the route must do ------------------------------------------------------------------------------------------


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("a number no double holds")
    return number


def _max_depth(text: str) -> int:
    """How deeply the JSON text nests (brackets outside strings), counted without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def json_object(body: bytes) -> bool:
    """The oracle, independent of the code under test: an RFC 8259 text, UTF-8 throughout, whose top is an object,
    with no lone surrogate (I-JSON, RFC 7493: no Unicode string holds one), no fraction or exponent past a double's
    range, no integer past Python's 4,300 digits, nesting within the decoder's limit. Python's json reads it; its
    leniencies (NaN, Infinity) are refused."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if _max_depth(text) >= MAX_DEPTH:
        return False

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=refuse, parse_float=_finite)  # int: at most 4,300 digits
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate cannot be encoded
    except (ValueError, RecursionError, UnicodeEncodeError):
        return False
    return isinstance(value, dict)


def accepted_signatures(body: bytes, secret: str) -> set[str]:
    """Every X-Hub-Signature-256 value that proves `body` (reference.md §3: Genesys sends base64, a peer hex)."""
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    digests = (base64.b64encode(mac).decode(), mac.hex(), mac.hex().upper())
    return {f"{scheme}={d}" for d in digests for scheme in ("sha256", "SHA256", "Sha256")}


@dataclass
class OutboundCase(fz.Case):
    tenant: str = ""  # the tenant whose outbound queue it must reach, when `valid`
    body: bytes = b""
    valid: bool = False  # signed with the path tenant's secret and a JSON object: 200, and queued once


@dataclass
class OutboundReport(fz.Report):
    accepted: Counter = field(default_factory=Counter)  # (tenant, body) answered 200

    def judge(self, case: fz.Case, status: int) -> None:
        self.statuses[status] += 1
        valid = isinstance(case, OutboundCase) and case.valid
        if valid and status != 200:
            self.problem(f"{case.name}: signed JSON object answered {status}: {case.request[:300]!r}")
        elif not valid and not 400 <= status < 500:
            self.problem(f"{case.name}: answered {status}, not a 4xx: {case.request[:300]!r}")
        if status == 200 and isinstance(case, OutboundCase):
            self.accepted[(case.tenant, case.body)] += 1


# --- the cases ---------------------------------------------------------------------------------------------------


class OutboundGenerator(fz.Generator):
    """The Meta fuzzer's mutations (JSON tree and bytes), on Genesys outbound bodies, at the Genesys route."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.samples = sample_bodies()
        self.kinds = [
            (self._valid, 10), (self._json_mutation, 30), (self._bytes_mutation, 14), (self._random_bytes, 3),
            (self._deep, 4), (self._numbers, 5), (self._signatures, 12), (self._path, 10), (self._methods, 3),
            (self._chunked_body, 4), (self._too_large_body, 0.3), (self._short, 0.5),
        ]  # fmt: skip
        self.weights = [w for _, w in self.kinds]

    def nested(self, depth: int) -> str:
        return super().nested(self.rng.choice((50, 500, 1500, 5000)))  # clearly within the limit, or clearly not

    def outbound(self) -> dict[str, Any]:
        """A real body with an id of its own (so each accepted case is found in the queue by its bytes)."""
        value = json.loads(json.dumps(self.rng.choice(self.samples)))
        value["id"] = uuid.uuid4().hex
        return value

    def tenant(self) -> str:
        return self.rng.choice(("acme", "acme", "globex"))

    def signed(self, name: str, body: bytes, tenant: str | None = None, *, chunked: bool = False, solo: bool = False,
               must_answer: bool = True, hang_up: str = "") -> OutboundCase:  # fmt: skip
        tenant = tenant or self.tenant()
        signature = self.rng.choice(sorted(accepted_signatures(body, GENESYS_SECRETS[tenant])))
        request = self.post(body, signature, path=f"/webhook/genesys/{tenant}", chunked=chunked)
        return OutboundCase(name, request, signed=True, solo=solo, must_answer=must_answer, hang_up=hang_up,
                            tenant=tenant, body=body, valid=json_object(body) and not hang_up)  # fmt: skip

    def _valid(self) -> OutboundCase:
        return self.signed("valid", self.body_bytes(self.outbound()))

    def _json_mutation(self) -> OutboundCase:
        value, names = self.outbound(), []
        for _ in range(self.rng.randint(1, 3)):  # a wrong type, an odd value, a new or a dropped field, anywhere
            value, name = self.mutate(value)
            names.append(name)
        return self.signed("json:" + "+".join(names), self.body_bytes(value))

    def _bytes_mutation(self) -> OutboundCase:
        body, name = self.bytes_mutation(self.body_bytes(self.outbound()))  # bad UTF-8, truncated, flipped, ...
        return self.signed("bytes:" + name, body)

    def _random_bytes(self) -> OutboundCase:
        return self.signed("random-bytes", self.rng.randbytes(self.rng.choice((0, 1, 2, 16, 300, 5000))))

    def _deep(self) -> OutboundCase:
        depth = self.rng.choice((50, 500, 1500, 5000, 100_000))
        opener, closer = self.rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
        nest = opener * depth + b"1" + closer * depth
        body = self.rng.choice((b'{"id":"' + uuid.uuid4().hex.encode() + b'","text":' + nest + b"}", nest))
        return self.signed(f"deep:{depth}", body)

    def _numbers(self) -> OutboundCase:
        value = self.outbound()
        path, _ = self.rng.choice(list(self._nodes(value))[1:])
        number = self.rng.choice((b"1e400", b"-1e400", b"1e-400", b"9" * 40, b"-" + b"9" * 400, b"1" * 5000,
                                  b"0.1e308", b"-0", b"123456789012345678901234567890.5e10"))  # fmt: skip
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = "@@number@@"
        body = self.body_bytes(value).replace(b'"@@number@@"', number)
        return self.signed(f"number:{number[:12].decode()}", body)

    def _signatures(self) -> OutboundCase:
        """A valid body with a signature header that is, or is not, the tenant's proof."""
        rng = self.rng
        tenant = self.tenant()
        body = self.body_bytes(self.outbound())
        secret = GENESYS_SECRETS[tenant]
        mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        other = GENESYS_SECRETS["globex" if tenant == "acme" else "acme"]
        signature, name = rng.choice([
            (None, "no-header"), ("", "empty"), ("sha256=", "prefix-only"), ("sha256", "no-equals"),
            ("sha256=" + mac.hex(), "hex"), ("sha256=" + base64.b64encode(mac).decode(), "base64"),
            ("sha256=" + mac.hex()[:-1], "hex-short"), ("sha256=" + mac.hex() + "0", "hex-long"),
            ("sha256=" + base64.b64encode(mac).decode().rstrip("="), "base64-unpadded"),
            ("sha256=" + base64.urlsafe_b64encode(mac).decode(), "base64-urlsafe"),
            ("sha256=" + base64.b64encode(mac).decode().lower(), "base64-lowercased"),
            ("sha1=" + mac.hex(), "sha1"), ("sha256=" + "0" * 64, "zeros"), ("sha256=" + "A" * 44, "base64-A"),
            (mac.hex(), "no-scheme"), ("sha256=sha256=" + mac.hex(), "twice"),
            ("sha256=" + mac.hex().replace("a", "\u00e9"), "non-ascii"),
            ("sha256=" + hmac.new(other.encode(), body, hashlib.sha256).hexdigest(), "other-tenant"),
            ("sha256=" + hmac.new(fz.ACME_SECRET.encode(), body, hashlib.sha256).hexdigest(), "meta-app-secret"),
            ("sha256=" + hmac.new(secret.encode(), body + b" ", hashlib.sha256).hexdigest(), "other-body"),
            ("sha256=" + "x" * 5000, "huge"),
        ])  # fmt: skip
        request = self.post(body, signature, path=f"/webhook/genesys/{tenant}")
        valid = signature in accepted_signatures(body, secret) and json_object(body)
        return OutboundCase(f"signature:{name}", request, signed=valid, tenant=tenant, body=body, valid=valid)

    def _path(self) -> OutboundCase:
        """Odd tenant ids in the path, the body signed with acme's secret (or globex's): only acme/globex may pass."""
        rng = self.rng
        target = rng.choice((
            "acme", "globex", "initech", "ghost", "", "/", "..", "../acme", "acme/..", "acme/x", "acme%00", "%00",
            "acme%2F..", "%2e%2e", "%2E%2E%2Facme", "..%2F..%2Fobjects", "ac%20me", "%FF", "%C3%A9", "%", "%zz",
            "acme%", "a" * 3000, "a" * 129, "acme?x=1", "acme#x", "ACME", " acme", "acme.", "../../etc/passwd",
            "acme;x", "*", "\u00e9".encode().decode("latin-1"),
        ))  # fmt: skip
        path = "/webhook/genesys" + ("" if target == "/" else "/") + target
        tenant = target.split("?")[0].split("#")[0]
        secret_of = rng.choice(("acme", "globex"))
        body = self.body_bytes(self.outbound())
        signature = rng.choice(sorted(accepted_signatures(body, GENESYS_SECRETS[secret_of])))
        request = self.post(body, signature, path=path)
        valid = tenant == secret_of and json_object(body)
        # Not HTTP (a space or a non-ASCII byte in the request line): the server may answer 400 or close.
        broken = " " in target or not target.isascii()
        return OutboundCase(f"path:{target[:16]!r}", request, signed=valid, solo=broken or len(target) > 2000,
                            must_answer=not broken, tenant=tenant, body=body, valid=valid)  # fmt: skip

    def _methods(self) -> OutboundCase:
        method = self.rng.choice(("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"))
        tenant = self.tenant()
        body = self.body_bytes(self.outbound())
        signature = sorted(accepted_signatures(body, GENESYS_SECRETS[tenant]))[0]
        head = [f"{method} /webhook/genesys/{tenant} HTTP/1.1", "host: ingress", f"content-length: {len(body)}",
                f"x-hub-signature-256: {signature}"]  # fmt: skip
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        head_only = method == "HEAD"  # no body in the answer: the connection may close
        return OutboundCase(f"method:{method}", request, signed=False, solo=head_only, must_answer=not head_only)

    def _chunked_body(self) -> OutboundCase:
        value = self.outbound()
        if self.rng.random() < 0.5:
            value, _ = self.mutate(value)
        return self.signed("chunked", self.body_bytes(value), chunked=True)

    def _too_large_body(self) -> OutboundCase:
        body = b'{"id":"' + uuid.uuid4().hex.encode() + b'","text":"' + b"x" * 3_200_000 + b'"}'
        case = self.signed("too-large", body, chunked=self.rng.random() < 0.5, solo=True)
        case.valid = False  # over the size limit: 413
        return case

    def _short(self) -> OutboundCase:
        """Content-Length longer than the body: the client half-closes, or hangs up mid-body."""
        body = self.body_bytes(self.outbound())
        case = self.signed("short-body", body, solo=True, must_answer=False, hang_up=self.rng.choice(("eof", "close")))
        case.request = case.request[: len(case.request) - self.rng.randint(1, len(body))]
        return case


def test_the_oracle_agrees_with_the_codec_on_plain_cases() -> None:
    """The oracle is independent of the ingress; on bodies every reading agrees on, it says what the codec says."""
    for body, expected in ((b"{}", True), (b'{"a":[1,{"b":null}]}', True), (b"[]", False), (b"", False),
                           (b'{"a":1e400}', False), (b'{"a":"\xff"}', False), (b'{"a":"\\ud83d"}', False),
                           (b'{"a":NaN}', False), (b"\xef\xbb\xbf{}", False),
                           (b'{"a":' + b"[" * 1500 + b"]" * 1500 + b"}", False),
                           (b'{"id":' + b"9" * 400 + b"}", True), (b'{"id":' + b"9" * 5000 + b"}", False)):  # fmt: skip
        assert json_object(body) is expected, body[:40]
        if expected:
            decode_outbound(body)  # no OutboundDecodeError
    with pytest.raises(OutboundDecodeError):
        decode_outbound(b"[]")


# --- the run -----------------------------------------------------------------------------------------------------


async def send_one(port: int, case: OutboundCase, timeout: float = 60.0) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(case.request)
        status, _ = await asyncio.wait_for(fz.read_response(reader), timeout)
        return status
    finally:
        writer.close()


async def check_queue(port: int, settings: Settings, report: OutboundReport, generator: OutboundGenerator) -> None:
    """Every (tenant, body) answered 200 is in the outbound queue once, and nothing else. Each tenant's canary, sent
    after every fuzz case was answered, is published after all of them into its tenant's shard: once every canary
    has been consumed, so has everything queued before (one shard is consumed in order), with no time to wait out."""
    from wabridge.adapters.backends import open_backends

    canaries = {}
    for tenant in GENESYS_SECRETS:
        case = generator.signed("canary", json.dumps(generator.outbound()).encode(), tenant)
        if (status := await send_one(port, case)) != 200:
            report.problem(f"canary for {tenant} answered {status}")
            return
        canaries[(tenant, case.body)] = 1
    queued: Counter = Counter()
    wrong_route: list[str] = []
    done = asyncio.Event()

    async def handler(queue_message: Any) -> None:
        webhook = decode_queued(queue_message.body)
        if queue_message.tenant_id != webhook.tenant_id or not webhook.archive_key.startswith(webhook.tenant_id + "/"):
            wrong_route.append(f"{queue_message.tenant_id!r} {webhook.tenant_id!r} {webhook.archive_key!r}")
        queued[(webhook.tenant_id, webhook.body)] += 1
        await queue_message.ack()
        if all(queued[k] for k in canaries):
            done.set()

    async with open_backends(settings, ports=("outbound",)) as backends:
        consumer = await backends.outbound.consume(handler)
        try:
            await asyncio.wait_for(done.wait(), 120)
        except TimeoutError:
            report.problem("a canary answered 200 was not found in the outbound queue")
        finally:
            await consumer.stop()
    queued.subtract(canaries)
    missing = report.accepted - queued
    extra = queued - report.accepted
    if missing:
        report.problem(f"{sum(missing.values())} answered 200 but not queued, e.g. {next(iter(missing))!r:.300}")
    if extra:
        report.problem(f"{sum(extra.values())} queued but not answered 200 (or queued twice), "
                       f"e.g. {next(iter(extra))!r:.300}")  # fmt: skip
    if wrong_route:
        report.problem(f"queued under the wrong tenant or archive prefix: {wrong_route[:3]}")


async def fuzz_outbound_ingress(settings: Settings, workdir: Path, *, requests: int, seed: int | None = None,
                                connections: int = 8, batch: int = 64) -> OutboundReport:  # fmt: skip
    from wabridge.adapters.backends import open_backends

    seed = random.randrange(2**32) if seed is None else seed
    report = OutboundReport(seed)
    settings = settings.replace(port=fz.free_port())
    async with open_backends(settings) as backends:  # migrates the store
        for tenant in outbound_tenants():
            await backends.store.put_tenant(tenant)
    generator = OutboundGenerator(seed)
    log_path = workdir / f"outbound-ingress-{seed}.log"
    try:
        async with fz.served_ingress(settings, log_path) as port:
            left = requests
            while left > 0:
                cases = list(generator.cases(min(left, 5000)))
                left -= len(cases)
                await fz.hammer(port, cases, report, connections=connections, batch=batch)
            await check_queue(port, settings, report, generator)
        for problem in fz.log_problems(log_path.read_text(errors="replace"), requests):
            report.problem(problem)
    finally:
        if settings.amqp_url is not None:
            async with open_backends(settings, ports=("queue", "outbound")) as backends:
                for queue in (backends.queue, backends.outbound):
                    with contextlib.suppress(Exception):
                        await queue.delete_topology()
    return report


async def fuzz(settings: Settings, workdir: Path) -> None:
    report = await fuzz_outbound_ingress(settings, workdir, requests=REQUESTS, seed=SEED)
    print(report.summary())
    assert report.problems == [], report.summary() + "\n" + "\n".join(p[:2000] for p in report.problems[:10])
    assert sum(report.statuses.values()) + report.solo_closed >= REQUESTS  # every request was sent and judged
    assert report.statuses[200] > 0 and sum(report.accepted.values()) == report.statuses[200]


async def test_on_embedded_backends_the_genesys_route_queues_exactly_the_signed_json_objects(
    embedded_settings: Settings, tmp_path: Path
) -> None:
    await fuzz(embedded_settings, tmp_path)


@pytest.mark.servers
async def test_on_real_servers_the_genesys_route_queues_exactly_the_signed_json_objects(
    server_settings: Settings, tmp_path: Path
) -> None:
    await fuzz(server_settings, tmp_path)


# --- the long run: python -m tests.fuzz.test_outbound_ingress_fuzz --requests 100000 --------------------------------


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.test_outbound_ingress_fuzz",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--requests", type=int, default=100_000, help="per backend")
    parser.add_argument("--backend", choices=("embedded", "servers", "both"), default="both")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    failed = False
    for backend in ("embedded", "servers") if args.backend == "both" else (args.backend,):
        with tempfile.TemporaryDirectory(prefix="wabridge-fuzz-") as tmp:
            workdir, started = Path(tmp), time.monotonic()
            if backend == "embedded":
                settings = Settings(data_dir=workdir / "data", secret_key=Secret(generate_key()))
                report = await fuzz_outbound_ingress(settings, workdir, requests=args.requests, seed=args.seed,
                                                     connections=args.connections)
            else:
                async with fz.server_settings(workdir / "data") as settings:
                    report = await fuzz_outbound_ingress(settings, workdir, requests=args.requests, seed=args.seed,
                                                     connections=args.connections)
            print(f"{backend}: {report.summary()} in {time.monotonic() - started:.0f} s", flush=True)
            for problem in report.problems:
                print(f"  PROBLEM {problem[:2000]}", flush=True)
            failed |= bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
