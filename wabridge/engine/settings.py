"""One frozen settings object, read once at start-up from WABRIDGE_* variables and an optional TOML file.

Precedence: environment variable > TOML file (`WABRIDGE_CONFIG` or `--config`) > default. A wrong or missing value
raises `SettingsError` whose message is one line naming the variable; the CLI prints it and exits 2.
A server URL left unset selects the embedded backend for that port (SQLite, in-process cache, a directory).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from wabridge.engine.secrets import Secret, SecretBox, SecretKeyError, generate_key

DEFAULT_GRAPH_API_URL = "https://graph.facebook.com/v23.0"
DEFAULT_QUEUE_NAME = "INBOUND_WHATSAPP_MESSAGES"


class SettingsError(ValueError):
    """A configuration problem, said in one line that names the variable."""


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    # Backends: None means the embedded adapter.
    redis_url: str | None = None
    database_url: Secret | None = None  # may hold a password
    amqp_url: Secret | None = None  # may hold a password
    s3_endpoint: str | None = None
    s3_access_key: Secret | None = None
    s3_secret_key: Secret | None = None
    s3_region: str = "us-east-1"
    s3_bucket_prefix: str = ""  # tests isolate buckets with it; production leaves it empty
    secret_key: Secret | None = None  # base64 keys, comma separated, first one encrypts
    data_dir: Path = Path(".wabridge")
    # Queue
    shards: int = 4
    queue_name: str = DEFAULT_QUEUE_NAME
    delivery_limit: int = 3
    # Seconds a message held in place through a backend outage waits before it is reported (an error line and
    # wabridge_outage_held_long_total); it is held on until the server answers or a drain hands it back.
    outage_hold: int = 300
    # Seconds a message waits in place while its tenant's Genesys is down (refused, timing out, 5xx) before it is
    # tracked `failed`; 0 fails it after its three quick tries. The broker's consumer_timeout must exceed it.
    far_end_hold: int = 3600
    # Most seconds between two probes of a far end that is down (doubling from 1 s, with jitter).
    far_end_retry_max: int = 10
    # Seconds one Genesys request may take (login or message); the tests make a hanging Genesys cost seconds.
    genesys_timeout: float = 10.0
    # Redis keys are `{key_prefix}{seed key}`, e.g. `wabridge:mapping:wa:…`; empty keeps the seed's names exactly.
    key_prefix: str = ""
    # HTTP edge
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    metrics_port: int | None = None  # a worker's /metrics; None = port + 1, 0 = off
    public_url: str | None = None  # where Genesys reaches media the bridge serves itself
    max_body_bytes: int = 3 * 1024 * 1024
    graph_api_url: str = DEFAULT_GRAPH_API_URL
    # Media URLs from outside (Meta's download url, an agent's attachment) may lead to private, loopback or link-local
    # addresses: refused unless this is set, as the tests, the demo and the bench do for simulators on 127.0.0.1.
    allow_private_media_urls: bool = False
    # Runtime
    log_level: str = "INFO"
    tenant_concurrency: int = 32  # customers of one tenant handled in parallel
    mailbox_size: int = 1024
    # Unacked queue messages a worker holds per shard: bounds its memory (~1 KB each) and what a crash hands back; one
    # tenant's lanes take up to half of it before that tenant waits (and, held back, is parked: actors/parking.py).
    worker_prefetch: int = 4096

    @property
    def embedded(self) -> bool:
        return not (self.redis_url or self.database_url or self.amqp_url or self.s3_endpoint)

    @property
    def worker_metrics_port(self) -> int:
        return self.port + 1 if self.metrics_port is None else self.metrics_port

    @property
    def media_base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def secret_box(self) -> SecretBox:
        """The key ring. Embedded and keyless: a key is generated once into the data directory (0600)."""
        if self.secret_key is not None:
            text = self.secret_key.reveal()
        elif self.database_url is not None:
            raise SettingsError("WABRIDGE_SECRET_KEY is required with a real database (generate one: wabridge keygen)")
        else:
            text = _embedded_key(self.data_dir)
        try:
            return SecretBox.from_text(text)
        except SecretKeyError as exc:
            raise SettingsError(f"WABRIDGE_SECRET_KEY: {exc}") from None

    def __repr__(self) -> str:
        # Secrets show as stars by themselves; a password inside a plain URL (redis://:pw@host) is masked here.
        shown = ", ".join(f"{f.name}={_masked(getattr(self, f.name))!r}" for f in fields(self))
        return f"Settings({shown})"

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def _masked(value: Any) -> Any:
    if not isinstance(value, str) or "@" not in value:
        return value
    parts = urlsplit(value)
    if not parts.password:
        return value
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":****@", 1)))


_SECRET_FIELDS = {"database_url", "amqp_url", "s3_access_key", "s3_secret_key", "secret_key"}


def _embedded_key(data_dir: Path) -> str:
    path = data_dir / "secret.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = generate_key()
    # O_EXCL: two processes starting at once must agree on one key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def _convert(name: str, kind: Any, raw: Any) -> Any:
    var = "WABRIDGE_" + name.upper()
    if name in _SECRET_FIELDS:
        if raw in ("", None):
            return None
        return Secret(str(raw))
    if kind in ("int", int, "int | None"):
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{var} must be a whole number, got {raw!r}") from None
        if value < (0 if name in ("port", "metrics_port", "far_end_hold") else 1):
            raise SettingsError(f"{var} must be at least 1, got {value}")
        return value
    if kind in ("bool", bool):
        text = str(raw).strip().lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            raise SettingsError(f"{var} must be true or false, got {raw!r}")
        return text in ("1", "true", "yes", "on")
    if kind in ("float", float):
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{var} must be a number of seconds, got {raw!r}") from None
        if not 0 < number <= 300:
            raise SettingsError(f"{var} must be more than 0 and at most 300 seconds, got {raw!r}")
        return number
    if kind in ("Path", Path):
        return Path(str(raw))
    if raw == "" and name in {"redis_url", "s3_endpoint", "public_url"}:
        return None
    return str(raw)


def load_settings(env: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    env = os.environ if env is None else env
    config_file = config_file or env.get("WABRIDGE_CONFIG")
    file_values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                file_values = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"WABRIDGE_CONFIG: no such file {str(config_file)!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"WABRIDGE_CONFIG: {config_file} is not valid TOML ({exc})") from None
        file_values = file_values.get("wabridge", file_values)
    known = {f.name: f for f in fields(Settings)}
    unknown = set(file_values) - set(known)
    if unknown:
        raise SettingsError(f"WABRIDGE_CONFIG: unknown setting {sorted(unknown)[0]!r}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        var = "WABRIDGE_" + name.upper()
        if var in env:
            values[name] = _convert(name, f.type, env[var])
        elif name in file_values:
            values[name] = _convert(name, f.type, file_values[name])
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if s.database_url is not None and not s.database_url.reveal().startswith(("postgres://", "postgresql://")):
        raise SettingsError("WABRIDGE_DATABASE_URL must start with postgresql://")
    if s.amqp_url is not None and not s.amqp_url.reveal().startswith(("amqp://", "amqps://")):
        raise SettingsError("WABRIDGE_AMQP_URL must start with amqp:// or amqps://")
    if s.redis_url is not None and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("WABRIDGE_REDIS_URL must start with redis://, rediss:// or unix://")
    if s.s3_endpoint is not None:
        if not s.s3_endpoint.startswith(("http://", "https://")):
            raise SettingsError("WABRIDGE_S3_ENDPOINT must start with http:// or https://")
        if s.s3_access_key is None:
            raise SettingsError("WABRIDGE_S3_ACCESS_KEY is required when WABRIDGE_S3_ENDPOINT is set")
        if s.s3_secret_key is None:
            raise SettingsError("WABRIDGE_S3_SECRET_KEY is required when WABRIDGE_S3_ENDPOINT is set")
    if s.secret_key is not None:
        try:
            SecretBox.from_text(s.secret_key.reveal())
        except SecretKeyError as exc:
            raise SettingsError(f"WABRIDGE_SECRET_KEY: {exc}") from None
    if s.database_url is not None and s.secret_key is None:
        raise SettingsError("WABRIDGE_SECRET_KEY is required with a real database (generate one: wabridge keygen)")
    if s.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"WABRIDGE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}")


def settings_environment(settings: Settings) -> dict[str, str]:
    """The WABRIDGE_* variables that make `load_settings()` in a worker process rebuild `settings`."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is not None:
            env["WABRIDGE_" + f.name.upper()] = value.reveal() if isinstance(value, Secret) else str(value)
    return env
