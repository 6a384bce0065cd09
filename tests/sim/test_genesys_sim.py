"""The Genesys simulator answers like Genesys's login and Open Messaging inbound API (reference.md §2)."""

from __future__ import annotations

import copy
import time

import httpx
import pytest

from wabridge.sim.genesys import GenesysSim, conversation_id_for, start_genesys_sim

pytestmark = pytest.mark.anyio

INBOUND = "/api/v2/conversations/messages/{}/inbound/open/message"
GOOD = {
    "channel": {
        "messageId": "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTdGMEQ2",
        "time": "2026-06-08T20:59:43.000Z",
        "from": {"id": "16505551234", "idType": "Phone", "nickname": "Sheena Nelson"},
        "metadata": {"customAttributes": {"waba": "102290129340398"}},
    },
    "text": "Does it come in another color?",
    "metadata": {"phone_number_id": "106540352242922"},
}
IMAGE = {"attachment": {"mediaType": "Image", "url": "https://media.example/p.jpg", "mime": "image/jpeg"}}


async def login(client: httpx.AsyncClient, url: str, client_id: str = "cid", secret: str = "secret") -> str:
    r = await client.post(url + "/oauth/token", auth=(client_id, secret), data={"grant_type": "client_credentials"})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


async def post(client: httpx.AsyncClient, url: str, token: str, body: object, integration: str = "int-1", query=""):
    return await client.post(
        url + INBOUND.format(integration) + query, json=body, headers={"Authorization": f"Bearer {token}"}
    )


def with_changes(**changes: object) -> dict:
    body = copy.deepcopy(GOOD)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = body
        for p in parents:
            node = node[p]
        if value is KeyError:
            node.pop(leaf)
        else:
            node[leaf] = value
    return body


async def test_login_gives_a_bearer_token_for_a_configured_client_and_refuses_others() -> None:
    async with GenesysSim(clients={"cid": "secret"}, token_lifetime=900) as sim, httpx.AsyncClient() as client:
        r = await client.post(sim.url + "/oauth/token", auth=("cid", "secret"), data={"grant_type": "client_credentials"})
        assert r.status_code == 200
        assert r.json()["token_type"] == "bearer" and r.json()["expires_in"] == 900 and r.json()["access_token"]
        bad = await client.post(sim.url + "/oauth/token", auth=("cid", "wrong"), data={"grant_type": "client_credentials"})
        unknown = await client.post(sim.url + "/oauth/token", auth=("x", "secret"), data={"grant_type": "client_credentials"})
        grant = await client.post(sim.url + "/oauth/token", auth=("cid", "secret"), data={"grant_type": "password"})
        assert (bad.status_code, unknown.status_code, grant.status_code) == (401, 401, 400)
        assert sim.stats.logins == 1 and sim.stats.login_rejected == 2


async def test_without_configured_clients_any_id_and_secret_log_in() -> None:
    async with GenesysSim() as sim, httpx.AsyncClient() as client:
        assert await login(client, sim.url, "anyone", "anything")


async def test_a_valid_message_is_answered_with_a_normalized_message_and_a_stable_conversation_id() -> None:
    async with GenesysSim(rate_limit=0) as sim, httpx.AsyncClient() as client:
        token = await login(client, sim.url)
        first = await post(client, sim.url, token, GOOD, query="?prefetchConversationId=true")
        again = await post(client, sim.url, token, with_changes(channel__messageId="wamid.2"), query="?prefetchConversationId=true")
        other = await post(
            client, sim.url, token, with_changes(channel__from={"id": "447700900123", "idType": "Phone"}),
            query="?prefetchConversationId=true",
        )
        plain = await post(client, sim.url, token, GOOD)
        assert first.status_code == 200, first.text
        reply = first.json()
        assert reply["type"] == "Text" and reply["text"] == GOOD["text"] and reply["id"]
        assert reply["channel"]["messageId"] == GOOD["channel"]["messageId"]
        assert reply["channel"]["from"]["id"] == "16505551234" and reply["metadata"] == GOOD["metadata"]
        assert reply["conversationId"] == again.json()["conversationId"] == conversation_id_for("int-1", "16505551234")
        assert other.json()["conversationId"] != reply["conversationId"]
        assert "conversationId" not in plain.json()
        conversations = (await client.get(sim.url + "/sim/conversations")).json()
        assert len(conversations[reply["conversationId"]]["messages"]) == 3
        listed = (await client.get(sim.url + "/sim/messages", params={"conversationId": reply["conversationId"]})).json()
        assert [m["messageId"] for m in listed] == [GOOD["channel"]["messageId"], "wamid.2", GOOD["channel"]["messageId"]]
        assert listed[0]["body"] == GOOD


