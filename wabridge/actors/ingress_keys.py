"""The keys of a request: which tenant ids and phone_number_ids are worth a lookup, and the id a POST is given."""

from __future__ import annotations

import os

MAX_KEY = 128  # characters of a tenant id or phone_number_id worth looking up


def _could_be_stored(key: str) -> bool:
    """Whether a tenant id or phone_number_id from the request could be one the store holds: PostgreSQL text never
    holds NUL (asking for one fails the query, a 500 before any signature check), so no tenant has such a key; nor one
    longer than MAX_KEY (an unsigned body must not make the cache and the store look up a megabyte)."""
    return len(key) <= MAX_KEY and "\x00" not in key


def _new_webhook_id(received_at: float) -> str:
    # Time first (archive keys sort by arrival), then 40 random bits: unique per POST without coordination.
    return f"{int(received_at * 1000):011x}{os.urandom(5).hex()}"
