"""The webhook ingress: every answer, and for each exactly what reached the queue (nothing lost, nothing twice).

Payloads are the peer corpora (read from ../shared/corpus, never copied). Most tests call `IngressApp.handle` on the
embedded adapters; the `granian` tests run the real server in a subprocess over HTTP; `servers` tests use the real
RabbitMQ / S3 and cut their proxies to take one down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import CORPUS, REPO
from wabridge.actors.archive import encode_record, read_archived
from wabridge.actors.ingress import IngressApp
from wabridge.cli.assembly import WORKERS_KILL_TIMEOUT
from wabridge.engine.settings import settings_environment
from wabridge.codecs.routing import QueuedWebhook, decode_queued
from wabridge.codecs.transform import transform
from wabridge.codecs.object_keys import archive_segment_key
from wabridge.ports import WEBHOOKS_BUCKET, GenesysCredential, TenantConfig, TrackingStatus
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio

HELLO = (CORPUS / "courier" / "hello.json").read_bytes()  # phone_number_id 1234567890
PYWA_TEXT = json.dumps(json.loads((CORPUS / "pywa" / "message.json").read_text())["text"]).encode()  # 1122334455667
STATUS = json.dumps(json.loads((CORPUS / "pywa" / "message_status.json").read_text())["sent"]).encode()


def tenant(tenant_id: str, numbers: tuple[str, ...], app_secret: str) -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id,
        phone_number_ids=numbers,
        app_secret=Secret(app_secret),
        verify_token=Secret(f"verify-{tenant_id}"),
        whatsapp_token=Secret("wa-token"),
        genesys_api_url="https://api.mypurecloud.ie",
        genesys_login_url="https://login.mypurecloud.ie",
        genesys_integration_id=f"integration-{tenant_id}",
        credentials=(GenesysCredential("client", Secret("client-secret")),),
    )


ACME = tenant("acme", ("1234567890",), "acme-app-secret")
GLOBEX = tenant("globex", ("1122334455667",), "globex-app-secret")
# Same Meta app as acme (shared secret), another phone number: the multi-tenant envelope case.
INITECH = tenant("initech", ("1122334455667",), "acme-app-secret")


def sign(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}


@contextlib.asynccontextmanager
async def opened_backends(settings: Settings) -> AsyncIterator:
    from wabridge.adapters.backends import open_backends

    async with open_backends(settings) as backends:  # migrates the store
        yield backends


@pytest.fixture
async def embedded(embedded_settings: Settings) -> AsyncIterator:
    async with opened_backends(embedded_settings) as backends:
        for t in (ACME, GLOBEX):
            await backends.store.put_tenant(t)
        yield backends


@pytest.fixture
async def app(embedded_settings: Settings, embedded) -> AsyncIterator[IngressApp]:
    ingress = IngressApp(embedded_settings, embedded)
    yield ingress
    await ingress.aclose()


async def drain(queue, *, expect: int, settle: float = 0.3, timeout: float = 10.0) -> list[tuple[str, str, QueuedWebhook]]:
    """Everything in the queue: waits for `expect` messages, then `settle` seconds more to catch any extra."""
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


async def archives_settled(app: IngressApp) -> None:
    assert app.archive is not None
    await app.archive.flush()


# --- the verification handshake -----------------------------------------------------------------------------------


async def test_handshake_with_the_tenants_verify_token_answers_the_challenge(app: IngressApp) -> None:
    query = "hub.mode=subscribe&hub.verify_token=verify-acme&hub.challenge=1158201444"
    answer = await app.handle("GET", "/webhook/meta/acme", query, {}, b"")
    assert (answer.status, answer.body) == (200, b"1158201444")


async def test_handshake_without_tenant_accepts_any_tenants_token(app: IngressApp) -> None:
    query = "hub.mode=subscribe&hub.verify_token=verify-globex&hub.challenge=42"
    assert (await app.handle("GET", "/webhook/meta", query, {}, b"")).body == b"42"


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/webhook/meta/acme", "hub.mode=subscribe&hub.verify_token=verify-globex&hub.challenge=1"),  # other's token
        ("/webhook/meta", "hub.mode=subscribe&hub.verify_token=nobody&hub.challenge=1"),
        ("/webhook/meta", "hub.mode=unsubscribe&hub.verify_token=verify-acme&hub.challenge=1"),
        ("/webhook/meta", "hub.challenge=1"),
        ("/webhook/meta/ghost", "hub.mode=subscribe&hub.verify_token=verify-acme&hub.challenge=1"),
    ],
)
async def test_handshake_with_anything_else_is_forbidden(app: IngressApp, path: str, query: str) -> None:
    answer = await app.handle("GET", path, query, {}, b"")
    assert answer.status == 403 and b"1" not in answer.body


# --- webhooks: accepted -------------------------------------------------------------------------------------------


async def test_signed_webhook_is_queued_once_as_its_raw_bytes_and_archived(app: IngressApp, embedded) -> None:
    answer = await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)
    assert answer.status == 200
    [(tenant_id, message_id, queued)] = await drain(embedded.queue, expect=1)
    assert (tenant_id, queued.tenant_id, queued.body) == ("acme", "acme", HELLO)  # untouched: still verifiable
    segment, _, index = queued.archive_key.partition("#")
    segment_id = segment.rpartition("/")[2].removesuffix(".ndjson")
    assert segment == archive_segment_key("acme", queued.received_at, segment_id) and index == "0"
    await archives_settled(app)
    assert await read_archived(embedded.objects, queued.archive_key) == HELLO


async def test_a_signed_body_with_an_emoji_cut_in_two_is_queued_repaired_and_archived_raw(
    app: IngressApp, embedded
) -> None:
    """msgspec refuses a lone UTF-16 surrogate escape; Meta would resend the body for a week. The queued part has
    U+FFFD in its place, the archive keeps the signed bytes."""
    raw = HELLO.replace(b'"body": "Hello', b'"body": "\\ud83d Hello', 1)
    assert raw != HELLO
    assert (await app.handle("POST", "/webhook/meta", "", sign(raw, "acme-app-secret"), raw)).status == 200
    [(_, _, queued)] = await drain(embedded.queue, expect=1)
    (inbound,) = transform(queued.body)
    assert inbound.message.text.startswith("\ufffd ")
    await archives_settled(app)
    assert await read_archived(embedded.objects, queued.archive_key) == raw


async def test_webhooks_of_one_tenant_share_a_segment_and_each_is_found_by_its_key(app: IngressApp, embedded) -> None:
    bodies = [HELLO.replace(b"external_id", f"wamid-{n}".encode()) for n in range(5)]
    for body in bodies:
        assert (await app.handle("POST", "/webhook/meta", "", sign(body, "acme-app-secret"), body)).status == 200
    keys = {q.body: q.archive_key for _, _, q in await drain(embedded.queue, expect=5)}
    assert len({key.partition("#")[0] for key in keys.values()}) == 1  # one object, not five
    await archives_settled(app)
    assert [await read_archived(embedded.objects, keys[body]) for body in bodies] == bodies


async def test_tenant_in_the_path_is_verified_with_that_tenants_secret(app: IngressApp, embedded) -> None:
    answer = await app.handle("POST", "/webhook/meta/globex", "", sign(PYWA_TEXT, "globex-app-secret"), PYWA_TEXT)
    assert answer.status == 200
    assert [(t, q.body) for t, _, q in await drain(embedded.queue, expect=1)] == [("globex", PYWA_TEXT)]


async def test_statuses_only_payload_is_still_queued(app: IngressApp, embedded) -> None:
    answer = await app.handle("POST", "/webhook/meta", "", sign(STATUS, "globex-app-secret"), STATUS)
    assert answer.status == 200
    assert [q.body for _, _, q in await drain(embedded.queue, expect=1)] == [STATUS]


async def test_two_posts_of_one_payload_are_two_queue_messages_with_distinct_ids(app: IngressApp, embedded) -> None:
    for _ in range(2):  # Meta's retry: the workers de-duplicate by wamid, the ingress must not lose either
        assert (await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)).status == 200
    got = await drain(embedded.queue, expect=2)
    assert len(got) == 2 and got[0][1] != got[1][1]


def two_tenant_envelope() -> bytes:
    first, second = json.loads(HELLO), json.loads(PYWA_TEXT)
    first["entry"].extend(second["entry"])
    return json.dumps(first).encode()


async def test_envelope_for_two_tenants_of_one_app_becomes_one_message_each(embedded_settings, embedded) -> None:
    await embedded.store.remove_tenant("globex")
    await embedded.store.put_tenant(INITECH)
    app = IngressApp(embedded_settings, embedded)
    body = two_tenant_envelope()
    assert (await app.handle("POST", "/webhook/meta", "", sign(body, "acme-app-secret"), body)).status == 200
    got = {t: q for t, _, q in await drain(embedded.queue, expect=2)}
    assert set(got) == {"acme", "initech"}
    acme, initech = json.loads(got["acme"].body), json.loads(got["initech"].body)
    assert [e["changes"][0]["value"]["metadata"]["phone_number_id"] for e in acme["entry"]] == ["1234567890"]
    assert [e["changes"][0]["value"]["metadata"]["phone_number_id"] for e in initech["entry"]] == ["1122334455667"]
    # The raw signed body holds both tenants' customers: archived once, under neither tenant's prefix.
    assert got["acme"].archive_key == got["initech"].archive_key and got["acme"].archive_key.startswith("_shared/")
    await archives_settled(app)
    assert await read_archived(embedded.objects, got["acme"].archive_key) == body
    for tenant_id in ("acme", "initech"):
        assert not list((embedded.objects.root / WEBHOOKS_BUCKET / tenant_id).rglob("*.ndjson")), tenant_id
    await app.aclose()


async def test_envelope_for_two_tenants_with_different_secrets_is_refused(app: IngressApp, embedded) -> None:
    body = two_tenant_envelope()  # acme + globex: no single secret signs for both
    assert (await app.handle("POST", "/webhook/meta", "", sign(body, "acme-app-secret"), body)).status == 401
    assert await drain(embedded.queue, expect=0) == []


# --- webhooks: refused --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/webhook/meta", {}),
        ("/webhook/meta", {"x-hub-signature-256": "sha256=" + "0" * 64}),
        ("/webhook/meta", sign(HELLO, "globex-app-secret")),  # another tenant's secret
        ("/webhook/meta/acme", sign(HELLO, "globex-app-secret")),
        ("/webhook/meta", sign(HELLO + b" ", "acme-app-secret")),  # signed other bytes
    ],
)
async def test_missing_or_wrong_signature_is_401_and_nothing_is_queued(app: IngressApp, embedded, path, headers) -> None:
    assert (await app.handle("POST", path, "", headers, HELLO)).status == 401
    assert await drain(embedded.queue, expect=0) == []


@pytest.mark.parametrize("path", ["/webhook/meta", "/webhook/meta/acme"])
async def test_malformed_json_with_a_valid_signature_is_400(app: IngressApp, embedded, path: str) -> None:
    body = HELLO[:-10]
    assert (await app.handle("POST", path, "", sign(body, "acme-app-secret"), body)).status == 400
    assert await drain(embedded.queue, expect=0) == []


async def test_body_nobody_owns_signed_by_a_tenant_s_meta_app_is_200_tracked_unrouted_and_archived(
    app: IngressApp, embedded
) -> None:
    body = HELLO.replace(b"1234567890", b"999000999")  # a number of acme's Meta app that no tenant has claimed
    assert (await app.handle("POST", "/webhook/meta", "", sign(body, "acme-app-secret"), body)).status == 200
    assert await drain(embedded.queue, expect=0) == []
    [row] = await embedded.store.list_tracking(statuses=[TrackingStatus.UNROUTED])
    assert (row.wamid, row.status) == ("external_id", "unrouted") and "999000999" in (row.error or "")
    await archives_settled(app)
    [segment] = [p for p in (embedded.objects.root / WEBHOOKS_BUCKET / "_unrouted").rglob("*.ndjson")]
    key = str(segment.relative_to(embedded.objects.root / WEBHOOKS_BUCKET))
    assert await read_archived(embedded.objects, key + "#0") == body


async def test_a_signed_account_update_is_200_and_archived_with_no_tracking_row(app: IngressApp, embedded) -> None:
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
        {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT", "phone_number": "15550783881"}}]}]}).encode()
    assert (await app.handle("POST", "/webhook/meta", "", sign(body, "acme-app-secret"), body)).status == 200
    assert await embedded.store.list_tracking() == []  # no customer message: nothing to track
    await archives_settled(app)
    [segment] = list((embedded.objects.root / WEBHOOKS_BUCKET / "_unrouted").rglob("*.ndjson"))
    assert json.loads(segment.read_text())["body"] == body.decode()
    assert await drain(embedded.queue, expect=0) == []


@pytest.mark.parametrize("secret", ["whoever", None])
async def test_body_nobody_owns_that_no_tenant_s_app_signed_is_401_and_nothing_is_kept(
    app: IngressApp, embedded, secret: str | None
) -> None:
    body = HELLO.replace(b"1234567890", b"999000999")
    headers = sign(body, secret) if secret else {"x-hub-signature-256": "sha256=" + "0" * 64}
    assert (await app.handle("POST", "/webhook/meta", "", headers, body)).status == 401
    assert await embedded.store.list_tracking(statuses=[TrackingStatus.UNROUTED]) == []
    await archives_settled(app)
    assert not list((embedded.objects.root / WEBHOOKS_BUCKET).rglob("*.ndjson"))
    assert await drain(embedded.queue, expect=0) == []


async def test_the_signature_s_hex_case_does_not_matter(app: IngressApp, embedded) -> None:
    headers = {k: v.upper() for k, v in sign(HELLO, "acme-app-secret").items()}
    assert headers["x-hub-signature-256"].startswith("SHA256=")
    assert (await app.handle("POST", "/webhook/meta", "", headers, HELLO)).status == 200
    garbled = {"x-hub-signature-256": "sha256=é" + "0" * 63}
    assert (await app.handle("POST", "/webhook/meta", "", garbled, HELLO)).status == 401


# --- webhooks: hostile bodies (issue 15: everything before the signature check is a 4xx, never a 500) ------------

UNSIGNED = {"x-hub-signature-256": "sha256=" + "0" * 64}  # the prefix alone reached the routing view
DEEP = HELLO.replace(b'"metadata"', b'"deep":' + b"[" * 1000 + b"]" * 1000 + b',"metadata"', 1)
BAD_UTF8_NUMBER = HELLO.replace(b"1234567890", b"12345\xff67890", 1)


@pytest.mark.parametrize("body", [DEEP, BAD_UTF8_NUMBER, HELLO[:-10], b"\\u" + HELLO], ids=["deep", "utf8", "cut", "esc"])
async def test_a_body_the_routing_view_cannot_read_is_400_when_signed_and_401_when_not(
    app: IngressApp, embedded, body: bytes
) -> None:
    """Unreadable, the body names no tenant whose secret could check it: it is 400 only when one of our Meta apps
    signed it, so an unsigned sender learns nothing about its JSON (it was 400, or a 500 with a traceback)."""
    assert (await app.handle("POST", "/webhook/meta", "", UNSIGNED, body)).status == 401
    assert (await app.handle("POST", "/webhook/meta", "", sign(body, "acme-app-secret"), body)).status == 400
    assert (await app.handle("POST", "/webhook/meta/acme", "", sign(body, "acme-app-secret"), body)).status == 400
    assert await drain(embedded.queue, expect=0) == []


@pytest.mark.parametrize("path", ["/webhook/meta", "/webhook/meta/acme"])
async def test_a_signed_body_with_invalid_utf8_where_the_routing_view_does_not_look_is_400(
    app: IngressApp, embedded, path: str
) -> None:
    """The routing view skips the message text unread; the worker would find it unreadable after the 200. The whole
    body is checked once it is signed (and only then: unsigned, it is 401 like any other)."""
    body = HELLO.replace(b'"body": "Hello', b'"body": "\xc3\x28 Hello', 1)
    assert body != HELLO
    assert (await app.handle("POST", path, "", UNSIGNED, body)).status == 401
    assert (await app.handle("POST", path, "", sign(body, "acme-app-secret"), body)).status == 400
    unrouted = body.replace(b"1234567890", b"999000999")
    assert (await app.handle("POST", "/webhook/meta", "", sign(unrouted, "acme-app-secret"), unrouted)).status == 400
    assert await drain(embedded.queue, expect=0) == []
    assert await embedded.store.list_tracking() == []


async def test_a_two_tenant_body_with_an_odd_object_and_an_unknown_number_is_split_not_a_500(
    embedded_settings, embedded
) -> None:
    """The split read `object` as a string where the routing view ignores it: a MalformedWebhook escaped as a 500.
    Each tenant's part keeps it verbatim, as a one-tenant body would reach the worker."""
    await embedded.store.remove_tenant("globex")
    await embedded.store.put_tenant(INITECH)
    app = IngressApp(embedded_settings, embedded)
    envelope = json.loads(two_tenant_envelope())
    envelope["object"] = 5
    stray = json.loads(HELLO)["entry"][0]
    stray["changes"][0]["value"]["metadata"]["phone_number_id"] = "999000999"
    envelope["entry"].append(stray)
    body = json.dumps(envelope).encode()
    assert (await app.handle("POST", "/webhook/meta", "", sign(body, "acme-app-secret"), body)).status == 200
    got = {t: json.loads(q.body) for t, _, q in await drain(embedded.queue, expect=2)}
    assert set(got) == {"acme", "initech"} and {part["object"] for part in got.values()} == {5}
    await app.aclose()


