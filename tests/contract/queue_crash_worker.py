"""A worker process for the crash test: consumes from the SQLite queue at argv[1], holds every queue message unsettled,
says "holding <message_id>" on stdout, then waits to be killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from wabridge.ports import QueueMessage
from wabridge.adapters.queue.sqlite import SqliteQueue
from wabridge.engine.settings import Settings


async def main(data_dir: Path) -> None:
    queue = SqliteQueue(Settings(data_dir=data_dir))
    await queue.open()

    async def hold(queue_message: QueueMessage) -> None:
        print("holding", queue_message.message_id, flush=True)

    await queue.consume(hold)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
