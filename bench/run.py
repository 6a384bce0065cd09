"""`python -m bench.run [--quick] [--only NAME,...]`: the bridge's bench suite on the real servers (`make bench`).

Needs the servers' WABRIDGE_* environment (the Makefile exports it). Writes bench/results/bench-<mode>-<time>.json
and a self-contained .html report next to it, and prints a summary with every target said met or missed.
Exit status: 0 when the suite ran (missed targets are reported, not failures), 1 if an audit found a lost message,
2 if the suite could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.scenarios.rig import Rig

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("ceilings", "ingress", "e2e", "pipelines", "overload", "soak", "rate_budget", "scale_out", "outbound")


def _machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()}: {os.cpu_count()} CPUs {model}, Python {platform.python_version()}, load {os.getloadavg()}"


def _public(value: Any) -> Any:
    """Drops the private `_…` keys (raw per-message times) before writing."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _audits(value: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(value, dict):
        if "audit" in value and isinstance(value["audit"], dict):
            found.append((path, value["audit"]))
        for k, v in value.items():
            if k != "audit":
                found += _audits(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for n, v in enumerate(value):
            found += _audits(v, f"{path}[{n}]")
    return found


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def add(name: str, value: Any, target: str, met: bool) -> None:
        out.append({"name": name, "value": value, "target": target, "met": bool(met)})

    ing, ceil, e2e = s.get("ingress", {}), s.get("ceilings", {}), s.get("e2e", {})
    rate = ing.get("sustained_per_s", 0.0)
    if ing:
        # Absolute figures are the machine's (issue 18): reported, judged only as ratios to the same run's comparators.
        add("ingress durable webhooks/s (this machine)", round(rate), "(info)", True)
        add("ingress p99 at 64 connections, at that sustained rate", f"{ing['p99_ms_at_best']:.1f} ms", "(info)",
            True)  # fmt: skip
        add("ingress: highest offered rate served with p99 ≤ 20 ms", f"{ing.get('highest_rate_p99_within_20ms', 0):,}/s",
            "(info)", True)  # fmt: skip
    if ing and ceil.get("fastapi"):
        ratio = rate / max(ceil["fastapi"]["ok_per_s"], 1)
        detail = f"{rate:.0f} vs {ceil['fastapi']['ok_per_s']:.0f}/s"
        add("ingress / conventional FastAPI ingress", f"{ratio:.2f}× ({detail})", "≥ 3.5×", ratio >= 3.5)
    if ing and ceil.get("broker"):
        ratio = rate / max(ceil["broker"]["aiormq_256_in_flight"], 1)
        add("ingress / broker confirmed-publish ceiling", f"{ratio:.0%}", "≥ 80 %", ratio >= 0.80)
        sharded = ceil["broker"].get("aiormq_256_in_flight_sharded")
        if sharded:
            add("ingress / the broker's ceiling through the bridge's own sharded topology",
                f"{rate / max(sharded, 1):.0%}", "(info)", True)  # fmt: skip
    if ing and ceil.get("granian_ok"):
        add("ingress / Granian 'ok' ceiling", f"{rate / max(ceil['granian_ok']['ok_per_s'], 1):.0%}", "(info)", True)
    if e2e:
        add("end-to-end msgs/s with 0 lost (this machine)", round(e2e["sustained_per_s"]), "(info)", True)
        add("end-to-end p99 at 1,000 msgs/s (after the warm-up)", f"{e2e['p99_ms_at_1000']:.1f} ms", "(info)",
            True)  # fmt: skip
        if "cold_p99_ms" in e2e:
            add("end-to-end p99 of the warm-up (1,000 first contacts at 500/s)", f"{e2e['cold_p99_ms']:.1f} ms",
                "(info)", True)  # fmt: skip
    if s.get("pipelines", {}).get("ratios"):
        out += pipeline_targets(s["pipelines"])
    usages = [v["usage"] for v in s.values() if isinstance(v, dict) and v.get("usage") and v is not ceil]
    if usages:
        rss = max(u["rss_mb_max"] for u in usages)
        add("bridge RSS, max over scenarios", f"{rss:.0f} MB", "≤ 200 MB", rss <= 200)
        pss = max(u.get("pss_mb_max", 0) for u in usages)
        add("bridge PSS (shared pages counted once), max over scenarios", f"{pss:.0f} MB", "(info)", True)
    if s.get("soak"):
        g = s["soak"]["rss_growth_pct"]
        add("soak RSS growth (2nd quarter → last quarter)", f"{g:+.1f} %", "flat (< 10 %)", abs(g) < 10)
    if s.get("rate_budget"):
        rb = s["rate_budget"]
        add("rate budget: 429s drawn by the bursting tenant", rb["rate_limited_429"], "≈ 0", rb["rate_limited_429"] <= 3)
        # Held back past what the worker holds for it, the tenant is parked within PARK_AFTER (1 s): the tenants that
        # share its shard wait at most that, not until its budget's next minute.
        others_p99 = rb["others"]["audit"]["e2e_latency_ms"]["p99"]
        add(f"rate budget: other tenants' e2e p99 (the burst parked, at most {rb.get('parked_max', 0)} at once)",
            f"{others_p99:.1f} ms", "not slowed (≤ 2 s)", others_p99 <= 2000)
    if s.get("scale_out"):
        so = s["scale_out"]
        add("failover takeover", f"{so['takeover_s']:.2f} s", "within seconds", so["takeover_s"] < 10)
        one, two = so["one_worker"]["delivered_per_s"], so["two_workers"]["delivered_per_s"]
        add("two workers / one worker", f"{two / max(one, 1):.2f}×", "(info: 2 cores shared)", True)
        if "busier_over_lighter" in so:
            ratio, per_worker = so["busier_over_lighter"], so["two_workers"]["messages_per_worker"]
            add("two workers, 10 placed tenants: busier ÷ lighter worker's messages",
                f"{ratio:.2f} ({per_worker[0]} / {per_worker[1]})", "≤ 1.3", ratio <= 1.3)  # fmt: skip
    for name, o in ((k, s.get("outbound", {}).get(k)) for k in ("servers", "embedded")):
        if o:  # 7. outbound: against the inbound direction of the same run, medians over rounds
            r, m = o["ratios"], o["medians"]
            add(f"outbound ({name}), saturation: sent/s at Meta ÷ inbound delivered/s at Genesys",
                f"{r['saturation_far_end_per_s']['median']:.2f}× ({m['saturation']['outbound_sent_per_s']:.0f} vs "
                f"{m['saturation']['inbound_delivered_per_s']:.0f}/s)", "(info)", True)  # fmt: skip
            p = m["paced"]
            add(f"outbound ({name}), paced: webhook → Meta p50/p99 (inbound webhook → Genesys)",
                f"{p['outbound_send_latency_ms']['p50']}/{p['outbound_send_latency_ms']['p99']} ms "
                f"({p['inbound_latency_ms']['p50']}/{p['inbound_latency_ms']['p99']}); → receipt "
                f"{p['outbound_receipt_latency_ms']['p50']}/{p['outbound_receipt_latency_ms']['p99']} ms", "(info)", True)  # fmt: skip
            t = o["audit_total"]
            bad = t["receipt_missing"] + t["receipt_extra"] + t["receipt_not_delivered"] + t["reordered"]
            add(f"outbound ({name}): receipts missing / extra / not Delivered, reordered", bad, "0", bad == 0)
    lost = sum(a.get("lost", 0) for _, a in _audits(s))
    # A worker SIGKILLed between Genesys's answer and its tracking write leaves messages that were sent but not
    # recorded; the survivor sends them again (at-least-once: Genesys does not de-duplicate). So failover's
    # duplicates are judged against that window, every other audit against 0.
    dup = sum(a.get("duplicated", 0) for path, a in _audits(s) if "failover" not in path)
    add("lost messages, all audits", lost, "0", lost == 0)
    add("duplicated messages, all audits but failover", dup, "0", dup == 0)
    if s.get("scale_out", {}).get("failover"):
        fo = s["scale_out"]["failover"]
        bound = s["scale_out"].get("in_flight_bound", 0)
        add("failover duplicates (SIGKILL's in-flight window)", fo["audit"]["duplicated"],
            f"≤ {bound} (tenant concurrency × tenants)", fo["audit"]["duplicated"] <= bound)  # fmt: skip
    return out


def pipeline_targets(p: dict[str, Any]) -> list[dict[str, Any]]:
    """The bridge against the conventional pipeline (scenario `pipelines`): medians over rounds, each round's ratio in
    brackets, the absolute figures beside them."""
    r, m = p["ratios"], p["medians"]
    out = []

    def add(name: str, ratio: dict[str, Any], detail: str, target: str, met: bool) -> None:
        value = f"{ratio['median']:.2f}× ({detail}) {ratio['rounds']}"
        out.append({"name": name, "value": value, "target": target, "met": bool(met)})

    def rate(key: str) -> str:
        return f"{m[key]['delivered_per_s']:.0f}" if key in m else "—"

    def own(key: str) -> float:
        return sum(m[key]["own_cpu_us_per_message"].values()) if key in m else 0.0

    if r["delivered_ten"]["rounds"]:
        add("end-to-end delivered msgs/s ÷ the conventional pipeline (aiohttp), 10 tenants", r["delivered_ten"],
            f"{rate('b')} vs {rate('c')}/s", "≥ 2×", r["delivered_ten"]["median"] >= 2)
    if r["delivered_ten_vs_httpx"]["rounds"]:
        add("the same against the conventional pipeline with httpx", r["delivered_ten_vs_httpx"],
            f"{rate('b')} vs {rate('h')}/s", "(info)", True)
    if r["delivered_one"]["rounds"]:
        add("end-to-end delivered msgs/s ÷ the conventional pipeline, one tenant, its budget lifted",
            r["delivered_one"], f"{rate('o')} vs {rate('q')}/s", "≥ 2×", r["delivered_one"]["median"] >= 2)
    if r["own_cpu_ten"]["rounds"]:
        add("bridge CPU per delivered message (ingress + worker) ÷ the conventional pipeline's", r["own_cpu_ten"],
            f"{own('b'):.0f} vs {own('c'):.0f} µs", "≤ 0.35", r["own_cpu_ten"]["median"] <= 0.35)
    if r["bridge_vs_servers_cpu"]["rounds"]:
        servers = m["b"]["servers_cpu_us_per_message"]
        add("bridge CPU per delivered text message ÷ the servers' (RabbitMQ + PostgreSQL + Redis + S3)",
            r["bridge_vs_servers_cpu"], f"{own('b'):.0f} vs {servers:.0f} µs", "≤ 1.0",
            r["bridge_vs_servers_cpu"]["median"] <= 1.0)  # fmt: skip
    if r.get("paced_p99", {}).get("rounds") and "paced" in m.get("b", {}) and "paced" in m.get("c", {}):
        pb, pc = m["b"]["paced"], m["c"]["paced"]
        add(f"p99 webhook → Genesys at half the bridge's sustained rate ({pb['offered_per_s']:.0f}/s), ÷ the "
            "conventional pipeline's at the same rate", r["paced_p99"], f"{pb['p99']:.0f} vs {pc['p99']:.0f} ms",
            "≤ 50 ms and ≤ 0.33", pb["p99"] <= 50 and r["paced_p99"]["median"] <= 1 / 3)  # fmt: skip
    for role in ("worker", "ingress"):
        prof = p.get("profile", {}).get(role, {})
        if prof.get("self"):
            top = "; ".join(f"{f} {share:.0%}" for f, share in prof["self"][:3])
            out.append({"name": f"bridge {role}: top functions by own samples (py-spy)", "value": top,
                        "target": "(info)", "met": True})  # fmt: skip
    return out


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    names = args.only.split(",") if args.only else list(ORDER)
    rig = Rig(quick=args.quick)
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "machine": _machine(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "scenarios": {}, "errors": {}}  # fmt: skip
    await rig.open()
    try:
        for name in names:
            scenarios._say(f"--- {name}")
            t0 = time.monotonic()
            try:
                results["scenarios"][name] = await getattr(scenarios, name)(rig, results["scenarios"])
            except Exception as exc:  # one scenario failing to run must not hide the others' figures
                traceback.print_exc()
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
            scenarios._say(f"    {name} took {time.monotonic() - t0:.0f} s")
    finally:
        await rig.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the short version CI runs (≤ 4 minutes)")
    parser.add_argument("--only", help=f"comma-separated scenarios among {','.join(ORDER)}")
    args = parser.parse_args(argv)
    if not os.environ.get("WABRIDGE_AMQP_URL"):
        print("bench: the servers' WABRIDGE_* environment is missing (use `make bench`)", file=sys.stderr)
        return 2
    import uvloop

    started = time.monotonic()
    results = _public(uvloop.run(_run(args)))
    results["duration_s"] = round(time.monotonic() - started)
    results["targets"] = targets(results["scenarios"])
    lines = [f"{t['name']}: {t['value']} (target {t['target']}) — {'met' if t['met'] else 'MISSED'}"
             for t in results["targets"]]  # fmt: skip
    lines += [f"scenario {k} did not run: {v}" for k, v in results["errors"].items()]
    results["summary"] = lines
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"bench-{results['mode']}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    stem.with_suffix(".html").write_text(report.render(results))
    print("\n".join(["", "bench summary", *lines, f"results: {stem}.json and .html ({results['duration_s']} s)"]))
    lost = sum(a.get("lost", 0) for _, a in _audits(results["scenarios"]))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
