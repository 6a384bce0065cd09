"""OpenMessagingClient.receipt (issue 17) against the Genesys simulator, whose receipt endpoint validates the body
strictly: the receipts codecs/receipts.py builds are taken and filed with the agent's message; the request path is
post_message's (401 → log in again, 5xx retried, other 4xx final); a 2xx that says Failed is a failure."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from wabridge.genesys.auth import TokenProvider
from wabridge.genesys.open_messaging import PostFailed, OpenMessagingClient
from wabridge.engine.far_end import FarEnd
from wabridge.codecs.receipts import Reason, receipt, receipt_body
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.ports import GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.sim.genesys import GenesysSim
from wabridge.sim.genesys_agent import Outbound, Party, SendSpec

pytestmark = pytest.mark.anyio

INTEGRATION = "int-1"
CUSTOMER = "16505551234"


def tenant_for(url: str) -> TenantConfig:
    return TenantConfig(
        tenant_id="acme",
        phone_number_ids=("106540352242922",),
        app_secret=Secret("app"),
        verify_token=Secret("verify"),
        whatsapp_token=Secret("wa"),
        genesys_api_url=url,
        genesys_login_url=url,
        genesys_integration_id=INTEGRATION,
        credentials=(GenesysCredential("cid", Secret("secret")),),
    )


@contextlib.asynccontextmanager
async def delivering(**options) -> AsyncIterator[OpenMessagingClient]:
    tokens = TokenProvider(MemoryCache())
    client = OpenMessagingClient(tokens, **{"timeout": 2.0, "backoff_base": 0.01, **options})
    try:
        yield client
    finally:
        await client.aclose()
        await tokens.aclose()


async def agent_message(sim: GenesysSim) -> Outbound:
    """A message the simulated agent sent to the customer. Its webhook's fate does not matter here, so it goes to an
    address of the sim itself that answers 404 (final: no retries), and the sim keeps the record."""
    spec = SendSpec(text="Your order shipped today.", to=Party(id=CUSTOMER), webhookUrl=f"{sim.url}/nowhere")
    return await sim.agent.send(spec, wait=True)


def delivered(message_id: str) -> bytes:
    return receipt_body(receipt(message_id, CUSTOMER, "Phone", "Delivered", time.time()))


def failed(message_id: str) -> bytes:
    reason = Reason("MessageNotAllowed", "(#131047) Re-engagement message: more than 24 hours since the customer wrote")
    return receipt_body(receipt(message_id, CUSTOMER, "Phone", "Failed", time.time(), [reason]))


async def test_a_delivered_and_a_failed_receipt_are_taken_and_filed_with_the_agents_message() -> None:
    async with GenesysSim(clients={"cid": "secret"}, integrations=[INTEGRATION]) as sim, delivering() as client:
        tenant = tenant_for(sim.url)
        first, second = await agent_message(sim), await agent_message(sim)
        await client.receipt(tenant, delivered(first.id))
        # Genesys echoes the receipt: a Failed receipt's answer says Failed, and that is not a failure to post it.
        await client.receipt(tenant, failed(second.id))
        assert [r["status"] for r in first.receipts] == ["Delivered"]
        assert [(r["status"], r["reasons"][0]["code"]) for r in second.receipts] == [("Failed", "MessageNotAllowed")]
        assert sim.agent.unmatched_receipts == [] and sim.stats.rejected == 0
        assert (client.statistics().receipts, client.statistics().receipts_failed) == (2, 0)


async def test_a_receipt_for_a_message_the_sim_never_sent_is_answered_202_and_kept_aside() -> None:
    """What the simulator does with a receipt naming no message it sent: accepts it (202, the receipt echoed) and
    files it under /sim/agent/unmatched-receipts. Real Genesys's answer here is not documented (reference.md §3)."""
    async with GenesysSim(integrations=[INTEGRATION]) as sim, delivering() as client:
        await client.receipt(tenant_for(sim.url), delivered("never-sent-by-genesys"))
        assert [r["body"]["id"] for r in sim.agent.unmatched_receipts] == ["never-sent-by-genesys"]


async def test_a_401_logs_in_again_and_the_receipt_goes_through() -> None:
    async with GenesysSim(integrations=[INTEGRATION]) as sim, delivering() as client:
        tenant, message = tenant_for(sim.url), await agent_message(sim)
        await client.receipt(tenant, delivered(message.id))
        sim.add_fault(status=401)
        await client.receipt(tenant, delivered(message.id))
        assert sim.stats.logins == 2 and client.statistics().relogins == 1 and len(message.receipts) == 2


async def test_server_errors_are_retried_until_the_receipt_is_taken() -> None:
    async with GenesysSim(integrations=[INTEGRATION]) as sim, delivering() as client:
        message = await agent_message(sim)
        sim.add_fault(status=503, count=2)
        await client.receipt(tenant_for(sim.url), delivered(message.id))
        assert [r["status"] for r in message.receipts] == ["Delivered"] and client.statistics().retries == 2


async def test_genesys_down_past_the_hold_fails_the_receipt_not_permanently() -> None:
    far_end = FarEnd("genesys", hold_for=0)
    async with GenesysSim(integrations=[INTEGRATION]) as sim, delivering(far_end=far_end) as client:
        sim.add_fault(status=502, count=3)
        with pytest.raises(PostFailed) as down:
            await client.receipt(tenant_for(sim.url), delivered("g-1"))
        assert (down.value.permanent, down.value.status) == (False, 502)


@pytest.mark.parametrize(
    "body",
    [
        msgspec.json.encode({"id": "g-1", "status": "Delivered"}),  # no channel, direction, isFinalReceipt
        msgspec.json.encode({**msgspec.json.decode(delivered("g-1")), "status": "Read"}),  # Genesys has no Read
    ],
    ids=["incomplete", "unknown-status"],
)
async def test_a_receipt_genesys_refuses_fails_at_once_permanently_with_its_answer(body: bytes) -> None:
    async with GenesysSim(integrations=[INTEGRATION]) as sim, delivering() as client:
        with pytest.raises(PostFailed) as refused:
            await client.receipt(tenant_for(sim.url), body)
        assert (refused.value.permanent, refused.value.status, refused.value.attempts) == (True, 400, 1)
        assert b"bad.request" in refused.value.body and sim.stats.rejected == 1
        assert client.statistics().receipts_failed == 1


async def test_a_2xx_whose_answer_says_failed_is_a_permanent_failure() -> None:
    """reference.md §3: a 2xx whose body says status Failed is a failure. The simulator only echoes, so its receipt
    endpoint is made to answer as a Genesys refusing the receipt inside a 2xx would (login and admission stay real)."""
    async with GenesysSim(integrations=[INTEGRATION]) as sim, delivering() as client:
        answer = {"id": "g-1", "status": "Failed", "reasons": [{"code": "UnknownMessage", "message": "no such id"}]}

        def refusing(integration_id: str, body: bytes) -> tuple[int, bytes, tuple]:
            return 202, msgspec.json.encode(answer), ()

        sim.agent.receipt = refusing  # type: ignore[method-assign]
        with pytest.raises(PostFailed) as failure:
            await client.receipt(tenant_for(sim.url), delivered("g-1"))
        assert (failure.value.permanent, failure.value.status) == (True, 202)
        assert b"UnknownMessage" in failure.value.body
        assert client.statistics().receipts_failed == 1
