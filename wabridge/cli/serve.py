"""`wabridge serve`: run the bridge.

Roles, so ingress and workers scale apart:
  all       (default) the ingress (Granian, --workers processes) and one worker process, started together
  ingress   only the webhook endpoint: verify, archive, queue, answer
  worker    only the consumers: its shards of the queue → tenant actors → Genesys (several workers share the
            shards; each shard has one active consumer, the others take over when it dies)
With no server URLs configured everything runs on the embedded backends under WABRIDGE_DATA_DIR.
SIGTERM/SIGINT drains: no new work, in-flight work finished or handed back, exit 0; a second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from wabridge.engine import logs
from wabridge.engine.settings import SettingsError, load_settings


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the bridge (ingress and/or workers)",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1, or WABRIDGE_HOST)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080, or WABRIDGE_PORT)")
    p.add_argument("--workers", type=int, help="ingress processes (default 1, or WABRIDGE_WORKERS)")
    p.add_argument("--role", choices=("all", "ingress", "worker"), default="all")
    p.add_argument("--shards", help="worker: comma-separated shard numbers to consume (default: all)")
    p.add_argument(
        "--drain-deadline",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a drain may take before unfinished work is handed back (default 30)",
    )
    p.set_defaults(func=run)


def _settings(args):
    from wabridge.http.client import unused_proxy

    proxy = unused_proxy(os.environ)
    if proxy is not None:  # the bridge's clients connect directly: a proxy it would silently bypass is refused
        raise SettingsError(
            f"{proxy} is set, but wabridge never connects through a proxy: unset it, or set NO_PROXY=* "
            "to confirm that every connection goes direct"
        )
    settings = load_settings()
    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None}
    settings = settings.replace(**changes)
    if settings.workers < 1:
        raise SettingsError("--workers must be at least 1")
    if not 0 <= settings.port <= 65535:
        raise SettingsError("--port must be between 0 and 65535")
    settings.secret_box()  # a missing or bad key stops start-up here, in one line
    return settings


def _shards(text: str | None, total: int) -> list[int] | None:
    if not text:
        return None
    try:
        shards = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SettingsError(f"--shards must be comma-separated numbers, got {text!r}") from None
    if not shards or shards[0] < 0 or shards[-1] >= total:
        raise SettingsError(f"--shards must name shards between 0 and {total - 1} (WABRIDGE_SHARDS={total})")
    return shards


def _check_tenant_secrets(settings) -> None:
    """Open every stored tenant once before serving, so a wrong WABRIDGE_SECRET_KEY stops start-up in one line
    (UndecryptableSecret, cli/__init__.py) instead of a bridge that answers every webhook 500. A store that is down
    is not checked here: the processes wait for it as they always do."""
    import anyio

    from wabridge.adapters.backends import open_backends
    from wabridge.ports import BackendUnavailable

    async def check() -> None:
        async with open_backends(settings, ports=("store",)) as backends:
            await backends.store.list_tenants()

    try:
        anyio.run(check)
    except BackendUnavailable:
        pass


def run(args) -> int:
    settings = _settings(args)
    shards = _shards(args.shards, settings.shards)
    logs.configure(settings.log_level)
    _check_tenant_secrets(settings)
    if args.role == "ingress":
        from wabridge.cli.assembly import serve_ingress

        serve_ingress(settings, workers=settings.workers)
        return 0
    if args.role == "worker":
        return _run_worker(settings, shards, args.drain_deadline)
    return _run_all(settings, shards, args)


def _run_worker(settings, shards, deadline: float) -> int:
    from wabridge.cli.assembly import run_worker
    from wabridge.engine import drain

    return drain.run(lambda shutdown: run_worker(settings, shutdown, shards=shards), deadline=deadline)


def _stop_with_parent() -> None:
    """In the ingress child, before exec: SIGTERM it when this process dies. In its own session it would otherwise
    outlive a killed bridge, holding the port so a restarted bridge cannot listen (tests/e2e/test_cli.py)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _run_all(settings, shards, args) -> int:
    """The ingress in a child process (Granian owns its own processes and signals), the worker here."""
    from wabridge.engine.settings import settings_environment

    env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")}
    env.update(settings_environment(settings))
    ingress = subprocess.Popen(
        [sys.executable, "-m", "wabridge", "serve", "--role", "ingress"],
        env=env,
        start_new_session=True,  # a Ctrl-C reaches us once; we pass the stop on to the ingress ourselves
        preexec_fn=_stop_with_parent,
    )
    try:
        status = _run_worker(settings, shards, args.drain_deadline)
    finally:
        if ingress.poll() is None:
            ingress.send_signal(signal.SIGTERM)
            try:
                ingress.wait(timeout=args.drain_deadline)
            except subprocess.TimeoutExpired:
                ingress.kill()
                ingress.wait()
    return status
