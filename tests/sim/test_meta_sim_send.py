"""The Meta simulator's sending side: /messages and /media (token, phone number, bodies per type), the 24-hour
window (131047 as a `failed` status), throttling (130429), faults by code, and the status webhooks it signs and
POSTs to a small bridge stand-in (signatures checked, quirks reproducible from a seed, retries on 503)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from wabridge.sim import webhooks
from wabridge.sim.meta import MetaSim, MetaSimProcess, customer_wa_id, send_kinds
from wabridge.sim.meta_send import Quirks

pytestmark = pytest.mark.anyio

TOKEN = "EAAG-send-token"
PHONE = "106540352242922"
SECRET = "app-secret-1"
CUSTOMER = "16505551234"
NOW = 1_800_000_000.0  # the sim's clock stands still unless a test advances it: throttling counts exactly


class Bridge:
    """Stands in for the bridge's /webhook/meta: checks each signature, records the statuses in arrival order, and
    answers each POST with the next of `answers` (then 200)."""

    def __init__(self, secret: str = SECRET, answers: list[int] | None = None) -> None:
        self.secret, self.answers = secret, list(answers or [])
        self.statuses: list[dict[str, Any]] = []  # accepted ones, in arrival order
        self.posts = 0
        self.bad_signatures = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/webhook/meta"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    def seen(self, wamid: str) -> list[str]:
        return [s["status"] for s in self.statuses if s["id"] == wamid]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(line.split(": ", 1) for line in head.decode().lower().split("\r\n")[1:] if ": " in line)
                body = await reader.readexactly(int(headers["content-length"]))
                self.posts += 1
                answer = self.answers.pop(0) if self.answers else 200
                if headers.get("x-hub-signature-256") != webhooks.sign(body, self.secret).lower():
                    self.bad_signatures += 1
                    answer = 401
                elif answer == 200:
                    value = json.loads(body)["entry"][0]["changes"][0]["value"]
                    self.statuses += value.get("statuses", [])
                writer.write(f"HTTP/1.1 {answer} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def make_sim(bridge_url: str | None, **kwargs: Any) -> MetaSim:
    options: dict[str, Any] = dict(tokens=[TOKEN], numbers={PHONE: SECRET}, bridge_url=bridge_url, clock=lambda: NOW,
                                   status_delay=0, retry_backoff=0.001)  # fmt: skip
    return MetaSim(**{**options, **kwargs})


@pytest.fixture
async def bridge() -> AsyncIterator[tuple[Bridge, str]]:
    receiver = Bridge()
    async with receiver as url:
        yield receiver, url


@pytest.fixture
async def sim(bridge: tuple[Bridge, str]) -> AsyncIterator[MetaSim]:
    async with make_sim(bridge[1]) as running:
        running.outbound.customer_wrote(PHONE, CUSTOMER)
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def text(body: str = "Hello from the agent", to: str = CUSTOMER, **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
            "text": {"body": body}, **extra}  # fmt: skip


async def send(client: httpx.AsyncClient, sim: MetaSim, body: dict[str, Any], phone: str = PHONE) -> httpx.Response:
    return await client.post(f"{sim.graph_url}/{phone}/messages", json=body)


def error_code(response: httpx.Response) -> int:
    return response.json()["error"]["code"]


# --- sends ----------------------------------------------------------------------------------------------------------


async def test_a_text_send_answers_a_fresh_wamid_and_its_statuses_reach_the_bridge_signed_in_order(
    sim: MetaSim, client: httpx.AsyncClient, bridge: tuple[Bridge, str]
) -> None:
    receiver, _ = bridge
    first = await send(client, sim, text(biz_opaque_callback_data="genesys-msg-1"))
    second = await send(client, sim, text(to="+1 650-555-1234"))
    assert first.status_code == 200
    answer = first.json()
    wamid = answer["messages"][0]["id"]
    assert answer["messaging_product"] == "whatsapp" and answer["contacts"] == [{"input": CUSTOMER, "wa_id": CUSTOMER}]
    assert second.json()["contacts"] == [{"input": "+1 650-555-1234", "wa_id": CUSTOMER}]
    assert wamid.startswith("wamid.") and len(wamid) <= 128 and wamid != second.json()["messages"][0]["id"]
    assert CUSTOMER.encode() in base64.b64decode(wamid.removeprefix("wamid.")), "names its recipient, as Meta's do"
    await sim.outbound.wait_statuses()
    assert receiver.bad_signatures == 0
    assert receiver.seen(wamid) == ["sent", "delivered", "read"]
    statuses = [s for s in receiver.statuses if s["id"] == wamid]
    assert all(s["biz_opaque_callback_data"] == "genesys-msg-1" and s["recipient_id"] == CUSTOMER for s in statuses)
    assert [int(s["timestamp"]) for s in statuses] == sorted(int(s["timestamp"]) for s in statuses)
    sent = (await client.get(f"{sim.base_url}/sim/sent")).json()
    assert [(s["wamid"], s["to"], s["type"]) for s in sent][0] == (wamid, CUSTOMER, "text")
    assert sent[0]["body"]["text"]["body"] == "Hello from the agent" and sent[0]["failure"] is None
    posted = (await client.get(f"{sim.base_url}/sim/statuses")).json()
    assert len(posted) == 6 and {p["answer"] for p in posted} == {200}


@pytest.mark.parametrize("token", ["wrong", None])
async def test_a_send_without_the_right_token_is_refused_with_401_and_code_190(sim: MetaSim, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers) as other:
        response = await send(other, sim, text())
    assert response.status_code == 401 and error_code(response) == 190
    assert list(sim.outbound.sent) == []


async def test_a_send_from_an_unknown_phone_number_is_refused_with_code_100(sim: MetaSim, client) -> None:
    response = await send(client, sim, text(), phone="999999999")
    assert response.status_code == 400 and error_code(response) == 100
    assert "999999999" in response.json()["error"]["message"] and list(sim.outbound.sent) == []


async def test_the_version_in_the_path_is_optional(sim: MetaSim, client) -> None:
    response = await client.post(f"{sim.base_url}/{PHONE}/messages", json=text())
    assert response.status_code == 200 and response.json()["messages"][0]["id"].startswith("wamid.")


MEDIA = {"image": {"id": webhooks.media_id_for("image/jpeg", 10), "caption": "the blue one"},
         "video": {"link": "https://cdn.example.com/v.mp4", "caption": "clip"},
         "audio": {"id": webhooks.media_id_for("audio/mpeg", 10)},
         "document": {"link": "https://cdn.example.com/i.pdf", "filename": "invoice.pdf", "caption": "your invoice"},
         "sticker": {"id": webhooks.media_id_for("image/webp", 10)}}  # fmt: skip
VALID = {
    "text": text("a" * 4096),
    **{kind: {"messaging_product": "whatsapp", "to": CUSTOMER, "type": kind, kind: media} for kind, media in MEDIA.items()},
    "template": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "template", "template": {
        "name": "order_update", "language": {"code": "en_US"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "42"}]},
            {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "x"}]}]}},
    "buttons": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "interactive", "interactive": {
        "type": "button", "body": {"text": "Pick one"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "y", "title": "Yes"}}]}}},
    "list": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "interactive", "interactive": {
        "type": "list", "body": {"text": "Pick"}, "action": {"button": "Options", "sections": [
            {"title": "A", "rows": [{"id": "r1", "title": "Row 1"}, {"id": "r2", "title": "Row 2"}]}]}}},
    "reaction": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "reaction",
                 "reaction": {"message_id": "wamid.IN", "emoji": "\U0001f44d"}},
    "unreaction": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "reaction",
                   "reaction": {"message_id": "wamid.IN", "emoji": ""}},
    "reply": text("as you asked", context={"message_id": "wamid.IN"}),
    "location": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "location",
                 "location": {"latitude": 38.7, "longitude": -9.1}},
    "contacts": {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "contacts", "contacts": [
        {"name": {"formatted_name": "Chandler Bing"}, "phones": [{"phone": "+1 555 0100", "type": "CELL"}]}]},
    "no type is text": {"messaging_product": "whatsapp", "to": CUSTOMER, "text": {"body": "hi"}},
}  # fmt: skip


@pytest.mark.parametrize("name", VALID)
async def test_every_documented_send_shape_is_accepted_and_delivered(
    sim: MetaSim, client, bridge: tuple[Bridge, str], name: str
) -> None:
    response = await send(client, sim, VALID[name])
    assert response.status_code == 200, response.text
    await sim.outbound.wait_statuses()
    assert bridge[0].seen(response.json()["messages"][0]["id"]) == ["sent", "delivered", "read"]


def _with(kind: str, payload: Any, **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": CUSTOMER, "type": kind, kind: payload, **extra}


INVALID = {
    "not json": b"{nope",
    "no messaging_product": {"to": CUSTOMER, "type": "text", "text": {"body": "hi"}},
    "no to": {"messaging_product": "whatsapp", "type": "text", "text": {"body": "hi"}},
    "unknown type": _with("hologram", {"id": "1"}),
    "text too long": text("a" * 4097),
    "empty text": text(""),
    "text not an object": _with("text", "hi"),
    "preview_url not a bool": _with("text", {"body": "hi", "preview_url": "yes"}),
    "media with id and link": _with("image", {"id": "1", "link": "https://x/y.jpg"}),
    "media with neither": _with("image", {"caption": "hi"}),
    "media link not http": _with("image", {"link": "ftp://x/y.jpg"}),
    "caption too long": _with("image", {"link": "https://x/y.jpg", "caption": "c" * 1025}),
    "caption on audio": _with("audio", {"link": "https://x/y.mp3", "caption": "c"}),
    "caption on sticker": _with("sticker", {"link": "https://x/y.webp", "caption": "c"}),
    "filename on an image": _with("image", {"link": "https://x/y.jpg", "filename": "y.jpg"}),
    "template without language": _with("template", {"name": "t"}),
    "template without name": _with("template", {"language": {"code": "en"}}),
    "template component of an unknown type": _with("template", {"name": "t", "language": {"code": "en"},
                                                                 "components": [{"type": "footer"}]}),
    "template button without index": _with("template", {"name": "t", "language": {"code": "en"},
                                                          "components": [{"type": "button", "sub_type": "url"}]}),
    "four buttons": _with("interactive", {"type": "button", "body": {"text": "b"}, "action": {"buttons": [
        {"type": "reply", "reply": {"id": str(i), "title": "t"}} for i in range(4)]}}),
    "list of eleven rows": _with("interactive", {"type": "list", "body": {"text": "b"}, "action": {
        "button": "Go", "sections": [{"rows": [{"id": str(i), "title": "t"} for i in range(11)]}]}}),
    "interactive without action": _with("interactive", {"type": "button", "body": {"text": "b"}}),
    "reaction without message_id": _with("reaction", {"emoji": "x"}),
    "location without latitude": _with("location", {"longitude": 1.0}),
    "contacts not a list": _with("contacts", {"name": {"formatted_name": "C"}}),
    "contact without a name": _with("contacts", [{"phones": []}]),
    "callback data over 512 bytes": text(biz_opaque_callback_data="x" * 513),
    "context without message_id": text(context={}),
    "group recipient": text(recipient_type="group"),
    "read mark without message_id": {"messaging_product": "whatsapp", "status": "read"},
    "read mark with another status": {"messaging_product": "whatsapp", "status": "delivered", "message_id": "wamid.IN"},
    "typing indicator of another type": {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN",
                                         "typing_indicator": {"type": "audio"}},
}  # fmt: skip


@pytest.mark.parametrize("name", INVALID)
async def test_a_malformed_send_is_refused_with_400_and_code_100(sim: MetaSim, client, name: str) -> None:
    body = INVALID[name]
    if isinstance(body, bytes):
        response = await client.post(f"{sim.graph_url}/{PHONE}/messages", content=body)
    else:
        response = await send(client, sim, body)
    assert response.status_code == 400 and error_code(response) == 100, response.text
    error = response.json()["error"]
    assert error["message"].startswith("(#100)") and error["error_data"]["details"]
    assert list(sim.outbound.sent) == []


@pytest.mark.parametrize("typing", [False, True])
async def test_read_marks_and_typing_indicators_answer_success_and_send_nothing(
    sim: MetaSim, client, bridge: tuple[Bridge, str], typing: bool
) -> None:
    body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN"}
    if typing:
        body["typing_indicator"] = {"type": "text"}
    response = await send(client, sim, body)
    assert response.status_code == 200 and response.json() == {"success": True}
    await sim.outbound.wait_statuses()
    assert list(sim.outbound.sent) == [] and bridge[0].posts == 0


# --- the 24-hour window ---------------------------------------------------------------------------------------------


async def test_outside_the_window_a_free_form_send_is_accepted_then_fails_with_131047_and_a_template_goes(
    sim: MetaSim, client, bridge: tuple[Bridge, str]
) -> None:
    receiver, _ = bridge
    stranger = "447700900123"
    refused = await send(client, sim, text(to=stranger, biz_opaque_callback_data="cb"))
    assert refused.status_code == 200
    wamid = refused.json()["messages"][0]["id"]
    template = await send(client, sim, {**VALID["template"], "to": stranger})
    await sim.outbound.wait_statuses()
    (failed,) = [s for s in receiver.statuses if s["id"] == wamid]
    assert failed["status"] == "failed" and failed["biz_opaque_callback_data"] == "cb"
    (error,) = failed["errors"]
    assert error["code"] == 131047 and error["title"] == "Re-engagement message"
    assert "24 hours" in error["error_data"]["details"]
    assert receiver.seen(template.json()["messages"][0]["id"]) == ["sent", "delivered", "read"]
    assert [s.failure for s in sim.outbound.sent] == [131047, None]


async def test_the_window_opens_when_set_over_http_and_closes_24_hours_after_the_customers_last_message(
    sim: MetaSim, client, bridge: tuple[Bridge, str]
) -> None:
    receiver, _ = bridge
    other = "447700900124"
    r = await client.post(f"{sim.base_url}/sim/window", json={"phone_number_id": PHONE, "wa_id": other, "ago": 3600})
    assert r.status_code == 200
    inside = (await send(client, sim, text(to=other))).json()["messages"][0]["id"]
    sim.advance_clock(23 * 3600 - 1)  # 23 h 59 min 59 s after the customer wrote
    edge = (await send(client, sim, text(to=other))).json()["messages"][0]["id"]
    sim.advance_clock(1)
    outside = (await send(client, sim, text(to=other))).json()["messages"][0]["id"]
    await sim.outbound.wait_statuses()
    assert receiver.seen(inside) == receiver.seen(edge) == ["sent", "delivered", "read"]
    assert receiver.seen(outside) == ["failed"]
    wrong_number = await client.post(f"{sim.base_url}/sim/window", json={"wa_id": other})
    assert wrong_number.status_code == 400, "a window belongs to a phone number and a customer"


async def test_customers_who_wrote_through_sim_meta_send_have_their_window_open(client, bridge) -> None:
    receiver, url = bridge
    async with make_sim(url) as sim:
        await send_kinds(url, SECRET, PHONE, kinds=("text",), customers=2, count=2, sim_url=sim.base_url)
        wrote = [(await send(client, sim, text(to=customer_wa_id(n)))).json()["messages"][0]["id"] for n in range(3)]
        await sim.outbound.wait_statuses()
    assert [receiver.seen(w)[-1] for w in wrote] == ["read", "read", "failed"]  # customers 0 and 1 wrote, 2 did not


# --- throttling and faults ------------------------------------------------------------------------------------------


async def test_sends_over_the_per_number_rate_answer_130429_until_the_clock_moves_on(client, bridge) -> None:
    async with make_sim(bridge[1], rate=5, open_windows=True) as sim:
        codes = [(await send(client, sim, text())).status_code for _ in range(7)]
        throttled = await send(client, sim, text())
        read_mark = await send(client, sim, {"messaging_product": "whatsapp", "status": "read", "message_id": "w"})
        sim.advance_clock(0.2)  # one more token at 5 per second
        after = [(await send(client, sim, text())).status_code for _ in range(2)]
    assert codes == [200] * 5 + [400] * 2 and after == [200, 400]
    error = throttled.json()["error"]
    assert error["code"] == 130429 and error["message"] == "(#130429) Rate limit hit"
    assert error["error_data"]["messaging_product"] == "whatsapp" and error["error_data"]["details"]
    assert read_mark.status_code == 200, "read marks are not messages: no throughput spent"
    assert len(sim.outbound.sent) == 6


async def test_faults_by_code_status_and_target_are_served_count_times(sim: MetaSim, client, bridge) -> None:
    faults = f"{sim.base_url}/sim/faults"
    assert (await client.post(faults, json={"code": 131056, "count": 2})).status_code == 200
    pair = [await send(client, sim, text()) for _ in range(3)]
    assert [r.status_code for r in pair] == [400, 400, 200] and error_code(pair[0]) == 131056
    await client.post(faults, json={"status": 503})
    down = await send(client, sim, text())
    assert down.status_code == 503 and error_code(down) == 2
    await client.post(faults, json={"code": 131026, "async": True, "latency_ms": 1})
    undeliverable = await send(client, sim, text())
    assert undeliverable.status_code == 200
    await client.post(faults, json={"target": "media", "status": 500, "count": -1})
    assert (await upload(client, sim, b"\xff\xd8jpeg", "image/jpeg")).status_code == 500
    assert (await upload(client, sim, b"\xff\xd8jpeg", "image/jpeg")).status_code == 500
    assert (await client.delete(faults)).status_code == 200
    assert (await upload(client, sim, b"\xff\xd8jpeg", "image/jpeg")).status_code == 200
    assert (await client.post(faults, json={"target": "nowhere", "status": 500})).status_code == 400
    await sim.outbound.wait_statuses()
    (failed,) = [s for s in bridge[0].statuses if s["id"] == undeliverable.json()["messages"][0]["id"]]
    assert failed["status"] == "failed" and failed["errors"][0]["code"] == 131026


# --- media upload ---------------------------------------------------------------------------------------------------


async def upload(client: httpx.AsyncClient, sim: MetaSim, data: bytes, mime: str, **fields: str) -> httpx.Response:
    form = {"messaging_product": "whatsapp", "type": mime, **fields}
    return await client.post(f"{sim.graph_url}/{PHONE}/media", data=form, files={"file": ("f", data, mime)})


async def test_an_uploaded_file_gets_an_id_the_graph_side_resolves_and_a_send_can_use(sim, client, bridge) -> None:
    response = await upload(client, sim, b"\xff\xd8\xff\xe0" + b"x" * 996, "image/jpeg")
    assert response.status_code == 200
    media_id = response.json()["id"]
    info = (await client.get(f"{sim.graph_url}/{media_id}")).json()
    assert info["mime_type"] == "image/jpeg" and info["file_size"] == 1000
    other = await upload(client, sim, b"plain words", "text/plain")
    assert other.status_code == 200 and other.json()["id"].isdigit()
    uploads = (await client.get(f"{sim.base_url}/sim/uploads")).json()
    assert [(u["id"], u["size"]) for u in uploads] == [(media_id, 1000), (other.json()["id"], 11)]
    by_id = await send(client, sim, _with("image", {"id": media_id}))
    by_unknown_id = await send(client, sim, _with("image", {"id": "777"}))
    await sim.outbound.wait_statuses()
    assert bridge[0].seen(by_id.json()["messages"][0]["id"]) == ["sent", "delivered", "read"]
    (failed,) = [s for s in bridge[0].statuses if s["id"] == by_unknown_id.json()["messages"][0]["id"]]
    assert failed["errors"][0]["code"] == 131053


@pytest.mark.parametrize(("mime", "size", "code"), [
    ("image/jpeg", 5 * 1024 * 1024 + 1, 131053), ("image/png", 5 * 1024 * 1024, None),
    ("image/webp", 500 * 1024 + 1, 131053), ("audio/ogg; codecs=opus", 16 * 1024 * 1024 + 1, 131053),
    ("video/mp4", 16 * 1024 * 1024, None), ("application/x-msdownload", 10, 100),
])  # fmt: skip
async def test_uploads_are_held_to_the_limit_of_their_type(sim, client, mime: str, size: int, code: int | None) -> None:
    response = await upload(client, sim, b"\x00" * size, mime)
    if code is None:
        assert response.status_code == 200 and response.json()["id"]
    else:
        assert response.status_code == 400 and error_code(response) == code


async def test_an_upload_without_its_form_fields_or_token_is_refused(sim, client) -> None:
    url = f"{sim.graph_url}/{PHONE}/media"
    no_product = await client.post(url, data={"type": "image/png"}, files={"file": ("f", b"png", "image/png")})
    no_file = await client.post(url, data={"messaging_product": "whatsapp", "type": "image/png"},
                                files={"other": ("f", b"png", "image/png")})  # fmt: skip
    empty = await upload(client, sim, b"", "image/png")
    not_multipart = await client.post(url, json={"messaging_product": "whatsapp"})
    assert [r.status_code for r in (no_product, no_file, empty, not_multipart)] == [400] * 4
    assert {error_code(r) for r in (no_product, no_file, empty, not_multipart)} == {100}
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.post(url, files={"file": ("f", b"png", "image/png")})).status_code == 401
    assert sim.outbound.uploads == {}


# --- status webhook quirks and retries -----------------------------------------------------------------------------


async def _quirky_run(seed: int) -> list[list[str]]:
    receiver = Bridge()
    async with receiver as url, make_sim(url, quirks=Quirks(out_of_order=0.5, duplicate=0.5, seed=seed),
                                         open_windows=True) as sim, \
            httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as c:  # fmt: skip
        wamids = [(await send(c, sim, text())).json()["messages"][0]["id"] for _ in range(12)]
        await sim.outbound.wait_statuses()
    assert receiver.bad_signatures == 0
    return [receiver.seen(w) for w in wamids]


async def test_out_of_order_and_duplicated_statuses_are_reproducible_from_a_seed() -> None:
    first, again, other = await _quirky_run(7), await _quirky_run(7), await _quirky_run(8)
    assert first == again and first != other
    assert any(len(s) == 4 for s in first), "some status posted twice"
    assert any(list(dict.fromkeys(s)) != ["sent", "delivered", "read"] for s in first), "some arrived out of order"
    assert all(set(s) == {"sent", "delivered", "read"} for s in first), "none lost"


async def test_an_early_status_reaches_the_bridge_before_the_send_is_answered(client, bridge) -> None:
    receiver, url = bridge
    async with make_sim(url, quirks=Quirks(early=1.0), open_windows=True) as sim:
        for _ in range(3):
            wamid = (await send(client, sim, text())).json()["messages"][0]["id"]
            assert receiver.seen(wamid)[:1] == ["sent"], "posted and answered before the send's own answer"
        await sim.outbound.wait_statuses()


async def test_a_status_the_bridge_answers_503_is_retried_with_the_same_signed_body_then_given_up() -> None:
    receiver = Bridge(answers=[503, 503])
    async with receiver as url, make_sim(url, open_windows=True, status_retries=2) as sim, \
            httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as c:  # fmt: skip
        wamid = (await send(c, sim, text())).json()["messages"][0]["id"]
        await sim.outbound.wait_statuses()
        assert receiver.seen(wamid) == ["sent", "delivered", "read"]
        posts = [(p.status, p.attempt, p.answer) for p in sim.outbound.statuses]
        assert posts == [("sent", 1, 503), ("sent", 2, 503), ("sent", 3, 200), ("delivered", 1, 200), ("read", 1, 200)]
        receiver.answers = [503] * 100  # never answers 200 again: three tries per status, then the sim stops
        gone = (await send(c, sim, text())).json()["messages"][0]["id"]
        await sim.outbound.wait_statuses()
    attempts = [(p.status, p.attempt) for p in sim.outbound.statuses if p.wamid == gone]
    assert attempts == [(s, n) for s in ("sent", "delivered", "read") for n in (1, 2, 3)]


async def test_statuses_are_signed_with_the_app_secret_of_their_own_phone_number(client) -> None:
    receiver = Bridge(secret="secret-b")
    numbers = {PHONE: "secret-a", "200000000000002": "secret-b"}  # the fallback secret must not win over a number's own
    async with receiver as url, make_sim(url, numbers=numbers, app_secret="secret-b", open_windows=True,
                                         status_retries=0) as sim:  # fmt: skip
        refused = (await send(client, sim, text())).json()["messages"][0]["id"]
        taken = (await send(client, sim, text(), phone="200000000000002")).json()["messages"][0]["id"]
        await sim.outbound.wait_statuses()
    assert receiver.bad_signatures == 3 and receiver.seen(refused) == []
    assert receiver.seen(taken) == ["sent", "delivered", "read"]
    assert [p.answer for p in sim.outbound.statuses if p.wamid == refused] == [401, 401, 401]


async def test_reset_forgets_sends_statuses_uploads_windows_and_faults(sim: MetaSim, client) -> None:
    await send(client, sim, text())
    await upload(client, sim, b"png", "image/png")
    await client.post(f"{sim.base_url}/sim/faults", json={"code": 131056, "count": -1})
    await sim.outbound.wait_statuses()
    assert (await client.post(f"{sim.base_url}/sim/reset")).status_code == 200
    assert (await client.get(f"{sim.base_url}/sim/sent")).json() == []
    assert (await client.get(f"{sim.base_url}/sim/statuses")).json() == []
    assert (await client.get(f"{sim.base_url}/sim/uploads")).json() == []
    response = await send(client, sim, text())  # no fault any more, and the customer's window is closed again
    await sim.outbound.wait_statuses()
    assert response.status_code == 200 and [s.failure for s in sim.outbound.sent] == [131047]


# --- command line ---------------------------------------------------------------------------------------------------


async def test_the_serve_command_takes_the_sending_side_knobs(bridge) -> None:
    receiver, url = bridge
    args = ["--phone-number", f"{PHONE}={SECRET}", "--bridge-url", url, "--open-windows", "--status-delay", "0",
            "--seed", "3", "--duplicate", "0", "--rate", "0.001"]  # fmt: skip
    with MetaSimProcess(tokens=[TOKEN], args=args) as graph_url:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            ok = await c.post(f"{graph_url}/{PHONE}/messages", json=text())
            throttled = await c.post(f"{graph_url}/{PHONE}/messages", json=text())
            unknown = await c.post(f"{graph_url}/123/messages", json=text())
            wamid = ok.json()["messages"][0]["id"]
            for _ in range(500):  # a bound, not a timing assertion: the child posts on its own schedule
                if len(receiver.seen(wamid)) == 3:
                    break
                await asyncio.sleep(0.02)
    assert throttled.status_code == 400 and error_code(throttled) == 130429
    assert unknown.status_code == 400 and error_code(unknown) == 100
    assert receiver.seen(wamid) == ["sent", "delivered", "read"] and receiver.bad_signatures == 0


async def test_a_chunked_upload_is_refused_with_411_rather_than_misread(sim: MetaSim) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
        yield b"bytes\r\n--b--\r\n"

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        response = await c.post(f"{sim.graph_url}/{PHONE}/media", content=pieces(),
                                headers={"Content-Type": "multipart/form-data; boundary=b"})  # fmt: skip
        assert response.status_code == 411
        assert (await send(c, sim, text())).status_code == 200, "and the next request is served"


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [path] + [p for key, child in children for p in _paths(child, (*path, key))]


def _replaced(doc: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replaced(doc[path[0]], path[1:], new)
    return copy


def test_any_part_of_a_valid_body_replaced_by_any_json_is_a_send_or_a_400_never_a_crash() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from wabridge.sim.meta_send import Invalid, validate_read, validate_send

    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=8), inner, max_size=3), max_leaves=8)  # fmt: skip
    reads = [{"messaging_product": "whatsapp", "status": "read", "message_id": "w", "typing_indicator": {"type": "text"}}]
    bodies = [b for b in [*VALID.values(), *INVALID.values(), *reads] if isinstance(b, dict)]

    @settings(max_examples=1000, deadline=None)
    @given(st.sampled_from(bodies), st.data(), values)
    def check(body: dict[str, Any], data: st.DataObject, new: Any) -> None:
        doc = _replaced(body, data.draw(st.sampled_from(_paths(body))), new)
        if not isinstance(doc, dict):
            return  # the endpoint refuses a body that is not an object before validating it
        try:
            (validate_read if "status" in doc else validate_send)(doc)
        except Invalid:
            pass

    check()
