"""7. `outbound` (issue 17): agents answer. Genesys webhooks → the bridge → the Meta simulator → status webhooks →
receipts to the Genesys simulator, measured beside the inbound direction in the same run, on the same bridge.

Per backend (the servers, then the embedded SQLite / in-process cache / directory): one bridge (ingress + worker), its
own Meta simulator posting statuses back to it (windows open, no send limit, `STATUS_DELAY` between a send's
statuses), the rig's Genesys simulator. A warm-up makes every customer write once (the bridge answers only customers
it knows). Then rounds of pairs, inbound first, each pair the same rate, length and customers, text only:

  paced       a rate both directions sustain: latency. Inbound: webhook due time → the message at Genesys.
              Outbound: webhook due time → Meta accepted the send, and → the Delivered receipt at Genesys.
  saturation  offered above what either sustains: messages/s at the far end, from the first due time to the last
              arrival (the drain included), and 200s/s at the ingress.

Outbound audit: every 200-acknowledged agent message sent to Meta exactly once, in order per customer where order is
defined (A acknowledged before B was due ⇒ A sent first), tracked `delivered`, and answered by exactly one receipt,
`Delivered`. Ratios outbound ÷ inbound are taken per pair and reported as medians over the rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import sys
import time
from typing import Any

import httpx

from bench import outbound_gen
from bench.loadgen import TEXT_ONLY, Spec
from bench.scenarios import Bridge, _say
from bench.scenarios.audit import Acked, _pct, _reordered, acknowledged, per_second, sim_count, sim_messages, \
    wait_delivered
from bench.scenarios.rig import CpuSplit, Rig, Sampler, free_port
from wabridge.ports import GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings

# Meta's statuses for one send come this far apart (sent, delivered, read). The receipt follows `delivered`, so the
# receipt latency includes about 2 × this: small, so the figure is the bridge's, not the simulator's pause.
STATUS_DELAY = 0.01
PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"rounds": 2, "paced": (200, 4), "saturation": (1500, 3)}
    return {"rounds": 3, "paced": (200, 6), "saturation": (2000, 4)}


# --- the two backends ---------------------------------------------------------------------------------------------


class Backend:
    """Where the bridge keeps its state for one half of the scenario: its settings, tenants, processes, tracking."""

    name = ""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def settings(self) -> Settings:
        raise NotImplementedError

    async def put_tenants(self) -> None:
        """The rig's tenants, with what the outbound direction needs: the integration's outbound secret, and no send
        budget (the bench measures the bridge, not Meta's 80/s per number)."""
        from wabridge.adapters.backends import open_backends

        url = f"http://127.0.0.1:{self.rig.genesys_port}"
        async with open_backends(self.settings(), ports=("store",)) as backends:
            for n, t in enumerate(self.rig.tenants):
                await backends.store.put_tenant(TenantConfig(
                    tenant_id=t.tenant_id, phone_number_ids=(t.phone_number_id,), app_secret=Secret(t.app_secret),
                    verify_token=Secret("verify"), whatsapp_token=Secret("whatsapp-token"), genesys_api_url=url,
                    genesys_login_url=url, genesys_integration_id=outbound_gen.integration_id(n),
                    credentials=(GenesysCredential(f"client-{n}-{self.rig.tag}", Secret("client-secret")),),
                    rate_limit_per_minute=0, genesys_webhook_secret=Secret(outbound_gen.outbound_secret(t)),
                    send_rate_per_second=0,
                ))  # fmt: skip

    async def tracked(self, prefix: str) -> dict[str, str]:
        """wamid (inbound) or Genesys id (outbound) → "delivered" or "status: error", for rows under `prefix`."""
        raise NotImplementedError


class Servers(Backend):
    name = "servers"

    def settings(self) -> Settings:
        return self.rig.settings

    async def tracked(self, prefix: str) -> dict[str, str]:
        from bench.scenarios.audit import tracking

        return await tracking(self.rig.settings.database_url.reveal(), prefix)

    def bridge(self) -> _ServersBridge:
        return _ServersBridge(self.rig)


class Embedded(Backend):
    """No server URLs: SQLite store and queues, in-process cache, a directory for objects, under a data dir of its
    own. The ingress and the worker are two processes on the same files, as `serve --role all` runs them."""

    name = "embedded"

    def __init__(self, rig: Rig) -> None:
        super().__init__(rig)
        self.data_dir = rig.data_dir / "embedded"
        self._settings = Settings(data_dir=self.data_dir, secret_key=Secret(generate_key()), log_level="WARNING")

    def settings(self) -> Settings:
        return self._settings

    async def tracked(self, prefix: str) -> dict[str, str]:
        from wabridge.adapters.store.sqlite import FILENAME

        def read() -> dict[str, str]:
            db = sqlite3.connect(f"file:{self.data_dir / FILENAME}?mode=ro", uri=True, timeout=30)
            try:
                rows = db.execute("SELECT wamid, status, error FROM message_tracking WHERE wamid LIKE ?",
                                  (prefix + "%",)).fetchall()  # fmt: skip
            finally:
                db.close()
            return {w: s if s == "delivered" else f"{s}: {e}" for w, s, e in rows}

        return await asyncio.to_thread(read)

    def bridge(self) -> _EmbeddedBridge:
        return _EmbeddedBridge(self.rig, self._settings)


class _ServersBridge(Bridge):
    """The scenarios' Bridge (ingress + one worker on the servers), its Meta Graph calls to this scenario's sim."""

    def __init__(self, rig: Rig) -> None:
        super().__init__(rig, [None])
        self.graph_url = ""

    async def __aenter__(self) -> _ServersBridge:
        saved, self.rig.graph_url = self.rig.graph_url, self.graph_url
        try:
            await super().__aenter__()
        finally:
            self.rig.graph_url = saved
        return self


class _EmbeddedBridge:
    def __init__(self, rig: Rig, settings: Settings) -> None:
        self.rig, self.port = rig, free_port()
        self.settings = settings.replace(port=self.port, metrics_port=0)
        self.graph_url = ""
        self.processes: list[Any] = []

    async def __aenter__(self) -> _EmbeddedBridge:
        from wabridge.engine.settings import settings_environment

        env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")}
        env.update(settings_environment(self.settings.replace(graph_api_url=self.graph_url,
                                                              allow_private_media_urls=True)))  # simulators' urls
        base = [sys.executable, "-m", "wabridge", "serve"]
        ingress = self.rig.start([*base, "--role", "ingress", "--port", str(self.port), "--workers", "1"], env=env)
        self.processes = [ingress, self.rig.start([*base, "--role", "worker"], env=env)]
        await self.rig.wait_http(self.port, proc=ingress)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.processes:
            self.rig.stop(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


class MetaSimProcess:
    """`wabridge sim meta serve` posting its status webhooks to the bridge on `port`: every tenant's number with its
    app secret, no per-number send limit, every customer inside the 24-hour window."""

    def __init__(self, rig: Rig, port: int) -> None:
        argv = [sys.executable, "-m", "wabridge", "sim", "meta", "serve", "--port", str(free_port()),
                "--bridge-url", f"http://127.0.0.1:{port}/webhook/meta", "--rate", "0", "--open-windows",
                "--status-delay", str(STATUS_DELAY)]  # fmt: skip
        for t in rig.tenants:
            argv += ["--phone-number", f"{t.phone_number_id}={t.app_secret}"]
        self.argv = argv
        self.graph_url = self.base_url = ""

    async def __aenter__(self) -> MetaSimProcess:
        self.proc = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE)
        line = (await self.proc.stdout.readline()).decode()
        if "graph_api_url=" not in line:
            raise RuntimeError(f"the Meta simulator did not start: {line!r}")
        self.graph_url = line.split("graph_api_url=", 1)[1].split()[0]
        self.base_url = self.graph_url.rsplit("/", 1)[0]
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=120)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        self.proc.terminate()
        await self.proc.wait()

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()


