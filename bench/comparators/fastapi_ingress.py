"""The conventional ingress most teams would write: uvicorn + FastAPI + pydantic + aio-pika, each request awaiting
its own publisher confirm before answering 200.

`python -m bench.comparators.fastapi_ingress PORT` with BENCH_TENANTS (JSON {phone_number_id: app_secret}),
BENCH_AMQP_URL and BENCH_QUEUE (a quorum queue it declares; the bench deletes it afterwards).
Same work as the bridge's ingress for the comparison: HMAC-SHA256 over the raw body in constant time, a typed parse
of the envelope, the tenant looked up by phone_number_id, a persistent publish to a quorum queue, 200 after the confirm.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys

import aio_pika
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel


class Metadata(BaseModel):
    phone_number_id: str
    display_phone_number: str | None = None


class Value(BaseModel):
    messaging_product: str
    metadata: Metadata
    contacts: list[dict] = []
    messages: list[dict] = []
    statuses: list[dict] = []


class Change(BaseModel):
    field: str
    value: Value


class Entry(BaseModel):
    id: str
    changes: list[Change]


class Webhook(BaseModel):
    object: str
    entry: list[Entry]


TENANTS: dict[str, bytes] = {k: v.encode() for k, v in json.loads(os.environ.get("BENCH_TENANTS", "{}")).items()}
app = FastAPI()
state: dict = {}


@app.on_event("startup")
async def startup() -> None:
    connection = await aio_pika.connect_robust(os.environ["BENCH_AMQP_URL"])
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(os.environ["BENCH_QUEUE"], durable=True, arguments={"x-queue-type": "quorum"})
    state.update(connection=connection, channel=channel)


@app.on_event("shutdown")
async def shutdown() -> None:
    await state["connection"].close()


@app.post("/webhook/meta")
async def webhook(request: Request) -> Response:
    body = await request.body()
    hook = Webhook.model_validate_json(body)
    phone = hook.entry[0].changes[0].value.metadata.phone_number_id
    secret = TENANTS.get(phone)
    if secret is None:
        return Response(status_code=200)
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-hub-signature-256", "")):
        return Response(status_code=401)
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await state["channel"].default_exchange.publish(message, routing_key=os.environ["BENCH_QUEUE"])  # awaits the confirm
    return Response(content=b"ok", status_code=200)


def main(argv: list[str]) -> int:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(argv[0]), log_level="warning", loop="uvloop", http="httptools",
                access_log=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
