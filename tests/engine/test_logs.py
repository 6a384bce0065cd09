"""Structured logs: one JSON object (or logfmt line) per record, with actor context, secrets hidden."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from wabridge.engine import logs
from wabridge.engine.secrets import Secret


@pytest.fixture
def restore_wabridge_logger() -> Iterator[None]:
    root = logging.getLogger("wabridge")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


def test_json_lines_carry_the_actor_context_and_hide_secrets(restore_wabridge_logger: None) -> None:
    stream = io.StringIO()
    logs.configure("DEBUG", fmt="json", stream=stream)
    log = logs.get_logger("tenant", tenant_id="t1", actor="tenant:t1")
    log.info("delivered %d messages", 3, extra={"token": Secret("s3cr3t")})
    try:
        raise ValueError("boom")
    except ValueError:
        log.bind(wamid="wamid.X").exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "delivered 3 messages"
    assert (first["level"], first["logger"], first["tenant_id"], first["actor"]) == (
        "info", "wabridge.tenant", "t1", "tenant:t1"
    )
    assert "s3cr3t" not in stream.getvalue() and first["token"] == "Secret('**********')"
    assert second["wamid"] == "wamid.X" and "ValueError: boom" in second["exc"]


def test_logfmt_quotes_values_with_spaces(restore_wabridge_logger: None) -> None:
    stream = io.StringIO()
    logs.configure("INFO", fmt="logfmt", stream=stream)
    logs.get_logger("supervisor", supervisor="root").warning('restarting "x" now')
    line = stream.getvalue().strip()
    assert 'level=warning logger=wabridge.supervisor msg="restarting \\"x\\" now" supervisor=root' in line


@pytest.mark.anyio
async def test_a_grouped_call_started_inside_one_messages_context_does_not_log_as_that_message() -> None:
    """The group a message's lookup starts serves many messages: its own log lines must not name the first one (a
    background task would inherit the message's context otherwise)."""
    import asyncio

    from wabridge.engine.grouping import Grouped
    from wabridge.engine.logs import MESSAGE_CONTEXT, _fields

    class Context:
        def fields(self) -> dict[str, str]:
            return {"wamid": "wamid.first"}

    seen: list[dict] = []

    async def call_many(keys):
        seen.append(_fields(logging.LogRecord("wabridge.test", logging.WARNING, __file__, 1, "group", None, None)))
        return {k: k for k in keys}

    grouped: Grouped[str, str] = Grouped(call_many, name="test", max_delay=0)
    token = MESSAGE_CONTEXT.set(Context())
    try:
        assert await asyncio.gather(grouped.get("a"), grouped.get("b")) == ["a", "b"]
        inside = _fields(logging.LogRecord("wabridge.test", logging.WARNING, __file__, 1, "line", None, None))
    finally:
        MESSAGE_CONTEXT.reset(token)
    assert inside["wamid"] == "wamid.first", "the message's own lines carry it"
    assert seen and "wamid" not in seen[0], seen