class ClosedMidBody:
    """An RSGI protocol whose client went away while the body streamed in (what Granian raises then)."""

    def __init__(self) -> None:
        self.answers: list[int] = []

    async def __call__(self) -> bytes:
        from granian.rsgi import ProtocolClosed

        raise ProtocolClosed("RSGI transport is closed")

    def response_bytes(self, status: int, headers, body: bytes) -> None:
        self.answers.append(status)


async def test_a_client_gone_mid_body_is_counted_and_answered_400_not_500(app: IngressApp, caplog) -> None:
    from wabridge.actors.ingress_metrics import DISCONNECTS

    scope = type("Scope", (), {"proto": "http", "method": "POST", "path": "/webhook/meta", "query_string": "",
                               "headers": {"content-length": "100"}})()  # fmt: skip
    proto = ClosedMidBody()
    before = DISCONNECTS.labels().get()
    await app.__rsgi__(scope, proto)
    assert proto.answers == [400] and DISCONNECTS.labels().get() == before + 1
    assert len(caplog.records) <= 1 and not any(r.exc_info for r in caplog.records)


async def test_an_unsigned_body_naming_many_numbers_costs_a_bounded_number_of_lookups(app: IngressApp) -> None:
    lookups: list[str] = []
    by_phone_number = app.directory.by_phone_number

    async def counted(number: str):
        lookups.append(number)
        return await by_phone_number(number)

    app.directory.by_phone_number = counted
    many = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"metadata": {"phone_number_id": f"{n:015d}"}}} for n in range(1000)]}]}
    body = json.dumps(many).encode()
    assert (await app.handle("POST", "/webhook/meta", "", {"x-hub-signature-256": "sha256=00"}, body)).status == 400
    long_number = json.dumps({"entry": [{"changes": [{"value": {"metadata": {"phone_number_id": "9" * 100_000}}}]}]})
    assert (await app.handle("POST", "/webhook/meta", "", {"x-hub-signature-256": "sha256=00"},
                             long_number.encode())).status == 401  # fmt: skip
    assert lookups == []


