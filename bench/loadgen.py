"""An open-loop load generator of signed Meta webhooks: `python -m bench.loadgen SPEC.json OUT.json`.

Open loop (constant arrival rate): request i is *due* at `start + i / rate` whatever happened to the others, and its
latency is measured from that due time, not from when a connection was free. A slow server therefore shows up as
latency instead of silently lowering the offered rate (coordinated omission avoided). Requests due while every
connection is busy wait in a bounded backlog; past the bound they are counted `unsent` (the server did not keep up).

Fast enough to saturate a Python server on one core: every request (head + body + HMAC signature) is built before the
clock starts, from one template per (tenant, kind) with the wamid and the customer patched in as bytes (a media
message is built whole, with a media id of its own, as Meta gives every upload its own); the client is
a bare asyncio Protocol over N keep-alive HTTP/1.1 connections, one request in flight per connection, under uvloop.

The plan (which tenant, customer, kind and wamid request i carries) is a pure function of the spec, so the bench can
rebuild it for its audit without this process sending it back (`plan()`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import resource
import socket
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

from wabridge.sim import webhooks

# The mix of the issue: ~80 % text, 10 % image, 5 % other media, 5 % interactive / location / reaction / status.
REALISTIC_MIX: dict[str, float] = {
    "text": 80, "image": 10, "video": 1.5, "audio": 1, "voice": 1, "document": 1, "sticker": 0.5,
    "button_reply": 1.5, "list_reply": 0.5, "location": 1, "reaction": 1, "status": 1,
}  # fmt: skip
TEXT_ONLY: dict[str, float] = {"text": 100}
WAMID_PLACEHOLDER = "wamid.BENCHPLACEHOLDERXXXXXXXXXXXXXXXX"  # patched per request with a wamid of equal length
CUSTOMER_PLACEHOLDER = "19999999999"  # patched per request with the customer's wa_id (same length)
MAX_BACKLOG_SECONDS = 2.0  # requests due but not sent are bounded to this many seconds of offered load
DRAIN_TIMEOUT = 15.0  # s the generator waits for answers after the last request is due
MIN_SLEEP = 0.001  # s, uvloop's timer resolution
clock = time.perf_counter  # uvloop's loop.time() is cached in whole milliseconds


@dataclass
class Tenant:
    tenant_id: str
    phone_number_id: str
    app_secret: str


@dataclass
class Spec:
    host: str
    port: int
    rate: float  # requests per second
    duration: float  # seconds
    connections: int = 64
    path: str = "/webhook/meta"
    tenants: list[Tenant] = field(default_factory=list)
    customers: int = 1000  # spread over the tenants round-robin
    mix: dict[str, float] = field(default_factory=lambda: dict(REALISTIC_MIX))
    run_tag: str = "r0"  # makes every wamid of a run unique (the bridge de-duplicates by wamid)
    seed: int = 7
    # Requests [0, n) go to every tenant; a burst spec sends only to `only_tenant` (scenario 5).
    only_tenant: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        data = dict(data)
        data["tenants"] = [Tenant(**t) for t in data.get("tenants", [])]
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def count(self) -> int:
        return max(1, int(self.rate * self.duration))


def wa_id(customer: int) -> str:
    return f"1650{customer:07d}"


def wamid(run_tag: str, index: int) -> str:
    text = f"wamid.B{run_tag}{index:012d}"
    return text.ljust(len(WAMID_PLACEHOLDER), "0")[: len(WAMID_PLACEHOLDER)]


def plan(spec: Spec) -> tuple[list[str], list[int], list[int], list[str]]:
    """Per request: its wamid, tenant index, customer number and kind."""
    rng = random.Random(spec.seed)
    kinds = list(spec.mix)
    drawn = rng.choices(kinds, weights=[spec.mix[k] for k in kinds], k=spec.count)
    tenants = spec.tenants
    only = next((n for n, t in enumerate(tenants) if t.tenant_id == spec.only_tenant), None)
    wamids, tenant_of, customer_of = [], [], []
    for i in range(spec.count):
        customer = i % spec.customers
        wamids.append(wamid(spec.run_tag, i))
        tenant = only if only is not None else customer % len(tenants)
        tenant_of.append(tenant)
        customer_of.append(customer)
    return wamids, tenant_of, customer_of, drawn


def _template(tenant: Tenant, kind: str) -> bytes:
    if kind == "status":
        return webhooks.webhook(tenant.phone_number_id,
                                statuses=[webhooks.status(WAMID_PLACEHOLDER, recipient_id=CUSTOMER_PLACEHOLDER)])
    msg = webhooks.message(kind, wa_id=CUSTOMER_PLACEHOLDER, wamid=WAMID_PLACEHOLDER)
    return webhooks.webhook(tenant.phone_number_id, [msg])


def build_requests(spec: Spec) -> list[bytes]:
    """Every request's bytes, signed, before the clock starts (~2 µs each: a bytes replace and one HMAC)."""
    wamids, tenant_of, customer_of, kinds = plan(spec)
    templates: dict[tuple[int, str], bytes] = {}
    secrets = [t.app_secret.encode() for t in spec.tenants]
    head = (f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            "Content-Type: application/json\r\nUser-Agent: facebookexternalua\r\n").encode()  # fmt: skip
    wp, cp = WAMID_PLACEHOLDER.encode(), CUSTOMER_PLACEHOLDER.encode()
    out = []
    for i in range(spec.count):
        key = (tenant_of[i], kinds[i])
        if key[1] in webhooks.MEDIA_KINDS:
            # A media id of its own, as Meta gives every upload: ~40 µs more each, for 15 % of the requests
            body = webhooks.webhook(spec.tenants[key[0]].phone_number_id,
                                    [webhooks.message(key[1], wa_id=wa_id(customer_of[i]), wamid=wamids[i])])
        else:
            template = templates.get(key)
            if template is None:
                template = templates[key] = _template(spec.tenants[key[0]], key[1])
            body = template.replace(wp, wamids[i].encode()).replace(cp, wa_id(customer_of[i]).encode())
        signature = hmac.new(secrets[key[0]], body, hashlib.sha256).hexdigest()
        out.append(b"%sX-Hub-Signature-256: sha256=%s\r\nContent-Length: %d\r\n\r\n%s"
                   % (head, signature.encode(), len(body), body))  # fmt: skip
    return out


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.current = -1
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, index: int) -> None:
        self.current = index
        self.transport.write(self.gen.requests[index])  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(buf[9:12])
            head = bytes(buf[:end]).lower()
            at = head.find(b"content-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop > 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                return
            del buf[:total]
            index, self.current = self.current, -1
            if index >= 0:
                self.gen.answered(self, index, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.gen.lost(self)


class _Generator:
    def __init__(self, spec: Spec, requests: list[bytes]) -> None:
        self.spec = spec
        self.requests = requests
        n = len(requests)
        self.status = array("h", [0] * n)  # 0 = never answered, -1 = connection lost / unsent
        self.latency = array("d", [0.0] * n)  # s from due time to answer
        self.answered_at = array("d", [0.0] * n)  # s since start
        self.idle: list[_Connection] = []
        self.backlog: list[int] = []
        self.backlog_head = 0
        self.unsent = 0
        self.connection_errors = 0
        self.outstanding = 0
        self.start = 0.0
        self.loop = asyncio.get_running_loop()
        self.all_done = self.loop.create_future()

    async def connect(self) -> None:
        for _ in range(self.spec.connections):
            await self._open()

    async def _open(self) -> None:
        _, conn = await self.loop.create_connection(lambda: _Connection(self), self.spec.host, self.spec.port)
        self.idle.append(conn)

    def answered(self, conn: _Connection, index: int, status: int) -> None:
        now = clock()
        self.status[index] = status
        self.latency[index] = now - (self.start + index / self.spec.rate)
        self.answered_at[index] = now - self.start
        self.outstanding -= 1
        self._next(conn)

    def _next(self, conn: _Connection) -> None:
        if self.backlog_head < len(self.backlog):
            index = self.backlog[self.backlog_head]
            self.backlog_head += 1
            self.outstanding += 1
            conn.send(index)
        else:
            self.idle.append(conn)
            if self.outstanding == 0 and self.finished_sending and not self.all_done.done():
                self.all_done.set_result(None)

    finished_sending = False

    def lost(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.current >= 0:
            self.status[conn.current] = -1
            self.outstanding -= 1
            conn.current = -1
        self.connection_errors += 1
        if self.connection_errors < 10_000:  # bounded: a dead server does not make us spin forever
            task = self.loop.create_task(self._reopen())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _reopen(self) -> None:
        await asyncio.sleep(0.05)
        try:
            await self._open()
        except OSError:
            self.connection_errors += 1
            return
        conn = self.idle.pop()
        self._next(conn)

    async def run(self) -> None:
        spec, loop = self.spec, self.loop
        n = len(self.requests)
        max_backlog = max(1, int(spec.rate * MAX_BACKLOG_SECONDS))
        self.start = clock() + 0.02
        i = 0
        while i < n:
            now = clock()
            due = min(n, int((now - self.start) * spec.rate) + 1)
            while i < due:
                if self.idle:
                    self.outstanding += 1
                    self.idle.pop().send(i)
                elif len(self.backlog) - self.backlog_head < max_backlog:
                    self.backlog.append(i)
                else:
                    self.status[i] = -1
                    self.unsent += 1
                i += 1
            if self.backlog_head > 65536:  # keep the backlog list from growing with the run
                del self.backlog[: self.backlog_head]
                self.backlog_head = 0
            next_due = self.start + i / spec.rate
            # At least MIN_SLEEP: uvloop's timers tick in milliseconds, and a shorter sleep returned at once — the
            # generator spun (0.35 cores at 1,000/s, taken from the bridge it measures). A request sent up to 1 ms
            # late is charged that delay in its latency (measured from its due time).
            await asyncio.sleep(min(max(next_due - clock(), MIN_SLEEP), 0.005))
        self.finished_sending = True
        if self.outstanding == 0 and self.backlog_head >= len(self.backlog):
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.all_done), DRAIN_TIMEOUT)
        except TimeoutError:
            pass


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[k]


def summarise(spec: Spec, status: list[int], latency: list[float], answered_at: list[float],
              elapsed: float) -> dict[str, Any]:  # fmt: skip
    counts: dict[str, int] = {}
    for s in status:
        counts[str(s)] = counts.get(str(s), 0) + 1
    ok = [latency[i] for i, s in enumerate(status) if s == 200]
    ok.sort()
    every = sorted(latency[i] for i, s in enumerate(status) if s > 0)
    seconds = int(spec.duration + DRAIN_TIMEOUT) + 2
    per_second = [0] * seconds
    for i, s in enumerate(status):
        if s == 200:
            per_second[min(seconds - 1, int(answered_at[i]))] += 1
    while per_second and per_second[-1] == 0:
        per_second.pop()
    return {
        "offered_rate": spec.rate,
        "sent": len(status),
        "statuses": counts,
        "ok": len(ok),
        "ok_per_s": len(ok) / elapsed if elapsed else 0.0,
        "elapsed_s": elapsed,
        "latency_ms": {k: _percentile(ok, q) * 1000 for k, q in
                       (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))},
        "latency_all_ms": {k: _percentile(every, q) * 1000 for k, q in (("p50", 0.5), ("p99", 0.99))},
        "per_second_ok": per_second,
    }  # fmt: skip


