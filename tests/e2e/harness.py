"""The whole bridge as a black box for the end-to-end tests: `python -m wabridge serve` in its own process group,
the Genesys simulator in a subprocess, the Meta Graph simulator in-process, one tenant, and the helpers a test
needs to drive it (send signed webhooks, read tracking rows, crash, drain and restart the bridge, run the CLI).

Everything waits asynchronously: a test may hold `proxy_factory` proxies in its own event loop, and a blocking call
would freeze the traffic of the very servers the bridge talks to through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from wabridge.engine.settings import settings_environment
from wabridge.adapters.backends import open_backends
from wabridge.ports import GenesysCredential, Store, TenantConfig, TrackingRecord
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks
from wabridge.sim.genesys import SimProcess, start_genesys_sim

TENANT = "shop"
PHONE_NUMBER_ID = "106540352242922"
APP_SECRET = "e2e-app-secret"
VERIFY_TOKEN = "e2e-verify"
WHATSAPP_TOKEN = "e2e-whatsapp-token"
CLIENT_ID, CLIENT_SECRET = "e2e-client", "e2e-client-secret"
INTEGRATION = "e2e-integration"
FINAL = ("delivered", "failed", "dead-lettered", "unrouted")

# The delivery client's timeout (worker.py reads it): small, so a Genesys that hangs costs seconds, not minutes.
GENESYS_TIMEOUT = 2.0


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free right now (all held open together while they are picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def tenant_config(genesys_url: str, *, rate_limit: int = 1_000_000) -> TenantConfig:
    """The test tenant. The rate budget is far above what a test sends, so only injected 429s slow delivery."""
    return TenantConfig(
        tenant_id=TENANT,
        phone_number_ids=(PHONE_NUMBER_ID,),
        app_secret=Secret(APP_SECRET),
        verify_token=Secret(VERIFY_TOKEN),
        whatsapp_token=Secret(WHATSAPP_TOKEN),
        genesys_api_url=genesys_url,
        genesys_login_url=genesys_url,
        genesys_integration_id=INTEGRATION,
        credentials=(GenesysCredential(CLIENT_ID, Secret(CLIENT_SECRET)),),
        rate_limit_per_minute=rate_limit,
    )


class Genesys:
    """The Genesys simulator subprocess, queried without blocking the event loop."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("rate_limit", 0)  # off: the bridge's own budget is tested elsewhere
        self.process: SimProcess = start_genesys_sim(
            0, fetch_media=True, clients={CLIENT_ID: CLIENT_SECRET}, integrations=[INTEGRATION], **options
        )
        self.url = self.process.url
        self._http = httpx.AsyncClient(base_url=self.url, timeout=30)

    async def messages(self) -> list[dict[str, Any]]:
        return (await self._http.get("/sim/messages")).json()

    async def stats(self) -> dict[str, int]:
        return (await self._http.get("/sim/stats")).json()

    async def fault(self, **spec: Any) -> None:
        (await self._http.post("/sim/faults", json=spec)).raise_for_status()

    async def clear_faults(self) -> None:
        (await self._http.delete("/sim/faults")).raise_for_status()

    async def revoke_tokens(self) -> int:
        response = await self._http.post("/sim/revoke-tokens")
        response.raise_for_status()
        return response.json()["revoked"]

    async def wait_messages(self, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            received = await self.messages()
            if len(received) >= n or time.monotonic() > deadline:
                return received
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        await self._http.aclose()
        self.process.stop()


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings, workdir: Path) -> AsyncIterator[Bridge]:
    """`wabridge serve` started with `settings`, killed on exit if it still runs."""
    bridge = Bridge(settings, workdir)
    try:
        await bridge.start()
        yield bridge
    finally:
        await bridge.aclose()


@contextlib.asynccontextmanager
async def running_genesys() -> AsyncIterator[Genesys]:
    """A Genesys simulator subprocess, stopped on exit (a test with two tenants starts a second one)."""
    sim = Genesys()
    try:
        yield sim
    finally:
        await sim.aclose()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc): `serve` runs the ingress in a session of its own."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    children = [int(c) for c in fh.read().split()]
                found += children
                todo += children
    return found


