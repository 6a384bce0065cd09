"""Micro-bench of the ingress request path, in-process (no HTTP), same run:

  baseline      HMAC-SHA256 over the raw body + the routing view decode: the work no ingress can skip
  full path     IngressApp.handle: signature, tenant lookup (process tier), queue message, background archive,
                publish awaited — with in-memory queue and objects, so the number is the bridge's own cost
  split         the same for a two-tenant envelope (split + two publishes)

Each round handles ROUNDS_BATCH requests one after another on one uvloop loop; report ops/s medians and ratios.
Run: .venv/bin/python -m pytest bench/test_ingress_bench.py --benchmark-min-time=0.05
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from wabridge.actors.ingress import IngressApp
from wabridge.codecs.routing import read_routing
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.engine.lru import LocalCache
from wabridge.ports import GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings
from wabridge.adapters.store.sqlite import SqliteStore

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
BODY = (CORPUS / "courier" / "hello.json").read_bytes()
SECRET = "bench-app-secret"
ROUNDS_BATCH = 2000


def tenant(tenant_id: str, number: str) -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id, phone_number_ids=(number,), app_secret=Secret(SECRET), verify_token=Secret("v"),
        whatsapp_token=Secret("w"), genesys_api_url="https://api.mypurecloud.ie",
        genesys_login_url="https://login.mypurecloud.ie", genesys_integration_id="i",
        credentials=(GenesysCredential("c", Secret("s")),),
    )


class MemoryQueue:
    """The Queue port's publish, in memory: one loop turn stands for waiting on the broker's confirm."""

    shards = 1

    def __init__(self) -> None:
        self.published: collections.deque[tuple[str, bytes, str]] = collections.deque(maxlen=10_000)

    async def publish(self, tenant_id: str, body: bytes, *, message_id: str, shard: int | None = None) -> None:
        await asyncio.sleep(0)
        self.published.append((tenant_id, body, message_id))


class MemoryObjects:
    def __init__(self) -> None:
        self.puts = 0

    async def put(self, bucket: str, key: str, data: bytes, *, content_type: str, metadata: Any = None) -> None:
        self.puts += 1


@dataclass
class BenchBackends:
    queue: MemoryQueue
    cache: Any
    store: SqliteStore
    objects: MemoryObjects
    settings: Settings


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def app(loop, tmp_path_factory) -> IngressApp:
    settings = Settings(data_dir=tmp_path_factory.mktemp("ingress-bench"), secret_key=Secret(generate_key()))
    store = SqliteStore(settings)

    async def setup() -> IngressApp:
        await store.open()
        await store.migrate()
        await store.put_tenant(tenant("acme", "1234567890"))
        await store.put_tenant(tenant("initech", "1122334455667"))
        backends = BenchBackends(MemoryQueue(), LocalCache(MemoryCache(settings)), store, MemoryObjects(), settings)
        return IngressApp(settings, backends)

    ingress = loop.run_until_complete(setup())
    yield ingress
    loop.run_until_complete(ingress.aclose())
    loop.run_until_complete(store.close())


def sign(body: bytes) -> dict[str, str]:
    return {"x-hub-signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


def per_second(benchmark) -> float:
    return ROUNDS_BATCH / benchmark.stats.stats.median


def test_baseline_hmac_and_routing_decode(benchmark) -> None:
    header = sign(BODY)["x-hub-signature-256"]

    def batch() -> None:
        for _ in range(ROUNDS_BATCH):
            expected = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(expected, header)
            read_routing(BODY)

    benchmark.pedantic(batch, rounds=15, warmup_rounds=1)
    benchmark.extra_info["ops_per_s"] = per_second(benchmark)


def _run_handle(benchmark, loop, app: IngressApp, body: bytes, publishes: int) -> None:
    headers = sign(body)

    async def requests() -> None:
        for _ in range(ROUNDS_BATCH):
            answer = await app.handle("POST", "/webhook/meta", "", headers, body)
            assert answer.status == 200

    def batch() -> None:
        app.backends.queue.published.clear()
        loop.run_until_complete(requests())
        assert len(app.backends.queue.published) == ROUNDS_BATCH * publishes  # every request really published

    benchmark.pedantic(batch, rounds=15, warmup_rounds=1)
    benchmark.extra_info["ops_per_s"] = per_second(benchmark)
    benchmark.extra_info["publishes_per_request"] = publishes


def test_full_request_path_in_memory(benchmark, loop, app: IngressApp) -> None:
    _run_handle(benchmark, loop, app, BODY, 1)


def test_two_tenant_envelope_split_in_memory(benchmark, loop, app: IngressApp) -> None:
    first, second = json.loads(BODY), json.loads(BODY.replace(b"1234567890", b"1122334455667"))
    first["entry"].extend(second["entry"])
    _run_handle(benchmark, loop, app, json.dumps(first).encode(), 2)