class BodyNeverComes(ClosedMidBody):
    """A client that declared a Content-Length and keeps the connection open without sending it (slowloris)."""

    async def __call__(self) -> bytes:
        await asyncio.sleep(3600)
        return b""


async def test_a_body_that_never_arrives_is_answered_408_at_the_deadline(app: IngressApp) -> None:
    app.body_timeout = 0.2
    scope = type("Scope", (), {"proto": "http", "method": "POST", "path": "/webhook/meta", "query_string": "",
                               "headers": {"content-length": "100"}})()  # fmt: skip
    proto = BodyNeverComes()
    await asyncio.wait_for(app.__rsgi__(scope, proto), 5)
    assert proto.answers == [408]


# --- backends failing ---------------------------------------------------------------------------------------------


async def test_queue_down_answers_503_so_meta_retries(app: IngressApp, embedded) -> None:
    await embedded.queue.close()
    assert (await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)).status == 503
    await embedded.queue.open()
    assert await drain(embedded.queue, expect=0) == []  # nothing half-written


async def test_archive_failure_still_answers_200_queues_and_is_counted(app: IngressApp, embedded) -> None:
    from wabridge.actors.ingress_metrics import ARCHIVE_FAILURES

    failed = ARCHIVE_FAILURES.labels("failed")
    before = failed.get()
    bucket = embedded.objects.root / WEBHOOKS_BUCKET
    for path in sorted(bucket.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    bucket.rmdir()
    bucket.write_text("not a directory: every put in this bucket fails")
    assert (await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)).status == 200
    await archives_settled(app)
    assert failed.get() == before + 1
    assert [q.body for _, _, q in await drain(embedded.queue, expect=1)] == [HELLO]