class Bridge:
    """`wabridge serve` as a subprocess. `settings` is what the bridge sees (possibly through cut-able proxies);
    `inspect_settings` is what the test reads tracking rows with (the servers' own addresses)."""

    def __init__(
        self, settings: Settings, workdir: Path, *, inspect_settings: Settings | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        # The worker's status port is chosen too: its default, the HTTP port + 1, can be a port the kernel has just
        # handed to some outgoing connection (the HTTP port is picked from the ephemeral range), and the harness
        # waits for the worker to answer there.
        http_port, status_port = free_ports(2)
        self.settings = settings.replace(port=settings.port if settings.port != 8080 else http_port,
                                         metrics_port=settings.metrics_port if settings.metrics_port is not None
                                         else status_port, log_level="WARNING")  # fmt: skip
        self.inspect_settings = (inspect_settings or settings).replace(port=self.settings.port)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")}
        self.env.update(settings_environment(self.settings))
        self.env["WABRIDGE_GENESYS_TIMEOUT"] = str(GENESYS_TIMEOUT)
        self.env["NO_PROXY"] = "*"  # the simulators are on loopback: a developer's proxy variables must not stop serve
        self.env.update(extra_env or {})
        self.url = f"http://127.0.0.1:{self.settings.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._http = httpx.AsyncClient(timeout=30)

    # --- life cycle -------------------------------------------------------------------------------------------------

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"bridge-{self.starts}.stderr"

    def stderr(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("bridge-*.stderr")))

    async def start(self, *, ready_timeout: float = 60.0) -> None:
        self.starts += 1
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wabridge", "serve", "--drain-deadline", "20"], env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )  # fmt: skip
        await self.wait_ready(ready_timeout)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the bridge exited with {self.process.returncode}:\n{self.stderr()[-3000:]}")
            if await self._healthy(self.url) and await self._worker_healthy():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the bridge did not answer /healthz in {timeout} s:\n{self.stderr()[-3000:]}")

    async def _healthy(self, url: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return (await self._http.get(f"{url}/healthz", timeout=2)).status_code == 200
        return False

    async def _worker_healthy(self) -> bool:
        """The worker answers on its status port once its backends are open and it consumes. Without waiting for it,
        a test that cuts a server right after start could cut the worker's own start-up instead of the running
        bridge it meant to test (seen: S3 cut while the worker still checked its buckets)."""
        port = self.settings.worker_metrics_port
        return port == 0 or await self._healthy(f"http://127.0.0.1:{port}")

    async def kill(self) -> None:
        """A crash: SIGKILL for the bridge's process group and every process under it, no drain at all."""
        assert self.process is not None
        victims = _descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self._reap(10.0)
        await self._wait_gone(victims)

    async def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (a drain) and the exit status."""
        assert self.process is not None
        victims = _descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        status = await self._reap(timeout)
        await self._wait_gone(victims)
        return status

    async def _reap(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"the bridge did not exit within {timeout} s:\n{self.stderr()[-3000:]}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    @staticmethod
    async def _wait_gone(pids: Sequence[int], timeout: float = 30.0) -> None:
        """Until the ingress processes are gone too (the port is free for a restart)."""
        deadline = time.monotonic() + timeout
        for pid in pids:
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
                    if fh.read().split(") ", 1)[1].startswith("Z"):
                        break  # a zombie holds no port
                await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        if self.process is not None and self.process.poll() is None:
            await self.kill()
        await self._http.aclose()

    # --- Meta's side ------------------------------------------------------------------------------------------------

    async def post(self, body: bytes, *, timeout: float = 30.0) -> int:
        """One signed webhook; the HTTP status, or 0 when the bridge could not be reached."""
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": webhooks.sign(body, APP_SECRET)}
        try:
            response = await self._http.post(f"{self.url}/webhook/meta", content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError:
            return 0
        return response.status_code

    async def send(self, *messages: dict[str, Any]) -> list[str]:
        """Each message in its own webhook, one after the other; all must be answered 200. Their wamids."""
        for message in messages:
            status = await self.post(webhooks.webhook(PHONE_NUMBER_ID, [message]))
            assert status == 200, f"webhook answered {status}:\n{self.stderr()[-2000:]}"
        return [m["id"] for m in messages]

    # --- what happened ----------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        async with open_backends(self.inspect_settings, ports=("store",)) as backends:
            yield backends.store

    async def tracking(self) -> dict[str, TrackingRecord]:
        async with self.store() as store:
            rows = await store.list_tracking(tenant_id=TENANT, limit=100_000)
        return {row.wamid: row for row in rows}

    async def wait_tracked(
        self, wamids: Sequence[str], *, statuses: Sequence[str] = FINAL, timeout: float = 60.0,
        until: Callable[[dict[str, TrackingRecord]], bool] | None = None,
    ) -> dict[str, TrackingRecord]:  # fmt: skip
        """Until every wamid has a row in one of `statuses` (and `until(rows)` holds); the rows."""
        deadline = time.monotonic() + timeout
        async with self.store() as store:
            while True:
                rows = {r.wamid: r for r in await store.list_tracking(tenant_id=TENANT, limit=100_000)}
                done = all(w in rows and rows[w].status in statuses for w in wamids)
                if done and (until is None or until(rows)):
                    return rows
                if time.monotonic() > deadline:
                    missing = {w: rows[w].status if w in rows else None for w in wamids
                               if w not in rows or rows[w].status not in statuses}  # fmt: skip
                    raise AssertionError(f"not tracked in time: {dict(list(missing.items())[:5])} "
                                         f"({len(missing)} in all)\n{self.stderr()[-3000:]}")  # fmt: skip
                await asyncio.sleep(0.2)

    # --- the command line -------------------------------------------------------------------------------------------

    async def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60.0) -> tuple[int, str, str]:
        """`python -m wabridge ARGS` with the bridge's settings: (exit status, stdout, stderr)."""
        return await run_cli(*args, env=self.env, stdin=stdin, timeout=timeout)


async def run_cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 60.0
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wabridge", *args, env=env, start_new_session=True,  # no controlling terminal
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin or b""), timeout)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    return process.returncode or 0, out.decode(), err.decode()


async def put_tenant(settings: Settings, genesys_url: str, **options: Any) -> None:
    async with open_backends(settings, ports=("store",)) as backends:
        await backends.store.put_tenant(tenant_config(genesys_url, **options))
