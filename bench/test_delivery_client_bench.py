"""The HTTP client of the Genesys delivery path: httpx vs aiohttp vs http/client.py, same simulator, same run.

    .venv/bin/python -m pytest bench/test_delivery_client_bench.py -s

Each round POSTs 2,000 Open Messaging bodies to the Genesys simulator (its own process, rate limit off) with 32 in
flight over one keep-alive pool, as one tenant's delivery pool does. Two figures per client: requests per second
(the simulator shares the machine) and the client's own CPU per request (this process's CPU time: the simulator
runs in another). open_messaging.py uses http/client.py because of the CPU figure: on two cores shared with the broker,
the databases and the ingress, the worker's CPU per message is what bounds end-to-end throughput.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import httpx
import msgspec
import pytest

from wabridge.http.client import Http1Pool
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


async def _timed(one) -> tuple[float, float]:
    """(requests/s, client CPU µs per request) of N calls of `one`, IN_FLIGHT at a time."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def limited() -> None:
        async with slots:
            await one()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(limited() for _ in range(N)))
    return N / (time.perf_counter() - start), (time.process_time() - cpu) / N * 1e6


async def _with_httpx(url: str, headers: dict[str, str]) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            assert (await client.post(url, content=BODY, headers=headers)).status_code == 200

        return await _timed(one)


async def _with_aiohttp(url: str, headers: dict[str, str]) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=headers) as reply:
                await reply.read()
                assert reply.status == 200

        return await _timed(one)


async def _with_http1(url: str, headers: dict[str, str]) -> tuple[float, float]:
    origin, _, target = url.partition("/api/")
    pool = Http1Pool(origin, limit=IN_FLIGHT, timeout=30)

    async def one() -> None:
        assert (await pool.request("POST", "/api/" + target, headers, BODY)).status == 200

    try:
        return await _timed(one)
    finally:
        await pool.aclose()


CLIENTS = {"httpx": _with_httpx, "aiohttp": _with_aiohttp, "http1": _with_http1}


@pytest.mark.benchmark(group="delivery-http-client")
def test_delivery_client_costs_least_cpu_per_post(benchmark):
    import uvloop

    sim = start_genesys_sim(0, rate_limit=0, max_messages=1_000)
    try:
        async def rounds() -> dict[str, list[tuple[float, float]]]:
            headers = {"Authorization": f"Bearer {await _token(sim.url)}", "Content-Type": "application/json"}
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
            for _ in range(ROUNDS):  # interleaved, so every client sees the same machine load
                for name, client in CLIENTS.items():
                    results[name].append(await client(sim.url + PATH, headers))
            return results

        results = benchmark.pedantic(lambda: uvloop.run(rounds()), rounds=1, iterations=1)
    finally:
        sim.stop()
    rate = {name: statistics.median(r for r, _ in values) for name, values in results.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in results.items()}
    benchmark.extra_info.update({f"{k}_posts_per_s": round(v) for k, v in rate.items()}
                                | {f"{k}_client_cpu_us": round(v, 1) for k, v in cpu.items()})  # fmt: skip
    print(f"\nGenesys POSTs, median of {ROUNDS} rounds of {N}: "
          + ", ".join(f"{k} {rate[k]:.0f}/s at {cpu[k]:.0f} µs client CPU each" for k in CLIENTS)
          + f"; aiohttp/http1 CPU {cpu['aiohttp'] / cpu['http1']:.1f}x")
    assert cpu["http1"] < cpu["aiohttp"] < cpu["httpx"]
