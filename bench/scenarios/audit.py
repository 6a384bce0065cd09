"""The audit every end-to-end scenario ends with: each 200-acknowledged customer message is in message_tracking and
at the Genesys simulator, exactly once, and in order per customer.

Order is judged only where it is defined: if message A of a customer was acknowledged (200) before message B of the
same customer was sent, A must reach Genesys before B. Messages in flight at the same time have no order to keep
(Meta gives none either). Receipts (`statuses`) are not customer messages: they are tracked by count, not audited.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.loadgen import Spec, plan


@dataclass
class Acked:
    wamid: str
    customer: int
    tenant: int
    sent_at: float  # Unix s: the due time
    acked_at: float  # Unix s


def acknowledged(spec: Spec, result: dict[str, Any]) -> list[Acked]:
    wamids, tenant_of, customer_of, kinds = plan(spec)
    start = result["wall_start"]
    out = []
    for i, status in enumerate(result["status_by_request"]):
        if status == 200 and kinds[i] != "status":
            out.append(Acked(wamids[i], customer_of[i], tenant_of[i], start + i / spec.rate,
                             start + result["answered_at"][i]))  # fmt: skip
    return out


async def sim_messages(genesys_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.get(genesys_url + "/sim/messages")
        response.raise_for_status()
        return [{"messageId": m["messageId"], "receivedAt": m["receivedAt"]} for m in response.json()]


async def sim_count(genesys_url: str) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        return int((await client.get(genesys_url + "/sim/stats")).json()["accepted"])


async def wait_delivered(genesys_url: str, expected: int, timeout: float) -> float:
    """Until the simulator accepted `expected` messages (or stops progressing for 10 s); the seconds it took."""
    start = time.monotonic()
    last, last_change = -1, start
    while time.monotonic() - start < timeout:
        count = await sim_count(genesys_url)
        if count >= expected:
            break
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 10.0:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - start


async def tracking(database_url: str, prefix: str, table: str = "message_tracking") -> dict[str, str]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(f"SELECT wamid, status, error FROM {table} WHERE wamid LIKE $1", prefix + "%")
    finally:
        await conn.close()
    return {r["wamid"]: r["status"] if r["status"] == "delivered" else f"{r['status']}: {r['error']}" for r in rows}


async def audit(acked: list[Acked], genesys_url: str, database_url: str, wamid_prefix: str,
                table: str = "message_tracking") -> dict[str, Any]:  # fmt: skip
    """`table`: the bridge's tracking table, or the conventional worker's (bench/comparators/conventional_worker.py)."""
    received = await sim_messages(genesys_url)
    tracked = await tracking(database_url, wamid_prefix, table)
    at_sim: dict[str, list[float]] = {}
    for m in received:
        if m["messageId"].startswith(wamid_prefix):
            at_sim.setdefault(m["messageId"], []).append(m["receivedAt"])
    missing_at_sim = [a.wamid for a in acked if a.wamid not in at_sim]
    missing_tracking = [a.wamid for a in acked if a.wamid not in tracked]
    not_delivered = [a.wamid for a in acked if tracked.get(a.wamid, "delivered") != "delivered"]
    lost = set(missing_at_sim) | set(missing_tracking)
    duplicated = sum(len(v) - 1 for v in at_sim.values())
    # e2e latency: due time at the generator → receive time at the simulator (first copy)
    e2e = sorted(at_sim[a.wamid][0] - a.sent_at for a in acked if a.wamid in at_sim)
    reordered = _reordered(acked, at_sim)
    return {
        "acked": len(acked),
        "at_simulator": len(at_sim),
        "lost": len(lost),
        "missing_at_simulator": len(missing_at_sim),
        "missing_in_tracking": len(missing_tracking),
        "tracked_not_delivered": len(not_delivered),
        "duplicated": duplicated,
        "reordered": reordered,
        "lost_examples": sorted(lost)[:5],
        "not_delivered_examples": {w: tracked[w] for w in sorted(not_delivered)[:5]},
        "e2e_latency_ms": {k: _pct(e2e, q) * 1000 for k, q in
                           (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))},
        "receive_times": sorted(t[0] for t in at_sim.values()),
    }  # fmt: skip


def _reordered(acked: list[Acked], at_sim: dict[str, list[float]]) -> int:
    by_customer: dict[tuple[int, int], list[Acked]] = {}
    for a in acked:
        by_customer.setdefault((a.tenant, a.customer), []).append(a)
    bad = 0
    for items in by_customer.values():
        items.sort(key=lambda a: a.sent_at)
        for prev, cur in zip(items, items[1:]):
            if prev.wamid in at_sim and cur.wamid in at_sim and prev.acked_at < cur.sent_at:
                if at_sim[cur.wamid][0] < at_sim[prev.wamid][0]:
                    bad += 1
    return bad


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def per_second(times: list[float], origin: float) -> list[int]:
    """Counts per whole second since `origin` (bounded to one hour)."""
    out: list[int] = []
    for t in times:
        k = int(t - origin)
        if 0 <= k < 3600:
            while len(out) <= k:
                out.append(0)
            out[k] += 1
    return out
