"""No tenant secret ever shows: not in a log line at DEBUG, a CLI output, an HTTP answer, `/metrics`, nor in plaintext
in anything the bridge writes (the embedded data directory; PostgreSQL, dumped; Redis, under the test's prefix).

One run per backend with distinctive secrets (long random markers), driven through success and failure paths: the
CLI (tenants add/list, replay), the Meta handshake, good, mis-signed, malformed and unrouted webhooks, media (the
WhatsApp token goes to Meta's Graph API), Genesys answering 401 and 500 and refusing the login, an agent's
answer through Genesys's outbound webhook (signed with the tenant's Genesys webhook secret) and a mis-signed one.
Everything captured (and the stored tenant's repr) is then searched for each secret in the forms it could leak in
(raw, URL-, hex-, base64-encoded at any alignment, JSON-escaped), for the OAuth Basic header, and for every bearer
token the Genesys simulator issued.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import msgspec
import pytest

from tests.e2e.harness import CLIENT_ID, INTEGRATION, PHONE_NUMBER_ID, TENANT, Bridge, run_cli
from wabridge.engine.settings import settings_environment
from wabridge.adapters.backends import open_backends
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks
from wabridge.sim.genesys import GenesysSim
from wabridge.sim.genesys_agent import sign as genesys_sign
from wabridge.sim.meta import MetaSim

pytestmark = pytest.mark.anyio


def marker(kind: str) -> str:
    # '+' and '/' so the URL-encoded form differs from the raw one (real tokens and client secrets carry them).
    return f"SECRET{kind}{secrets.token_hex(12)}+/{secrets.token_hex(12)}"


class RecordingGenesys(GenesysSim):
    """The Genesys simulator, in-process, remembering every bearer token it handed out (they are secrets too)."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.issued: list[str] = []

    async def _login(self, headers, body):
        status, reply, extra = await super()._login(headers, body)
        if status == 200:
            self.issued.append(msgspec.json.decode(reply)["access_token"])
        return status, reply, extra


def leak_forms(secret: str) -> set[bytes]:
    """The byte strings that would betray `secret`: raw, URL-, hex-, JSON-encoded, and base64 (standard and URL-safe)
    at each of the three alignments it could sit at inside a longer encoded value (the Basic header, a blob)."""
    raw = secret.encode()
    forms = {raw, quote(secret, safe="").encode(), quote_plus(secret).encode(), raw.hex().encode(),
             raw.hex().upper().encode(), json.dumps(secret)[1:-1].encode()}  # fmt: skip
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw)
            # Drop the groups that also depend on the bytes around the secret: what is left is fixed by it alone.
            forms.add(encoded[4 if pad else 0 : -4])
    return forms


def find_leaks(secrets_by_name: dict[str, str], places: dict[str, bytes]) -> list[str]:
    found = []
    for name, secret in secrets_by_name.items():
        forms = leak_forms(secret)
        for place, data in places.items():
            if any(form in data for form in forms):
                found.append(f"{name} in {place}")
    return found


async def redis_values(settings: Settings) -> dict[str, bytes]:
    """Every value under the test's key prefix, whatever its type, as bytes."""
    import redis.asyncio as redis

    client = redis.from_url(settings.redis_url)
    values = {}
    try:
        async for key in client.scan_iter(match=f"{settings.key_prefix}*"):
            kind = (await client.type(key)).decode()
            if kind == "string":
                value = await client.get(key) or b""
            elif kind == "hash":
                value = repr(await client.hgetall(key)).encode()
            elif kind == "list":
                value = repr(await client.lrange(key, 0, -1)).encode()
            elif kind == "set":
                value = repr(await client.smembers(key)).encode()
            elif kind == "zset":
                value = repr(await client.zrange(key, 0, -1, withscores=True)).encode()
            else:
                value = repr(await client.dump(key)).encode()
            values[f"redis {key.decode()}"] = key + b" " + value
    finally:
        await client.aclose()
    return values


