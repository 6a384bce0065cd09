"""The alerts and the dashboard watch the agent's direction too (issue 17): the outbound queue's shards (depth, no
consumer), the Genesys webhook route's 5xx and 503, and the outbound metrics the worker and the ingress export."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.monitoring import ALERTS, DASHBOARD, dashboard_exprs, metric_names

# Queue names as the AMQP adapter makes them with the default WABRIDGE_QUEUE_NAME (adapters/queue/amqp.py).
INBOUND_SHARD, OUTBOUND_SHARD = "INBOUND_WHATSAPP_MESSAGES.2", "INBOUND_WHATSAPP_MESSAGES.outbound.2"
DEAD_QUEUES = ("INBOUND_WHATSAPP_MESSAGES.dead", "INBOUND_WHATSAPP_MESSAGES.outbound.dead")
_QUEUE_MATCHER = re.compile(r'queue=~"((?:[^"\\]|\\.)*)"')


def queue_patterns(expr: str) -> list[re.Pattern]:
    """The `queue=~"…"` regexes of a PromQL expression, as Prometheus reads them: the string unescaped, the regex
    anchored at both ends."""
    return [re.compile(f"^(?:{m.encode().decode('unicode_escape')})$") for m in _QUEUE_MATCHER.findall(expr)]


def alerts() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def test_the_queue_alerts_watch_the_outbound_shards_as_well_as_the_inbound_ones() -> None:
    for name in ("WabridgeQueueDepthRising", "WabridgeShardWithoutConsumer"):
        patterns = queue_patterns(alerts()[name])
        assert patterns, name
        for pattern in patterns:
            assert pattern.match(INBOUND_SHARD) and pattern.match(OUTBOUND_SHARD), (name, pattern.pattern)
            assert not any(pattern.match(q) for q in DEAD_QUEUES), (name, pattern.pattern)  # a DLQ has no consumer
    [dead] = queue_patterns(alerts()["WabridgeDeadLetterQueueGrowing"])
    assert all(dead.match(q) for q in DEAD_QUEUES)


def test_the_ingress_alerts_watch_the_genesys_route_per_route() -> None:
    for name in ("WabridgeIngress5xx", "WabridgeIngress503"):
        expr = alerts()[name]
        assert 'route=~"webhook|genesys"' in expr and "by (route)" in expr, name


def test_the_dashboard_shows_the_outbound_queue_route_and_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {p["id"]: p for p in dashboard["panels"]}
    assert len(panels) == len(dashboard["panels"])
    shards = ("rabbitmq_queue_consumers", 'rabbitmq_queue_messages{queue=~"I')  # per shard: not the dead queues
    broker = [e for e in dashboard_exprs() if any(s in e for s in shards)]
    assert broker and all(p.match(OUTBOUND_SHARD) for e in broker for p in queue_patterns(e))
    assert any('route=~"webhook|genesys",status="503"' in e for e in dashboard_exprs())
    names = metric_names(dashboard_exprs())
    for needed in ("wabridge_outbound_webhooks_total", "wabridge_outbound_messages_total",
                   "wabridge_outbound_failures_total", "wabridge_outbound_seconds_bucket", "wabridge_receipts_total",
                   "wabridge_meta_statuses_total", "wabridge_tenant_outbound_total", "wabridge_typing_indicators_total",
                   "wabridge_read_marks_total", "wabridge_outbound_retries_total",
                   "wabridge_outbound_dead_letters_total"):  # fmt: skip
        assert needed in names, needed
    # No two panels overlap on the grid (the new row went below the others).
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine
