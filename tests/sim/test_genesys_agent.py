"""The agent's side of the Genesys simulator (reference.md §3): signed outbound webhooks retried the way Genesys
retries, the receipt and typing endpoints, the attachment downloads, and both directions per conversation."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import sys
from dataclasses import dataclass, field

import httpx
import pytest

from wabridge.sim.genesys import GenesysSim, conversation_id_for

pytestmark = pytest.mark.anyio

INTEGRATION, TENANT, SECRET = "int-1", "shop", "outbound-secret"
CUSTOMER = "16505551234"
CONVERSATION = conversation_id_for(INTEGRATION, CUSTOMER)
API = "/api/v2/conversations/messages/{}/inbound/open/{}"
INBOUND = {
    "channel": {"messageId": "wamid.1", "time": "2026-06-08T20:59:43.000Z",
                "from": {"id": CUSTOMER, "idType": "Phone", "nickname": "Sheena Nelson"}},
    "text": "Does it come in another color?",
}


@dataclass
class Receiver:
    """The bridge's webhook as a test sees it: a real HTTP server that records each request and answers the
    scripted statuses in turn (then 200); "hang" holds the request unanswered."""

    script: list[int | str] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.requests.append((lines[0].split(" ")[1], headers, body))
                answer = self.script.pop(0) if self.script else 200
                if answer == "hang":
                    await asyncio.sleep(3600)
                writer.write(f"HTTP/1.1 {answer} X\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


def agent_sim(receiver: Receiver, **options: object) -> GenesysSim:
    options = {"integrations": [INTEGRATION], "bridge_url": receiver.url, "tenant": TENANT,
               "outbound_secret": SECRET, "retry_interval": 0, "rate_limit": 0} | options
    return GenesysSim(**options)  # type: ignore[arg-type]


async def login(client: httpx.AsyncClient, sim: GenesysSim) -> dict[str, str]:
    r = await client.post(sim.url + "/oauth/token", auth=("cid", "secret"), data={"grant_type": "client_credentials"})
    return {"Authorization": "Bearer " + r.json()["access_token"]}


async def customer_writes(client: httpx.AsyncClient, sim: GenesysSim, auth: dict[str, str], wamid: str) -> None:
    body = copy.deepcopy(INBOUND)
    body["channel"]["messageId"] = wamid
    r = await client.post(sim.url + API.format(INTEGRATION, "message"), json=body, headers=auth)
    assert r.status_code == 200, r.text


async def send(client: httpx.AsyncClient, sim: GenesysSim, **spec: object) -> dict:
    r = await client.post(sim.url + "/sim/agent/send", params={"wait": "true"}, json=spec, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def receipt(message_id: str, status: str = "Delivered", **changes: object) -> dict:
    body = {"id": message_id, "channel": {"to": {"id": CUSTOMER, "idType": "Phone"}, "time": "2026-06-08T21:00:00.000Z"},
            "status": status, "direction": "Outbound", "isFinalReceipt": status != "Sent"}
    return body | changes


@pytest.mark.parametrize("encoding", ["base64", "hex"])
async def test_an_agent_text_reaches_the_bridge_signed_and_addressed_to_the_customer(encoding: str) -> None:
    async with Receiver() as bridge, agent_sim(bridge, signature_encoding=encoding) as sim, httpx.AsyncClient() as client:
        await customer_writes(client, sim, await login(client, sim), "wamid.1")
        record = await send(client, sim, conversationId=CONVERSATION, text="Yes, in blue.")
        path, headers, raw = bridge.requests[0]
        digest = hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()
        expected = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
        assert path == f"/webhook/genesys/{TENANT}"
        assert headers["x-hub-signature-256"] == "sha256=" + expected
        assert headers["content-type"] == "application/json"
        body = record["body"]
        assert body["type"] == "Text" and body["text"] == "Yes, in blue." and body["direction"] == "Outbound"
        assert body["channel"]["to"] == {"id": CUSTOMER, "idType": "Phone"} and body["channel"]["id"] == INTEGRATION
        assert body["channel"]["from"]["id"] == INTEGRATION and body["conversationId"] == CONVERSATION
        assert body["originatingEntity"] == "Human" and body["id"] == body["channel"]["messageId"]
        assert record["state"] == "delivered" and [a["status"] for a in record["attempts"]] == [200]


async def test_templates_and_typing_are_shaped_like_genesys_sends_them() -> None:
    async with Receiver() as bridge, agent_sim(bridge) as sim, httpx.AsyncClient() as client:
        await customer_writes(client, sim, await login(client, sim), "wamid.1")
        template = await send(client, sim, conversationId=CONVERSATION, type="template", template={
            "id": "ns-1@order_update", "language": "en_US", "parameters": {"name": "Sheena"},
            "header": {"type": "Media", "url": "https://media.example/h.jpg", "mime": "image/jpeg"}})
        typing = await send(client, sim, to={"id": CUSTOMER}, type="typing")
        proactive = await send(client, sim, to={"id": "447700900123"}, text="Your order shipped.")
        follow_up = await send(client, sim, conversationId=proactive["conversationId"], text="It arrives Monday.")
        unknown = await client.post(sim.url + "/sim/agent/send", json={"conversationId": "nope", "text": "x"})
        bad = await client.post(sim.url + "/sim/agent/send", json={"conversationId": CONVERSATION, "type": "template",
                                                                   "template": {"id": "no-namespace"}})
        content = template["body"]["content"][0]
        assert template["body"]["type"] == "Structured" and content["contentType"] == "Notification"
        assert content["template"]["id"] == "ns-1@order_update" and content["template"]["language"] == "en_US"
        assert content["template"]["body"]["parameters"] == [{"name": "name", "text": "Sheena"}]
        assert content["template"]["header"]["media"]["mediaType"] == "Image"
        assert typing["body"]["type"] == "Event" and typing["body"]["conversationId"] == CONVERSATION
        assert typing["body"]["events"] == [{"eventType": "Typing", "typing": {"type": "On", "duration": 5000}}]
        assert bad.status_code == unknown.status_code == 400
        # A customer who never wrote in: the only integration, idType from the id's shape, and the same
        # conversation for the next message.
        assert proactive["body"]["channel"]["to"] == follow_up["body"]["channel"]["to"] == {
            "id": "447700900123", "idType": "Phone"}
        assert proactive["conversationId"] == conversation_id_for(INTEGRATION, "447700900123")


@pytest.mark.parametrize(
    ("script", "attempts", "state"),
    [
        ([503, 503], [503, 503, 200], "delivered"),
        ([429, 500], [429, 500, 200], "delivered"),
        ([400], [400], "rejected"),
        ([503] * 6, [503] * 6, "gave-up"),  # the first try and 5 retries
    ],
)
async def test_the_webhook_is_retried_on_429_and_5xx_only_up_to_five_times(script, attempts, state) -> None:
    async with Receiver(script=list(script)) as bridge, agent_sim(bridge) as sim, httpx.AsyncClient() as client:
        await customer_writes(client, sim, await login(client, sim), "wamid.1")
        record = await send(client, sim, conversationId=CONVERSATION, text="hello")
        assert [a["status"] for a in record["attempts"]] == attempts and record["state"] == state
        assert len(bridge.requests) == len(attempts) and len({r[2] for r in bridge.requests}) == 1  # same body


async def test_an_answer_not_given_in_time_is_tried_again() -> None:
    async with Receiver(script=["hang"]) as bridge, agent_sim(bridge, answer_timeout=0.2) as sim, \
            httpx.AsyncClient() as client:
        await customer_writes(client, sim, await login(client, sim), "wamid.1")
        record = await send(client, sim, conversationId=CONVERSATION, text="hello")
        assert [(a["status"], a.get("error")) for a in record["attempts"]] == [(None, "timeout"), (200, None)]


async def test_an_attachment_is_served_by_the_sim_to_bearer_tokens_only() -> None:
    data = b"%PDF-1.4 not really"
    async with Receiver() as bridge, agent_sim(bridge) as sim, httpx.AsyncClient() as client:
        auth = await login(client, sim)
        await customer_writes(client, sim, auth, "wamid.1")
        record = await send(client, sim, conversationId=CONVERSATION, type="attachment", mime="application/pdf",
                            filename="invoice.pdf", data=base64.b64encode(data).decode())
        attachment = record["body"]["content"][0]["attachment"]
        assert attachment["mediaType"] == "File" and attachment["contentSizeBytes"] == len(data)
        assert attachment["url"].startswith(sim.url + "/sim/downloads/")
        anonymous = await client.get(attachment["url"])
        forged = await client.get(attachment["url"], headers={"Authorization": "Bearer forged"})
        fetched = await client.get(attachment["url"], headers=auth)
        missing = await client.get(sim.url + "/sim/downloads/nothing", headers=auth)
        assert (anonymous.status_code, forged.status_code, missing.status_code) == (401, 401, 404)
        assert fetched.status_code == 200 and fetched.content == data
        assert fetched.headers["content-type"] == "application/pdf"
        default = await send(client, sim, conversationId=CONVERSATION, type="attachment")
        png = await client.get(default["body"]["content"][0]["attachment"]["url"], headers=auth)
        assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and png.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("case", "body", "where"),
    [
        ("missing id", {"id": KeyError}, "required field `id`"),
        ("status Read", {"status": "Read"}, "$.status"),
        ("reasons with Delivered", {"reasons": [{"code": "GeneralError", "message": "x"}]}, "$.reasons"),
        ("unknown reason code", {"status": "Failed", "reasons": [{"code": "Oops", "message": "x"}]}, "$.reasons[0].code"),
        ("reason without message", {"status": "Failed", "reasons": [{"code": "RateLimited"}]}, "$.reasons[0]"),
        ("to without idType", {"channel": {"to": {"id": CUSTOMER}, "time": "2026-06-08T21:00:00Z"}}, "$.channel.to"),
        ("local time", {"channel": {"to": {"id": CUSTOMER, "idType": "Phone"}, "time": "2026-06-08T23:00:00+02:00"}},
         "$.channel.time"),
        ("direction Inbound", {"direction": "Inbound"}, "$.direction"),
        ("null isFinalReceipt", {"isFinalReceipt": None}, "$.isFinalReceipt"),
        ("not JSON", b"{", "malformed JSON"),
    ],
)
async def test_a_receipt_outside_the_documented_shape_is_rejected(case: str, body: object, where: str) -> None:
    async with Receiver() as bridge, agent_sim(bridge) as sim, httpx.AsyncClient() as client:
        auth = await login(client, sim)
        if isinstance(body, bytes):
            r = await client.post(sim.url + API.format(INTEGRATION, "receipt"), content=body, headers=auth)
        else:
            sent = {k: v for k, v in (receipt("m-1") | body).items() if v is not KeyError}
            r = await client.post(sim.url + API.format(INTEGRATION, "receipt"), json=sent, headers=auth)
        assert r.status_code == 400, case
        assert r.json()["code"] == "bad.request" and where in r.json()["message"], r.json()
        assert sim.stats.receipts == 0


async def test_receipts_and_events_need_a_token_a_known_integration_and_share_the_clients_rate_limit() -> None:
    async with Receiver() as bridge, agent_sim(bridge, rate_limit=4) as sim, httpx.AsyncClient() as client:
        auth = await login(client, sim)
        await customer_writes(client, sim, auth, "wamid.1")
        typing = {"channel": {"from": {"id": CUSTOMER, "idType": "Phone"}, "time": "2026-06-08T21:00:00.000Z"},
                  "events": [{"eventType": "Typing", "typing": {"type": "On"}}]}
        forged = await client.post(sim.url + API.format(INTEGRATION, "receipt"), json=receipt("m-1"),
                                   headers={"Authorization": "Bearer forged"})
        unknown = await client.post(sim.url + API.format("int-2", "event"), json=typing, headers=auth)
        event = await client.post(sim.url + API.format(INTEGRATION, "event"), json=typing, headers=auth)
        good = await client.post(sim.url + API.format(INTEGRATION, "receipt"), json=receipt("m-1"), headers=auth)
        limited = await client.post(sim.url + API.format(INTEGRATION, "receipt"), json=receipt("m-1"), headers=auth)
        no_events = await client.post(sim.url + API.format(INTEGRATION, "event"), json=typing | {"events": []},
                                      headers=auth)
        assert (forged.status_code, unknown.status_code, event.status_code) == (401, 404, 202)
        assert good.status_code == 202 and good.json()["status"] == "Delivered"  # the 4th request of the minute
        assert limited.status_code == no_events.status_code == 429
        assert sim.stats.events == 1 and sim.stats.receipts == 1 and sim.stats.rate_limited == 2
        assert [e["fromId"] for e in (await client.get(sim.url + "/sim/agent/events")).json()] == [CUSTOMER]
        unmatched = (await client.get(sim.url + "/sim/agent/unmatched-receipts")).json()
        assert [r["body"]["id"] for r in unmatched] == ["m-1"]  # no outbound message m-1 was sent


async def test_each_conversation_shows_both_directions_in_order_with_the_latest_receipt() -> None:
    async with Receiver() as bridge, agent_sim(bridge) as sim, httpx.AsyncClient() as client:
        auth = await login(client, sim)
        await customer_writes(client, sim, auth, "wamid.1")
        first = await send(client, sim, conversationId=CONVERSATION, text="Which size?")
        await customer_writes(client, sim, auth, "wamid.2")
        second = await send(client, sim, to={"id": CUSTOMER}, text="Sent it.")
        url = sim.url + API.format(INTEGRATION, "receipt")
        for body in (receipt(first["id"], "Sent"), receipt(first["id"]),
                     receipt(second["id"], "Failed", reasons=[{"code": "MessageExpired", "message": "(#131047)"}])):
            assert (await client.post(url, json=body, headers=auth)).status_code == 202
        conversation = (await client.get(sim.url + "/sim/conversations")).json()[CONVERSATION]
        timeline = conversation["timeline"]
        assert [(e["direction"], e.get("messageId") or e.get("text")) for e in timeline] == [
            ("Inbound", "wamid.1"), ("Outbound", "Which size?"), ("Inbound", "wamid.2"), ("Outbound", "Sent it.")]
        assert (timeline[1]["receipt"], timeline[1]["reason"]) == ("Delivered", None)
        assert (timeline[3]["receipt"], timeline[3]["reason"]) == (
            "Failed", {"code": "MessageExpired", "message": "(#131047)"})
        assert len(conversation["messages"]) == 2  # the inbound ids, as before
        outbound = (await client.get(sim.url + "/sim/agent/outbound", params={"conversationId": CONVERSATION})).json()
        assert [r["status"] for r in outbound[0]["receipts"]] == ["Sent", "Delivered"]
        assert outbound[0]["attempts"][0]["status"] == 200


async def test_the_cli_sends_straight_to_the_bridge_without_a_simulator() -> None:
    async with Receiver(script=[502]) as bridge:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; from wabridge.cli import main; sys.exit(main())",
            "sim", "genesys", "agent", "send", "--url", bridge.url, "--secret", SECRET, "--tenant", TENANT,
            "--to", CUSTOMER, "--integration", INTEGRATION, "--retry-interval", "0", "--signature-encoding", "hex",
            "text", "hello", stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        assert process.returncode == 0, out
        assert [r[0] for r in bridge.requests] == [f"/webhook/genesys/{TENANT}"] * 2
        raw = bridge.requests[1][2]
        assert bridge.requests[1][1]["x-hub-signature-256"] == "sha256=" + hmac.new(
            SECRET.encode(), raw, hashlib.sha256).hexdigest()
        assert b'"conversationId":"' + CONVERSATION.encode() in raw and b'"text":"hello"' in raw


async def test_the_subprocess_takes_the_agent_options_and_sends_through_its_http_api() -> None:
    import anyio

    from wabridge.sim.genesys import start_genesys_sim

    async with Receiver(script=[503]) as bridge:
        sim = start_genesys_sim(integrations=[INTEGRATION], bridge_url=bridge.url, tenant=TENANT, rate_limit=0,
                                outbound_secret=SECRET, signature_encoding="hex", retry_interval=0,
                                webhook_path="/hooks/{tenantId}/genesys", webhook_headers={"X-Static": "yes"})
        try:
            record = await anyio.to_thread.run_sync(lambda: sim.agent_send(
                wait=True, to={"id": CUSTOMER, "idType": "Phone"}, text="Hello from the agent"))
            listed = await anyio.to_thread.run_sync(sim.outbound)
        finally:
            await anyio.to_thread.run_sync(sim.stop)
        assert [a["status"] for a in record["attempts"]] == [503, 200] and listed[0]["id"] == record["id"]
        path, headers, raw = bridge.requests[-1]
        assert path == f"/hooks/{TENANT}/genesys" and headers["x-static"] == "yes"
        assert headers["x-hub-signature-256"] == "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