async def test_fields_of_the_old_catch_all_body_are_ignored_like_genesys_does() -> None:
    body = with_changes(type="Text", direction="Inbound", channel__platform="Open", channel__to={"id": "x"})
    async with GenesysSim() as sim, httpx.AsyncClient() as client:
        r = await post(client, sim.url, await login(client, sim.url), body)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("case", "body", "where"),
    [
        ("missing from", with_changes(channel__from=KeyError), "$.channel"),
        ("null from", with_changes(channel__from=None), "$.channel.from"),
        ("null text", with_changes(text=None), "$.text"),
        ("null nickname", with_changes(channel__from__nickname=None), "$.channel.from.nickname"),
        ("bad idType", with_changes(channel__from__idType="WhatsApp"), "$.channel.from.idType"),
        ("missing messageId", with_changes(channel__messageId=KeyError), "$.channel"),
        ("local time", with_changes(channel__time="2026-06-08T22:59:43+02:00"), "$.channel.time"),
        ("not a time", with_changes(channel__time="1718000000"), "$.channel.time"),
        ("neither text nor content", with_changes(text=KeyError), "text or content"),
        ("bad mediaType", with_changes(content=[{"attachment": {"mediaType": "Sticker", "url": "https://x/y",
                                                                 "mime": "image/webp"}}]),
         "$.content[0].attachment.mediaType"),
        ("attachment without mime",
         with_changes(content=[{"attachment": {"mediaType": "Image", "url": "https://x/y"}}]), "$.content[0].attachment"),
        ("attachment without url", with_changes(content=[{"attachment": {"mediaType": "Image"}}]),
         "$.content[0].attachment"),
        ("metadata not strings", with_changes(metadata={"count": 3}), "$.metadata"),
        ("custom attribute not a string", with_changes(channel__metadata={"customAttributes": {"a": None}}),
         "$.channel.metadata.customAttributes"),
    ],
)
async def test_a_body_outside_the_schema_is_rejected_with_a_genesys_style_400(case: str, body: dict, where: str) -> None:
    async with GenesysSim() as sim, httpx.AsyncClient() as client:
        r = await post(client, sim.url, await login(client, sim.url), body)
        assert r.status_code == 400, case
        error = r.json()
        assert error["code"] == "bad.request" and error["status"] == 400 and where in error["message"], error
        assert sim.stats.rejected == 1 and sim.received == type(sim.received)()


async def test_a_message_with_only_an_attachment_is_accepted() -> None:
    async with GenesysSim() as sim, httpx.AsyncClient() as client:
        r = await post(client, sim.url, await login(client, sim.url), with_changes(text=KeyError, content=[IMAGE]))
        assert r.status_code == 200 and r.json()["content"] == [{"attachment": IMAGE["attachment"]}]


async def test_a_bad_or_expired_token_gets_401_and_an_unknown_integration_404() -> None:
    async with GenesysSim(integrations=["int-1"], token_lifetime=0) as expiring, httpx.AsyncClient() as client:
        expired = await post(client, expiring.url, await login(client, expiring.url), GOOD)
        forged = await post(client, expiring.url, "not-a-token", GOOD)
        assert expired.status_code == forged.status_code == 401
        assert forged.json()["code"] == "bad.credentials"
    async with GenesysSim(integrations=["int-1"]) as sim, httpx.AsyncClient() as client:
        r = await post(client, sim.url, await login(client, sim.url), GOOD, integration="int-2")
        assert r.status_code == 404 and r.json()["code"] == "not.found"


