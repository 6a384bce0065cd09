"""`pipelines` (issue 18): the bridge end to end against the conventional pipeline, same run, same servers.

The conventional pipeline is what a competent team would write in Python, one process per role: the FastAPI +
pydantic + aio-pika ingress (`comparators/fastapi_ingress.py`) and a worker with an aio-pika consumer, pydantic,
redis-py with hiredis, asyncpg and a pooled keep-alive HTTP client (`comparators/conventional_worker.py`): aiohttp,
the faster of the two clients measured, and httpx beside it. It keeps no per-customer order, de-duplicates nothing,
archives nothing and handles no media: the load is text only, so both do the same work for the customer.

Each run gets fresh queues, a fresh database (tables) and a fresh Redis key prefix, then a warm-up in which every
customer writes once (tokens, connections and conversation mappings in place; reported apart), then the measured
step: the same offered load, above what either pipeline sustains, over 10 tenants and `CUSTOMERS` customers (and,
per round, over one tenant with its budget lifted). Delivered msgs/s at the Genesys simulator from the first due
time to the last arrival; lost / duplicated audited for both; CPU per delivered message by role, machine-wide.
The runs alternate within a round and the order is reversed every other round, so the machine's drift touches all.
Ratios bridge ÷ conventional are taken per round; the medians over rounds are reported with each round's value.
After the rounds, one more bridge run (not counted) is sampled with py-spy: the top functions of its worker and its
ingress.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from typing import Any

from bench.loadgen import TEXT_ONLY
from bench.scenarios import Bridge, _say
from bench.scenarios.audit import acknowledged, audit, sim_count, wait_delivered
from bench.scenarios.rig import CpuSplit, Rig, free_port, tree_usage
from wabridge.engine.secrets import Secret

CUSTOMERS = 200  # over the 10 tenants (20 each), or all of the one tenant's
TABLE = "conventional_tracking"
SERVERS = ("rabbitmq", "postgresql", "redis", "seaweedfs s3")
IDLE_SECONDS = 2.0  # the servers' background CPU is measured this long before each step
# The pipelines' own roles in the machine-wide split: replaced by the run's own processes, measured by pid.
PIPELINE_ROLES = ("bridge ingress", "bridge worker", "conventional ingress", "conventional worker")
# The runs that also get a paced step (latency at half the bridge's sustained rate, the same offered rate for both).
PACED = ("b", "c")
# run key → (pipeline, tenants): b/o the bridge, c/q the conventional pipeline with aiohttp, h with httpx.
RUNS = {"b": ("bridge", "ten"), "c": ("conventional", "ten"), "h": ("conventional_httpx", "ten"),
        "o": ("bridge", "one"), "q": ("conventional", "one")}  # fmt: skip


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"rounds": 2, "rate": 2500, "seconds": 4, "paced_seconds": 4, "profile_seconds": 4}
    return {"rounds": 3, "rate": 3000, "seconds": 8, "paced_seconds": 8, "profile_seconds": 8}


# --- fresh state per run ----------------------------------------------------------------------------------------


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(os.environ["WABRIDGE_DATABASE_URL"])
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class _Fresh:
    """A database of its own for one run, dropped afterwards."""

    def __init__(self, rig: Rig, label: str) -> None:
        self.rig, self.label = rig, label
        self.database = f"{rig.database}_{label}"
        self.url = f"{os.environ['WABRIDGE_DATABASE_URL'].rpartition('/')[0]}/{self.database}"

    async def create(self) -> None:
        await _admin(f'CREATE DATABASE "{self.database}" TEMPLATE template0')

    async def drop(self) -> None:
        await _admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


class BridgeRun:
    """The bridge (ingress + one worker) on a fresh database, queue topology and Redis key prefix."""

    table = "message_tracking"

    def __init__(self, rig: Rig, label: str) -> None:
        self.rig, self.fresh = rig, _Fresh(rig, label)
        self.settings = rig.settings.replace(database_url=Secret(self.fresh.url), key_prefix=f"{rig.tag}{label}:",
                                             queue_name=f"{rig.tag}_{label}_INBOUND")  # fmt: skip

    async def __aenter__(self) -> BridgeRun:
        await self.fresh.create()
        self.saved, self.rig.settings = self.rig.settings, self.settings
        try:
            await self.rig.put_tenants(rate_limit_per_minute=0)  # migrates the fresh database; budgets lifted
            self.bridge = Bridge(self.rig, [None])
            await self.bridge.__aenter__()
        finally:
            self.rig.settings = self.saved
        self.port = self.bridge.port
        self.own_pids = (self.bridge.ingress.pid, self.bridge.workers[0].pid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        from wabridge.adapters.queue.amqp import AmqpQueue

        await self.bridge.__aexit__()
        for name in (None, "outbound"):
            queue = AmqpQueue(self.settings, name=name)
            try:
                await queue.open()
                await queue.delete_topology()
            finally:
                await queue.close()
        await self.fresh.drop()


class ConventionalRun:
    """FastAPI ingress + the conventional worker (aiohttp or httpx) on a fresh queue, database and key prefix."""

    table = TABLE

    def __init__(self, rig: Rig, label: str, http: str) -> None:
        self.rig, self.fresh, self.http = rig, _Fresh(rig, label), http
        self.queue, self.port = f"{rig.tag}_{label}", free_port()
        rig.extra_queues.append(self.queue)

    async def __aenter__(self) -> ConventionalRun:
        rig = self.rig
        await self.fresh.create()
        url = f"http://127.0.0.1:{rig.genesys_port}"
        env = rig.env() | {
            "BENCH_AMQP_URL": rig.settings.amqp_url.reveal(), "BENCH_QUEUE": self.queue,
            "BENCH_TENANTS": json.dumps({t.phone_number_id: t.app_secret for t in rig.tenants}),
            "BENCH_REDIS_URL": rig.settings.redis_url, "BENCH_KEY_PREFIX": f"{rig.tag}{self.fresh.label}:",
            "BENCH_DATABASE_URL": self.fresh.url, "BENCH_TABLE": TABLE, "BENCH_HTTP": self.http,
            "BENCH_GENESYS_TENANTS": json.dumps({t.phone_number_id: {
                "tenant_id": t.tenant_id, "integration_id": f"integration-{n}", "client_id": f"client-{n}-{rig.tag}",
                "client_secret": "client-secret", "genesys_url": url} for n, t in enumerate(rig.tenants)}),
        }  # fmt: skip
        self.ingress = rig.start([sys.executable, "-m", "bench.comparators.fastapi_ingress", str(self.port)], env=env)
        await rig.wait_http(self.port, "/docs", self.ingress)  # the ingress declares the queue on start-up
        self.worker = rig.start([sys.executable, "-m", "bench.comparators.conventional_worker"], env=env)
        await _wait_consumer(rig, self.queue, self.worker)
        self.own_pids = (self.ingress.pid, self.worker.pid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.rig.stop(self.ingress)
        self.rig.stop(self.worker)
        await self.fresh.drop()


async def _wait_consumer(rig: Rig, queue: str, proc: subprocess.Popen) -> None:
    """Until the conventional worker consumes `queue` (30 s at most)."""
    import aiormq

    deadline = asyncio.get_running_loop().time() + 30.0
    connection = await aiormq.connect(rig.settings.amqp_url.reveal())
    try:
        while asyncio.get_running_loop().time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the conventional worker exited with {proc.returncode}; see {rig.data_dir}")
            channel = await connection.channel()
            if (await channel.queue_declare(queue, passive=True)).consumer_count >= 1:
                return
            await channel.close()
            await asyncio.sleep(0.3)
    finally:
        await connection.close()
    raise RuntimeError("the conventional worker did not start consuming")


# --- one step -----------------------------------------------------------------------------------------------------


async def _step(rig: Rig, run: BridgeRun | ConventionalRun, rate: float, seconds: float, label: str,
                only_tenant: str | None) -> dict[str, Any]:  # fmt: skip
    genesys = rig.genesys.url
    before = await sim_count(genesys)
    spec = rig.spec(run.port, rate, seconds, label=label, only_tenant=only_tenant)
    spec.customers, spec.mix = CUSTOMERS, dict(TEXT_ONLY)
    with CpuSplit() as idle:  # the servers' background (they are shared with whatever else runs on the machine)
        await asyncio.sleep(IDLE_SECONDS)
    own_before = [tree_usage([pid])[1] for pid in run.own_pids]
    with CpuSplit() as split:  # the whole machine, from the first request until the last message is delivered
        r = await rig.load(spec)
        acked = acknowledged(spec, r)
        drained = await wait_delivered(genesys, before + len(acked), 120)
    own_cpu = [tree_usage([pid])[1] - cpu for pid, cpu in zip(run.own_pids, own_before, strict=True)]
    split.add("load generator", r.get("generator_cpu_s", 0.0))
    a = await audit(acked, genesys, run.fresh.url, f"wamid.B{spec.run_tag}", run.table)
    times = a.pop("receive_times")
    delivered = len(times) / max(times[-1] - r["wall_start"], 1e-3) if times else 0.0
    per_message = split.per_message(a["at_simulator"])
    # The pipeline's own processes by pid (the machine is shared: other bridges may run beside it), the servers by
    # command line, machine-wide.
    count = max(a["at_simulator"], 1)
    own = {"ingress": round(own_cpu[0] / count * 1e6), "worker": round(own_cpu[1] / count * 1e6)}
    by_role = {k: v for k, v in per_message.items() if k not in PIPELINE_ROLES} | own
    by_role["other"] = round(by_role.get("other", 0) + sum(per_message.get(k, 0) for k in PIPELINE_ROLES)
                             - sum(own.values()))  # fmt: skip
    by_role["other"] = max(by_role["other"], 0)
    # The servers' CPU net of their rate while the pipeline stood idle just before, over the step's span.
    servers = sum(
        max(0.0, split.used.get(r, 0.0) - idle.used.get(r, 0.0) / idle.seconds * split.seconds) for r in SERVERS
    )
    return {"offered_rate": rate, "seconds": seconds, "ok": r["ok"], "ok_per_s": round(r["ok_per_s"], 1),
            "unsent": r["unsent"], "statuses": r["statuses"], "delivered_per_s": round(delivered, 1),
            "drain_s": round(drained, 1), "audit": a, "cpu_us_per_message_by_role": by_role,
            "cpu_cores_by_role": split.cores(), "own_cpu_us_per_message": own,
            "servers_cpu_us_per_message": round(servers / count * 1e6),
            "servers_cpu_us_per_message_gross": sum(per_message.get(s, 0) for s in SERVERS)}  # fmt: skip


async def _one_run(rig: Rig, key: str, label: str, plan: dict[str, Any]) -> dict[str, Any]:
    pipeline, tenants = RUNS[key]
    only = rig.tenants[0].tenant_id if tenants == "one" else None
    run: BridgeRun | ConventionalRun
    if pipeline == "bridge":
        run = BridgeRun(rig, label)
    else:
        run = ConventionalRun(rig, label, "httpx" if pipeline.endswith("httpx") else "aiohttp")
    async with run:
        # Every customer writes once: tokens, connections and conversation mappings in place before the clock.
        warmup = await _step(rig, run, CUSTOMERS, 1, f"{label}w", only)
        step = await _step(rig, run, plan["rate"], plan["seconds"], f"{label}m", only)
        if key == "b" and not plan.get("paced_rate"):  # half the bridge's first sustained rate, for every round
            plan["paced_rate"] = max(50, round(step["delivered_per_s"] / 2, -1))
        paced = None
        if key in PACED and plan.get("paced_rate"):
            paced = await _step(rig, run, plan["paced_rate"], plan["paced_seconds"], f"{label}p", only)
    a = step["audit"]
    _say(
        f"pipelines {pipeline} ({tenants} tenant{'s' if tenants == 'ten' else ''}) {label}: "
        f"{step['delivered_per_s']:.0f} delivered/s ({step['ok_per_s']:.0f} 200s/s, unsent {step['unsent']}), "
        f"lost {a['lost']}, duplicated {a['duplicated']}, reordered {a['reordered']}; CPU µs/msg: "
        + ", ".join(f"{k} {v:.0f}" for k, v in step["cpu_us_per_message_by_role"].items() if v >= 5)
    )
    if paced is not None:
        latency = paced["audit"]["e2e_latency_ms"]
        _say(f"    paced at {plan['paced_rate']}/s: webhook → Genesys p50/p99 {latency['p50']:.0f}/"
             f"{latency['p99']:.0f} ms, lost {paced['audit']['lost']}")  # fmt: skip
    return {"pipeline": pipeline, "tenants": tenants, "warmup": warmup, "step": step, "paced": paced}


# --- the profile ------------------------------------------------------------------------------------------------


def _py_spy() -> str | None:
    path = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return path if os.path.exists(path) else None


ROOT_SHARE = 0.8


def top_functions(raw: str, n: int = 15) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output: the functions most often on top of the stack (self) and anywhere on it
    (total, the entry frames under nearly every sample left out), as shares of the samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, k = stack.split(";"), int(count)
        samples += k
        own[frames[-1]] += k
        for frame in set(frames):
            total[frame] += k
    share = lambda c: [[f, round(v / max(samples, 1), 4)] for f, v in c.most_common(n)]  # noqa: E731
    # The frames under every sample (the module, main, the event loop's run) say nothing: left out of "total".
    below = Counter({f: v for f, v in total.items() if v < ROOT_SHARE * samples})
    return {"samples": samples, "self": share(own), "total": share(below)}


async def _profile(rig: Rig, plan: dict[str, Any]) -> dict[str, Any]:
    """One more bridge run at the same load, its worker and ingress sampled by py-spy (not counted in the ratios)."""
    spy = _py_spy()
    if spy is None:
        return {"skipped": "py-spy is not installed"}
    out: dict[str, Any] = {}
    async with BridgeRun(rig, "pf") as run:
        await _step(rig, run, CUSTOMERS, 1, "pfw", None)
        seconds = plan["profile_seconds"]
        procs = {}
        for role, pid in (("ingress", run.bridge.ingress.pid), ("worker", run.bridge.workers[0].pid)):
            path = rig.data_dir / f"profile-{role}.txt"
            procs[role] = (path, await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--duration", str(seconds + 2), "--rate", "200", "--format", "raw",
                "--nonblocking", "--function", "--output", str(path), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE))  # fmt: skip
        await asyncio.sleep(0.5)  # attached before the load starts
        step = await _step(rig, run, plan["rate"], seconds, "pfm", None)
        for role, (path, proc) in procs.items():
            _, err = await proc.communicate()
            if path.exists():
                out[role] = top_functions(path.read_text())
            else:
                out[role] = {"error": err.decode(errors="replace")[-500:]}
    out["delivered_per_s"] = step["delivered_per_s"]
    out["audit"] = step["audit"]
    for role in ("worker", "ingress"):
        if "self" in out[role]:
            _say(
                f"    profile of the bridge's {role} ({out[role]['samples']} samples), self: "
                + ", ".join(f"{f} {s:.0%}" for f, s in out[role]["self"][:6])
            )
    return out


# --- the scenario -------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run key: delivered/s and CPU µs per delivered message by role, medians over the rounds."""
    out: dict[str, Any] = {}
    for key in RUNS:
        steps = [r[key]["step"] for r in rounds if key in r]
        if not steps:
            continue
        roles = {role for s in steps for role in s["cpu_us_per_message_by_role"]}
        out[key] = {
            "pipeline": RUNS[key][0], "tenants": RUNS[key][1],
            "delivered_per_s": _median([s["delivered_per_s"] for s in steps]),
            "cpu_us_per_message_by_role": {role: _median([s["cpu_us_per_message_by_role"].get(role, 0) for s in steps])
                                           for role in sorted(roles)},
            "own_cpu_us_per_message": {k: _median([s["own_cpu_us_per_message"][k] for s in steps])
                                       for k in ("ingress", "worker")},
            "servers_cpu_us_per_message": _median([s["servers_cpu_us_per_message"] for s in steps]),
        }  # fmt: skip
        paced = [r[key]["paced"] for r in rounds if key in r and r[key].get("paced")]
        if paced:
            latency = {q: _median([p["audit"]["e2e_latency_ms"][q] for p in paced]) for q in ("p50", "p99")}
            out[key]["paced"] = {"offered_per_s": paced[0]["offered_rate"], **latency}
    return out


