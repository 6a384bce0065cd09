"""The program assembled: which adapters the settings pick, and the processes that run the roles.

The roles (wabridge/actors/) depend on the ports only; this is where they get their adapters
(`adapters/backends.open_backends_when_up`) and where the ingress is handed to Granian: embedded in this process for
one worker, Granian's own process manager for more (factory target `wabridge.cli.assembly:app_factory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from wabridge.actors.ingress import IngressApp
from wabridge.adapters.backends import open_backends_when_up
from wabridge.engine import heap, metrics
from wabridge.engine.drain import Shutdown
from wabridge.engine.settings import Settings, load_settings, settings_environment

if TYPE_CHECKING:
    from wabridge.actors.worker import SaaS
    from wabridge.adapters.backends import Backends


async def run_worker(settings: Settings, shutdown: Shutdown, *, shards: Sequence[int] | None = None) -> None:
    from wabridge.actors.worker import Worker  # here: an ingress process never imports the worker's roles

    async with open_backends_when_up(settings, shutdown.stopping) as backends:
        if backends is None:
            return  # stopped before the servers came up: nothing was consumed
        async with saas_adapters(backends) as saas:
            worker = Worker(backends, saas, shards=shards)
            heap.freeze_startup_heap()
            await worker.run(shutdown)


@contextlib.asynccontextmanager
async def saas_adapters(backends: Backends, *, far_end_hold: float | None = None) -> AsyncIterator[SaaS]:
    """The HTTP adapters of Genesys and Meta behind the worker's SaaS ports, closed on exit. `far_end_hold`: how long
    a message waits for a far end that is down (the settings' by default; `wabridge replay` gives 0)."""
    from wabridge.actors.worker import SaaS
    from wabridge.engine.far_end import FarEnd
    from wabridge.engine.metrics import REGISTRY
    from wabridge.genesys.auth import TokenProvider
    from wabridge.genesys.files import AgentFiles
    from wabridge.genesys.open_messaging import OpenMessagingClient
    from wabridge.genesys.ratelimit import RateBudget
    from wabridge.meta.graph import MetaGraph
    from wabridge.meta.media import MetaMedia
    from wabridge.ports import GenesysApi, GenesysFiles, MetaGraphApi, MetaMediaApi

    settings = backends.settings
    hold = settings.far_end_hold if far_end_hold is None else far_end_hold
    private = settings.allow_private_media_urls
    tokens = TokenProvider(backends.cache, box=settings.secret_box())
    budget = RateBudget(backends.cache)
    open_messaging = OpenMessagingClient(
        tokens,
        budget,
        far_end=FarEnd("genesys", hold_for=hold, retry_max=settings.far_end_retry_max),
        timeout=settings.genesys_timeout,
    )
    graph = MetaGraph(
        backends.cache,
        base_url=settings.graph_api_url,
        far_end=FarEnd("meta", hold_for=hold, retry_max=settings.far_end_retry_max),
    )
    files = AgentFiles(tokens, allow_private_urls=private)
    media = MetaMedia(settings.graph_api_url, allow_private_urls=private)
    # Typed as the ports: mypy checks here that each adapter satisfies the port the roles are written against.
    genesys: GenesysApi = open_messaging
    genesys_files: GenesysFiles = files
    meta: MetaGraphApi = graph
    meta_media: MetaMediaApi = media

    def stop_holding() -> None:
        open_messaging.far_end.stop_holding()
        graph.far_end.stop_holding()

    # What the adapters count, read at scrape time (deploy/grafana's dashboard).
    retries = REGISTRY.counter("wabridge_genesys_retries_total", "Genesys requests tried again, by reason.", ["reason"])
    retries.labels("backoff").set_function(lambda: open_messaging.statistics().retries)
    retries.labels("rate_limited").set_function(lambda: open_messaging.statistics().rate_limited)
    retries.labels("relogin").set_function(lambda: open_messaging.statistics().relogins)
    used = REGISTRY.counter(
        "wabridge_oauth_tokens_total", "Genesys OAuth tokens used, by where they came from.", ["source"]
    )
    used.labels("login").set_function(lambda: tokens.statistics().logins)
    used.labels("memory").set_function(lambda: tokens.statistics().from_memory)
    used.labels("cache").set_function(lambda: tokens.statistics().from_cache)
    waits = REGISTRY.counter("wabridge_rate_budget_waits_total", "Times a tenant waited for its Genesys rate budget.")
    waits.labels().set_function(lambda: budget.statistics().waits)

    async with contextlib.AsyncExitStack() as stack:
        for close in (graph.aclose, files.aclose, tokens.aclose, open_messaging.aclose, media.aclose):
            stack.push_async_callback(close)
        yield SaaS(genesys, genesys_files, meta, meta_media, stop_holding)


# --- the ingress under Granian ------------------------------------------------------------------------------------


def app_factory() -> IngressApp:
    """Granian's target (`wabridge.cli.assembly:app_factory`, factory mode): runs in each worker process."""
    from wabridge.engine import logs

    settings = load_settings()
    logs.configure(settings.log_level)
    return IngressApp(settings, opener=open_backends_when_up)


# Seconds Granian's parent waits for a worker to stop after SIGTERM before it kills it. A worker's own drain is
# bounded below this (requests in flight wait at most CONFIRM_TIMEOUT, then the archive gets CLOSE_DEADLINE). Without
# a bound Granian 2.8 loses a SIGTERM that reaches a worker still starting (opening its backends): the worker serves
# on, and the parent waits for it forever.
WORKERS_KILL_TIMEOUT = 30


def granian_argv(settings: Settings, *, workers: int) -> list[str]:
    """Granian's own command line for the ingress (RSGI, uvloop, HTTP/1.1, factory mode)."""
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "rsgi",
        "--loop",
        "uvloop",
        "--http",
        "1",
        "--no-ws",
        "--workers",
        str(workers),
        "--workers-kill-timeout",
        str(WORKERS_KILL_TIMEOUT),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--factory",
        "wabridge.cli.assembly:app_factory",
    ]


