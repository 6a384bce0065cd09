"""The metric names deploy/grafana's dashboard and deploy/prometheus's alert rules query, read from their PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "wabridge-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "wabridge-alerts.yml"
# Series the broker's rabbitmq_prometheus plugin exports (per-object), not the bridge: marked by their prefix.
BROKER_PREFIX = "rabbitmq_"
BROKER_METRICS = frozenset({"rabbitmq_queue_messages", "rabbitmq_queue_consumers"})

_NAME = re.compile(r"\b((?:wabridge|rabbitmq)_[a-zA-Z0-9_]+)\b(?!\s*=)")  # not a label name (`tier=`)


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in _NAME.findall(expr)}


def bridge_names() -> set[str]:
    return {n for n in metric_names(dashboard_exprs() + alert_exprs()) if not n.startswith(BROKER_PREFIX)}


def exported(name: str, exposition: str) -> bool:
    """`name` is in a /metrics text: its own TYPE line, or a histogram's `_bucket`/`_sum`/`_count` of one."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE))
    if name in types:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in ("bucket", "sum", "count") and types.get(base) == "histogram"
