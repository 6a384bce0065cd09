"""The shard a message is published to: its tenant's placed shard (TenantConfig.shard) when it has one the queue
has, else the queue's own hash of the tenant id (both adapters: None).

A placed shard out of range (WABRIDGE_SHARDS lowered below it) must not fail a publish: the message goes by the
hash instead, and the first such publish of each shard logs an error so the operator places the tenant again.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_reported: set[tuple[str, int]] = set()


def placed_shard(queue_name: str, shard: int | None, shards: int) -> int | None:
    """`shard` when the queue has it; None (route by hash) when there is none or it is out of range."""
    if shard is None or 0 <= shard < shards:
        return shard
    if (queue_name, shard) not in _reported:
        _reported.add((queue_name, shard))
        log.error(
            "a tenant is placed on shard %d but queue %s has shards 0..%d: its messages go by the hash of its id "
            "until it is placed again (wabridge tenants add … --shard N)",
            shard,
            queue_name,
            shards - 1,
        )
    return None