async def test_archive_backlog_at_its_bound_drops_archives_not_messages(embedded_settings, embedded) -> None:
    from wabridge.actors.ingress_metrics import ARCHIVE_FAILURES

    record = len(encode_record("1a2149412" + "0" * 12, time.time(), HELLO))  # every record of HELLO is this long
    app = IngressApp(embedded_settings, embedded, max_archive_bytes=2 * record + record // 2)  # room for two
    dropped = ARCHIVE_FAILURES.labels("dropped")
    before = dropped.get()
    results = await asyncio.gather(
        *(app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO) for _ in range(5))
    )
    assert [r.status for r in results] == [200] * 5
    assert dropped.get() == before + 3
    got = await drain(embedded.queue, expect=5)
    assert len(got) == 5 and sorted(bool(q.archive_key) for _, _, q in got) == [False] * 3 + [True] * 2
    await app.aclose()
    assert app.archive is not None and app.archive.pending_bytes == 0


# --- operations ---------------------------------------------------------------------------------------------------


async def test_healthz_readyz_and_metrics_answer(app: IngressApp) -> None:
    await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)
    assert (await app.handle("GET", "/healthz", "", {}, b"")).status == 200
    ready = await app.handle("GET", "/readyz", "", {}, b"")
    assert ready.status == 200 and all(json.loads(ready.body).values())
    page = (await app.handle("GET", "/metrics", "", {}, b"")).body.decode()
    assert 'wabridge_ingress_requests_total{route="webhook",status="200"}' in page
    assert "wabridge_ingress_publish_seconds_count" in page and "wabridge_tenant_cache_hit_ratio" in page


