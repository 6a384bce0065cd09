"""Run by test_drain.py in a subprocess: a queue consumer on the engine, drained by a signal.

argv[1] is the scenario:
  drain     messages flow through ordering lanes; a SIGTERM stops intake; what finishes by the deadline is acked,
            the rest is handed back (nacked). Prints one JSON line: accepted / acked / nacked / handled.
  stubborn  handlers never finish and the deadline is long: only a second signal ends it.
  crash     an actor that always crashes: its supervisor gives up and the process exits 1.
"""

from __future__ import annotations

import asyncio
import json
import sys

from wabridge.engine import drain, logs
from wabridge.engine.actor import Actor
from wabridge.engine.lanes import Lanes
from wabridge.engine.supervisor import Supervisor

accepted: list[int] = []
acked: list[int] = []
nacked: list[int] = []
handled: list[int] = []


def settle(n: int, future: asyncio.Future) -> None:
    """What the queue consumer does: ack what was handled, hand back (nack) everything else."""
    if not future.cancelled() and future.exception() is None:
        acked.append(n)
    else:
        nacked.append(n)


async def consume(shutdown: drain.Shutdown, slow_every: int, slow_seconds: float) -> None:
    async def deliver(customer: str, n: int) -> None:
        await asyncio.sleep(slow_seconds if n % slow_every == 0 else 0.002 + (n % 5) * 0.002)
        handled.append(n)

    pending: list[asyncio.Future] = []
    async with Lanes(deliver, concurrency=8, max_pending=64) as lanes:
        n = 0
        while not shutdown.is_stopping:
            future = await lanes.submit(f"wa{n % 10}", n)
            accepted.append(n)
            future.add_done_callback(lambda f, n=n: settle(n, f))
            pending.append(future)
            pending = [f for f in pending if not f.done()]
            n += 1
            if n == 50:
                print("ready", flush=True)
            await asyncio.sleep(0.001)
        # Intake stopped: let what is in flight finish (or be cancelled at the deadline and handed back).
        await asyncio.gather(*pending, return_exceptions=True)


async def crash(shutdown: drain.Shutdown) -> None:
    class Broken(Actor):
        async def on_receive(self, message: int) -> None:
            raise RuntimeError("database schema is missing")

    async with Supervisor("root", max_restarts=2, period=10.0) as root:
        ref = root.spawn(Broken, name="tracking", retries=0)
        for i in range(5):
            await ref.tell(i)
        await shutdown.wait()


def main() -> int:
    logs.configure("INFO", fmt="json")
    scenario = sys.argv[1]
    if scenario == "drain":
        status = drain.run(lambda s: consume(s, slow_every=13, slow_seconds=5.0), deadline=0.5)
    elif scenario == "stubborn":
        status = drain.run(lambda s: consume(s, slow_every=1, slow_seconds=60.0), deadline=60.0)
    else:
        status = drain.run(crash, deadline=1.0)
    print(json.dumps({"accepted": accepted, "acked": acked, "nacked": nacked, "handled": handled}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
