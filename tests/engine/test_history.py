"""origin_fields: the one copy of a delivery's origin onto a tracking row, for the relay's rows and the sender's."""

from __future__ import annotations

from wabridge.engine.history import Origin, origin_fields
from wabridge.ports import TrackingRecord


def test_the_origin_fields_are_the_tracking_rows_own() -> None:
    origin = Origin("wh-1", shard=3, archive_key="acme/2026-01-01/0.ndjson")
    fields = origin_fields(origin, 1_700_000_000.5)
    assert fields == {
        "webhook_id": "wh-1",
        "shard": 3,
        "archive_key": "acme/2026-01-01/0.ndjson",
        "received_at": 1_700_000_000.5,
    }
    row = TrackingRecord(wamid="w", tenant_id="t", status="delivered", created_at=0.0, updated_at=0.0, **fields)
    assert (row.webhook_id, row.shard, row.archive_key, row.received_at) == (
        "wh-1",
        3,
        origin.archive_key,
        1_700_000_000.5,
    )
