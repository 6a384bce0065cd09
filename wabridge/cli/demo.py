"""`wabridge demo`: the whole bridge on this machine, with nothing installed or configured.

Starts a simulated Genesys Cloud and a simulated Meta Graph API, runs `wabridge serve` on the embedded backends in
a fresh data directory, adds one tenant, sends a signed webhook of every WhatsApp message type through the real
HTTP path (plus a Meta retry of one of them and a forged one), waits until every message is tracked, and prints
what the agent received per conversation and a summary.

Then the agent answers (the other direction, through Genesys's signed outbound webhook): a text and an image to one
customer, typing and a text to another, and to a customer whose 24-hour window has closed first a text (WhatsApp
refuses it: the agent sees ✗ with Meta's reason) and then a template (✓). Meta's status webhooks come back to the
bridge and become Genesys receipts; the demo prints both directions of each conversation with each answer's receipt.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PHONE_NUMBER_ID = "106540352242922"
APP_SECRET = "demo-app-secret"
TENANT = "demo-shop"
OUTBOUND_SECRET = "demo-outbound-secret"  # the Genesys integration's outbound webhook signature secret


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the bridge end to end with simulated Meta and Genesys", description=__doc__)
    p.add_argument("--customers", type=int, default=3, help="customers taking turns (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the data directory and print where it is")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="wabridge-demo-"))
    try:
        return asyncio.run(_demo(data_dir, args.customers))
    finally:
        if args.keep:
            print(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _demo(data_dir: Path, customers: int) -> int:
    from wabridge.sim.genesys import start_genesys_sim
    from wabridge.sim.meta import MetaSim

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    genesys = start_genesys_sim(
        0,
        fetch_media=True,
        clients={"demo-client": "demo-secret"},
        integrations=["demo-integration"],
        bridge_url=base,
        tenant=TENANT,
        outbound_secret=OUTBOUND_SECRET,
        retry_interval=1,
    )
    try:
        async with MetaSim(
            port=0,
            tokens=["demo-whatsapp-token"],
            numbers={PHONE_NUMBER_ID: APP_SECRET},
            bridge_url=f"{base}/webhook/meta",
        ) as meta:
            env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")}
            # The simulators are on loopback: media urls there are fetched, and no proxy is bypassed.
            env.update(
                WABRIDGE_DATA_DIR=str(data_dir),
                WABRIDGE_PORT=str(port),
                WABRIDGE_LOG_LEVEL="WARNING",
                WABRIDGE_GRAPH_API_URL=meta.graph_url,
                WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS="1",
                NO_PROXY="*",
            )
            _add_tenant(env, genesys.url)
            step("starting the bridge (embedded SQLite queue and store, objects in a directory)")
            bridge = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wabridge", "serve", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                await _wait_ready(base, bridge)
                sent = await _send(base, customers, meta.base_url)
                await _wait_tracked(env, sent)
                _print_conversations(genesys)
                inbound_ok = await _print_summary(env, sent, genesys)
                answers_ok = await _agent_answers(base, genesys, meta, customers)
                return inbound_ok or answers_ok
            finally:
                bridge.send_signal(signal.SIGTERM)
                try:
                    _, err = await asyncio.wait_for(bridge.communicate(), 30)
                except TimeoutError:
                    bridge.kill()
                    _, err = await bridge.communicate()
                if bridge.returncode not in (0, -signal.SIGTERM):
                    sys.stderr.write(err.decode(errors="replace")[-3000:])
    finally:
        genesys.stop()


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _add_tenant(env: dict[str, str], genesys_url: str) -> None:
    step(f"adding tenant {TENANT} (phone_number_id {PHONE_NUMBER_ID}), Genesys at {genesys_url}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "wabridge",
            "tenants",
            "add",
            TENANT,
            "--phone-number-id",
            PHONE_NUMBER_ID,
            "--app-secret",
            APP_SECRET,
            "--verify-token",
            "demo-verify",
            "--whatsapp-token",
            "demo-whatsapp-token",
            "--genesys-api-url",
            genesys_url,
            "--genesys-login-url",
            genesys_url,
            "--genesys-client-id",
            "demo-client",
            "--genesys-client-secret",
            "demo-secret",
            "--genesys-integration-id",
            "demo-integration",
            "--genesys-webhook-secret",
            OUTBOUND_SECRET,
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


async def _wait_ready(base: str, bridge: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if bridge.returncode is not None:
                raise SystemExit(f"the bridge exited with status {bridge.returncode}")
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("the bridge did not become ready in 30 s")


async def _send(base: str, customers: int, meta_url: str) -> dict[str, int]:
    from wabridge.sim import webhooks
    from wabridge.sim.meta import SEND_KINDS, build_body, send_kinds

    url = f"{base}/webhook/meta"
    step(f"Meta sends one signed webhook per message type ({len(SEND_KINDS)} kinds) from {customers} customers")
    summary = await send_kinds(
        url, APP_SECRET, PHONE_NUMBER_ID, kinds=SEND_KINDS, customers=customers, sim_url=meta_url
    )
    async with httpx.AsyncClient() as client:
        body = build_body(PHONE_NUMBER_ID, ["text"], 0)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": webhooks.sign(body, APP_SECRET)}
        first = await client.post(url, content=body, headers=headers)
        retry = await client.post(url, content=body, headers=headers)
        step(
            f"Meta retries a webhook it already sent: {first.status_code} then {retry.status_code} "
            "(the bridge must deliver it once)"
        )
        forged = await client.post(url, content=body, headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64})
        step(f"a forged webhook (bad signature) is refused: {forged.status_code}")
    messages = summary.messages + 1  # the retried text is one message
    ok = summary.statuses.get("200", 0)
    step(f"sent {summary.posts} webhooks ({summary.messages} customer messages): {ok} answered 200")
    return {"posts": summary.posts + 2, "messages": messages, "accepted": ok + int(first.status_code == 200)}


async def _wait_tracked(env: dict[str, str], sent: dict[str, int], timeout: float = 60.0) -> None:
    """Until every customer message is tracked in a final state (delivered, failed, ...)."""
    from wabridge.adapters.backends import open_backends
    from wabridge.engine.settings import load_settings

    settings = load_settings(env)
    deadline = time.monotonic() + timeout
    async with open_backends(settings, ports=("store",)) as backends:
        while time.monotonic() < deadline:
            rows = await backends.store.list_tracking(tenant_id=TENANT, limit=100_000)
            settled = [r for r in rows if r.status != "received"]
            if len(settled) >= sent["messages"] and sum(r.duplicates for r in rows) >= 1:
                return
            await asyncio.sleep(0.3)


def _describe(body: dict) -> str:
    parts = []
    if body.get("text"):
        parts.append(body["text"].replace("\n", " / "))
    for item in body.get("content", []):
        attachment = item.get("attachment", {})
        name = attachment.get("filename") or attachment.get("mime", "")
        parts.append(f"[{attachment.get('mediaType')} {name}: {attachment.get('url', '')[:60]}…]")
    return " ".join(parts)[:150]


def _print_conversations(genesys) -> None:
    print()
    print("What the Genesys agent received, per conversation:")
    by_conversation: dict[str, list[dict]] = {}
    for received in genesys.messages():
        by_conversation.setdefault(received["conversationId"], []).append(received)
    for conversation_id, items in by_conversation.items():
        sender = items[0]["body"]["channel"]["from"]
        who = sender.get("nickname") or sender["id"]
        print(f"\n  conversation {conversation_id} — {who} ({sender['idType']} {sender['id']})")
        for n, received in enumerate(items, 1):
            media = received.get("media") or []
            fetched = ""
            if media:
                ok = all(m.get("status") == 200 for m in media)
                fetched = "  (media downloaded by Genesys: " + ("ok" if ok else "FAILED") + ")"
            print(f"    {n:2}. {_describe(received['body'])}{fetched}")
    print()


async def _print_summary(env: dict[str, str], sent: dict[str, int], genesys) -> int:
    from wabridge.adapters.backends import open_backends
    from wabridge.engine.settings import load_settings

    async with open_backends(load_settings(env), ports=("store",)) as backends:
        rows = await backends.store.list_tracking(tenant_id=TENANT, limit=100_000)
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    duplicates = sum(row.duplicates for row in rows)
    media_notices = sum(1 for row in rows if row.status == "delivered" and row.error)
    received = len(genesys.messages())
    print("Summary")
    print(f"  webhooks sent           {sent['posts']} ({sent['accepted']} accepted, 1 forged and refused)")
    print(f"  customer messages       {sent['messages']} (one of them sent twice by Meta)")
    print(
        f"  delivered               {by_status.get('delivered', 0)}"
        + (f" ({media_notices} with media replaced by a notice)" if media_notices else "")
    )
    print(f"  failed                  {by_status.get('failed', 0)}")
    print(f"  duplicates dropped      {duplicates}")
    print(f"  received by Genesys     {received}")
    ok = by_status.get("delivered", 0) == sent["messages"] == received and not by_status.get("failed")
    print("  result                  " + ("every message delivered once, in order" if ok else "SOMETHING WENT WRONG"))
    return 0 if ok else 1


# --- the other direction: the agent answers -------------------------------------------------------------------------


async def _agent_answers(base: str, genesys, meta, customers: int) -> int:
    """The agent answers through Genesys's outbound webhook; Meta's statuses come back as receipts. 0 when every
    answer got the receipt it should."""
    from wabridge.sim import webhooks
    from wabridge.sim.meta import customer_wa_id

    late = customer_wa_id(customers)  # a customer who wrote more than 24 hours ago
    async with httpx.AsyncClient(timeout=60) as client:
        body = webhooks.webhook(PHONE_NUMBER_ID, [webhooks.message("text", wa_id=late, text="Is my order on its way?")])
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": webhooks.sign(body, APP_SECRET)}
        await client.post(f"{base}/webhook/meta", content=body, headers=headers)
        await client.post(
            f"{meta.base_url}/sim/window", json={"phone_number_id": PHONE_NUMBER_ID, "wa_id": late, "ago": 25 * 3600}
        )
        conversations = await _conversations_of(client, genesys.url, [customer_wa_id(0), customer_wa_id(1), late])

        async def agent(conversation: str, **spec) -> dict:
            answer = await client.post(
                f"{genesys.url}/sim/agent/send", params={"wait": "true"}, json={"conversationId": conversation, **spec}
            )
            answer.raise_for_status()
            return answer.json()

        first, second = conversations[customer_wa_id(0)], conversations[customer_wa_id(1)]
        step(
            "the agent answers: a text and an image, typing then a text, and to a customer whose 24-hour window "
            "closed a text (WhatsApp refuses it) and then a template"
        )
        expected = {}
        expected[(await agent(first, type="text", text="Thanks for writing! Here is where to find us."))["id"]] = (
            "Delivered"
        )
        expected[
            (
                await agent(
                    first, type="attachment", mediaType="Image", mime="image/png", filename="map.png", text="our shop"
                )
            )["id"]
        ] = "Delivered"
        await agent(second, type="typing")
        expected[(await agent(second, type="text", text="Let me check that for you."))["id"]] = "Delivered"
        expected[(await agent(conversations[late], type="text", text="Your order shipped yesterday."))["id"]] = "Failed"
        expected[
            (
                await agent(
                    conversations[late],
                    type="template",
                    template={
                        "id": "demo@order_update",
                        "language": "en-US",
                        "parameters": {"1": "A-1042"},
                        "text": "Your order {{1}} is on its way.",
                    },
                )
            )["id"]
        ] = "Delivered"
        got = await _wait_receipts(client, genesys.url, list(expected))
    _print_two_way(genesys)
    ok = got == expected
    print("Answers")
    print(f"  sent by the agent       {len(expected)} (+1 typing indicator)")
    print(f"  delivered (receipt ✓)   {sum(1 for v in got.values() if v == 'Delivered')}")
    print(f"  failed (receipt ✗)      {sum(1 for v in got.values() if v == 'Failed')} (outside the 24-hour window)")
    print(f"  sent to WhatsApp        {len(meta.outbound.sent)}")
    print(
        "  result                  "
        + ("every answer sent once, and the agent saw how it went" if ok else f"SOMETHING WENT WRONG: {got}")
    )
    return 0 if ok else 1


async def _conversations_of(
    client: httpx.AsyncClient, genesys_url: str, customers: list[str], timeout: float = 30.0
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        found = {
            m["body"]["channel"]["from"]["id"]: m["conversationId"]
            for m in (await client.get(f"{genesys_url}/sim/messages")).json()
        }
        if all(c in found for c in customers) or time.monotonic() > deadline:
            return {c: found[c] for c in customers if c in found}
        await asyncio.sleep(0.2)


async def _wait_receipts(
    client: httpx.AsyncClient, genesys_url: str, ids: list[str], timeout: float = 60.0
) -> dict[str, str | None]:
    deadline = time.monotonic() + timeout
    while True:
        records = {r["id"]: r for r in (await client.get(f"{genesys_url}/sim/agent/outbound")).json()}
        got = {i: (records[i]["receipts"][-1]["status"] if records.get(i, {}).get("receipts") else None) for i in ids}
        if all(got.values()) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.3)


def _print_two_way(genesys) -> None:
    print()
    print("Both directions, as the agent sees them:")
    for conversation_id, conversation in genesys.conversations().items():
        answers = [e for e in conversation.get("timeline", []) if e["direction"] == "Outbound"]
        if not answers:
            continue
        print(f"\n  conversation {conversation_id} — {conversation['fromId']}")
        for entry in conversation["timeline"]:
            if entry["direction"] == "Inbound":
                what = "(typing)" if entry["kind"] == "typing" else entry.get("text") or "[media]"
                print(f"    customer  {what.replace(chr(10), ' / ')[:90]}")
            elif entry["kind"] == "typing":
                print("    agent     (typing…)")
            else:
                mark = {"Delivered": "✓ delivered", "Failed": "✗ failed"}.get(entry.get("receipt"), "… no receipt")
                reason = entry.get("reason")
                why = f" — {reason['code']}: {reason['message'][:70]}" if reason else ""
                text = entry.get("text") or ("[image]" if entry.get("content") else f"[{entry['type']}]")
                print(f"    agent     {text[:60]:<60} {mark}{why}")
    print()