# --- steps --------------------------------------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {k: round(_pct(ordered, q) * 1000, 1) for k, q in PERCENTILES}


def _rate(times: list[float], start: float) -> float:
    """Arrivals per second from the first due time to the last arrival (a drain included)."""
    return len(times) / max(max(times) - start, 1e-3) if times else 0.0


async def _load(rig: Rig, spec: Spec, module: str) -> dict[str, Any]:
    """A generator in its own process (bench.loadgen or bench.outbound_gen), as Rig.load."""
    spec_path, out_path = rig.data_dir / f"spec-{spec.run_tag}.json", rig.data_dir / f"out-{spec.run_tag}.json"
    spec_path.write_text(json.dumps(spec.to_json()))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, str(spec_path), str(out_path))
    if await proc.wait() != 0:
        raise RuntimeError(f"{module} failed ({proc.returncode})")
    return json.loads(out_path.read_text())


def _spec(rig: Rig, port: int, rate: float, seconds: float, label: str) -> Spec:
    spec = rig.spec(port, rate, seconds, label=label)
    spec.mix = dict(TEXT_ONLY)  # both directions carry text: the same shape, no media path on either side
    return spec


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("offered_rate", "sent", "statuses", "ok", "ok_per_s", "unsent", "latency_ms", "wall_start")
    return {k: r[k] for k in keep if k in r}


