"""OpenMessagingClient against the Genesys simulator: success, re-login, Retry-After, backoff, failures, the budget."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import msgspec
import pytest

from wabridge.genesys.auth import TokenProvider
from wabridge.genesys.open_messaging import Posted, PostFailed, OpenMessagingClient
from wabridge.engine.far_end import FarEnd
from wabridge.genesys.ratelimit import RateBudget
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.ports import BackendUnavailable, GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.sim.genesys import GenesysSim, conversation_id_for

pytestmark = pytest.mark.anyio


def tenant_for(url: str, *, tenant_id: str = "acme", budget: int = 300, secret: str = "secret") -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id,
        phone_number_ids=("106540352242922",),
        app_secret=Secret("app"),
        verify_token=Secret("verify"),
        whatsapp_token=Secret("wa"),
        genesys_api_url=url,
        genesys_login_url=url,
        genesys_integration_id="int-1",
        credentials=(GenesysCredential("cid", Secret(secret)),),
        rate_limit_per_minute=budget,
    )


def message(n: int = 1, wa_id: str = "16505551234") -> bytes:
    return msgspec.json.encode(
        {
            "channel": {
                "messageId": f"wamid.{n}",
                "time": "2026-06-08T20:59:43.000Z",
                "from": {"id": wa_id, "idType": "Phone"},
            },
            "text": f"message {n}",
        }
    )


@contextlib.asynccontextmanager
async def delivering(budget: RateBudget | None = None, **options) -> AsyncIterator[OpenMessagingClient]:
    """A OpenMessagingClient with fast backoff, closed with its token provider on exit (before the simulator stops)."""
    tokens = TokenProvider(MemoryCache())
    client = OpenMessagingClient(tokens, budget, **{"timeout": 2.0, "backoff_base": 0.01, **options})
    try:
        yield client
    finally:
        await client.aclose()
        await tokens.aclose()


async def test_a_delivered_message_returns_genesys_ids() -> None:
    async with GenesysSim(clients={"cid": "secret"}, integrations=["int-1"]) as sim, delivering() as client:
        got = await client.post_message(tenant_for(sim.url), message())
        assert got == Posted(sim.messages()[0]["id"], conversation_id_for("int-1", "16505551234"))
        assert sim.messages()[0]["messageId"] == "wamid.1"


async def test_a_hundred_concurrent_deliveries_make_one_login() -> None:
    async with GenesysSim(rate_limit=0) as sim, delivering() as client:
        tenant = tenant_for(sim.url)
        async with anyio.create_task_group() as tg:
            for n in range(100):
                tg.start_soon(client.post_message, tenant, message(n))
        assert sim.stats.logins == 1 and sim.stats.accepted == 100


async def test_a_401_drops_the_token_and_retries_once_with_a_new_one() -> None:
    async with GenesysSim() as sim, delivering() as client:
        tenant = tenant_for(sim.url)
        await client.post_message(tenant, message(1))
        sim.add_fault(status=401)
        await client.post_message(tenant, message(2))
        assert sim.stats.logins == 2 and sim.stats.accepted == 2 and client.statistics().relogins == 1
        sim.add_fault(status=401, count=2)
        with pytest.raises(PostFailed) as failed:
            await client.post_message(tenant, message(3))
        assert failed.value.permanent and failed.value.status == 401 and sim.stats.logins == 3


async def test_a_429_waits_for_retry_after_then_delivers() -> None:
    async with GenesysSim() as sim, delivering() as client:
        tenant = tenant_for(sim.url)
        await client.post_message(tenant, message(1))  # log in first: the wait measured is the 429's alone
        sim.add_fault(status=429, retry_after=1)
        started = time.monotonic()
        await client.post_message(tenant, message(2))
        assert time.monotonic() - started >= 1.0
        assert sim.stats.faults == 1 and sim.stats.accepted == 2


async def test_server_errors_are_retried_with_backoff_until_one_succeeds() -> None:
    async with GenesysSim() as sim, delivering() as client:
        sim.add_fault(status=503, count=2)
        got = await client.post_message(tenant_for(sim.url), message())
        assert got.genesys_message_id and sim.stats.requests == 3


async def test_three_server_errors_past_the_far_end_hold_fail_the_delivery() -> None:
    async with GenesysSim() as sim, delivering(far_end=FarEnd("genesys", hold_for=0)) as client:
        sim.add_fault(status=502, count=3)
        with pytest.raises(PostFailed) as failed:
            await client.post_message(tenant_for(sim.url), message())
        assert (failed.value.attempts, failed.value.permanent, failed.value.status) == (3, False, 502)
        assert sim.stats.requests == 3 and sim.stats.accepted == 0


async def test_timeouts_count_as_attempts() -> None:
    async with GenesysSim() as sim, delivering(timeout=0.1, far_end=FarEnd("genesys", hold_for=0)) as client:
        sim.add_fault(latency_ms=400, count=3)
        with pytest.raises(PostFailed) as failed:
            await client.post_message(tenant_for(sim.url), message())
        assert failed.value.attempts == 3 and "timed out" in failed.value.error and not failed.value.permanent


async def test_a_genesys_outage_holds_every_message_in_place_with_one_probe_at_a_time_and_all_go_when_it_is_back(
) -> None:
    """Issue 15: Genesys answering 503 used to spend a message's three attempts in about two seconds and end it
    `failed`. Now the tenant is marked down once, its messages wait, one of them at a time probes, and all are
    delivered as soon as a probe gets through."""
    far_end = FarEnd("genesys", hold_for=60, retry_max=0.2)
    async with GenesysSim() as sim, delivering(far_end=far_end) as client:
        sim.add_fault(status=503, count=-1)
        tenant = tenant_for(sim.url)
        held = [anyio_task(client.post_message(tenant, message(n, wa_id=f"1650555{n:04d}"))) for n in range(8)]
        await anyio.sleep(2.0)  # far past the three quick attempts of the old behaviour
        assert not any(t.done() for t in held), "held, not failed"
        assert far_end.is_down("acme")
        # Eight messages' first tries (3 each), then probes one at a time (3 tries each, every 0.1-0.2 s at most).
        during = sim.stats.requests
        await anyio.sleep(1.0)
        assert sim.stats.requests - during <= 3 * 10, "one probe at a time, not one per waiting message"
        sim.clear_faults()
        delivered = [await t for t in held]
        assert all(d.genesys_message_id for d in delivered)
        assert sim.stats.accepted == 8 and not far_end.is_down("acme")


async def test_past_the_hold_the_waiting_messages_fail_and_a_drain_hands_them_back() -> None:
    far_end = FarEnd("genesys", hold_for=0.5, retry_max=0.1)
    async with GenesysSim() as sim, delivering(far_end=far_end) as client:
        sim.add_fault(status=503, count=-1)
        tenant = tenant_for(sim.url)
        with pytest.raises(PostFailed) as failed:
            await client.post_message(tenant, message(1))
        assert not failed.value.permanent and "503" in failed.value.error
        assert far_end.is_down("acme")

    far_end = FarEnd("genesys", hold_for=60, retry_max=0.1)
    async with GenesysSim() as sim, delivering(far_end=far_end) as client:
        sim.add_fault(status=503, count=-1)
        held = anyio_task(client.post_message(tenant_for(sim.url), message(2)))
        await anyio.sleep(0.5)
        far_end.stop_holding()
        with pytest.raises(BackendUnavailable):
            await held  # nothing left the bridge: the tenant actor hands it back to the queue


def anyio_task(coro):
    import asyncio

    return asyncio.ensure_future(coro)


async def test_a_rejected_body_fails_at_once_and_keeps_the_genesys_error() -> None:
    async with GenesysSim() as sim, delivering() as client:
        bad = msgspec.json.encode({"channel": {"messageId": "wamid.x", "time": "2026-06-08T20:59:43Z"}, "text": "x"})
        with pytest.raises(PostFailed) as failed:
            await client.post_message(tenant_for(sim.url), bad)
        assert failed.value.permanent and failed.value.attempts == 1 and failed.value.status == 400
        assert b"bad.request" in failed.value.body and sim.stats.requests == 1


async def test_refused_credentials_fail_permanently_and_an_unreachable_genesys_past_the_hold_after_three_attempts() -> None:
    async with GenesysSim(clients={"cid": "secret"}) as sim, delivering() as client:
        with pytest.raises(PostFailed) as refused:
            await client.post_message(tenant_for(sim.url, secret="wrong"), message())
        assert refused.value.permanent and sim.stats.requests == 0
    gone = sim.url  # nothing listens there any more
    async with delivering(far_end=FarEnd("genesys", hold_for=0)) as client:
        with pytest.raises(PostFailed) as unreachable:
            await client.post_message(tenant_for(gone), message())
    assert unreachable.value.attempts == 3 and not unreachable.value.permanent


async def test_over_budget_deliveries_wait_for_the_next_window_and_genesys_sees_no_429() -> None:
    window, n = 1.0, 8
    budget = RateBudget(MemoryCache(), window_s=window)
    async with GenesysSim(rate_limit=n, rate_window=window) as sim, delivering(budget) as client:
        tenant = tenant_for(sim.url, budget=n)
        await anyio.sleep(window - time.time() % window + 0.02)  # start just after a boundary, as the sim counts
        started = time.time()
        async with anyio.create_task_group() as tg:
            for i in range(n + 5):
                tg.start_soon(client.post_message, tenant, message(i))
        assert sim.stats.accepted == n + 5 and sim.stats.rate_limited == 0
        assert time.time() - started >= window - 0.05  # the extra five waited for the next window
        windows = [int(m["receivedAt"] // window) for m in sim.messages()]
        assert max(windows.count(w) for w in set(windows)) <= n


async def test_past_the_client_cap_the_least_recent_tenant_pool_is_closed_and_reopened() -> None:
    async with GenesysSim() as sim, delivering(max_clients=2) as client:
        tenants = [tenant_for(sim.url, tenant_id=f"t{i}") for i in range(3)]
        for _ in range(2):
            for t in tenants:
                await client.post_message(t, message())
        assert sim.stats.accepted == 6 and client.statistics().open_pools == 2
