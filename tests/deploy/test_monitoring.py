"""The dashboard and the alert rules are well-formed; whether the bridge exports every name they use is checked after
a real run in tests/e2e/test_metrics_names.py."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.deploy.monitoring import (
    ALERTS, BROKER_METRICS, BROKER_PREFIX, DASHBOARD, alert_exprs, bridge_names, dashboard_exprs, metric_names,
)  # fmt: skip


def test_the_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; deploy/dev/services.sh install adds it)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_cover_what_the_issue_asks() -> None:
    names = metric_names(alert_exprs())
    for needed in ("wabridge_dead_letters_total", "wabridge_far_end_down_tenants", "wabridge_deliveries_total",
                   "wabridge_ingress_requests_total", "rabbitmq_queue_messages", "rabbitmq_queue_consumers"):  # fmt: skip
        assert needed in names, needed


def test_every_dashboard_panel_queries_the_chosen_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_broker_series_are_marked_and_known() -> None:
    """Only the bridge's own series are checked against its /metrics: the others must be the broker's, by prefix."""
    names = metric_names(dashboard_exprs() + alert_exprs())
    broker = {n for n in names if n.startswith(BROKER_PREFIX)}
    assert broker <= BROKER_METRICS
    assert bridge_names() == names - broker
    assert all(n.startswith("wabridge_") for n in bridge_names())