async def inbound_step(rig: Rig, backend: Backend, port: int, rate: float, seconds: float, label: str,
                       ) -> dict[str, Any]:  # fmt: skip
    """Customers write: webhook → Genesys, audited as the e2e scenario's, text only."""
    genesys = rig.genesys.url
    before = await sim_count(genesys)
    spec = _spec(rig, port, rate, seconds, label)
    with CpuSplit() as split:
        r = await rig.load(spec)
        acked = acknowledged(spec, r)
        await wait_delivered(genesys, before + len(acked), 90)
    prefix = f"wamid.B{spec.run_tag}"
    at_sim: dict[str, list[float]] = {}
    for m in await sim_messages(genesys):
        if m["messageId"].startswith(prefix):
            at_sim.setdefault(m["messageId"], []).append(m["receivedAt"])
    tracked = await backend.tracked(prefix)
    lost = {a.wamid for a in acked if a.wamid not in at_sim or tracked.get(a.wamid) != "delivered"}
    times = sorted(v[0] for v in at_sim.values())
    out = _summary(r) | {
        "delivered_per_s": round(_rate(times, r["wall_start"]), 1),
        "latency_ms": _percentiles([at_sim[a.wamid][0] - a.sent_at for a in acked if a.wamid in at_sim]),
        "ingress_latency_ms": r["latency_ms"],
        "audit": {"acked": len(acked), "lost": len(lost), "duplicated": sum(len(v) - 1 for v in at_sim.values()),
                  "reordered": _reordered(acked, at_sim), "lost_examples": sorted(lost)[:5]},
        "cpu_us_per_message_by_role": split.per_message(len(acked)),
    }  # fmt: skip
    a = out["audit"]
    _say(f"outbound/{backend.name} inbound {label} at {rate}/s: {out['delivered_per_s']:.0f} delivered/s, "
         f"p50/p99 {out['latency_ms']['p50']}/{out['latency_ms']['p99']} ms, lost {a['lost']}, "
         f"duplicated {a['duplicated']}, reordered {a['reordered']}")
    return out


async def outbound_step(rig: Rig, backend: Backend, meta: MetaSimProcess, port: int, rate: float, seconds: float,
                        label: str) -> dict[str, Any]:  # fmt: skip
    """Agents answer: Genesys webhook → Meta send → statuses → one receipt each."""
    genesys = rig.genesys.url
    spec = _spec(rig, port, rate, seconds, label)
    ids, tenant_of, customer_of = outbound_gen.plan(spec)
    receipts_before = await _receipts_count(genesys)
    reads_before = len(await meta.get("/sim/reads"))
    with CpuSplit() as split:
        r = await _load(rig, spec, "bench.outbound_gen")
        start = r["wall_start"]
        acked = [Acked(ids[i], customer_of[i], tenant_of[i], start + i / spec.rate, start + r["answered_at"][i])
                 for i, status in enumerate(r["status_by_request"]) if status == 200]  # fmt: skip
        drained = await _wait_receipts(genesys, receipts_before + len(acked), 120)
    prefix = f"{spec.run_tag}-"
    at_meta: dict[str, list[float]] = {}
    for sent in await meta.get("/sim/sent"):
        if sent["type"] == "text" and sent["body"]["text"]["body"].startswith(prefix):
            at_meta.setdefault(outbound_gen.text_id(sent["body"]["text"]["body"]), []).append(sent["at"])
    receipts: dict[str, list[tuple[str, float]]] = {}
    async with httpx.AsyncClient(timeout=120) as http:
        for entry in (await http.get(genesys + "/sim/agent/unmatched-receipts")).json():
            if entry["body"]["id"].startswith(prefix):
                receipts.setdefault(entry["body"]["id"], []).append((entry["status"], entry["at"]))
    tracked = await backend.tracked(prefix)
    reads = len(await meta.get("/sim/reads")) - reads_before
    out = _summary(r) | _outbound_audit(acked, at_meta, receipts, tracked, start) | {
        "ingress_latency_ms": r["latency_ms"], "drain_s": round(drained, 1), "read_marks": reads,
        "cpu_us_per_message_by_role": split.per_message(len(acked)),
        "sent_per_second": per_second(sorted(v[0] for v in at_meta.values()), start),
    }  # fmt: skip
    a = out["audit"]
    _say(f"outbound/{backend.name} outbound {label} at {rate}/s: accepted {r['ok']} ({r['ok_per_s']:.0f}/s), "
         f"{out['sent_per_s']:.0f} sent/s at Meta, {out['receipts_per_s']:.0f} receipts/s; webhook → Meta p50/p99 "
         f"{out['send_latency_ms']['p50']}/{out['send_latency_ms']['p99']} ms, → receipt "
         f"{out['receipt_latency_ms']['p50']}/{out['receipt_latency_ms']['p99']} ms; lost {a['lost']}, duplicated "
         f"{a['duplicated']}, reordered {a['reordered']}, receipts missing {a['receipt_missing']}, extra "
         f"{a['receipt_extra']}, not Delivered {a['receipt_not_delivered']}; read marks {reads}")
    _say("    CPU µs per accepted message, machine-wide: "
         + ", ".join(f"{k} {v:.0f}" for k, v in out["cpu_us_per_message_by_role"].items() if v >= 5))
    return out


