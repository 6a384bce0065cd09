"""The HTTP client of the Genesys delivery path: httpx vs aiohttp, same simulator, same run.

    .venv/bin/python -m pytest bench/test_delivery_client_bench.py -s

Each round POSTs 2,000 Open Messaging bodies to the Genesys simulator (its own process, rate limit off) with 32 in
flight over one keep-alive pool, as one tenant's delivery pool does. The simulator's cost is the same for both, so
the ratio is the clients' difference. delivery.py uses aiohttp because of this figure.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import httpx
import msgspec
import pytest

from wabridge.sim.genesys import start_genesys_sim

N = 2_000
IN_FLIGHT = 32
ROUNDS = 3
BODY = msgspec.json.encode({
    "channel": {"messageId": "wamid.bench", "time": "2026-01-01T00:00:00.000Z",
                "from": {"id": "15550000000", "idType": "Phone"}},
    "text": "Does it come in another color?",
})  # fmt: skip
PATH = "/api/v2/conversations/messages/bench/inbound/open/message?prefetchConversationId=true"


async def _token(base: str) -> str:
    async with httpx.AsyncClient() as client:
        reply = await client.post(base + "/oauth/token", auth=("bench", "bench"), data={"grant_type": "client_credentials"})
        return reply.json()["access_token"]


async def _with_httpx(url: str, headers: dict[str, str]) -> float:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            async with slots:
                assert (await client.post(url, content=BODY, headers=headers)).status_code == 200

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(N)))
        return N / (time.perf_counter() - start)


async def _with_aiohttp(url: str, headers: dict[str, str]) -> float:
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            async with slots, session.post(url, data=BODY, headers=headers) as reply:
                await reply.read()
                assert reply.status == 200

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(N)))
        return N / (time.perf_counter() - start)


@pytest.mark.benchmark(group="delivery-http-client")
def test_aiohttp_delivers_faster_than_httpx(benchmark):
    import uvloop

    sim = start_genesys_sim(0, rate_limit=0, max_messages=1_000)
    try:
        async def rounds() -> dict[str, list[float]]:
            headers = {"Authorization": f"Bearer {await _token(sim.url)}", "Content-Type": "application/json"}
            rates: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
            for _ in range(ROUNDS):  # interleaved, so both see the same machine load
                rates["httpx"].append(await _with_httpx(sim.url + PATH, headers))
                rates["aiohttp"].append(await _with_aiohttp(sim.url + PATH, headers))
            return rates

        rates = benchmark.pedantic(lambda: uvloop.run(rounds()), rounds=1, iterations=1)
    finally:
        sim.stop()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["aiohttp"] / medians["httpx"]
    benchmark.extra_info.update({f"{k}_msgs_per_s": round(v) for k, v in medians.items()} | {"ratio": round(ratio, 2)})
    print(f"\nGenesys POSTs/s, median of {ROUNDS}: httpx {medians['httpx']:.0f}, aiohttp {medians['aiohttp']:.0f}, "
          f"aiohttp/httpx {ratio:.1f}x")
    assert ratio > 1.0
