"""The agent → customer ingress (issue 17): `POST /webhook/genesys/{tenantId}`. Every answer, and for each exactly what
reached the outbound queue (and nothing the inbound one), on the embedded backends and on the real servers.

Bodies are Genesys's outbound webhook as the fixtures capture it; good signatures are made by the Genesys simulator's
own signer (`wabridge.sim.genesys_agent.sign`), so the ingress and the simulated Genesys agree on the wire format.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from wabridge.actors.archive import read_archived
from wabridge.actors.ingress import IngressApp
from wabridge.actors.ingress_metrics import OUTBOUND_WEBHOOKS
from wabridge.codecs.routing import QueuedWebhook, decode_queued
from wabridge.adapters.backends import Backends, open_backends
from wabridge.ports import WEBHOOKS_OUTBOUND_BUCKET, GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.sim.genesys_agent import sign

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "genesys"
TEXT = (FIXTURES / "text-phone-reply.json").read_bytes()
TEXT_ID = json.loads(TEXT)["id"]
SECRET = "genesys-outbound-secret"
META_APP_SECRET = "acme-app-secret"


def tenant(tenant_id: str, number: str, *, genesys_secret: str | None) -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id,
        phone_number_ids=(number,),
        app_secret=Secret(META_APP_SECRET),
        verify_token=Secret("verify"),
        whatsapp_token=Secret("wa-token"),
        genesys_api_url="https://api.mypurecloud.ie",
        genesys_login_url="https://login.mypurecloud.ie",
        genesys_integration_id=f"integration-{tenant_id}",
        credentials=(GenesysCredential("client", Secret("client-secret")),),
        genesys_webhook_secret=Secret(genesys_secret) if genesys_secret is not None else None,
    )


ACME = tenant("acme", "1234567890", genesys_secret=SECRET)
NOSECRET = tenant("nosecret", "1122334455667", genesys_secret=None)  # set up before issue 17: no outbound secret


def signed(body: bytes, encoding: str = "base64", secret: str = SECRET) -> dict[str, str]:
    return {"x-hub-signature-256": sign(body, secret, encoding), "content-type": "application/json"}


async def post(app: IngressApp, body: bytes, headers: dict[str, str], tenant_id: str = "acme"):
    return await app.handle("POST", f"/webhook/genesys/{tenant_id}", "", headers, body)


@contextlib.asynccontextmanager
async def tenants_on(settings: Settings) -> AsyncIterator[Backends]:
    async with open_backends(settings) as backends:
        for t in (ACME, NOSECRET):
            await backends.store.put_tenant(t)
        try:
            yield backends
        finally:
            for queue in (backends.queue, backends.outbound):  # the shared broker keeps no test's queues
                with contextlib.suppress(Exception):
                    await queue.delete_topology()
    if settings.s3_endpoint:
        from tests.contract.test_objects import remove_buckets

        await remove_buckets(settings)


@pytest.fixture(params=["embedded", pytest.param("servers", marks=pytest.mark.servers)])
def settings(request: pytest.FixtureRequest) -> Settings:
    return request.getfixturevalue("embedded_settings" if request.param == "embedded" else "server_settings")


@pytest.fixture
async def backends(settings: Settings) -> AsyncIterator[Backends]:
    async with tenants_on(settings) as opened:
        yield opened


@pytest.fixture
async def app(backends: Backends) -> AsyncIterator[IngressApp]:
    ingress = IngressApp(backends.settings, backends)
    yield ingress
    await ingress.aclose()


async def drain(
    queue, *, expect: int, settle: float = 0.3, timeout: float = 10.0
) -> list[tuple[str, str, QueuedWebhook]]:
    """Everything in `queue`: waits for `expect` messages, then `settle` seconds more to catch any extra."""
    got: list[tuple[str, str, QueuedWebhook]] = []
    enough = asyncio.Event()

    async def handler(queue_message) -> None:
        got.append((queue_message.tenant_id, queue_message.message_id, decode_queued(queue_message.body)))
        await queue_message.ack()
        if len(got) >= expect:
            enough.set()

    consumer = await queue.consume(handler)
    try:
        if expect:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), timeout)
        await asyncio.sleep(settle)
    finally:
        await consumer.stop()
    return got


async def nothing_queued(backends: Backends) -> None:
    assert await drain(backends.outbound, expect=0) == []
    assert await drain(backends.queue, expect=0) == []


# --- accepted -------------------------------------------------------------------------------------------------------


async def test_a_base64_signed_agent_message_is_queued_once_on_the_outbound_queue_and_archived(
    app: IngressApp, backends: Backends
) -> None:
    queued_before = OUTBOUND_WEBHOOKS.labels("queued").get()
    answer = await post(app, TEXT, signed(TEXT, "base64"))
    assert (answer.status, json.loads(answer.body)) == (200, {"status": "ok"})
    [(tenant_id, message_id, queued)] = await drain(backends.outbound, expect=1)
    assert (tenant_id, message_id) == ("acme", f"{TEXT_ID}:acme")  # Genesys's retries of it share this id
    assert (queued.tenant_id, queued.body) == ("acme", TEXT)  # the raw signed bytes: the worker may verify again
    assert await drain(backends.queue, expect=0) == [], "nothing on the customers' queue"
    assert OUTBOUND_WEBHOOKS.labels("queued").get() == queued_before + 1
    assert app.outbound_archive is not None
    await app.outbound_archive.flush()
    assert await read_archived(backends.objects, queued.archive_key, bucket=WEBHOOKS_OUTBOUND_BUCKET) == TEXT
    with pytest.raises(KeyError):  # kept apart from the customers' webhooks
        await read_archived(backends.objects, queued.archive_key)


@pytest.mark.parametrize("digest", ["hex", "HEX"])
async def test_a_hex_digest_is_the_same_proof_and_accepted(app: IngressApp, backends: Backends, digest: str) -> None:
    headers = signed(TEXT, "hex")
    if digest == "HEX":
        headers["x-hub-signature-256"] = "sha256=" + headers["x-hub-signature-256"][7:].upper()
    assert (await post(app, TEXT, headers)).status == 200
    assert [q.body for _, _, q in await drain(backends.outbound, expect=1)] == [TEXT]


@pytest.mark.parametrize(
    "body",
    [b'{"id": 42, "type": "Text"}', b'{"type": "Receipt", "status": "Delivered"}', b"{}"],
    ids=["id-of-the-wrong-type", "receipt", "empty-object"],
)
async def test_any_signed_json_object_is_queued_for_the_worker_to_judge_under_the_webhooks_id(
    app: IngressApp, backends: Backends, body: bytes
) -> None:
    """A skip (with the Failed receipt it may owe) is the worker's call: the ingress only refuses what is not a JSON
    object. Without a usable Genesys id the queue message is named after the POST, as inbound webhooks are."""
    assert (await post(app, body, signed(body))).status == 200
    [(_, message_id, queued)] = await drain(backends.outbound, expect=1)
    assert queued.body == body and message_id.endswith(":acme") and not message_id.startswith("42:")


async def test_a_genesys_id_too_long_for_an_amqp_message_id_falls_back_to_the_webhooks_id(
    app: IngressApp, backends: Backends
) -> None:
    long_id = "é" * 200  # 400 bytes: a usable id for the codec, over AMQP's 255-byte short string
    body = TEXT.replace(TEXT_ID.encode(), long_id.encode())
    assert (await post(app, body, signed(body))).status == 200
    [(_, message_id, queued)] = await drain(backends.outbound, expect=1)
    assert queued.body == body and len(message_id.encode()) <= 255 and long_id not in message_id


# --- refused --------------------------------------------------------------------------------------------------------


def _b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256=" + _b64_hmac("another-secret", TEXT),
        "sha256=" + _b64_hmac(META_APP_SECRET, TEXT),  # the tenant's Meta app secret is not Genesys's
        "sha1=" + _b64_hmac(SECRET, TEXT),
        _b64_hmac(SECRET, TEXT),  # no scheme
        "sha256=" + _b64_hmac(SECRET, TEXT)[:-4],  # cut short
        "sha256=" + _b64_hmac(SECRET, TEXT).lower(),  # base64 is case-sensitive
        "sha256=" + _b64_hmac(SECRET, TEXT + b" "),  # another body
        "sha256=é" + _b64_hmac(SECRET, TEXT),
    ],
    ids=["missing", "empty", "no-digest", "other-secret", "meta-secret", "sha1", "no-scheme", "cut", "lowercased-b64",
         "other-body", "non-ascii"],
)
async def test_a_bad_or_missing_signature_is_401_and_nothing_is_queued(
    app: IngressApp, backends: Backends, header: str | None
) -> None:
    headers = {} if header is None else {"x-hub-signature-256": header}
    answer = await post(app, TEXT, headers)
    assert answer.status == 401 and "signature" in json.loads(answer.body)["error"]
    await nothing_queued(backends)


async def test_an_unsigned_body_that_is_not_json_is_401_not_400(app: IngressApp, backends: Backends) -> None:
    """The signature is checked before anything in the body is read: an unsigned sender learns nothing of it."""
    assert (await post(app, b"not json", {})).status == 401


@pytest.mark.parametrize("tenant_id", ["ghost", "a" * 500, "nul\x00byte"])
async def test_an_unknown_tenant_is_404(app: IngressApp, backends: Backends, tenant_id: str) -> None:
    answer = await post(app, TEXT, signed(TEXT), tenant_id=tenant_id)
    assert (answer.status, json.loads(answer.body)) == (404, {"error": "unknown tenant"})
    await nothing_queued(backends)


async def test_a_tenant_without_a_genesys_webhook_secret_is_401_saying_so(app: IngressApp, backends: Backends) -> None:
    for headers in (signed(TEXT), signed(TEXT, secret=""), {}):  # whatever it is signed with: there is no key
        answer = await post(app, TEXT, headers, tenant_id="nosecret")
        assert answer.status == 401 and "secret" in json.loads(answer.body)["error"]
    await nothing_queued(backends)


@pytest.mark.parametrize("body", [b"not json", b'["an", "array"]', b'"a string"', b"{\"id\": ", b"\xff\xfe"])
async def test_a_signed_body_that_is_not_a_json_object_is_400(app: IngressApp, backends: Backends, body: bytes) -> None:
    answer = await post(app, body, signed(body))
    assert answer.status == 400 and json.loads(answer.body)["error"].startswith("malformed")
    await nothing_queued(backends)


async def test_other_methods_and_paths_under_the_genesys_webhook_are_not_served(app: IngressApp) -> None:
    assert (await app.handle("GET", "/webhook/genesys/acme", "", {}, b"")).status == 405
    for path in ("/webhook/genesys/", "/webhook/genesys/acme/extra"):
        assert (await app.handle("POST", path, "", signed(TEXT), TEXT)).status == 404


# --- backends failing -----------------------------------------------------------------------------------------------


async def test_the_outbound_queue_down_is_503_so_genesys_retries(embedded_settings: Settings) -> None:
    async with tenants_on(embedded_settings) as backends:
        app = IngressApp(embedded_settings, backends)
        await backends.outbound.close()
        before = OUTBOUND_WEBHOOKS.labels("unavailable").get()
        answer = await post(app, TEXT, signed(TEXT))
        assert answer.status == 503 and OUTBOUND_WEBHOOKS.labels("unavailable").get() == before + 1
        ready = await app.handle("GET", "/readyz", "", {}, b"")
        assert ready.status == 503 and json.loads(ready.body)["outbound"] is False
        await backends.outbound.open()
        assert json.loads((await app.handle("GET", "/readyz", "", {}, b"")).body)["outbound"] is True
        await nothing_queued(backends)
        await app.aclose()


@pytest.mark.servers
async def test_on_real_servers_the_broker_down_is_503_and_nothing_is_half_queued(
    server_settings, proxy_factory
) -> None:
    amqp_proxy, amqp_url = await proxy_factory(server_settings.amqp_url.reveal())
    settings = server_settings.replace(amqp_url=Secret(amqp_url))
    async with tenants_on(settings) as backends:
        app = IngressApp(settings, backends)
        assert (await post(app, TEXT, signed(TEXT))).status == 200
        amqp_proxy.cut()
        assert (await post(app, TEXT, signed(TEXT, "hex"))).status == 503
        await app.aclose()
        amqp_proxy.restore()
        [(_, message_id, queued)] = await drain(backends.outbound, expect=1)
        assert (message_id, queued.body) == (f"{TEXT_ID}:acme", TEXT)


# --- through real Granian, with the simulated Genesys agent ----------------------------------------------------------


async def status_of_a_declared_body(base: str, path: str, length: int) -> int:
    """The status answered to a POST that declares `length` bytes and sends none: refused from its Content-Length
    alone. (Sending the bytes races the server's early answer and close: the client may see a reset instead.)"""
    host, _, port = base.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_over_http_the_simulated_agents_webhook_is_taken_and_an_oversized_one_is_413(
    embedded_settings: Settings,
) -> None:
    from tests.actors.test_ingress import granian_ingress
    from wabridge.sim.genesys import GenesysSim
    from wabridge.sim.genesys_agent import Party, SendSpec

    async with tenants_on(embedded_settings) as backends:
        with granian_ingress(embedded_settings, workers=1) as base:
            async with GenesysSim(integrations=["integration-acme"], bridge_url=base, tenant="acme",
                                  outbound_secret=SECRET, max_retries=0) as sim:  # fmt: skip
                spec = SendSpec(text="Your order shipped today.", to=Party(id="16505551234"))
                record = await sim.agent.send(spec, wait=True)
            limit = embedded_settings.max_body_bytes
            too_big = await status_of_a_declared_body(base, "/webhook/genesys/acme", limit + 1)
            async with httpx.AsyncClient(timeout=10) as http:
                metrics = (await http.get(base + "/metrics")).text
        assert [(a["status"], json.loads(a["answer"])) for a in record.attempts] == [(200, {"status": "ok"})]
        assert too_big == 413
        assert 'wabridge_ingress_requests_total{route="genesys",status="413"} 1.0' in metrics
        assert 'wabridge_outbound_webhooks_total{outcome="queued"} 1.0' in metrics
        assert 'wabridge_outbound_webhooks_total{outcome="too_large"} 1.0' in metrics
        [(tenant_id, message_id, queued)] = await drain(backends.outbound, expect=1)
        assert (tenant_id, message_id, queued.body) == ("acme", f"{record.id}:acme", record.body)
        # Stopped by SIGTERM, the ingress put the outbound archive's last segment too.
        assert await read_archived(backends.objects, queued.archive_key, bucket=WEBHOOKS_OUTBOUND_BUCKET) == record.body
