"""The bench's test rig: an isolated slice of the real servers, the simulators, the bridge's processes, a sampler.

Isolation as the tests' `server_settings`: one fresh PostgreSQL database, and a unique Redis key prefix, queue name
and bucket prefix per bench run, so a bench never collides with tests running on the same servers. `close()` deletes
the queues and drops the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import Spec, Tenant
from wabridge.ports import GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings

TENANTS = 10
CUSTOMERS = 1000
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 40.0  # s for a bridge process to answer /readyz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc sampling of process trees --------------------------------------------------------------------------------


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces), or None once the process is gone:
    [1] is the parent's pid, [11] and [12] the user and system CPU time in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _stat(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    return children


def _pss_mb(pid: int) -> float:
    """Proportional set size: resident pages, each shared one divided among the processes sharing it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) * 1024 / 1e6
    except (OSError, StopIteration, ValueError):
        return 0.0


def tree_usage(roots: list[int], *, pss: bool = False) -> tuple[float, float, float]:
    """(RSS in MB, CPU seconds, PSS in MB or 0) summed over `roots` and all their descendants. The RSS sum counts
    a page shared by two processes (Granian's forked worker and its parent) twice; the PSS sum counts it once."""
    children = _children_map()
    todo, seen = list(roots), set()
    rss = cpu = proportional = 0.0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
        fields = _stat(pid)
        if fields is None:
            continue
        try:
            with open(f"/proc/{pid}/statm") as fh:
                resident = int(fh.read().split()[1])
        except OSError:
            continue
        cpu += _cpu_seconds(fields)
        rss += resident * PAGE / 1e6
        if pss:
            proportional += _pss_mb(pid)
    return rss, cpu, proportional


# Who spends the machine's CPU, by command line: the bridge's roles, the servers, the simulators, the generator.
ROLES = (("conventional_worker", "conventional worker"), ("fastapi_ingress", "conventional ingress"),
         ("--role worker", "bridge worker"), ("--role ingress", "bridge ingress"), ("granian", "bridge ingress"),
         ("beam.smp", "rabbitmq"), ("postgres", "postgresql"), ("redis-server", "redis"), ("weed", "seaweedfs s3"),
         ("sim.genesys", "genesys simulator"), ("sim genesys", "genesys simulator"), ("sim meta", "meta simulator"),
         ("sim.meta", "meta simulator"), ("bench.loadgen", "load generator"))  # fmt: skip


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by every process on the machine, summed per role (others: "other")."""
    out: dict[str, float] = {}
    for (_, role), seconds in cpu_by_process().items():
        out[role] = out.get(role, 0.0) + seconds
    return out


def cpu_by_process() -> dict[tuple[tuple[int, str], str], float]:
    """CPU seconds used so far by every process on the machine: {((pid, start time), role): seconds}."""
    out: dict[tuple[tuple[int, str], str], float] = {}
    for pid in _pids():
        fields = _stat(pid)
        if fields is None:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                command = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        role = next((r for key, r in ROLES if key in command), "other")
        out[((pid, fields[19]), role)] = _cpu_seconds(fields)
    return out


class CpuSplit:
    """`with CpuSplit() as split: ...` then `split.per_message(n)`: µs of CPU per message, per role, machine-wide."""

    def __enter__(self) -> CpuSplit:
        self._t0, self._before = time.monotonic(), cpu_by_process()
        return self

    def __exit__(self, *exc: object) -> None:
        # Per process, so that one ending inside the span (a test's on a shared machine) is not charged its whole
        # life as a negative: what it used inside the span is lost instead, as for any process gone by the end.
        self.seconds, after = time.monotonic() - self._t0, cpu_by_process()
        self.used = {}
        for (process, role), seconds in after.items():
            self.used[role] = self.used.get(role, 0.0) + seconds - self._before.get((process, role), 0.0)

    def add(self, role: str, seconds: float) -> None:
        """CPU of a process that ended inside the span (its /proc entry is gone), as it accounted for it itself."""
        self.used[role] = self.used.get(role, 0.0) + seconds

    def cores(self) -> dict[str, float]:
        return {r: round(v / self.seconds, 2) for r, v in sorted(self.used.items(), key=lambda x: -x[1]) if v > 0}

    def per_message(self, messages: int) -> dict[str, float]:
        return {r: round(v / max(messages, 1) * 1e6) for r, v in sorted(self.used.items(), key=lambda x: -x[1])
                if v > 0}  # fmt: skip


class Sampler:
    """Samples the bridge's process trees every `interval` s in a thread: (t, RSS MB, CPU s, queue depth)."""

    def __init__(self, roots: list[int], interval: float = 0.5) -> None:
        self.roots, self.interval = roots, interval
        self.samples: list[tuple[float, float, float]] = []
        self.pss_max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.time()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < 100_000:
            rss, cpu, pss = tree_usage(self.roots, pss=True)
            self.pss_max = max(self.pss_max, pss)
            self.samples.append((round(time.time() - self.t0, 2), round(rss, 1), round(cpu, 2)))
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"rss_mb_max": 0, "cpu_s": 0, "samples": []}
        rss = [s[1] for s in self.samples]
        span = self.samples[-1][0] - self.samples[0][0]
        cpu = self.samples[-1][2] - self.samples[0][2]
        return {"rss_mb_max": max(rss), "rss_mb_first": rss[0], "rss_mb_last": rss[-1], "cpu_s": round(cpu, 2),
                "pss_mb_max": round(self.pss_max, 1),
                "cpu_cores": round(cpu / span, 2) if span else 0.0, "samples": self.samples}  # fmt: skip


