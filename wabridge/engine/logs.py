"""Structured logs: one JSON object per line (or logfmt), with the context of the actor that wrote it.

`configure(level)` once at start-up; `get_logger("tenant", tenant_id="t1", actor="tenant:t1")` anywhere. Context
values are rendered with `str()`, so a `Secret` shows as stars; never put a revealed secret in a log call.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import msgspec

_encoder = msgspec.json.Encoder(enc_hook=str)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

# The message the running task works on (engine/history.py sets it): its fields go on every line logged meanwhile,
# by any logger (the Open Messaging client's retries, the media fetcher's), so that grep on a wamid or a webhook id
# finds them. Anything with `fields() -> dict`; a line's own `extra` wins over it.
MESSAGE_CONTEXT: ContextVar[Any] = ContextVar("wabridge_message_context", default=None)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    context = MESSAGE_CONTEXT.get()
    if context is not None:
        for key, value in context.fields().items():
            fields.setdefault(key, value)
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _encoder.encode(_fields(record)).decode()


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = str(value)
            if not text or any(c in text for c in ' ="\n\\'):
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
            parts.append(f"{key}={text}")
        return " ".join(parts)


class ContextLogger(logging.LoggerAdapter):
    """A logger that adds fixed context (tenant id, actor name) to every record; `bind()` adds more."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

    def bind(self, **context: Any) -> ContextLogger:
        return ContextLogger(self.logger, {**(self.extra or {}), **context})


def get_logger(name: str, **context: Any) -> ContextLogger:
    return ContextLogger(logging.getLogger(f"wabridge.{name}" if not name.startswith("wabridge") else name), context)


def configure(level: str = "INFO", *, fmt: str = "json", stream: TextIO | None = None) -> logging.Handler:
    """Route the `wabridge` loggers to one stream handler with the chosen format; idempotent."""
    formatter: logging.Formatter = {"json": JsonFormatter, "logfmt": LogfmtFormatter}[fmt]()
    root = logging.getLogger("wabridge")
    for handler in list(root.handlers):
        if getattr(handler, "_wabridge", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler._wabridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler
