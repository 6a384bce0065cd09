"""The readable report: one self-contained HTML page with inline SVG charts (no matplotlib here, no network).

Charts: acknowledged and delivered messages per second, latency percentiles per step, RSS over time per scenario;
CPU per delivered message by role for the bridge and the conventional pipeline (stacked bars), with the bridge's
py-spy profile.
`python -m bench.report results/bench-….json` rebuilds the page from a saved JSON.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

W, H, PAD = 640, 200, 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], unit: str) -> str:
    points = [p for s in series.values() for p in s]
    if not points:
        return ""
    xmax = max(p[0] for p in points) or 1.0
    ymax = max(p[1] for p in points) or 1.0
    sx = lambda x: PAD + (W - 2 * PAD) * x / xmax  # noqa: E731
    sy = lambda y: H - PAD + 10 - (H - 2 * PAD) * y / ymax  # noqa: E731
    parts = [f'<svg width="{W}" height="{H + 20}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
             f'<text x="{PAD}" y="14" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{PAD}" y1="{sy(0)}" x2="{W - PAD}" y2="{sy(0)}" stroke="#888"/>',
             f'<line x1="{PAD}" y1="{sy(0)}" x2="{PAD}" y2="{sy(ymax)}" stroke="#888"/>',
             f'<text x="2" y="{sy(ymax) + 4}">{ymax:.0f}</text><text x="2" y="{sy(0)}">0 {html.escape(unit)}</text>',
             f'<text x="{W - PAD - 20}" y="{sy(0) + 14}">{xmax:.0f} s</text>']  # fmt: skip
    for n, (name, pts) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{W - PAD - 150}" y="{30 + 13 * n}" fill="{colour}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, bars: dict[str, dict[str, float]], unit: str) -> str:
    """Groups of bars: {group: {percentile: value}}, log-free linear scale."""
    values = [v for g in bars.values() for v in g.values()]
    if not values:
        return ""
    vmax = max(values) or 1.0
    keys = list(next(iter(bars.values())).keys())
    bw = max(4, (W - 2 * PAD) // max(1, len(bars) * (len(keys) + 1)))
    parts = [f'<svg width="{W}" height="{H + 40}" xmlns="http://www.w3.org/2000/svg" font-size="10">',
             f'<text x="{PAD}" y="14" font-weight="bold">{html.escape(title)} ({html.escape(unit)})</text>']
    x = PAD
    for group, vals in bars.items():
        for n, k in enumerate(keys):
            v = vals.get(k, 0.0)
            h = (H - 2 * PAD) * v / vmax
            parts.append(f'<rect x="{x}" y="{H - PAD + 10 - h:.1f}" width="{bw - 1}" height="{h:.1f}" '
                         f'fill="{COLOURS[n % len(COLOURS)]}"><title>{html.escape(group)} {k}: {v:.1f}</title></rect>')
            x += bw
        parts.append(f'<text x="{x - bw * len(keys)}" y="{H - PAD + 24}">{html.escape(group)}</text>')
        x += bw
    for n, k in enumerate(keys):
        parts.append(f'<text x="{W - PAD - 60}" y="{30 + 12 * n}" fill="{COLOURS[n % len(COLOURS)]}">{k}</text>')
    parts.append("</svg>")
    return "".join(parts)


# Stacked segments of the CPU chart: each role of the machine-wide split, its pipeline's prefix taken off.
SEGMENTS = ("ingress", "worker", "rabbitmq", "postgresql", "redis", "seaweedfs s3", "simulators", "load generator",
            "other")  # fmt: skip
SEGMENT_COLOURS = ("#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#bcbd22", "#7f7f7f", "#cccccc")


def stacked_bars(title: str, bars: dict[str, dict[str, float]], unit: str) -> str:
    """One bar per group, stacked by segment ({group: {segment: value}}), SEGMENTS order, linear scale."""
    totals = [sum(v.values()) for v in bars.values()]
    if not totals:
        return ""
    vmax = max(totals) or 1.0
    bw = min(90, (W - 2 * PAD - 130) // max(1, len(bars)) - 10)
    height = H + 60
    base = height - 50
    parts = [f'<svg width="{W}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="10">',
             f'<text x="{PAD}" y="14" font-weight="bold">{html.escape(title)} ({html.escape(unit)})</text>']
    for n, (group, vals) in enumerate(bars.items()):
        x, y = PAD + n * (bw + 10), float(base)
        for k, segment in enumerate(SEGMENTS):
            v = vals.get(segment, 0.0)
            h = (base - 30) * v / vmax
            y -= h
            parts.append(f'<rect x="{x}" y="{y:.1f}" width="{bw}" height="{h:.1f}" fill="{SEGMENT_COLOURS[k]}">'
                         f"<title>{html.escape(group)} {segment}: {v:.0f}</title></rect>")  # fmt: skip
        parts.append(f'<text x="{x}" y="{y - 3:.1f}">{sum(vals.values()):.0f}</text>')
        for line, word in enumerate(group.split(" / ")):
            parts.append(f'<text x="{x}" y="{base + 12 + 11 * line}">{html.escape(word)}</text>')
    for k, segment in enumerate(SEGMENTS):
        parts.append(f'<rect x="{W - 120}" y="{24 + 12 * k}" width="9" height="9" fill="{SEGMENT_COLOURS[k]}"/>'
                     f'<text x="{W - 107}" y="{32 + 12 * k}">{segment}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _segments(cpu: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, v in cpu.items():
        name = role.removeprefix("bridge ").removeprefix("conventional ")
        if name.endswith("simulator"):
            name = "simulators"
        out[name if name in SEGMENTS else "other"] = out.get(name if name in SEGMENTS else "other", 0.0) + v
    return out


GROUPS = {"b": "bridge / 10 tenants", "c": "conventional / aiohttp", "h": "conventional / httpx",
          "o": "bridge / 1 tenant", "q": "conventional / 1 tenant"}  # fmt: skip


def _paced(p: dict[str, Any] | None) -> str:
    return f"{p['p50']:.0f} / {p['p99']:.0f} ms at {p['offered_per_s']:.0f}/s" if p else ""


def pipelines_section(p: dict[str, Any]) -> str:
    """The bridge against the conventional pipeline: delivered/s per round, CPU per message by role, the profile."""
    m = p.get("medians", {})
    if not m:
        return ""
    bars = {GROUPS[k]: _segments(v["cpu_us_per_message_by_role"]) for k, v in m.items()}
    chart = stacked_bars("CPU per delivered message by role, machine-wide (medians over rounds)", bars, "µs")
    rows = "".join(
        f"<tr><td>{html.escape(GROUPS[k].replace(' / ', ', '))}</td><td>{v['delivered_per_s']:.0f}</td>"
        f"<td>{' / '.join(str(r[k]['step']['delivered_per_s']) for r in p['rounds'] if k in r)}</td>"
        f"<td>{v['own_cpu_us_per_message']['ingress']:.0f} + {v['own_cpu_us_per_message']['worker']:.0f}</td>"
        f"<td>{v['servers_cpu_us_per_message']:.0f}</td>"
        f"<td>{_paced(v.get('paced'))}</td></tr>"
        for k, v in m.items()
    )
    table = ("<table><tr><th>pipeline</th><th>delivered/s (median)</th><th>rounds</th><th>ingress + worker µs/msg</th>"
             f"<th>servers µs/msg</th><th>paced p50 / p99</th></tr>{rows}</table>")  # fmt: skip
    profile = ""
    for role in ("worker", "ingress"):
        prof = p.get("profile", {}).get(role, {})
        if prof.get("self"):
            cells = "".join(f"<tr><td>{html.escape(f)}</td><td>{share:.1%}</td></tr>" for f, share in prof["self"])
            total = "".join(f"<tr><td>{html.escape(f)}</td><td>{share:.1%}</td></tr>" for f, share in prof["total"])
            profile += (f"<h3>bridge {role}: py-spy, {prof['samples']} samples</h3><p>own (top of the stack):</p>"
                        f"<table>{cells}</table><p>anywhere on the stack:</p><table>{total}</table>")  # fmt: skip
    return (f"<h2>The bridge against the conventional pipeline</h2><p>{html.escape(p.get('conventional', ''))}; "
            f"text only, {p.get('customers')} customers.</p>{table}{chart}{profile}")  # fmt: skip


def _series(counts: list[int]) -> list[tuple[float, float]]:
    return [(float(i), float(c)) for i, c in enumerate(counts)]


def _rss(usage: dict[str, Any]) -> list[tuple[float, float]]:
    return [(s[0], s[1]) for s in usage.get("samples", [])]


def render(results: dict[str, Any]) -> str:
    s = results.get("scenarios", {})
    blocks: list[str] = []
    ing = s.get("ingress", {})
    if ing:
        blocks.append(line_chart("1. ingress: 200-acknowledged webhooks per second, per offered rate",
                                 {f"{st['offered_rate']:.0f}/s": _series(st["per_second_ok"]) for st in ing["steps"]},
                                 "/s"))  # fmt: skip
    e = s.get("e2e", {})
    if e:
        blocks.append(line_chart("2. end to end: delivered at the Genesys simulator per second",
                                 {f"{st['offered_rate']:.0f}/s": _series(st["delivered_per_second"]) for st in e["steps"]},
                                 "/s"))  # fmt: skip
    lat: dict[str, dict[str, float]] = {}
    for st in ing.get("steps", []):
        lat[f"ingress {st['offered_rate']:.0f}"] = {k: st["latency_ms"][k] for k in ("p50", "p99", "p999")}
    for st in e.get("steps", []):
        lat[f"e2e {st['offered_rate']:.0f}"] = {k: st["audit"]["e2e_latency_ms"][k] for k in ("p50", "p99", "p999")}
    blocks.append(bar_chart("latency percentiles", lat, "ms"))
    rss = {name: _rss(v.get("usage", {})) for name, v in s.items() if isinstance(v, dict) and v.get("usage")}
    blocks.append(line_chart("RSS of the bridge's processes over time, per scenario", rss, "MB"))
    soak = s.get("soak", {})
    if soak.get("queue_depth"):
        blocks.append(line_chart("4. soak: queue depth (ready messages)",
                                 {"depth": [(float(t), float(d)) for t, d in soak["queue_depth"]]}, "msgs"))
    rows = "".join(f"<tr><td>{html.escape(t['name'])}</td><td>{html.escape(str(t['value']))}</td>"
                   f"<td>{html.escape(t['target'])}</td><td>{'met' if t['met'] else '<b>missed</b>'}</td></tr>"
                   for t in results.get("targets", []))  # fmt: skip
    summary = html.escape("\n".join(results.get("summary", [])))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>wabridge bench</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        "pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style></head><body>"
        f"<h1>wabridge bench — {html.escape(results.get('mode', ''))}</h1>"
        f"<p>{html.escape(results.get('machine', ''))}<br>{html.escape(results.get('started', ''))}</p>"
        f"<h2>Targets</h2><table><tr><th>measure</th><th>value</th><th>target</th><th></th></tr>{rows}</table>"
        f"<h2>Summary</h2><pre>{summary}</pre>{pipelines_section(s.get('pipelines', {}))}"
        f"<h2>Charts</h2>{''.join(b for b in blocks if b)}"
        "</body></html>"
    )


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    results = json.loads(path.read_text())
    path.with_suffix(".html").write_text(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