async def generate(spec: Spec, requests: list[bytes]) -> dict[str, Any]:
    gen = _Generator(spec, requests)
    await gen.connect()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall_start = time.time()
    t0 = clock()
    await gen.run()
    elapsed = min(clock() - t0, spec.duration + DRAIN_TIMEOUT)
    # The time the last 200 came in, not the drain timeout, is the run's length for throughput.
    last = max((gen.answered_at[i] for i, s in enumerate(gen.status) if s == 200), default=0.0)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    summary = summarise(spec, list(gen.status), list(gen.latency), list(gen.answered_at), max(last, spec.duration * 0.5))
    summary["unsent"] = gen.unsent
    summary["connection_errors"] = gen.connection_errors
    summary["generator_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    summary["wall_start"] = wall_start + 0.02  # the due time of request 0, Unix seconds
    summary["wall_elapsed_s"] = elapsed
    summary["status_by_request"] = list(gen.status)
    summary["answered_at"] = [round(x, 5) for x in gen.answered_at]
    return summary


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as fh:
        spec = Spec.from_json(json.load(fh))
    requests = build_requests(spec)
    try:
        import uvloop

        result = uvloop.run(generate(spec, requests))
    except ImportError:
        result = asyncio.run(generate(spec, requests))
    with open(out_path, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