def _outbound_audit(acked: list[Acked], at_meta: dict[str, list[float]], receipts: dict[str, list[tuple[str, float]]],
                    tracked: dict[str, str], start: float) -> dict[str, Any]:  # fmt: skip
    ids = {a.wamid for a in acked}
    lost = {i for i in ids if i not in at_meta or tracked.get(i) != "delivered"}
    missing = [i for i in ids if i not in receipts]
    not_delivered = [i for i in ids if i in receipts and receipts[i][0][0] != "Delivered"]
    send_times = sorted(v[0] for v in at_meta.values())
    receipt_times = sorted(v[0][1] for i, v in receipts.items() if i in ids)
    return {
        "sent_per_s": round(_rate(send_times, start), 1),
        "receipts_per_s": round(_rate(receipt_times, start), 1),
        "send_latency_ms": _percentiles([at_meta[a.wamid][0] - a.sent_at for a in acked if a.wamid in at_meta]),
        "receipt_latency_ms": _percentiles([receipts[a.wamid][0][1] - a.sent_at for a in acked
                                            if a.wamid in receipts]),
        "audit": {
            "acked": len(acked), "at_meta": len(at_meta), "lost": len(lost),
            "missing_at_meta": sum(1 for i in ids if i not in at_meta),
            "tracked_not_delivered": sum(1 for i in ids if tracked.get(i) != "delivered"),
            "duplicated": sum(len(v) - 1 for v in at_meta.values()),
            "reordered": _reordered(acked, at_meta),
            "receipt_missing": len(missing),
            "receipt_extra": sum(len(v) - 1 for i, v in receipts.items() if i in ids),
            "receipt_not_delivered": len(not_delivered),
            "lost_examples": {i: tracked.get(i, "untracked") for i in sorted(lost)[:5]},
            "receipt_examples": {i: receipts[i] for i in sorted(not_delivered)[:5]},
        },
    }  # fmt: skip


async def _receipts_count(genesys_url: str) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        return int((await client.get(genesys_url + "/sim/stats")).json()["receipts"])


async def _wait_receipts(genesys_url: str, expected: int, timeout: float) -> float:
    """Until the Genesys simulator took `expected` receipts (or none came for 10 s); the seconds it took. Its
    counter, not its list: the list grows with the run and would cost the simulator CPU at every poll."""
    start = time.monotonic()
    last, last_change = -1, start
    while time.monotonic() - start < timeout:
        count = await _receipts_count(genesys_url)
        if count >= expected:
            break
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 10.0:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - start


# --- the scenario -------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def _ratios(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Outbound ÷ inbound per pair, then the median over rounds (and each round's, to show the spread)."""
    def ratio(fn: Any) -> dict[str, Any]:
        each = [round(fn(r), 2) for r in rounds]
        return {"median": _median(each), "rounds": each}

    def div(a: float, b: float) -> float:
        return a / b if b else 0.0

    return {
        "saturation_far_end_per_s": ratio(lambda r: div(r["saturation"]["outbound"]["sent_per_s"],
                                                        r["saturation"]["inbound"]["delivered_per_s"])),
        "saturation_accepted_per_s": ratio(lambda r: div(r["saturation"]["outbound"]["ok_per_s"],
                                                         r["saturation"]["inbound"]["ok_per_s"])),
        "paced_p50": ratio(lambda r: div(r["paced"]["outbound"]["send_latency_ms"]["p50"],
                                         r["paced"]["inbound"]["latency_ms"]["p50"])),
        "paced_p99": ratio(lambda r: div(r["paced"]["outbound"]["send_latency_ms"]["p99"],
                                         r["paced"]["inbound"]["latency_ms"]["p99"])),
    }  # fmt: skip


