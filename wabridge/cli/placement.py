"""Where `wabridge tenants add` puts a new tenant: the queue shard holding the fewest tenants.

A shard has one active consumer at a time and a tenant lives in one shard, so the tenants per shard decide how
evenly workers share the load; the queue's hash of the tenant ids leaves that to their names (ten tenants over four
shards landed 1/4/2/3). A tenant's shard is kept from then on: moving it while messages are queued could reorder
them. Tenants stored before placement (no shard) are routed by the hash and not counted here: its shard is the
broker's choice, not known to the bridge.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def least_loaded_shard(placed: Iterable[int | None], shards: int) -> int:
    """The shard in 0..shards-1 with the fewest of the `placed` tenants' shards (ties: the lowest number); shards
    out of range (WABRIDGE_SHARDS lowered since) and None are not counted."""
    counts = Counter(s for s in placed if s is not None and 0 <= s < shards)
    return min(range(shards), key=lambda s: (counts[s], s))
