"""A message's trail: which message the running task works on, and the unusual steps it met (`wabridge trace`).

The tenant actor opens a `Trail` around each message it relays (and `wabridge replay` around each it sends again).
While it is open, in that task:
  - every log line, by any logger, carries the message's tenant_id, wamid and webhook_id (engine/logs.py), so that
    grep on any of them finds the lines about it, also those of code that never sees the message (the Open Messaging
    client's retries, the far end's hold);
  - `note(event, detail)` records an unusual step (a retry, a hold) from wherever it happens, without an await;
    the trail hands them to the tracking writer as `MessageEvent`s when it closes, and the writer writes them in
    its next batch, never awaited by the message (best effort: they are diagnostics).
The happy path notes nothing and writes no event: opening and closing a trail is two context-variable sets.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec

from wabridge.engine.logs import MESSAGE_CONTEXT
from wabridge.ports import MessageEvent


class EventSink(Protocol):
    def event(self, event: MessageEvent) -> None: ...


class Origin(msgspec.Struct, frozen=True, gc=False):
    """Where the messages of one queue message came from: one per queue message, shared by its messages."""

    webhook_id: str
    shard: int | None = None
    archive_key: str | None = None


def origin_fields(origin: Origin, received_at: float | None) -> dict[str, Any]:
    """The fields of a tracking row that say where its message came from (`wabridge trace` reads them there)."""
    return {
        "webhook_id": origin.webhook_id,
        "shard": origin.shard,
        "archive_key": origin.archive_key,
        "received_at": received_at,
    }


def webhook_of(message_id: str) -> str:
    """The webhook id in a queue message id (`{webhook_id}:{tenant_id}`, actors/ingress.py)."""
    return message_id.partition(":")[0]


class Trail:
    __slots__ = ("_notes", "_sink", "_token", "direction", "origin", "tenant_id", "wamid", "webhook_id")

    def __init__(
        self,
        tenant_id: str,
        wamid: str,
        origin: Origin | None,
        sink: EventSink | None = None,
        *,
        direction: str = "inbound",
    ) -> None:
        self.tenant_id = tenant_id
        self.direction = direction  # "outbound": an agent's message, `wamid` its Genesys id (actors/outbound.py)
        self.wamid = wamid
        self.origin = origin  # where the message came from: the relay puts it on its tracking row
        self.webhook_id = origin.webhook_id if origin is not None else ""
        self._sink = sink
        self._notes: list[MessageEvent] | None = None
        self._token: Any = None

    def fields(self) -> dict[str, str]:
        return {"tenant_id": self.tenant_id, "wamid": self.wamid, "webhook_id": self.webhook_id}

    def note(self, event: str, detail: str = "") -> None:
        if self._notes is None:
            self._notes = []
        elif (self._notes[-1].event, self._notes[-1].detail) == (event, detail[:500]):
            return  # the same step again (a hold met by each try of the relay): once is the story
        self._notes.append(
            MessageEvent(
                tenant_id=self.tenant_id,
                wamid=self.wamid,
                webhook_id=self.webhook_id,
                direction=self.direction,
                at=time.time(),
                event=event,
                detail=detail[:500],
            )
        )

    def __enter__(self) -> Trail:
        self._token = MESSAGE_CONTEXT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        MESSAGE_CONTEXT.reset(self._token)
        notes, self._notes = self._notes, None
        if notes and self._sink is not None:
            for event in notes:
                self._sink.event(event)


def current() -> Trail | None:
    context = MESSAGE_CONTEXT.get()
    return context if isinstance(context, Trail) else None


def note(event: str, detail: str = "") -> None:
    """Record an unusual step of the message this task works on; nothing outside a trail."""
    context = MESSAGE_CONTEXT.get()
    if isinstance(context, Trail):
        context.note(event, detail)