async def _on(rig: Rig, backend: Backend, plan: dict[str, Any]) -> dict[str, Any]:
    await backend.put_tenants()
    bridge = backend.bridge()  # its port first: the Meta simulator posts its statuses there
    async with MetaSimProcess(rig, bridge.port) as meta:
        bridge.graph_url = meta.graph_url
        async with bridge:
            tag = f"o{backend.name[0]}"
            with Sampler(bridge.pids) as sampler:
                # Every customer writes once: the bridge answers only customers it knows (their contact: the number
                # they wrote to), and the first contacts' cost stays out of the measured steps.
                warmup = await inbound_step(rig, backend, bridge.port, 500, 2, f"{tag}w")
                rounds = []
                for n in range(plan["rounds"]):
                    one: dict[str, Any] = {}
                    for step in ("paced", "saturation"):
                        rate, seconds = plan[step]
                        label = f"{tag}{n}{step[0]}"
                        inbound = await inbound_step(rig, backend, bridge.port, rate, seconds, f"{label}i")
                        outbound = await outbound_step(rig, backend, meta, bridge.port, rate, seconds, f"{label}o")
                        one[step] = {"inbound": inbound, "outbound": outbound}
                    rounds.append(one)
        statuses = await meta.get("/sim/statuses")
    refused = sum(1 for s in statuses if not (isinstance(s["answer"], int) and 200 <= s["answer"] < 300))
    return {"warmup": warmup, "rounds": rounds, "ratios": _ratios(rounds), "medians": _medians(rounds),
            "usage": sampler.summary(), "status_webhooks": {"posted": len(statuses), "not_2xx": refused}}  # fmt: skip


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def m(step: str, side: str, *path: str) -> float:
        values = []
        for r in rounds:
            value: Any = r[step][side]
            for key in path:
                value = value[key]
            values.append(value)
        return _median(values)

    return {
        "paced": {
            "inbound_latency_ms": {k: m("paced", "inbound", "latency_ms", k) for k in ("p50", "p99")},
            "outbound_send_latency_ms": {k: m("paced", "outbound", "send_latency_ms", k) for k in ("p50", "p99")},
            "outbound_receipt_latency_ms": {k: m("paced", "outbound", "receipt_latency_ms", k) for k in ("p50", "p99")},
        },
        "saturation": {
            "inbound_accepted_per_s": m("saturation", "inbound", "ok_per_s"),
            "inbound_delivered_per_s": m("saturation", "inbound", "delivered_per_s"),
            "outbound_accepted_per_s": m("saturation", "outbound", "ok_per_s"),
            "outbound_sent_per_s": m("saturation", "outbound", "sent_per_s"),
            "outbound_receipts_per_s": m("saturation", "outbound", "receipts_per_s"),
        },
    }  # fmt: skip


def _audit_total(result: dict[str, Any]) -> dict[str, int]:
    keys = ("lost", "duplicated", "reordered", "receipt_missing", "receipt_extra", "receipt_not_delivered")
    total = dict.fromkeys(keys, 0)
    for r in result["rounds"]:
        for step in r.values():
            for side in step.values():
                for k in keys:
                    total[k] += side["audit"].get(k, 0)
    return total


async def outbound(rig: Rig, figures: dict[str, Any]) -> dict[str, Any]:
    plan = _plan(rig.quick)
    out: dict[str, Any] = {"plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()},
                           "status_delay_s": STATUS_DELAY, "simulator_rate_limit": "off", "meta_send_limit": "off"}  # fmt: skip
    for backend in (Servers(rig), Embedded(rig)):
        result = await _on(rig, backend, plan)
        # Not named "audit": run.py sums every "audit" it finds, and the steps' own are already there.
        result["audit_total"] = _audit_total(result)
        out[backend.name] = result
        med, ratios = result["medians"], result["ratios"]
        _say(f"outbound/{backend.name}: saturation {med['saturation']['outbound_sent_per_s']:.0f} sent/s at Meta "
             f"vs inbound {med['saturation']['inbound_delivered_per_s']:.0f} delivered/s "
             f"(× {ratios['saturation_far_end_per_s']['median']}); paced webhook → Meta p50/p99 "
             f"{med['paced']['outbound_send_latency_ms']['p50']}/{med['paced']['outbound_send_latency_ms']['p99']} ms "
             f"vs inbound {med['paced']['inbound_latency_ms']['p50']}/{med['paced']['inbound_latency_ms']['p99']} ms; "
             f"audit {result['audit_total']}")
    return out
