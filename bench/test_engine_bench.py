"""Engine benchmarks: one actor vs a bare asyncio.Queue pair, ask latency, memory under 1,000,000 messages.

Run: .venv/bin/python -m pytest bench/test_engine_bench.py --benchmark-min-time=0.05 -s
Absolute numbers drift with machine load: the ratio to the bare queue, measured in the same run, is what counts.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from wabridge.engine.actor import Actor
from wabridge.engine.supervisor import Supervisor

MESSAGES = 100_000  # per throughput round
CAPACITY = 1024  # same bound for the actor's mailbox and the bare queue
MEMORY_MESSAGES = int(os.environ.get("WABRIDGE_BENCH_MEMORY_MESSAGES", "1000000"))
MEMORY_ACTORS = 1000
RSS_GROWTH_LIMIT = 2 * 1024 * 1024  # bytes allowed between warm-up and end

results: dict[str, float] = {}


def run(coro_factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_factory())


async def bare_queue_pair() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(CAPACITY)

    async def consume() -> None:
        for _ in range(MESSAGES):
            await queue.get()

    consumer = asyncio.create_task(consume())
    for i in range(MESSAGES):
        await queue.put(i)
    await consumer


class Counter(Actor):
    def __init__(self, done: asyncio.Event) -> None:
        self.count = 0
        self.done = done

    async def on_receive(self, message: int) -> None:
        self.count += 1
        if self.count == MESSAGES:
            self.done.set()


async def one_actor() -> None:
    done = asyncio.Event()
    async with Supervisor() as root:
        ref = root.spawn(lambda: Counter(done), name="counter", kind="bench", capacity=CAPACITY)
        for i in range(MESSAGES):
            await ref.tell(i)
        await done.wait()


@pytest.mark.parametrize("path", ["bare_queue", "actor"])
def test_messages_per_second_through_one_actor_vs_a_bare_queue(benchmark, path: str) -> None:
    scenario = {"bare_queue": bare_queue_pair, "actor": one_actor}[path]
    benchmark.pedantic(run, args=(scenario,), rounds=7, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    results[path] = median
    benchmark.extra_info["msgs_per_s"] = round(MESSAGES / median)
    print(f"\n{path}: median {median * 1e3:.1f} ms per {MESSAGES} msgs = {MESSAGES / median:,.0f} msgs/s")


def test_one_actor_costs_at_most_twice_the_bare_queue_per_message() -> None:
    """Interleaved rounds (bare, actor, bare, actor, …) so both see the same machine load; ratio of the medians."""
    timings: dict[str, list[float]] = {"bare_queue": [], "actor": []}
    for _ in range(7):
        for path, scenario in (("bare_queue", bare_queue_pair), ("actor", one_actor)):
            started = time.perf_counter()
            run(scenario)
            timings[path].append(time.perf_counter() - started)
    bare, actor = (statistics.median(timings[p]) for p in ("bare_queue", "actor"))
    ratio = actor / bare
    print(
        f"\ninterleaved medians: bare queue {MESSAGES / bare:,.0f} msgs/s, actor {MESSAGES / actor:,.0f} msgs/s "
        f"(target >= 300,000); actor / bare cost per message {ratio:.2f}x (target <= 2x)"
    )
    if results:
        print("benchmark-fixture medians: " + ", ".join(f"{p} {MESSAGES / t:,.0f} msgs/s" for p, t in results.items()))
    assert ratio <= 2.0


class Echo(Actor):
    async def on_receive(self, message: int) -> int:
        return message


def test_ask_round_trip_latency(benchmark) -> None:
    samples: list[float] = []

    async def asks() -> None:
        async with Supervisor() as root:
            ref = root.spawn(Echo, name="echo", kind="bench")
            for i in range(5000):
                started = time.perf_counter()
                await ref.ask(i)
                samples.append(time.perf_counter() - started)

    benchmark.pedantic(run, args=(asks,), rounds=3, iterations=1)
    samples.sort()
    median = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99)]
    benchmark.extra_info.update(ask_median_us=round(median * 1e6, 1), ask_p99_us=round(p99 * 1e6, 1))
    print(f"\nask round trip: median {median * 1e6:.1f} µs, p99 {p99 * 1e6:.1f} µs ({len(samples)} asks)")
    assert median < 0.001


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sink(Actor):
    def __init__(self) -> None:
        self.seen = 0
        self.last: Any = None

    async def on_receive(self, message: tuple[int, str]) -> None:
        self.seen += 1
        self.last = message  # hold a reference, as a real handler would, until the next message


def test_rss_is_flat_after_warm_up_through_a_thousand_actors(benchmark) -> None:
    """1,000,000 messages round-robin over 1,000 actors: RSS after warm-up vs at the end."""
    measured: dict[str, int] = {}

    async def flow() -> None:
        async with Supervisor() as root:
            refs = [root.spawn(Sink, name=f"sink{i}", kind="bench_memory", capacity=64) for i in range(MEMORY_ACTORS)]
            warm_up = MEMORY_MESSAGES // 10
            for n in range(MEMORY_MESSAGES):
                if n == warm_up:
                    gc.collect()
                    measured["warm"] = rss_bytes()
                await refs[n % MEMORY_ACTORS].tell((n, f"wamid.{n}"))
            for ref in refs:  # let every mailbox drain before measuring
                while len(ref.mailbox):
                    await asyncio.sleep(0)
            gc.collect()
            measured["end"] = rss_bytes()

    started = time.perf_counter()
    benchmark.pedantic(run, args=(flow,), rounds=1, iterations=1)
    elapsed = time.perf_counter() - started
    growth = measured["end"] - measured["warm"]
    benchmark.extra_info.update(rss_warm_mb=measured["warm"] / 2**20, rss_growth_kb=growth / 1024)
    print(
        f"\nRSS after warm-up {measured['warm'] / 2**20:.1f} MB, at end {measured['end'] / 2**20:.1f} MB, "
        f"growth {growth / 1024:+.0f} KB over {MEMORY_MESSAGES:,} msgs through {MEMORY_ACTORS} actors "
        f"({MEMORY_MESSAGES / elapsed:,.0f} msgs/s)"
    )
    assert growth < RSS_GROWTH_LIMIT
