"""deploy/k8s as kubectl renders it: valid against the Kubernetes schemas (kubernetes-validate), and true to the
bridge it runs: every command parses as a `wabridge` command line, every process gets the settings it needs, every
probe asks for an endpoint that process serves, the drain fits in the grace period, resources match the bench."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from wabridge.actors import ingress as ingress_module
from wabridge.cli import build_parser
from wabridge.engine import drain
from wabridge.adapters.queue import amqp as queue_amqp
from wabridge.engine.secrets import generate_key
from wabridge.engine.settings import Settings, load_settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
SCHEMA_VERSION = "1.30.0"  # the oldest Kubernetes release still maintained by the big clouds when this was written
# bench/README.md: the most RSS one process reached (MB; the bridge's 170–191 MB peak over two processes, most of
# it the ingress under load, the worker more with a backlog in hand) and its CPU per message (µs, at 1,000/s).
BENCH = {"ingress": {"rss_mb": 110, "cpu_us": 362}, "worker": {"rss_mb": 120, "cpu_us": 544}}
OTHER_KNOBS = {"WABRIDGE_CONFIG"}  # read outside Settings


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("WABRIDGE_REQUIRE_SERVERS") == "1":
            pytest.fail("kubectl not installed: deploy/dev/services.sh install adds Debian's kubernetes-client")
        pytest.skip("kubectl not installed (Debian package kubernetes-client; `make test` installs it)")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    return [m for m in yaml.safe_load_all(rendered.stdout) if m]


def _one(manifests: list[dict], kind: str, name: str) -> dict:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def _pods(manifests: list[dict]) -> dict[str, dict]:
    """Pod spec by workload name (Deployments and Jobs)."""
    return {m["metadata"]["name"]: m["spec"]["template"]["spec"] for m in manifests if m["kind"] in ("Deployment", "Job")}


def _environment(manifests: list[dict], container: dict) -> dict[str, str]:
    """What the container's process sees: envFrom ConfigMaps and Secrets, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        resource = _one(manifests, kind, ref["name"])
        env.update(resource.get("data", {}) if kind == "ConfigMap" else resource.get("stringData", {}))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _settings(manifests: list[dict], container: dict) -> Settings:
    env = _environment(manifests, container)
    assert "WABRIDGE_SECRET_KEY" in env
    # The shipped key is a placeholder (start-up refuses it, by design); the check here is that it is set.
    return load_settings({**env, "WABRIDGE_SECRET_KEY": generate_key()})


def _role(container: dict) -> str:
    args = build_parser().parse_args(container["args"])
    return args.role if args.command == "serve" else args.command


def test_the_manifests_are_valid_kubernetes(manifests: list[dict]) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler", "Job", "Secret", "Service"]


def test_every_container_runs_a_wabridge_command_line(manifests: list[dict]) -> None:
    roles = {}
    for name, pod in _pods(manifests).items():
        for container in pod["containers"]:
            assert "command" not in container, "the image's entrypoint is `wabridge`: only args are given"
            try:
                roles[name] = _role(container)
            except SystemExit:
                pytest.fail(f"{name}: `wabridge {' '.join(container['args'])}` is not a valid command line")
    assert roles == {"wabridge-ingress": "ingress", "wabridge-worker": "worker", "wabridge-migrate": "migrate"}


def test_every_process_gets_the_servers_and_the_key_it_requires(manifests: list[dict]) -> None:
    known = {"WABRIDGE_" + name.upper() for name in Settings.__slots__} | OTHER_KNOBS
    for name, pod in _pods(manifests).items():
        (container,) = pod["containers"]
        env = _environment(manifests, container)
        assert not {k for k in env if k.startswith("WABRIDGE_")} - known, f"{name}: a setting the bridge does not read"
        settings = _settings(manifests, container)
        settings.secret_box()
        # No port may fall back to its embedded adapter: every replica would have a store of its own.
        assert settings.redis_url and settings.database_url and settings.amqp_url and settings.s3_endpoint, name
        assert settings.s3_access_key and settings.s3_secret_key, name
        # Passwords and the key come from the Secret, not the ConfigMap.
        config = _one(manifests, "ConfigMap", "wabridge-config")["data"]
        assert not {"WABRIDGE_SECRET_KEY", "WABRIDGE_DATABASE_URL", "WABRIDGE_AMQP_URL", "WABRIDGE_REDIS_URL",
                    "WABRIDGE_S3_SECRET_KEY"} & set(config)  # fmt: skip


def _port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


# What each process answers 200 to (actors/ingress.py `_route`, engine/status_server.py `_answer`).
SERVED = {"ingress": {"/healthz", "/readyz", "/metrics"}, "worker": {"/healthz", "/metrics"}}


def test_probes_and_scrapes_ask_for_what_the_process_serves(manifests: list[dict]) -> None:
    for name in ("wabridge-ingress", "wabridge-worker"):
        deployment = _one(manifests, "Deployment", name)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        role, settings = _role(container), _settings(manifests, container)
        listening = settings.port if role == "ingress" else settings.worker_metrics_port
        assert settings.host == "0.0.0.0", f"{name} must listen beyond loopback for the kubelet to probe it"
        probes = {k: container[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in container}
        assert "livenessProbe" in probes, name
        for kind, probe in probes.items():
            assert probe["httpGet"]["path"] in SERVED[role], (name, kind)
            assert _port(container, probe["httpGet"]["port"]) == listening, (name, kind)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == listening and annotations["prometheus.io/path"] == "/metrics"
    ingress = _one(manifests, "Deployment", "wabridge-ingress")["spec"]["template"]["spec"]["containers"][0]
    assert ingress["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = _one(manifests, "Service", "wabridge-ingress")
    assert [_port(ingress, p["targetPort"]) for p in service["spec"]["ports"]] == [8080]


def _pre_stop_seconds(container: dict) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def test_the_drain_fits_in_the_termination_grace_period(manifests: list[dict]) -> None:
    pods = _pods(manifests)
    worker = pods["wabridge-worker"]
    (container,) = worker["containers"]
    deadline = build_parser().parse_args(container["args"]).drain_deadline
    needed = _pre_stop_seconds(container) + deadline + drain.HAND_BACK_GRACE
    assert needed < worker["terminationGracePeriodSeconds"], "the kubelet would kill a worker still handing work back"

    ingress = pods["wabridge-ingress"]
    (container,) = ingress["containers"]
    needed = _pre_stop_seconds(container) + queue_amqp.CONFIRM_TIMEOUT + ingress_module.CLOSE_DEADLINE
    assert needed < ingress["terminationGracePeriodSeconds"], "the kubelet would kill an ingress still answering"


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity) / 2**20


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_resources_match_the_bench_and_the_autoscaler_scales_the_ingress_on_cpu(manifests: list[dict]) -> None:
    for role, bench in BENCH.items():
        (container,) = _pods(manifests)[f"wabridge-{role}"]["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert _mebibytes(requests["memory"]) >= bench["rss_mb"], role
        assert _mebibytes(limits["memory"]) >= 2 * bench["rss_mb"], f"{role}: room for a backlog and the collector"
        assert "cpu" not in limits, f"{role}: a CPU limit throttles, which shows as latency"
        # A pod's request carries at least 500 msgs/s at the bench's CPU per message, so the HPA sees real load.
        assert _cores(requests["cpu"]) * 1e6 / bench["cpu_us"] >= 500, role
    hpa = _one(manifests, "HorizontalPodAutoscaler", "wabridge-ingress")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wabridge-ingress"}
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert hpa["minReplicas"] >= 2
