"""The Meta simulator: webhook builders (shape, signature) and the Graph media endpoints (token, 404, expiry,
faults), plus the sender against a small signature-checking receiver (standing in for Meta's counterpart only)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from wabridge.sim import webhooks
from wabridge.sim.meta import SEND_KINDS, MetaSim, run_load, send_kinds

pytestmark = pytest.mark.anyio

TOKEN = "EAAG-sim-token"
PHONE = "106540352242922"


@pytest.fixture
async def sim() -> AsyncIterator[MetaSim]:
    async with MetaSim(tokens=[TOKEN]) as running:
        yield running


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- builders -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", webhooks.ALL_KINDS)
def test_every_kind_builds_a_meta_envelope_that_json_decodes(kind: str) -> None:
    body = webhooks.webhook(PHONE, [webhooks.message(kind, wa_id="16505551234", wamid="wamid.X")])
    doc = json.loads(body)
    assert doc["object"] == "whatsapp_business_account"
    change = doc["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"]["phone_number_id"] == PHONE
    assert value["contacts"][0]["wa_id"] == "16505551234"
    (msg,) = value["messages"]
    assert msg["id"] == "wamid.X" and msg["from"] == "16505551234" and msg["timestamp"].isdigit()
    if msg["type"] in ("text", "image", "audio", "video", "document", "sticker", "location", "order", "system"):
        assert msg[msg["type"]], f"{kind}: payload under its type key"


def test_built_media_messages_carry_the_base64_sha256_of_the_bytes_the_sim_serves() -> None:
    for kind in ("image", "video", "audio", "voice", "document", "sticker"):
        msg = webhooks.message(kind)
        media = msg[msg["type"]]
        data = webhooks.media_bytes(media["id"])
        assert base64.b64decode(media["sha256"]) == hashlib.sha256(data).digest()
        assert media["mime_type"] == webhooks.parse_media_id(media["id"])[0]
    assert webhooks.message("voice")["audio"]["voice"] is True
    assert webhooks.media_bytes(webhooks.media_id_for("image/png", 100)).startswith(b"\x89PNG\r\n\x1a\n")


def test_signature_of_a_built_webhook_verifies_over_the_raw_bytes() -> None:
    body = webhooks.webhook(PHONE, [webhooks.message("reaction"), webhooks.message("text", text="olá ☕")])
    header = webhooks.sign(body, "app-secret")
    expected = hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert header == f"sha256={expected}"
    assert b"\\u2615" in body, "non-ASCII escaped as Meta serialises it"
    assert webhooks.sign(body + b" ", "app-secret") != header


def test_a_bsuid_only_sender_has_no_wa_id_and_no_from() -> None:
    msg = webhooks.message("text", wa_id=None, user_id="US.1234")
    value = json.loads(webhooks.webhook(PHONE, [msg]))["entry"][0]["changes"][0]["value"]
    assert "from" not in value["messages"][0] and value["messages"][0]["from_user_id"] == "US.1234"
    assert value["contacts"] == [{"profile": {"name": "Customer US.1234"}, "user_id": "US.1234"}]


def test_several_messages_entries_and_statuses_fit_in_one_post() -> None:
    a, b = webhooks.message("text", wa_id="1"), webhooks.message("image", wa_id="2")
    receipt = webhooks.status("wamid.OUT", "read")
    body = webhooks.envelope([webhooks.entry(PHONE, [a, b]), webhooks.entry("999", statuses=[receipt])])
    doc = json.loads(body)
    assert [len(e["changes"][0]["value"].get("messages", [])) for e in doc["entry"]] == [2, 0]
    assert len(doc["entry"][0]["changes"][0]["value"]["contacts"]) == 2
    assert doc["entry"][1]["changes"][0]["value"]["statuses"][0]["status"] == "read"


def test_removed_reaction_and_unknown_type_look_like_meta_sends_them() -> None:
    assert webhooks.message("unreaction")["reaction"]["emoji"] == ""
    assert webhooks.message("unsupported")["errors"][0]["code"] == 131051
    assert webhooks.message("unknown")["type"] not in webhooks.ALL_KINDS


# --- Graph media endpoints ------------------------------------------------------------------------------------------


async def test_graph_lookup_then_download_returns_the_bytes_with_hex_sha256(sim: MetaSim) -> None:
    media_id = webhooks.media_id_for("image/jpeg", 70_000)
    async with httpx.AsyncClient() as client:
        info = (await client.get(f"{sim.graph_url}/{media_id}", headers=auth())).json()
        assert info["messaging_product"] == "whatsapp" and info["id"] == media_id
        assert info["mime_type"] == "image/jpeg" and info["file_size"] == 70_000
        got = await client.get(info["url"], headers=auth())
    assert got.status_code == 200 and got.content == webhooks.media_bytes(media_id)
    assert hashlib.sha256(got.content).hexdigest() == info["sha256"]
    assert sim.stats().lookups == 1 and sim.stats().downloads == 1 and sim.stats().bytes_served == 70_000


async def test_graph_rejects_a_wrong_or_missing_token_with_401(sim: MetaSim) -> None:
    media_id = webhooks.media_id_for("image/jpeg", 10)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{sim.graph_url}/{media_id}", headers=auth("nope"))).status_code == 401
        assert (await client.get(f"{sim.graph_url}/{media_id}")).status_code == 401
        url = (await client.get(f"{sim.graph_url}/{media_id}", headers=auth())).json()["url"]
        assert (await client.get(url, headers=auth("nope"))).status_code == 401
    assert sim.stats().unauthorized == 3


async def test_a_sim_without_configured_tokens_accepts_any_non_empty_token() -> None:
    async with MetaSim() as open_sim, httpx.AsyncClient() as client:
        media_id = webhooks.media_id_for("application/pdf", 10)
        assert (await client.get(f"{open_sim.graph_url}/{media_id}", headers=auth("anything"))).status_code == 200
        assert (await client.get(f"{open_sim.graph_url}/{media_id}", headers={"Authorization": "Basic x"})).status_code == 401


async def test_unknown_and_forced_missing_media_ids_answer_404(sim: MetaSim) -> None:
    gone = webhooks.media_id_for("video/mp4", 10)
    sim.inject(missing=[gone])
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{sim.graph_url}/12345", headers=auth())).status_code == 404
        assert (await client.get(f"{sim.graph_url}/{gone}", headers=auth())).status_code == 404
    assert sim.stats().not_found == 2


async def test_a_download_url_expires_after_five_minutes(sim: MetaSim) -> None:
    media_id = webhooks.media_id_for("audio/mpeg", 10)
    async with httpx.AsyncClient() as client:
        url = (await client.get(f"{sim.graph_url}/{media_id}", headers=auth())).json()["url"]
        sim.advance_clock(299)
        assert (await client.get(url, headers=auth())).status_code == 200
        sim.advance_clock(2)
        assert (await client.get(url, headers=auth())).status_code == 403
        assert (await client.get(url.replace("sig=", "sig=0"), headers=auth())).status_code == 403
    assert sim.stats().expired == 1


async def test_faults_set_over_http_are_served_count_times_then_stop(sim: MetaSim) -> None:
    media_id = webhooks.media_id_for("image/png", 100)
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{sim.base_url}/sim/faults", json={"media_status": 500, "count": 2})
        assert r.status_code == 200
        codes = [(await client.get(f"{sim.graph_url}/{media_id}", headers=auth())).status_code for _ in range(3)]
        assert codes == [500, 500, 200]
        await client.post(f"{sim.base_url}/sim/faults", json={"corrupt": 1})
        url = (await client.get(f"{sim.graph_url}/{media_id}", headers=auth())).json()["url"]
        assert (await client.get(url, headers=auth())).content != webhooks.media_bytes(media_id)
        assert (await client.get(url, headers=auth())).content == webhooks.media_bytes(media_id)
        stats = (await client.get(f"{sim.base_url}/sim/stats")).json()
        assert (await client.post(f"{sim.base_url}/sim/faults", json={"phase": "x"})).status_code == 400
    assert stats["faults_served"] == 2 and stats["downloads"] == 2


# --- sender ---------------------------------------------------------------------------------------------------------


class Receiver:
    """The far end of the sender: checks each POST's signature and records the decoded body."""

    def __init__(self, secret: str, delay: float = 0.0) -> None:
        self.secret, self.delay = secret, delay
        self.bodies: list[dict] = []
        self.bad_signatures = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/webhook"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in head.decode().lower().split("\r\n")[1:] if ": " in line
                )
                body = await reader.readexactly(int(headers["content-length"]))
                if self.delay:
                    await asyncio.sleep(self.delay)
                if headers.get("x-hub-signature-256") == webhooks.sign(body, self.secret).lower():
                    self.bodies.append(json.loads(body))
                    status = b"200 OK"
                else:
                    self.bad_signatures += 1
                    status = b"401 Unauthorized"
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def test_sender_posts_one_signed_webhook_per_kind_and_summarises_statuses() -> None:
    receiver = Receiver("s3cret")
    async with receiver as url:
        summary = await send_kinds(url, "s3cret", PHONE, customers=3, count=2)
    assert summary.posts == 2 * len(SEND_KINDS) and summary.statuses == {"200": summary.posts}
    assert receiver.bad_signatures == 0 and len(receiver.bodies) == summary.posts
    types = {m["type"] for b in receiver.bodies for m in b["entry"][0]["changes"][0]["value"].get("messages", [])}
    assert {"text", "image", "interactive", "reaction", "order", "system", "unsupported", "hologram"} <= types
    senders = {m.get("from") for b in receiver.bodies for m in b["entry"][0]["changes"][0]["value"].get("messages", [])}
    assert len(senders - {None}) == 3 and None in senders  # three customers, and the BSUID-only sender


