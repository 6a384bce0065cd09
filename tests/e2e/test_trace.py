"""Finding any message (issue 19): `wabridge trace` tells one message's story in time order, by its wamid, its Genesys
message id or its webhook id; `wabridge messages` lists a customer's; the bridge's log lines about a message carry its
tenant, wamid and webhook id. On the embedded backends and on the real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import TENANT, Bridge, Genesys, put_tenant, running_bridge
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks
from wabridge.sim.meta import MetaSim

pytestmark = pytest.mark.anyio

CUSTOMER = "15550000019"


async def trace(bridge: Bridge, message_id: str) -> list[dict]:
    status, out, err = await bridge.cli("trace", message_id, "--json")
    assert status == 0, err
    return json.loads(out)["messages"]


def steps(message: dict) -> list[str]:
    return [s["step"] for s in message["steps"]]


def lines_about(bridge: Bridge, wamid: str) -> list[dict]:
    """The bridge's JSON log lines that name the wamid anywhere (what `grep WAMID` finds)."""
    return [json.loads(line) for line in bridge.stderr().splitlines() if wamid in line and line.startswith("{")]


async def test_a_delivered_text_and_photo_traced_by_each_of_their_ids_and_listed_for_their_customer(
    bridge: Bridge, genesys: Genesys
) -> None:
    text, photo = webhooks.message("text", wa_id=CUSTOMER), webhooks.message("image", wa_id=CUSTOMER)
    wamids = await bridge.send(text, photo)
    rows = await bridge.wait_tracked(wamids)
    assert [rows[w].status for w in wamids] == ["delivered"] * 2

    [story] = await trace(bridge, photo["id"])
    assert steps(story) == ["received", "delivered"]
    assert story["webhook_id"] and story["shard"] is not None and story["archive_key"].startswith(f"{TENANT}/")
    assert story["customer_id"] == CUSTOMER and story["media_key"].startswith(f"{TENANT}/image/")
    received, delivered = story["steps"]
    assert story["webhook_id"] in received["detail"] and story["archive_key"] in received["detail"]
    assert received["ts"] <= delivered["ts"]
    assert story["genesys_message_id"] in delivered["detail"] and story["conversation_id"] in delivered["detail"]
    assert "payload" not in story, "the message text stays out of the trace"

    # The same story by its Genesys message id and by its webhook id.
    assert [m["wamid"] for m in await trace(bridge, story["genesys_message_id"])] == [photo["id"]]
    assert [m["wamid"] for m in await trace(bridge, story["webhook_id"])] == [photo["id"]]
    assert [m["wamid"] for m in await trace(bridge, f"{story['webhook_id']}:{TENANT}")] == [photo["id"]]

    status, out, err = await bridge.cli("trace", text["id"])
    assert status == 0, err
    assert out.splitlines()[0].startswith(f"{text['id']}  tenant {TENANT}  inbound  text")
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["received", "delivered"]

    status, out, err = await bridge.cli("messages", "--customer", CUSTOMER)
    assert status == 0, err
    header, *table = out.splitlines()
    assert header.split()[:4] == ["received", "tenant", "wamid", "customer"]
    assert [line.split()[2] for line in table] == [photo["id"], text["id"]], "newest first"
    assert all(line.split()[6] == "delivered" for line in table)
    status, out, _ = await bridge.cli("messages", "--customer", CUSTOMER, "--status", "failed", "--json")
    assert (status, json.loads(out)) == (0, [])
    status, out, _ = await bridge.cli("messages", "--tenant", TENANT, "--limit", "1", "--json")
    assert [m["wamid"] for m in json.loads(out)] == [photo["id"]]

    status, out, err = await bridge.cli("trace", "wamid.never-seen")
    assert (status, out) == (1, "") and len(err.strip().splitlines()) == 1 and "wamid.never-seen" in err


@pytest.mark.far_end_hold(0)  # Genesys down past the hold: failed at once, replayable
async def test_a_message_failed_past_a_genesys_outage_and_replayed_is_traced_step_by_step(
    bridge: Bridge, genesys: Genesys
) -> None:
    await genesys.fault(status=500, count=-1)
    (wamid,) = await bridge.send(webhooks.message("text", wa_id=CUSTOMER))
    assert (await bridge.wait_tracked([wamid]))[wamid].status == "failed"
    await genesys.clear_faults()
    status, out, err = await bridge.cli("replay")
    assert status == 0 and "1 delivered" in out, err

    [story] = await trace(bridge, wamid)
    assert steps(story) == ["received", "retried", "retried", "failed", "replayed", "delivered"]
    times = [s["ts"] for s in story["steps"]]
    assert times == sorted(times)
    assert "HTTP 500" in story["steps"][1]["detail"] and "HTTP 500" in story["steps"][3]["detail"]
    assert story["status"] == "delivered" and story["webhook_id"], "the replay kept where it came from"

    lines = lines_about(bridge, wamid)
    assert lines, "grep on the wamid finds the bridge's lines about it"
    assert {(line.get("tenant_id"), line.get("webhook_id")) for line in lines} == {(TENANT, story["webhook_id"])}
    assert any(line["msg"] == "delivery failed" for line in lines)


@pytest.fixture
async def one_attempt_bridge(
    backend_settings: Settings, genesys: Genesys, meta: MetaSim, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """A bridge whose queue gives a webhook one attempt: a drain while its Genesys is down dead-letters what waits."""
    settings = backend_settings.replace(graph_api_url=meta.graph_url, delivery_limit=1, far_end_retry_max=1)
    await put_tenant(settings, genesys.url)
    async with running_bridge(settings, tmp_path / "bridge") as running:
        yield running


async def test_a_dead_lettered_message_is_traced_with_its_hold_and_the_grep_finds_it(
    one_attempt_bridge: Bridge, genesys: Genesys
) -> None:
    bridge = one_attempt_bridge
    await genesys.fault(status=503, count=-1)
    (wamid,) = await bridge.send(webhooks.message("text", wa_id=CUSTOMER))
    for _ in range(300):
        if "of tenant shop is down" in bridge.stderr():
            break
        await asyncio.sleep(0.1)
    assert await bridge.terminate() == 0, bridge.stderr()[-3000:]  # a drain: the held message gives up its attempt

    [story] = await trace(bridge, wamid)
    assert story["status"] == "dead-lettered"
    assert steps(story) == ["received", "retried", "retried", "held", "dead-lettered"]
    assert "genesys down" in story["steps"][3]["detail"]
    assert "attempt 1 of 1" in story["steps"][-1]["detail"]

    lines = lines_about(bridge, wamid)
    assert {line["msg"].split(" ")[0] for line in lines} >= {"genesys", "delivery"}, [l["msg"] for l in lines]
    assert all(line.get("webhook_id") == story["webhook_id"] for line in lines)
    dead = [line for line in lines if "dead-lettered" in line["msg"]]
    assert dead and dead[0]["wamids"] == [wamid]
