"""Every line of wabridge that reaches into aiormq's internals, in one place, and the check that they still hold.

adapters/queue/amqp.py writes batches of frames straight to a channel (one socket write for many publishes or
settlements) and numbers its publishes itself. That uses three attributes aiormq does not promise:
`Channel.delivery_tag` (the last publish's number, which aiormq increments in `basic_publish`), `Channel.confirmations`
(tag → the future its Basic.Ack / Basic.Nack resolves) and `Channel.write_queue` (where `ChannelFrame`s wait for the
connection's writer).
They are proven against the aiormq releases in `PROVEN` (tests/contract/test_queue.py's frame-level tests run on the
real broker); `check()` refuses to start on any other, with one line, rather than publish into a changed internal.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

from aiormq.abc import AbstractChannel, ChannelFrame

PROVEN = ((7, 2), (8, 0))  # aiormq >= 7.2, < 8.0 (pyproject.toml declares the same range)


class UnprovenAiormq(RuntimeError):
    """The installed aiormq is outside the range these internals were proven against."""


def _release(version: str) -> tuple[int, int]:
    major, _, rest = version.partition(".")
    minor = rest.partition(".")[0]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check(version: str | None = None) -> None:
    """Raise UnprovenAiormq unless aiormq (the installed one, or `version`) is in PROVEN, and its channel still has
    the internals used here."""
    version = version or importlib.metadata.version("aiormq")
    low, high = PROVEN
    if not low <= _release(version) < high:
        raise UnprovenAiormq(
            f"aiormq {version} is installed; wabridge's AMQP adapter is proven against >= {low[0]}.{low[1]}, "
            f"< {high[0]}.{high[1]} (wabridge/adapters/queue/amqp_wire.py)"
        )
    from aiormq.channel import Channel

    missing = [
        name
        for name in ("delivery_tag", "confirmations", "write_queue", "number", "max_content_size")
        if name not in _channel_attributes(Channel)
    ]
    if missing:
        raise UnprovenAiormq(
            f"aiormq {version}'s Channel lacks {', '.join(missing)} (wabridge/adapters/queue/amqp_wire.py)"
        )


def _channel_attributes(channel_class: type) -> set[str]:
    names = set(dir(channel_class))
    init = getattr(channel_class, "__init__", None)
    code = getattr(init, "__code__", None)
    if code is not None:  # instance attributes assigned in __init__ (self.x = ...)
        names.update(code.co_names)
    return names


def next_tag(channel: AbstractChannel, confirm: asyncio.Future[Any]) -> int:
    """Number one publish on `channel` as aiormq's basic_publish would, and register its confirm future: the broker's
    Basic.Ack / Basic.Nack for that tag resolves it (aiormq's reader does that)."""
    channel.delivery_tag += 1  # type: ignore[attr-defined]
    channel.confirmations[channel.delivery_tag] = confirm  # type: ignore[attr-defined]
    return channel.delivery_tag  # type: ignore[attr-defined]


async def write(channel: AbstractChannel, payload: bytes, drained: asyncio.Future[Any] | None = None) -> None:
    """Hand encoded frames to the connection's writer as one write; `drained` resolves once it is on the socket."""
    frame = ChannelFrame(payload=payload, should_close=False, drain_future=drained)
    await channel.write_queue.put(frame)  # type: ignore[attr-defined]