async def test_sender_batches_several_messages_per_post_and_wrong_secret_is_refused() -> None:
    receiver = Receiver("s3cret")
    async with receiver as url:
        batched = await send_kinds(url, "s3cret", PHONE, kinds=("text", "image"), count=3, batch=3)
        refused = await send_kinds(url, "other", PHONE, kinds=("text",))
    assert batched.posts == 2 and batched.messages == 6
    assert refused.statuses == {"401": 1} and receiver.bad_signatures == 1


async def test_load_mode_keeps_the_arrival_rate_and_measures_latency_from_the_intended_send_time() -> None:
    receiver = Receiver("s3cret", delay=0.05)
    async with receiver as url:
        # 2 connections, 50 ms per request: capacity 40/s against 100/s offered. A closed loop would report
        # ~50 ms; measured from the due time, the queue that builds up must show in the tail.
        report = await run_load(url, "s3cret", PHONE, rate=100, duration=0.5, concurrency=2, max_pending=100)
    assert report.intended == 50 and report.sent == 50 and report.skipped == 0
    assert report.statuses == {"200": 50}
    assert report.p50_ms >= 50 and report.p99_ms > 400
    assert report.p50_ms <= report.p99_ms <= report.p999_ms <= report.max_ms


async def test_load_mode_skips_and_counts_requests_beyond_its_pending_bound_instead_of_queueing_forever() -> None:
    receiver = Receiver("s3cret", delay=0.2)
    async with receiver as url:
        report = await run_load(url, "s3cret", PHONE, rate=100, duration=0.3, concurrency=1, max_pending=5)
    assert report.intended == 30 and report.skipped > 0 and report.sent + report.skipped == 30