async def test_readyz_is_503_when_a_backend_is_down(app: IngressApp, embedded) -> None:
    await embedded.queue.close()
    ready = await app.handle("GET", "/readyz", "", {}, b"")
    assert ready.status == 503 and not all(json.loads(ready.body).values())
    await embedded.queue.open()


async def test_signed_object_urls_are_served_and_tampering_is_forbidden(app: IngressApp, embedded) -> None:
    await embedded.objects.put("media-inbound", "acme/image/2026-11-25/m.jpeg", b"jpeg!", content_type="image/jpeg")
    url = httpx.URL(await embedded.objects.presigned_get("media-inbound", "acme/image/2026-11-25/m.jpeg"))
    query = url.query.decode()
    answer = await app.handle("GET", url.path, query, {}, b"")
    assert (answer.status, answer.body, answer.headers) == (200, b"jpeg!", [("content-type", "image/jpeg")])
    assert (await app.handle("GET", url.path, query.replace("signature=", "signature=0"), {}, b"")).status == 403
    assert (await app.handle("GET", url.path + "x", query, {}, b"")).status == 403


# --- through real Granian over HTTP -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def granian_ingress(settings: Settings, workers: int = 2, exits: list[int] | None = None):
    """`serve_ingress` in a subprocess (the way `wabridge serve --role ingress` runs it), stopped with SIGTERM."""
    settings = settings.replace(port=free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")} | settings_environment(settings)
    code = (
        "from wabridge.engine.settings import load_settings\n"
        "from wabridge.cli.assembly import serve_ingress\n"
        f"serve_ingress(load_settings(), workers={workers})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    base = f"http://127.0.0.1:{settings.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "granian did not start"
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WORKERS_KILL_TIMEOUT + 15)  # a worker still starting may need Granian's kill (ingress.py)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if exits is not None:
            exits.append(proc.returncode)


@pytest.mark.parametrize("workers", [1, 2], ids=["embedded", "processes"])
async def test_granian_serves_the_main_answers_over_http(embedded_settings: Settings, embedded, workers) -> None:
    big = b'{"object":"x","entry":[],"pad":"' + b"x" * (embedded_settings.max_body_bytes) + b'"}'

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    exits: list[int] = []
    with granian_ingress(embedded_settings, workers, exits) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            ok = await http.post("/webhook/meta", content=HELLO, headers=sign(HELLO, "acme-app-secret"))
            unsigned = await http.post("/webhook/meta", content=HELLO)
            handshake = await http.get(
                "/webhook/meta", params={"hub.mode": "subscribe", "hub.verify_token": "verify-acme", "hub.challenge": "7"}
            )
            health = await http.get("/healthz")
        by_length = httpx.post(base + "/webhook/meta", content=big, headers=sign(big, "acme-app-secret"), timeout=10)
        by_stream = httpx.post(base + "/webhook/meta", content=chunks(), headers=sign(big, "acme-app-secret"), timeout=10)
    assert (ok.status_code, unsigned.status_code, handshake.text, health.status_code) == (200, 401, "7", 200)
    assert (by_length.status_code, by_stream.status_code) == (413, 413)
    assert exits == [0], "SIGTERM stops the ingress cleanly"
    got = await drain(embedded.queue, expect=1)
    assert [(t, q.body) for t, _, q in got] == [("acme", HELLO)]
    # Stopped by SIGTERM, the ingress put the archive's last segment: the raw body is in object storage.
    assert await read_archived(embedded.objects, got[0][2].archive_key) == HELLO


# --- on the real servers ------------------------------------------------------------------------------------------


@pytest.fixture
async def real(server_settings: Settings) -> AsyncIterator:
    async with opened_backends(server_settings) as backends:
        for t in (ACME, GLOBEX):
            await backends.store.put_tenant(t)
        yield backends
        with contextlib.suppress(Exception):
            await backends.queue.delete_topology()  # isolation: the test's queues do not outlive it


@pytest.mark.servers
async def test_on_real_servers_a_signed_webhook_is_confirmed_queued_and_archived(server_settings, real) -> None:
    app = IngressApp(server_settings, real)
    assert (await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)).status == 200
    [(tenant_id, _, queued)] = await drain(real.queue, expect=1)
    assert (tenant_id, queued.body) == ("acme", HELLO)
    await archives_settled(app)
    assert await read_archived(real.objects, queued.archive_key) == HELLO
    await app.aclose()


@pytest.mark.servers
async def test_on_real_servers_broker_down_is_503_and_s3_down_still_200(server_settings, proxy_factory) -> None:
    amqp_proxy, amqp_url = await proxy_factory(server_settings.amqp_url.reveal())
    s3_proxy, s3_url = await proxy_factory(server_settings.s3_endpoint)
    settings = server_settings.replace(amqp_url=Secret(amqp_url), s3_endpoint=s3_url)
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(ACME)
        app = IngressApp(settings, backends)
        s3_proxy.cut()
        assert (await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)).status == 200
        amqp_proxy.cut()
        started = time.monotonic()
        assert (await app.handle("POST", "/webhook/meta", "", sign(HELLO, "acme-app-secret"), HELLO)).status == 503
        assert time.monotonic() - started < 10
        await app.aclose()
    async with opened_backends(server_settings) as backends:  # around the cut proxy: what really got queued
        assert [q.body for _, _, q in await drain(backends.queue, expect=1)] == [HELLO]
        await backends.queue.delete_topology()