async def pg_dump(database_url: str) -> bytes:
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed to read the test database as a file"
    process = await asyncio.create_subprocess_exec(
        pg_dump, "--data-only", "--no-owner", database_url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out


def files_under(root: Path) -> dict[str, bytes]:
    return {f"file {p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
async def sims() -> AsyncIterator[tuple[RecordingGenesys, MetaSim, dict[str, str]]]:
    chosen = {"app secret": marker("appsecret"), "verify token": marker("verifytoken"),
              "whatsapp token": marker("whatsapptoken"), "genesys client secret": marker("clientsecret"),
              "genesys webhook secret": marker("webhooksecret")}  # fmt: skip
    genesys = RecordingGenesys(clients={CLIENT_ID: chosen["genesys client secret"]}, integrations=[INTEGRATION],
                               rate_limit=0, fetch_media=True)  # fmt: skip
    await genesys.start()
    try:
        async with MetaSim(tokens=[chosen["whatsapp token"]]) as meta:
            yield genesys, meta, chosen
    finally:
        await genesys.stop()


async def test_no_secret_shows_in_logs_cli_answers_metrics_or_stored_data(
    backend_settings: Settings, sims: tuple[RecordingGenesys, MetaSim, dict[str, str]], tmp_path: Path
) -> None:
    genesys, meta, chosen = sims
    settings = backend_settings.replace(graph_api_url=meta.graph_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")}
    env.update(settings_environment(settings))
    env["WABRIDGE_LOG_LEVEL"] = "DEBUG"
    captured: dict[str, bytes] = {}

    async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        status, out, err = await run_cli(*args, env=env, stdin=stdin)
        captured[f"`wabridge {' '.join(args[:2])}` (run {len(captured)})"] = (out + err).encode()
        return status, out, err

    # Two secrets as flags, three read from stdin (the way the README recommends), in `--help` order.
    status, _, err = await cli(
        "tenants", "add", TENANT, "--phone-number-id", PHONE_NUMBER_ID, "--app-secret", chosen["app secret"],
        "--verify-token", "-", "--whatsapp-token", chosen["whatsapp token"], "--genesys-api-url", genesys.url,
        "--genesys-login-url", genesys.url, "--genesys-client-id", CLIENT_ID, "--genesys-client-secret", "-",
        "--genesys-integration-id", INTEGRATION, "--genesys-rate-limit", "100000", "--genesys-webhook-secret", "-",
        stdin="".join(f"{chosen[name]}\n" for name in ("verify token", "genesys client secret",
                                                         "genesys webhook secret")).encode(),
    )  # fmt: skip
    assert status == 0, err
    assert (await cli("tenants", "list"))[0] == 0

    bridge = Bridge(settings, tmp_path / "bridge", extra_env={"WABRIDGE_LOG_LEVEL": "DEBUG"})
    http = httpx.AsyncClient(base_url=bridge.url, timeout=30)
    answers: list[httpx.Response] = []

    async def request(method: str, url: str, **kwargs) -> httpx.Response:
        response = await http.request(method, url, **kwargs)
        answers.append(response)
        return response

    async def webhook(body: bytes, app_secret: str = chosen["app secret"]) -> int:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": webhooks.sign(body, app_secret)}
        return (await request("POST", "/webhook/meta", content=body, headers=headers)).status_code

    async def deliver(message: dict, status: str = "delivered") -> str | None:
        assert await webhook(webhooks.webhook(PHONE_NUMBER_ID, [message])) == 200
        row = (await bridge.wait_tracked([message["id"]], timeout=30))[message["id"]]
        assert row.status == status, (row.status, row.error)
        return row.error

    try:
        await bridge.start()
        # The Meta handshake, right and wrong.
        async def handshake(token: str) -> httpx.Response:
            query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": token}
            return await request("GET", "/webhook/meta", params=query)

        assert (await handshake(chosen["verify token"])).text == "1158201444"
        assert (await handshake("nope")).status_code == 403
        # Webhooks Meta would not send: mis-signed, malformed, for a number no tenant owns, signed by no tenant.
        text = webhooks.webhook(PHONE_NUMBER_ID, [webhooks.message("text", wa_id="15550001001")])
        assert await webhook(text, app_secret="not-the-app-secret") == 401
        assert await webhook(b'{"object": "whatsapp_business_account", "entry": [') == 400
        assert await webhook(webhooks.webhook("999000999", [webhooks.message("text")])) == 200
        assert await webhook(webhooks.webhook("999000999", [webhooks.message("text")]), app_secret="other") == 401

        await deliver(webhooks.message("text", wa_id="15550001002"))  # the first login
        assert await deliver(webhooks.message("image", wa_id="15550001003")) is None  # the WhatsApp token at Meta
        meta.inject(media_status=401, count=10)  # Meta refusing the token: the media error path
        await deliver(webhooks.message("image", wa_id="15550001004"))
        meta.clear_faults()
        genesys.add_fault(status=401, count=1)  # the token refused once: a second login
        await deliver(webhooks.message("text", wa_id="15550001005"))
        genesys.add_fault(status=500, count=2)  # retried (a 500 that lasts is an outage: held, not failed)
        await deliver(webhooks.message("text", wa_id="15550001006"))
        genesys.add_fault(status=400, count=1)  # refused for good: tracked failed with Genesys's error body
        await deliver(webhooks.message("text", wa_id="15550001008"), "failed")
        await request("POST", f"{genesys.url}/sim/revoke-tokens")  # the token held stops working, the login too
        genesys.add_fault(status=401, target="login", count=-1)
        await deliver(webhooks.message("text", wa_id="15550001007"), "failed")
        genesys.clear_faults()

        # An agent answers the first customer through Genesys's outbound webhook: the tenant's webhook secret keys
        # the signature the ingress checks; then a body signed with another key, refused.
        answer_id = secrets.token_hex(16)
        answer = json.dumps({
            "id": answer_id, "conversationId": secrets.token_hex(8), "direction": "Outbound", "type": "Text",
            "text": "how can I help?", "originatingEntity": "Human",
            "channel": {"id": INTEGRATION, "platform": "Open", "type": "Private", "messageId": answer_id,
                        "to": {"id": "15550001002", "idType": "Phone"}, "time": "2026-01-01T00:00:00.000Z"},
        }).encode()  # fmt: skip
        for key, expected in ((chosen["genesys webhook secret"], 200), ("not-the-webhook-secret", 401)):
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": genesys_sign(answer, key)}
            reply = await request("POST", f"/webhook/genesys/{TENANT}", content=answer, headers=headers)
            assert reply.status_code == expected, reply.text
        await bridge.wait_tracked([answer_id])  # the worker took it (sent or refused: either way, it went through)

        for path in ("/healthz", "/readyz", "/metrics", "/webhook/meta/no-such-tenant?hub.mode=subscribe"):
            await request("GET", path)
        worker_metrics = await request("GET", f"http://127.0.0.1:{bridge.settings.worker_metrics_port}/metrics")
        assert worker_metrics.status_code == 200 and "# TYPE" in worker_metrics.text

        assert (await cli("replay", "--dry-run"))[0] == 0
        status, out, err = await cli("replay")
        assert status == 0 and "2 delivered" in out, out + err
        assert await bridge.terminate() == 0  # a drain: every log line written
    finally:
        await http.aclose()
        await bridge.aclose()

    assert len(genesys.issued) >= 3, "the first login, the one after the 401, replay's own"
    places = dict(captured)
    async with open_backends(settings, ports=("store",)) as backends:  # the tenant as the bridge reads it back
        tenant = await backends.store.get_tenant(TENANT)
    assert tenant is not None and tenant.genesys_webhook_secret is not None
    assert tenant.genesys_webhook_secret.reveal() == chosen["genesys webhook secret"]
    places["repr of the stored tenant"] = repr(tenant).encode()
    places["str of the stored tenant"] = str(tenant).encode()
    places["bridge stderr"] = bridge.stderr().encode()
    # Few lines are DEBUG ones; the info lines show the harness's WARNING level was overridden.
    assert bridge.env["WABRIDGE_LOG_LEVEL"] == "DEBUG" and '"level":"info"' in bridge.stderr()
    for i, answer in enumerate(answers):
        head = "".join(f"{k}: {v}\n" for k, v in answer.headers.items())
        places[f"answer {i} to {answer.request.method} {answer.request.url}"] = head.encode() + answer.content
    if settings.data_dir.exists():
        places.update(files_under(settings.data_dir))
    if settings.database_url is not None:
        places["pg_dump"] = await pg_dump(settings.database_url.reveal())
    if settings.redis_url is not None:
        places.update(await redis_values(settings))
    assert any(p.startswith(("file ", "pg_dump")) for p in places), "the store was searched"

    searched = dict(chosen)
    searched.update({f"bearer token {i}": token for i, token in enumerate(genesys.issued)})
    basic = base64.b64encode(f"{CLIENT_ID}:{chosen['genesys client secret']}".encode()).decode()
    searched["OAuth Basic header"] = basic
    assert find_leaks(searched, places) == []
    # The search itself works: it finds each form where one is put.
    assert find_leaks({"x": chosen["app secret"]}, {"b64": base64.b64encode(b"ab" + chosen["app secret"].encode())})