async def test_load_mode_counts_connection_failures_instead_of_stopping() -> None:
    receiver = Receiver("s3cret")
    async with receiver as url:
        pass  # closed again: nothing listens on that port now
    report = await run_load(url, "s3cret", PHONE, rate=200, duration=0.1, concurrency=2)
    assert report.sent == 20 and report.statuses == {"ConnectionRefusedError": 20}


# --- command line ---------------------------------------------------------------------------------------------------


def meta_parser():
    import argparse

    from wabridge.sim import meta

    parser = argparse.ArgumentParser(prog="wabridge sim meta")
    meta.add_arguments(parser)
    return parser


def test_the_serve_command_runs_in_a_child_process_and_serves_lookups() -> None:
    from wabridge.sim.meta import MetaSimProcess

    with MetaSimProcess(tokens=["cli-token"]) as graph_url:
        media_id = webhooks.media_id_for("image/jpeg", 10)
        assert httpx.get(f"{graph_url}/{media_id}", headers=auth("cli-token")).json()["file_size"] == 10
        assert httpx.get(f"{graph_url}/{media_id}", headers=auth("other")).status_code == 401


def test_the_send_command_sends_the_chosen_kinds_and_exits_zero_when_all_were_accepted(capsys) -> None:
    import threading

    from wabridge.sim import meta

    receiver = Receiver("cli-secret")
    ready = threading.Event()
    stop: asyncio.Event | None = None
    urls: list[str] = []

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with receiver as url:
            urls.append(url)
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10)
        base = ["send", "--url", urls[0], "--phone-number-id", PHONE, "--kinds", "text,image,bsuid", "--count", "2"]
        assert meta.run(meta_parser().parse_args([*base, "--app-secret", "cli-secret"])) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary == {"posts": 6, "messages": 6, "statuses": {"200": 6}}
        assert meta.run(meta_parser().parse_args([*base, "--app-secret", "wrong"])) == 1
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
    assert len(receiver.bodies) == 6 and receiver.bad_signatures == 6
