"""The ingress's Genesys route: an agent's message, signed by the tenant's integration, queued for the worker."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from wabridge.actors.archive import ArchiveWriter
from wabridge.actors.directory import TenantDirectory
from wabridge.actors.ingress_keys import _could_be_stored, _new_webhook_id
from wabridge.actors.ingress_metrics import OUTBOUND_WEBHOOKS
from wabridge.actors.ingress_signatures import _genesys_signature_ok
from wabridge.codecs.routing import QueuedWebhook, encode_queued
from wabridge.http.server import JSON, Response
from wabridge.ports import BackendUnavailable

log = logging.getLogger("wabridge.ingress")

MAX_QUEUE_MESSAGE_ID = 255  # bytes: an AMQP short string (message_id)

_ANY_JSON = msgspec.json.Decoder()


def _json(code: int, **fields: str) -> Response:
    return Response(code, JSON, msgspec.json.encode(fields))


class GenesysWebhooks:
    """The Genesys part of IngressApp."""

    if TYPE_CHECKING:
        backends: Any
        directory: TenantDirectory | None
        outbound_archive: ArchiveWriter | None

    # --- Genesys: an agent's message ----------------------------------------------------------------------------------

    async def receive_genesys(self, tenant_id: str, headers: Mapping[str, str], body: bytes) -> Response:
        outcome, response = await self._genesys_webhook(tenant_id, headers, body)
        OUTBOUND_WEBHOOKS.labels(outcome).inc()
        return response

    async def _genesys_webhook(self, tenant_id: str, headers: Mapping[str, str], body: bytes) -> tuple[str, Response]:
        received_at = time.time()
        assert self.directory is not None and self.outbound_archive is not None
        try:
            tenant = await self.directory.by_id(tenant_id) if _could_be_stored(tenant_id) else None
            if tenant is None:
                return "unknown_tenant", _json(404, error="unknown tenant")
            if tenant.genesys_webhook_secret is None:
                return "no_secret", _json(401, error="no Genesys webhook secret is configured for this tenant")
            signature = headers.get("x-hub-signature-256") or ""
            if not _genesys_signature_ok(tenant.genesys_webhook_secret.reveal(), body, signature):
                return "bad_signature", _json(401, error="missing or bad signature")
            # Signed: only now is the body read, whole, only to refuse what is not a JSON object. Whole, not through
            # the codec's typed decoder, which skips the fields it does not know unchecked (bad UTF-8, 1e400 there):
            # what one field passes, another would refuse (tests/fuzz/test_outbound_ingress_fuzz.py).
            try:
                whole = _ANY_JSON.decode(body)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
                return "malformed", _json(400, error=f"malformed webhook: {exc}"[:200])
            if not isinstance(whole, dict):
                return "malformed", _json(400, error="malformed webhook: not a JSON object")
            genesys_id = whole.get("id")
            webhook_id = _new_webhook_id(received_at)
            # The Genesys id names the queue message when it can (Genesys retries one message up to 5 times);
            # one too long for AMQP's short string, or none, gets this POST's id, as inbound webhooks do.
            usable = isinstance(genesys_id, str) and genesys_id and "\x00" not in genesys_id
            message_id = f"{genesys_id}:{tenant.tenant_id}" if usable else ""
            if not message_id or len(message_id.encode()) > MAX_QUEUE_MESSAGE_ID:
                message_id = f"{webhook_id}:{tenant.tenant_id}"
            key = self.outbound_archive.append(tenant.tenant_id, webhook_id, received_at, body)
            message = encode_queued(QueuedWebhook(tenant.tenant_id, received_at, key, body))
            await self.backends.outbound.publish(tenant.tenant_id, message, message_id=message_id, shard=tenant.shard)
        except BackendUnavailable as exc:
            log.warning("answering Genesys 503: %s", exc)
            return "unavailable", _json(503, error="backend unavailable, retry later")
        return "queued", _json(200, status="ok")
