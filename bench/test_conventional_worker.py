"""The conventional pipeline's worker sends what the bridge sends: the same Open Messaging JSON for a text message,
accepted by the Genesys simulator; and the profile summary of the pipelines scenario reads py-spy's raw output."""

from __future__ import annotations

import json

import pytest

from bench.comparators.conventional_worker import Webhook, open_message
from bench.scenarios.pipelines import top_functions
from wabridge.codecs.transform import Inbound, encode_genesys, transform
from wabridge.sim import webhooks
from wabridge.sim.genesys import validate_inbound


@pytest.mark.parametrize("name", ["Customer 16500000001", "Ana", "Ana Maria da Silva", ""])
def test_the_conventional_body_is_the_bridges(name: str) -> None:
    message = webhooks.message("text", wa_id="16500000001", wamid="wamid.X1")
    body = json.loads(webhooks.webhook("106540352240000", [message]))
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = name
    raw = json.dumps(body).encode()
    hook = Webhook.model_validate_json(raw)
    value = hook.entry[0].changes[0].value
    conventional = open_message(value.messages[0], value).model_dump_json(by_alias=True, exclude_none=True)
    (bridge,) = transform(raw)
    assert isinstance(bridge, Inbound)
    assert json.loads(conventional) == json.loads(encode_genesys(bridge.message))
    validate_inbound(conventional.encode())


def test_top_functions_from_raw_stacks() -> None:
    raw = "main (a.py:1);run (b.py:2);post (c.py:3) 6\nmain (a.py:1);run (b.py:2) 3\nmain (a.py:1);idle (d.py:4) 1\n"
    top = top_functions(raw)
    assert top["samples"] == 10
    assert top["self"][0] == ["post (c.py:3)", 0.6]
    total = dict(map(tuple, top["total"]))
    assert total["post (c.py:3)"] == 0.6
    assert "main (a.py:1)" not in total  # under every sample