async def test_past_the_rate_limit_the_client_gets_429_with_retry_after() -> None:
    async with GenesysSim(rate_limit=3) as sim, httpx.AsyncClient() as client:
        token = await login(client, sim.url)
        statuses = [(await post(client, sim.url, token, GOOD)).status_code for _ in range(3)]
        limited = await post(client, sim.url, token, GOOD)
        # Genesys counts per OAuth client: a second token of the same client shares the budget.
        other_token = await post(client, sim.url, await login(client, sim.url), GOOD)
        assert statuses == [200, 200, 200]
        assert limited.status_code == other_token.status_code == 429
        assert limited.json()["code"] == "too.many.requests.retry.after"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert sim.stats.rate_limited == 2 and sim.stats.accepted == 3


async def test_injected_faults_answer_the_next_requests_then_stop() -> None:
    async with GenesysSim() as sim, httpx.AsyncClient() as client:
        token = await login(client, sim.url)
        assert (await client.post(sim.url + "/sim/faults", json={"status": 503, "count": 2})).status_code == 200
        await client.post(sim.url + "/sim/faults", json={"status": 429, "retry_after": 7})
        await client.post(sim.url + "/sim/faults", json={"latency_ms": 200})
        answers = [await post(client, sim.url, token, GOOD) for _ in range(3)]  # faults apply in the order added
        started = time.monotonic()
        slow = await post(client, sim.url, token, GOOD)
        assert time.monotonic() - started >= 0.2
        normal = await post(client, sim.url, token, GOOD)
        assert [a.status_code for a in answers] == [503, 503, 429]
        assert slow.status_code == normal.status_code == 200
        assert answers[2].headers["Retry-After"] == "7"
        sim.add_fault(status=500, target="login")
        failed_login = await client.post(sim.url + "/oauth/token", auth=("a", "b"), data={"grant_type": "client_credentials"})
        assert failed_login.status_code == 500
        assert (await client.get(sim.url + "/sim/stats")).json()["faults"] == 5


async def test_with_fetch_media_every_attachment_url_is_downloaded_and_recorded() -> None:
    async with GenesysSim(fetch_media=True) as sim, httpx.AsyncClient() as client:
        token = await login(client, sim.url)
        found = {"attachment": {"mediaType": "File", "url": sim.url + "/sim/stats", "mime": "application/json"}}
        missing = {"attachment": {"mediaType": "Image", "url": sim.url + "/nothing-here.jpg", "mime": "image/jpeg"}}
        r = await post(client, sim.url, token, with_changes(content=[found, missing]))
        assert r.status_code == 200
        await sim.wait_media()
        media = {m["url"]: m for m in sim.messages()[0]["media"]}
        assert media[found["attachment"]["url"]]["status"] == 200
        assert media[found["attachment"]["url"]]["size"] > 0 and len(media[found["attachment"]["url"]]["sha256"]) == 64
        assert media[missing["attachment"]["url"]]["status"] == 404


def test_the_simulator_runs_as_a_subprocess_with_the_same_options() -> None:
    sim = start_genesys_sim(clients={"cid": "secret"}, integrations=["int-1"], rate_limit=0)
    try:
        token = httpx.post(sim.url + "/oauth/token", auth=("cid", "secret"), data={"grant_type": "client_credentials"}).json()[
            "access_token"
        ]
        r = httpx.post(sim.url + INBOUND.format("int-1"), json=GOOD, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert [m["messageId"] for m in sim.messages()] == [GOOD["channel"]["messageId"]]
        assert sim.stats()["accepted"] == 1
    finally:
        sim.stop()
    assert sim.process.returncode == 0
