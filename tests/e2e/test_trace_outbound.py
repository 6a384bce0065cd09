"""`wabridge trace` and `wabridge messages` for an agent's message (issue 17, outbound): found by its Genesys id or
its webhook id, its story told with Meta's wamids, WhatsApp's statuses from `meta_status`, the receipt, and its raw
body read from `webhooks-outbound` (an inbound one's from `webhooks-inbound`). The rows are written as the agent's
side writes them (actors/outbound.py, statuses.py), in the real store; the commands run as the operator runs them.
On the embedded backends and on the real servers."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.e2e.harness import TENANT, run_cli, tenant_config
from wabridge.actors.archive import ArchiveWriter
from wabridge.engine.settings import settings_environment
from wabridge.adapters.backends import open_backends
from wabridge.ports import WEBHOOKS_BUCKET, WEBHOOKS_OUTBOUND_BUCKET, TrackingRecord
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio

CUSTOMER = "15550000017"
SENT_ID, REFUSED_ID, INBOUND_WAMID = "genesys-msg-sent-1", "genesys-msg-refused-2", "wamid.inbound-3"
WAMIDS = ("wamid.part-one", "wamid.part-two")
AGENT_BODY = json.dumps({"id": SENT_ID, "type": "Text", "text": "two parts", "direction": "Outbound"}).encode()
CUSTOMER_BODY = b'{"object":"whatsapp_business_account","entry":[]}'


async def put_rows(settings: Settings) -> dict[str, str]:
    """Two agent messages (one sent in two parts, then sent/delivered/read and Delivered; one refused by Meta) and a
    customer's, each with its raw body archived in its direction's bucket. The archive keys by id."""
    now = time.time()
    async with open_backends(settings, ports=("store", "objects")) as backends:
        await backends.store.put_tenant(tenant_config("http://127.0.0.1:9"))  # find_tracking looks in its rows
        keys = {}
        for bucket, message_id, body in ((WEBHOOKS_OUTBOUND_BUCKET, SENT_ID, AGENT_BODY),
                                         (WEBHOOKS_BUCKET, INBOUND_WAMID, CUSTOMER_BODY)):  # fmt: skip
            archive = ArchiveWriter(backends.objects, bucket=bucket, on_failure=lambda reason, n: None)
            keys[message_id] = archive.append(TENANT, f"webhook-{message_id}", now, body)
            await archive.aclose(30)
        statuses = {"parts": ["read", "read"], "at": {"sent": now + 1, "delivered": now + 2, "read": now + 3},
                    "receipt": "Delivered"}  # fmt: skip
        refused = {"parts": ["failed"], "receipt": "Failed",
                   "reason": "MessageNotAllowed: outside the 24-hour window, send a template"}  # fmt: skip
        common = {"tenant_id": TENANT, "customer_id": CUSTOMER, "attempts": 1, "created_at": now, "shard": 1}
        await backends.store.write_tracking([
            TrackingRecord(wamid=SENT_ID, genesys_message_id=SENT_ID, direction="outbound", type="text",
                           status="delivered", conversation_id="conversation-1", meta_ids=" ".join(WAMIDS),
                           meta_status=json.dumps(statuses), webhook_id=f"webhook-{SENT_ID}", received_at=now,
                           archive_key=keys[SENT_ID], updated_at=now + 3, **common),
            TrackingRecord(wamid=REFUSED_ID, genesys_message_id=REFUSED_ID, direction="outbound", type="text",
                           status="failed", error=refused["reason"], meta_status=json.dumps(refused),
                           webhook_id=f"webhook-{REFUSED_ID}", received_at=now + 4, updated_at=now + 4, **common),
            TrackingRecord(wamid=INBOUND_WAMID, direction="inbound", type="text", status="delivered",
                           genesys_message_id="genesys-of-inbound", webhook_id=f"webhook-{INBOUND_WAMID}",
                           received_at=now - 5, archive_key=keys[INBOUND_WAMID], updated_at=now - 4, **common),
        ])  # fmt: skip
    return keys


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")} | settings_environment(settings)
    return await run_cli(*args, env=env)


async def trace(settings: Settings, *args: str) -> list[dict]:
    status, out, err = await cli(settings, "trace", *args, "--json")
    assert status == 0, err
    return json.loads(out)["messages"]


async def test_an_agents_message_is_traced_with_its_wamids_whatsapps_statuses_its_receipt_and_its_raw_body(
    backend_settings: Settings,
) -> None:
    settings = backend_settings
    keys = await put_rows(settings)

    [story] = await trace(settings, SENT_ID)
    assert story["direction"] == "outbound" and story["meta_wamids"] == list(WAMIDS)
    steps = [s["step"] for s in story["steps"]]
    assert steps == ["received", "whatsapp sent", "whatsapp delivered", "whatsapp read", "delivered", "receipt"]
    received, *_, handed, receipt = story["steps"]
    assert f"webhooks-outbound/{keys[SENT_ID]}" in received["detail"]
    assert " ".join(WAMIDS) in handed["detail"] and "Meta accepted" in handed["detail"]
    assert receipt["detail"].startswith("Delivered")
    assert story["meta"]["receipt"] == "Delivered" and story["meta"]["parts"] == ["read", "read"]

    # By its webhook id, and its queue message id, the same story; --raw reads the body from webhooks-outbound.
    assert [m["wamid"] for m in await trace(settings, f"webhook-{SENT_ID}")] == [SENT_ID]
    [with_raw] = await trace(settings, f"webhook-{SENT_ID}:{TENANT}", "--raw")
    assert with_raw["raw"] == AGENT_BODY.decode() and with_raw["raw_error"] is None
    [inbound] = await trace(settings, INBOUND_WAMID, "--raw")  # a customer's: from webhooks-inbound
    assert inbound["raw"] == CUSTOMER_BODY.decode() and "meta" not in inbound

    # Refused by Meta: failed, the reason, the Failed receipt; no raw body archived for it says so.
    [refused] = await trace(settings, REFUSED_ID, "--raw")
    assert [s["step"] for s in refused["steps"]] == ["received", "failed", "receipt"]
    assert "24-hour window" in refused["steps"][-1]["detail"] and refused["steps"][-1]["detail"].startswith("Failed")
    assert refused["raw"] is None and "no archive key" in refused["raw_error"]

    status, out, err = await cli(settings, "trace", SENT_ID)
    assert status == 0, err
    assert "outbound" in out and "Meta wamids wamid.part-one wamid.part-two" in out and "whatsapp read" in out


async def test_messages_shows_each_direction_and_for_the_agents_messages_whatsapps_status_and_the_receipt(
    backend_settings: Settings,
) -> None:
    settings = backend_settings
    await put_rows(settings)

    status, out, err = await cli(settings, "messages", "--customer", CUSTOMER)
    assert status == 0, err
    header, *lines = out.splitlines()
    assert header.split()[-3:] == ["attempts", "whatsapp", "error"]
    by_id = {line.split()[2]: line for line in lines}
    assert set(by_id) == {SENT_ID, REFUSED_ID, INBOUND_WAMID}
    assert "outbound" in by_id[SENT_ID] and "read, receipt Delivered" in by_id[SENT_ID]
    assert "outbound" in by_id[REFUSED_ID] and "failed, receipt Failed" not in by_id[REFUSED_ID]  # no status came
    assert "no status yet, receipt Failed" in by_id[REFUSED_ID]
    assert "inbound" in by_id[INBOUND_WAMID] and "receipt" not in by_id[INBOUND_WAMID]

    status, out, err = await cli(settings, "messages", "--direction", "out", "--json")
    assert status == 0, err
    rows = {r["wamid"]: r for r in json.loads(out)}
    assert set(rows) == {SENT_ID, REFUSED_ID}
    assert rows[SENT_ID]["meta"]["at"].keys() == {"sent", "delivered", "read"} and rows[SENT_ID]["meta_ids"]
    assert rows[REFUSED_ID]["meta"]["receipt"] == "Failed"