def serve_ingress(settings: Settings, *, workers: int) -> None:
    """Run the ingress under Granian until a signal stops it: one worker in this process (`serve_embedded`),
    several under Granian's own process manager (`serve_processes`)."""
    if workers == 1:
        serve_embedded(settings)
    else:
        serve_processes(settings, workers=workers)


def serve_embedded(settings: Settings) -> None:
    """One ingress process: Granian's embedded server on this process's event loop.

    Why not Granian's process manager for one worker: its parent process holds a third of the ingress's memory to
    supervise a single child, and serves no more (docs/decisions.md). SIGTERM/SIGINT stop it (the server finishes the
    requests it holds, then the archive puts its last segments); a second signal exits at once.
    """
    import signal

    import uvloop
    from granian.constants import HTTPModes, Interfaces
    from granian.server.embed import Server

    from wabridge.engine import logs

    logs.configure(settings.log_level)

    async def run() -> None:
        app = IngressApp(settings, opener=open_backends_when_up)
        server = Server(
            app,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.RSGI,
            http=HTTPModes.http1,
            websockets=False,
            log_enabled=False,
        )
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def stop() -> None:
            if stopping.is_set():
                os._exit(1)  # the second signal: no drain
            stopping.set()
            server.stop()

        # Installed before the backends open: a signal while a server is still down at start-up stops the wait.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            if await app.start(stopping):
                await server.serve()
        finally:
            await app.aclose()

    uvloop.run(run())


def metrics_directory(settings: Settings) -> str:
    """Where the ingress's processes keep their metrics: PROMETHEUS_MULTIPROC_DIR if set, else one per port."""
    default = os.path.join(tempfile.gettempdir(), f"wabridge-ingress-metrics-{settings.port}")
    return os.environ.get(metrics.MULTIPROC_DIR) or default


def serve_processes(settings: Settings, *, workers: int) -> None:
    """Run the ingress under Granian's process manager until a signal stops it; never returns.

    This process *becomes* Granian's command line (exec): Granian forks its workers from it, and a parent that had
    imported the CLI, the settings' cryptography and the ingress stack would pass all of it on to every worker and
    keep it itself (docs/decisions.md). Exec'd, the parent holds Python and Granian only and each worker imports
    what it uses. Signals, the PID and PR_SET_PDEATHSIG (cli/serve.py) carry over the exec.
    """
    for name in [n for n in os.environ if n.startswith(("WABRIDGE_", "GRANIAN_"))]:
        del os.environ[name]  # the workers must see exactly `settings`, nothing left over
    os.environ.update(settings_environment(settings))
    metrics.share_between_processes(metrics_directory(settings))  # one /metrics for all the workers
    argv = granian_argv(settings, workers=workers)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
