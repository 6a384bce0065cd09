"""The ingress's Meta route: the verification handshake and a webhook (the steps: ingress.py's docstring)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wabridge.actors.archive import ArchiveWriter
from wabridge.actors.directory import TenantDirectory
from wabridge.actors.ingress_keys import _could_be_stored, _new_webhook_id
from wabridge.actors.ingress_metrics import PUBLISH_SECONDS, QUEUED, UNROUTED
from wabridge.actors.ingress_signatures import _signature_ok
from wabridge.codecs.routing import (
    MalformedWebhook,
    QueuedWebhook,
    Routing,
    encode_queued,
    read_routing,
    split_by_tenant,
    without_lone_surrogates,
)
from wabridge.http.server import Response, query_params, text
from wabridge.ports import TenantConfig, TrackingRecord, TrackingStatus

log = logging.getLogger("wabridge.ingress")

UNROUTED_ARCHIVE_TENANT = "_unrouted"  # archive prefix of bodies no tenant owns (tracked with tenant_id "")
# Archive prefix of bodies that hold more than one tenant's part (tenants of one Meta app, or numbers nobody owns):
# kept once there, never copied under each tenant, whose prefix holds its own customers' messages only.
SHARED_ARCHIVE_TENANT = "_shared"
MAX_CHALLENGE = 1024  # characters; Meta sends a short number
# Before the signature check every phone_number_id a body names costs a directory lookup: bounded per request. One
# Meta app's webhook concerns the numbers of its business accounts, a handful; ids are ~15 digits.
MAX_NUMBERS = 100
# A body no tenant owns is kept only when one of our Meta apps signed it; this many app secrets are tried at most, so
# an unsigned body costs a bounded number of HMACs (tenants of one Meta app share its secret: usually a handful).
MAX_UNROUTED_SECRETS = 16


def _readable_text(body: bytes) -> bool:
    """Whether the body is UTF-8 throughout. Meta escapes all non-ASCII, so `isascii` (C speed, no copy) answers for
    nearly every webhook; the decode, also in C, only for the rest."""
    if body.isascii():
        return True
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _printable(value: str) -> str:
    return value.replace("\x00", "\ufffd")  # for the tracking row of a body nobody owns: PostgreSQL refuses NUL


def _routing_or_none(body: bytes) -> Routing | None:
    try:
        return read_routing(body)
    except MalformedWebhook:
        return None


class MetaWebhooks:
    """The Meta part of IngressApp."""

    if TYPE_CHECKING:
        backends: Any
        directory: TenantDirectory | None
        archive: ArchiveWriter | None

    # --- Meta: the verification handshake ---------------------------------------------------------------------

    async def handshake(self, tenant_id: str | None, query: str) -> Response:
        try:
            params = query_params(query)
        except ValueError:
            return text(400, "bad query")
        challenge = params.get("hub.challenge", "")
        token = params.get("hub.verify_token", "")
        if params.get("hub.mode") != "subscribe" or not token or len(challenge) > MAX_CHALLENGE:
            return text(403, "forbidden")
        assert self.directory is not None
        if tenant_id is not None:
            tenant = await self.directory.by_id(tenant_id) if _could_be_stored(tenant_id) else None
            candidates = [tenant] if tenant is not None else []
        else:
            candidates = await self.directory.all()
        matched = False
        for tenant in candidates:  # no early exit: the time taken does not tell which tenant matched
            matched |= hmac.compare_digest(tenant.verify_token.reveal().encode(), token.encode())
        return text(200, challenge) if matched else text(403, "forbidden")

    # --- Meta: a webhook --------------------------------------------------------------------------------------

    async def receive_webhook(self, path_tenant_id: str | None, headers: Mapping[str, str], body: bytes) -> Response:
        received_at = time.time()
        signature = headers.get("x-hub-signature-256") or ""
        if signature[:7].lower() != "sha256=":
            return text(401, "missing signature")
        assert self.directory is not None
        path_tenant = None
        if path_tenant_id is not None:
            path_tenant = await self.directory.by_id(path_tenant_id) if _could_be_stored(path_tenant_id) else None
            if path_tenant is None:
                return text(404, "unknown tenant")
            if not _signature_ok(path_tenant.app_secret.reveal(), body, signature):
                return text(401, "bad signature")
        decoded = body  # what is queued: the raw bytes, unless they had to be repaired to decode at all
        routing = _routing_or_none(body)
        if routing is None:
            repaired = without_lone_surrogates(body)
            routing = _routing_or_none(repaired) if repaired is not None else None
            if repaired is None or routing is None:
                if path_tenant is None and not await self._signed_by_a_tenant_app(body, signature):
                    return text(401, "bad signature")  # see the module docstring: 400 is for signed bodies only
                return text(400, "malformed webhook")
            decoded = repaired
        owners: dict[str, TenantConfig] = {}  # phone_number_id → owner
        unknown: list[str] = []
        if len(routing.phone_number_ids) > MAX_NUMBERS:
            return text(400, "malformed webhook: too many phone numbers")  # each costs a lookup before the HMAC
        for number in routing.phone_number_ids:
            tenant = await self.directory.by_phone_number(number) if _could_be_stored(number) else None
            if tenant is None:
                unknown.append(number)
            else:
                owners[number] = tenant
        tenants = {t.tenant_id: t for t in owners.values()}
        if path_tenant is not None and (routing.unlabelled_changes or not routing.phone_number_ids):
            tenants.setdefault(path_tenant.tenant_id, path_tenant)
        if not tenants:
            if path_tenant is None and not await self._signed_by_a_tenant_app(body, signature):
                return text(401, "bad signature")  # nobody's, and not from Meta for us either: nothing is kept
        elif not self._verified(tenants.values(), body, signature, skip=path_tenant):
            return text(401, "bad signature")
        if not _readable_text(decoded):
            return text(400, "malformed webhook: not UTF-8")  # the worker could not read it: Meta must know now
        if not tenants:
            return await self._unrouted(routing.message_ids, unknown, body, received_at)
        if unknown:
            UNROUTED.inc(len(unknown))
            log.warning("webhook partly unrouted: no tenant owns phone_number_id %s", [n[:64] for n in unknown[:8]])
        if len(tenants) == 1 and not unknown:
            parts = {next(iter(tenants)): decoded}  # the raw signed bytes, untouched (unless repaired)
        else:
            fallback = path_tenant.tenant_id if path_tenant is not None else next(iter(tenants))
            try:
                parts = split_by_tenant(decoded, {n: t.tenant_id for n, t in owners.items()}, fallback=fallback)
            except MalformedWebhook:  # the split reads no more than the view did: should it ever, 400, not a 500
                return text(400, "malformed webhook")
        await self._enqueue(parts, body, received_at, shared=len(tenants) > 1 or bool(unknown), tenants=tenants)
        return text(200, "ok")

    def _verified(self, tenants: Any, body: bytes, signature: str, *, skip: TenantConfig | None) -> bool:
        checked: dict[str, bool] = {}  # tenants of one Meta app share its secret: one HMAC per secret
        for tenant in tenants:
            if skip is not None and tenant.tenant_id == skip.tenant_id:
                continue  # already verified from the path
            secret = tenant.app_secret.reveal()
            ok = checked.get(secret)
            if ok is None:
                ok = checked[secret] = _signature_ok(secret, body, signature)
            if not ok:
                return False
        return True

    async def _signed_by_a_tenant_app(self, body: bytes, signature: str) -> bool:
        """Whether one of our tenants' Meta apps signed this body (a number of that app no tenant has claimed yet):
        only then is it worth keeping, and answering 200 so Meta stops resending it."""
        assert self.directory is not None
        secrets = dict.fromkeys(t.app_secret.reveal() for t in await self.directory.all())
        matched = False
        for secret in list(secrets)[:MAX_UNROUTED_SECRETS]:  # no early exit: the time taken tells nothing
            matched |= _signature_ok(secret, body, signature)
        return matched

    async def _enqueue(
        self,
        parts: dict[str, bytes],
        raw: bytes,
        received_at: float,
        *,
        shared: bool,
        tenants: Mapping[str, TenantConfig],
    ) -> None:
        webhook_id = _new_webhook_id(received_at)
        publishes = []
        assert self.archive is not None
        # The raw body (the signed evidence) once under `_shared` when it holds more than one tenant's part.
        shared_key = self.archive.append(SHARED_ARCHIVE_TENANT, webhook_id, received_at, raw) if shared else None
        for tenant_id, part in parts.items():
            key = shared_key if shared_key is not None else self.archive.append(tenant_id, webhook_id, received_at, raw)
            message = encode_queued(QueuedWebhook(tenant_id, received_at, key, part))
            placed = tenants.get(tenant_id)
            shard = placed.shard if placed is not None else None
            publishes.append(self._publish(tenant_id, message, f"{webhook_id}:{tenant_id}", shard))
        if len(publishes) == 1:
            await publishes[0]
        else:
            await asyncio.gather(*publishes)  # one failure → 503: Meta resends all, workers drop duplicates

    async def _publish(self, tenant_id: str, message: bytes, message_id: str, shard: int | None) -> None:
        started = time.perf_counter()
        await self.backends.queue.publish(tenant_id, message, message_id=message_id, shard=shard)
        PUBLISH_SECONDS.observe(time.perf_counter() - started)
        QUEUED.inc()

    async def _unrouted(self, wamids: tuple[str, ...], numbers: list[str], body: bytes, received_at: float) -> Response:
        """Nobody owns this body: keep it (archive + tracking) and answer 200 so Meta stops resending it."""
        webhook_id = _new_webhook_id(received_at)
        UNROUTED.inc(max(len(numbers), 1))
        assert self.archive is not None
        self.archive.append(UNROUTED_ARCHIVE_TENANT, webhook_id, received_at, body)
        if not wamids:
            # No customer message in it (an account or template update, a number's statuses): nothing to track.
            log.info("webhook %s without customer messages archived: no tenant owns it", webhook_id)
            return text(200, "ok")
        reason = f"no tenant owns phone_number_id {', '.join(n[:64] for n in numbers[:4]) or '(none in payload)'}"
        reason = _printable(reason)
        records = [
            TrackingRecord(
                wamid=wamid,
                tenant_id="",
                status=TrackingStatus.UNROUTED,
                error=reason,
                created_at=received_at,
                updated_at=received_at,
                webhook_id=webhook_id,
                received_at=received_at,
            )
            for wamid in dict.fromkeys(_printable(w[:256]) for w in wamids[:1000])  # Meta's maximum of updates per POST
        ]
        await self.backends.store.write_tracking(records)
        log.warning("unrouted webhook %s: %s", webhook_id, reason)
        return text(200, "ok")