def _ratios(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def ratio(fn: Any) -> dict[str, Any]:
        each = []
        for r in rounds:
            try:
                each.append(round(fn(r), 3))
            except (KeyError, TypeError, ZeroDivisionError):  # a run or its paced step missing
                pass
        return {"median": _median(each), "rounds": each}

    def p99(r: dict[str, Any], key: str) -> float:
        return r[key]["paced"]["audit"]["e2e_latency_ms"]["p99"]

    def own(r: dict[str, Any], key: str) -> float:
        o = r[key]["step"]["own_cpu_us_per_message"]
        return o["ingress"] + o["worker"]

    return {
        "delivered_ten": ratio(lambda r: r["b"]["step"]["delivered_per_s"] / r["c"]["step"]["delivered_per_s"]),
        "delivered_ten_vs_httpx": ratio(
            lambda r: r["b"]["step"]["delivered_per_s"] / r["h"]["step"]["delivered_per_s"]
        ),
        "delivered_one": ratio(lambda r: r["o"]["step"]["delivered_per_s"] / r["q"]["step"]["delivered_per_s"]),
        "own_cpu_ten": ratio(lambda r: own(r, "b") / own(r, "c")),
        "bridge_vs_servers_cpu": ratio(lambda r: own(r, "b") / r["b"]["step"]["servers_cpu_us_per_message"]),
        "paced_p99": ratio(lambda r: p99(r, "b") / p99(r, "c")),
        "aiohttp_vs_httpx": ratio(lambda r: r["c"]["step"]["delivered_per_s"] / r["h"]["step"]["delivered_per_s"]),
    }  # fmt: skip


async def pipelines(rig: Rig, figures: dict[str, Any]) -> dict[str, Any]:
    plan = _plan(rig.quick)
    rounds: list[dict[str, Any]] = []
    order = list(RUNS)
    for n in range(plan["rounds"]):
        one: dict[str, Any] = {}
        for key in order if n % 2 == 0 else order[::-1]:
            one[key] = await _one_run(rig, key, f"p{n}{key}", plan)
        rounds.append(one)
    out: dict[str, Any] = {
        "plan": plan, "customers": CUSTOMERS, "mix": "text only", "simulator_rate_limit": "off",
        "conventional": "FastAPI + pydantic + aio-pika ingress; aio-pika consumer (prefetch 256, manual ack), "
                        "pydantic, "
                        "redis-py + hiredis, asyncpg INSERT per message, aiohttp (or httpx) keep-alive pool; "
                        "no per-customer ordering, no de-duplication, no archive, no media",
        "rounds": rounds, "medians": _medians(rounds), "ratios": _ratios(rounds),
    }  # fmt: skip
    r, m = out["ratios"], out["medians"]
    _say(
        f"pipelines: bridge ÷ conventional delivered/s, 10 tenants {r['delivered_ten']['median']}× "
        f"({m['b']['delivered_per_s']:.0f} vs {m['c']['delivered_per_s']:.0f}/s) {r['delivered_ten']['rounds']}; "
        f"one tenant {r['delivered_one']['median']}× {r['delivered_one']['rounds']}; own CPU per message "
        f"{r['own_cpu_ten']['median']} {r['own_cpu_ten']['rounds']}; bridge ÷ servers CPU "
        f"{r['bridge_vs_servers_cpu']['median']}"
    )
    try:
        out["profile"] = await _profile(rig, plan)
    except Exception as exc:  # the profile is extra: its failure must not lose the rounds' figures
        out["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