# --- the rig ----------------------------------------------------------------------------------------------------------


@dataclass
class Rig:
    quick: bool
    tag: str = field(default_factory=lambda: "b" + uuid.uuid4().hex[:8])
    settings: Settings | None = None
    database: str = ""
    tenants: list[Tenant] = field(default_factory=list)
    genesys: Any = None
    genesys_port: int = 0
    meta: subprocess.Popen | None = None
    graph_url: str = ""
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wabridge-bench-")))
    extra_queues: list[str] = field(default_factory=list)
    _processes: list[subprocess.Popen] = field(default_factory=list)

    async def open(self) -> None:
        import asyncpg

        admin = os.environ["WABRIDGE_DATABASE_URL"]
        self.database = f"bench_{self.tag}"
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}" TEMPLATE template0')
        finally:
            await conn.close()
        self.settings = Settings(
            redis_url=os.environ["WABRIDGE_REDIS_URL"],
            database_url=Secret(f"{admin.rpartition('/')[0]}/{self.database}"),
            amqp_url=Secret(os.environ["WABRIDGE_AMQP_URL"]),
            s3_endpoint=os.environ["WABRIDGE_S3_ENDPOINT"],
            s3_access_key=Secret(os.environ["WABRIDGE_S3_ACCESS_KEY"]),
            s3_secret_key=Secret(os.environ["WABRIDGE_S3_SECRET_KEY"]),
            s3_bucket_prefix=f"{self.tag}-",
            key_prefix=f"{self.tag}:",
            queue_name=f"{self.tag}_INBOUND_WHATSAPP_MESSAGES",
            secret_key=Secret(generate_key()),
            data_dir=self.data_dir,
            log_level="WARNING",
        )
        self.tenants = [Tenant(f"tenant-{n}", f"10654035224{n:04d}", f"app-secret-{n}-{self.tag}")
                        for n in range(TENANTS)]  # fmt: skip
        self.genesys_port = free_port()
        self.start_genesys(rate_limit=0)
        self._start_meta()
        await self.put_tenants(rate_limit_per_minute=0)

    # --- simulators ---

    def start_genesys(self, *, rate_limit: int) -> None:
        """A fresh simulator (empty record) on the rig's fixed port, so the tenants' URLs stay right."""
        from wabridge.sim.genesys import start_genesys_sim

        if self.genesys is not None:
            self.genesys.stop()
            time.sleep(0.2)
        self.genesys = start_genesys_sim(self.genesys_port, rate_limit=rate_limit, max_messages=2_000_000)

    def _start_meta(self) -> None:
        port = free_port()
        self.meta = subprocess.Popen([sys.executable, "-m", "wabridge", "sim", "meta", "serve", "--port", str(port)],
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        line = self.meta.stdout.readline() if self.meta.stdout else ""
        if "graph_api_url=" not in line:
            raise RuntimeError(f"the Meta simulator did not start: {line!r}")
        self.graph_url = line.split("graph_api_url=", 1)[1].split()[0]

    async def put_tenants(self, *, rate_limit_per_minute: int, only: str | None = None) -> None:
        from wabridge.adapters.backends import open_backends
        from wabridge.cli.placement import least_loaded_shard

        url = f"http://127.0.0.1:{self.genesys_port}"
        placed: list[int | None] = []  # as `wabridge tenants add` places them one after the other
        for _ in self.tenants:
            placed.append(least_loaded_shard(placed, self.settings.shards))
        async with open_backends(self.settings, ports=("store", "cache")) as backends:
            for n, t in enumerate(self.tenants):
                if only is not None and t.tenant_id != only:
                    continue
                await backends.store.put_tenant(TenantConfig(
                    tenant_id=t.tenant_id, phone_number_ids=(t.phone_number_id,), app_secret=Secret(t.app_secret),
                    verify_token=Secret("verify"), whatsapp_token=Secret("whatsapp-token"), genesys_api_url=url,
                    genesys_login_url=url, genesys_integration_id=f"integration-{n}",
                    credentials=(GenesysCredential(f"client-{n}-{self.tag}", Secret("client-secret")),),
                    rate_limit_per_minute=rate_limit_per_minute, shard=placed[n],
                ))  # fmt: skip

    # --- the bridge's processes ---

    def env(self) -> dict[str, str]:
        from wabridge.engine.settings import settings_environment

        env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")}
        env.update(settings_environment(self.settings.replace(graph_api_url=self.graph_url,
                                                              allow_private_media_urls=True)))  # simulators' urls
        return env

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.data_dir / f"proc-{len(self._processes)}.log", "wb")
        proc = subprocess.Popen(argv, env=env or self.env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        self._processes.append(proc)
        return proc

    def start_bridge(self, role: str, *, port: int = 0, workers: int = 1, shards: str | None = None) -> subprocess.Popen:
        argv = [sys.executable, "-m", "wabridge", "serve", "--role", role]
        if role != "worker":
            argv += ["--port", str(port), "--workers", str(workers)]
        if shards:
            argv += ["--shards", shards]
        return self.start(argv)

    async def wait_http(self, port: int, path: str = "/readyz", proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"process exited with {proc.returncode}; see {self.data_dir}")
                try:
                    if (await client.get(f"http://127.0.0.1:{port}{path}")).status_code < 500:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"nothing answered on port {port} within {READY_TIMEOUT} s")

    async def wait_consuming(self, shards: int | None = None, timeout: float = 30.0) -> None:
        """Until every shard queue has an active consumer (a worker is up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = await self.queue_counts()
            if counts and all(c[1] >= 1 for c in counts.values()):
                return
            await asyncio.sleep(0.3)
        raise RuntimeError("the worker did not start consuming")

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # --- broker ---

    async def queue_counts(self) -> dict[str, tuple[int, int]]:
        """{shard queue: (ready messages, consumers)} by passive declares."""
        import aiormq

        out: dict[str, tuple[int, int]] = {}
        connection = await aiormq.connect(self.settings.amqp_url.reveal())
        try:
            for shard in range(self.settings.shards):
                channel = await connection.channel()
                name = f"{self.settings.queue_name}.{shard}"
                try:
                    ok = await channel.queue_declare(name, passive=True)
                    out[name] = (ok.message_count, ok.consumer_count)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    pass
        finally:
            await connection.close()
        return out

    async def purge_queues(self) -> None:
        import aiormq

        connection = await aiormq.connect(self.settings.amqp_url.reveal())
        try:
            channel = await connection.channel()
            for shard in range(self.settings.shards):
                await channel.queue_purge(f"{self.settings.queue_name}.{shard}")
        finally:
            await connection.close()

    # --- teardown ---

    async def close(self) -> None:
        for proc in self._processes:
            self.stop(proc, timeout=10)
        if self.genesys is not None:
            self.genesys.stop()
        if self.meta is not None:
            self.meta.terminate()
            self.meta.wait(timeout=10)
            if self.meta.stdout:
                self.meta.stdout.close()
        await self._delete_queues()
        await self._drop_database()

    async def _delete_queues(self) -> None:
        import aiormq

        from wabridge.adapters.queue.amqp import AmqpQueue

        for name in (None, "outbound"):  # every bridge process declares the outbound queue too
            queue = AmqpQueue(self.settings, name=name)
            try:
                await queue.open()
                await queue.delete_topology()
            finally:
                await queue.close()
        connection = await aiormq.connect(self.settings.amqp_url.reveal())
        try:
            for name in self.extra_queues:
                channel = await connection.channel()
                await channel.queue_delete(name)
        finally:
            await connection.close()

    async def _drop_database(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(os.environ["WABRIDGE_DATABASE_URL"])
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    # --- load ---

    def spec(self, port: int, rate: float, duration: float, *, connections: int = 64, label: str,
             only_tenant: str | None = None, tenants: list[Tenant] | None = None) -> Spec:  # fmt: skip
        return Spec(host="127.0.0.1", port=port, rate=rate, duration=duration, connections=connections,
                    tenants=tenants or self.tenants, customers=CUSTOMERS, run_tag=f"{self.tag}{label}",
                    only_tenant=only_tenant)  # fmt: skip

    async def load(self, spec: Spec) -> dict[str, Any]:
        """Run the generator in its own process (it must not share a loop or a GIL with anything measured)."""
        spec_path = self.data_dir / f"spec-{spec.run_tag}.json"
        out_path = self.data_dir / f"out-{spec.run_tag}.json"
        spec_path.write_text(json.dumps(spec.to_json()))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path))
        await proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"the load generator failed ({proc.returncode})")
        return json.loads(out_path.read_text())
