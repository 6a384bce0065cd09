"""The agents' side of the outbound bench: `python -m bench.outbound_gen SPEC.json OUT.json`.

The same open-loop generator as `bench.loadgen` (constant arrival rate, latency from each request's due time, a
bounded backlog), sending what Genesys sends when agents answer: signed Open Messaging outbound webhooks, straight to
the bridge's `POST /webhook/genesys/{tenantId}`. The Genesys simulator's `/sim/agent/send` delivers each one from a
task of its own over httpx (~1 ms of its CPU per message), so it cannot offer thousands a second on a machine it
shares with the bridge; here every request is built and signed before the clock starts, as the inbound generator's.

Request i answers customer i mod `customers` (the inbound plan's wa_id, so the customers who wrote in the inbound
steps are the ones answered), of tenant customer mod tenants, with a text that carries its Genesys id: the audit
finds each message at the Meta simulator by that text. Same body as the simulator's `Agent.build`, same signature
as `genesys_agent.sign` (HMAC-SHA256 of the raw body, base64).
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from bench.loadgen import Spec, Tenant, generate, wa_id
from wabridge.sim.genesys import conversation_id_for
from wabridge.sim.genesys_agent import sign

_encode = msgspec.json.Encoder().encode


def outbound_secret(tenant: Tenant) -> str:
    """The integration's outbound secret token the bench gives each tenant (`genesys_webhook_secret`)."""
    return f"outbound-{tenant.app_secret}"


def integration_id(n: int) -> str:
    return f"integration-{n}"  # as the rig stores its tenants (rig.put_tenants)


def genesys_id(run_tag: str, index: int) -> str:
    return f"{run_tag}-{index:010d}"


def plan(spec: Spec) -> tuple[list[str], list[int], list[int]]:
    """Per request: its Genesys id, tenant index and customer number (a pure function of the spec, for the audit)."""
    ids, tenant_of, customer_of = [], [], []
    for i in range(spec.count):
        customer = i % spec.customers
        ids.append(genesys_id(spec.run_tag, i))
        tenant_of.append(customer % len(spec.tenants))
        customer_of.append(customer)
    return ids, tenant_of, customer_of


def body(message_id: str, tenant_index: int, customer: int, at: str) -> bytes:
    """An agent's text answer, as Genesys posts it (genesys_agent.Agent.build)."""
    integration, to = integration_id(tenant_index), wa_id(customer)
    return _encode({
        "id": message_id,
        "channel": {"id": integration, "platform": "Open", "type": "Private", "messageId": message_id,
                    "to": {"id": to, "idType": "Phone"},
                    "from": {"nickname": "Open Messaging Integration", "id": integration, "idType": "Opaque"},
                    "time": at},
        "conversationId": conversation_id_for(integration, to),
        "direction": "Outbound", "originatingEntity": "Human", "type": "Text",
        "text": f"{message_id} thanks for writing, your order is on its way",
    })  # fmt: skip


def text_id(text: str) -> str:
    """The Genesys id a message's text carries (the inverse of `body`'s text)."""
    return text.split(" ", 1)[0]


def build_requests(spec: Spec) -> list[bytes]:
    """Every request's bytes, signed, before the clock starts."""
    ids, tenant_of, customer_of = plan(spec)
    secrets = [outbound_secret(t) for t in spec.tenants]
    at = "2026-01-01T00:00:00.000Z"  # channel.time: informational for the bridge; one value keeps building cheap
    out = []
    for i in range(spec.count):
        t = tenant_of[i]
        payload = body(ids[i], t, customer_of[i], at)
        head = (f"POST /webhook/genesys/{spec.tenants[t].tenant_id} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
                f"Content-Type: application/json\r\nX-Hub-Signature-256: {sign(payload, secrets[t])}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()  # fmt: skip
        out.append(head + payload)
    return out


def main(argv: list[str]) -> int:
    import json

    spec_path, out_path = argv
    with open(spec_path) as fh:
        spec = Spec.from_json(json.load(fh))
    requests = build_requests(spec)
    import uvloop

    result: dict[str, Any] = uvloop.run(generate(spec, requests))
    with open(out_path, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
