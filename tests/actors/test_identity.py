"""One customer, one id: a customer Meta names by phone number, by BSUID or by both gets every message under the first
id the bridge saw for them (lane key, conversation mapping key, Genesys `from.id`), with the alias in the store and
the cache; a BSUID change moves the customer to the new BSUID; a store outage is held, never a crash. Both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.actors.test_ingress import opened_backends, tenant
from tests.actors.test_worker import running_worker, wait_until
from wabridge.actors import identity as identity_module
from wabridge.actors.identity import CustomerIdentity
from wabridge.codecs.results import Inbound
from wabridge.codecs.routing import QueuedWebhook, encode_queued
from wabridge.codecs.transform import transform
from wabridge.engine import keys
from wabridge.engine.actor import _failures as actor_failures
from wabridge.ports import BackendUnavailable
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks

pytestmark = pytest.mark.anyio

NUMBER_ID = "106540352242922"
TENANT = "shop"
PHONE, BSUID, NEW_BSUID = "16505551234", "US.13491208655302741918", "US.88120455318710220415"


@pytest.fixture(params=["embedded", pytest.param("servers", marks=pytest.mark.servers)])
def any_settings(request) -> Settings:
    return request.getfixturevalue("embedded_settings" if request.param == "embedded" else "server_settings")


@pytest.fixture
async def backends(any_settings: Settings) -> AsyncIterator:
    async with opened_backends(any_settings.replace(metrics_port=0)) as opened:
        yield opened


def body(wa_id: str | None = None, user_id: str | None = None) -> bytes:
    return webhooks.webhook(NUMBER_ID, [webhooks.message("text", wa_id=wa_id, user_id=user_id)])


def bsuid_change(previous: str, new: str) -> bytes:
    """A `user_changed_user_id` notice as Meta sends it: the ids in `system`, no `from`, no contact."""
    notice = {"id": webhooks.new_wamid(), "timestamp": str(int(time.time())), "type": "system",
              "system": {"body": f"User changed from {previous} to {new}", "type": "user_changed_user_id",
                         "user_id": new, "previous_user_id": previous}}  # fmt: skip
    return webhooks.webhook(NUMBER_ID, [notice], contacts=[])


async def customer_of(identity: CustomerIdentity, webhook: bytes, *, tenant_id: str = TENANT) -> Inbound:
    """The message as the tenant actor hands it to its lane: known here, or resolved through the cache and store."""
    results = transform(webhook)
    resolved = identity.known(tenant_id, results) or await identity.resolve(tenant_id, results)
    (inbound,) = resolved
    assert isinstance(inbound, Inbound)
    return inbound


def sent_as(inbound: Inbound) -> tuple[str, str, str, str]:
    """(lane and mapping key, its idType, Genesys from.id, from.idType): one customer, the same four every time."""
    sender = inbound.message.channel.from_
    return inbound.route.sender_id, inbound.route.id_type, sender.id, sender.id_type


def custom(inbound: Inbound) -> dict[str, str]:
    return inbound.message.channel.metadata.custom_attributes  # type: ignore[union-attr, return-value]


async def test_a_customer_first_seen_by_phone_keeps_it_when_they_write_with_the_bsuid_alone(backends) -> None:
    identity = CustomerIdentity(backends.cache, backends.store)
    first = await customer_of(identity, body(PHONE, BSUID))
    assert sent_as(first) == (PHONE, "Phone", PHONE, "Phone")
    assert await backends.store.get_aliases([(TENANT, BSUID), (TENANT, PHONE)]) == {(TENANT, BSUID): PHONE}
    assert await backends.cache.get(keys.customer_alias(TENANT, BSUID)) == PHONE.encode()

    later = transform(body(user_id=BSUID))
    known = identity.known(TENANT, later)  # the alias is known here: no await
    assert known is not None
    (alone,) = known
    assert sent_as(alone) == (PHONE, "Phone", PHONE, "Phone")
    assert custom(alone)["user_id"] == BSUID, "the agent still sees the BSUID"
    assert (alone.route.wa_id, alone.route.user_id) == (None, BSUID), "the route keeps the ids Meta sent"

    stranger = await customer_of(identity, body(user_id=BSUID), tenant_id="other-shop")
    assert sent_as(stranger) == (BSUID, "Opaque", BSUID, "Opaque"), "aliases are per tenant"


async def test_a_customer_first_seen_by_bsuid_keeps_it_when_their_phone_number_shows(backends) -> None:
    identity = CustomerIdentity(backends.cache, backends.store)
    first = await customer_of(identity, body(user_id=BSUID))  # still in its lane: no conversation mapping yet
    assert sent_as(first) == (BSUID, "Opaque", BSUID, "Opaque")
    both = await customer_of(identity, body(PHONE, BSUID))
    assert sent_as(both) == (BSUID, "Opaque", BSUID, "Opaque")
    assert custom(both)["wa_id"] == PHONE and custom(both)["user_id"] == BSUID, "both ids visible to the agent"
    phone = await customer_of(identity, body(PHONE))
    assert sent_as(phone) == (BSUID, "Opaque", BSUID, "Opaque")
    assert custom(phone)["wa_id"] == PHONE
    assert await backends.store.get_aliases([(TENANT, PHONE), (TENANT, BSUID)]) == {(TENANT, PHONE): BSUID}


async def test_another_process_reads_the_alias_and_the_mapping_in_use_from_the_cache_or_the_store(backends) -> None:
    await CustomerIdentity(backends.cache, backends.store).resolve(TENANT, transform(body(PHONE, BSUID)))
    after_failover = CustomerIdentity(backends.cache, backends.store)
    later = transform(body(user_id=BSUID))
    assert after_failover.known(TENANT, later) is None, "nothing known locally yet"
    assert sent_as((await after_failover.resolve(TENANT, later))[0])[0] == PHONE

    # A customer whose BSUID-only messages already have a conversation, seen by a process that never routed them.
    await backends.store.put_conversation(TENANT, "US.1", "7f1c0000-0000-4000-8000-000000000001")
    fresh = CustomerIdentity(backends.cache, backends.store)
    assert sent_as(await customer_of(fresh, body("16505550001", "US.1")))[0] == "US.1"
    # Neither id in use: the sender id of the identity rules, the phone number.
    assert sent_as(await customer_of(fresh, body("16505550002", "US.2")))[0] == "16505550002"
    assert await backends.store.get_aliases([(TENANT, "16505550001"), (TENANT, "US.2")]) == {
        (TENANT, "16505550001"): "US.1", (TENANT, "US.2"): "16505550002"}  # fmt: skip


async def test_no_alias_is_remembered_for_a_short_while_only_so_a_failover_and_back_still_reads_the_store(
    backends, monkeypatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(identity_module, "monotonic", lambda: clock[0])
    a, b = CustomerIdentity(backends.cache, backends.store), CustomerIdentity(backends.cache, backends.store)
    assert sent_as(await customer_of(a, body(PHONE)))[0] == PHONE
    usual = transform(body(PHONE))
    assert a.known(TENANT, usual) is usual, "the usual message: known here, nothing moved, no await"
    # The tenant moves to process b, where the customer writes by BSUID first, then with both ids.
    assert sent_as(await customer_of(b, body(user_id=BSUID)))[0] == BSUID
    assert sent_as(await customer_of(b, body(PHONE, BSUID)))[0] == BSUID
    # Back on a: within the bound it still trusts what it knew; past it, it asks the store again.
    assert sent_as(a.known(TENANT, transform(body(PHONE)))[0])[0] == PHONE  # type: ignore[index]
    clock[0] += identity_module.UNALIASED_SECONDS + 1
    assert a.known(TENANT, transform(body(PHONE))) is None
    assert sent_as(await customer_of(a, body(PHONE)))[0] == BSUID


async def test_a_bsuid_change_moves_the_alias_to_the_new_bsuid(backends) -> None:
    identity = CustomerIdentity(backends.cache, backends.store)
    await customer_of(identity, body(PHONE, BSUID))
    notice = await customer_of(identity, bsuid_change(BSUID, NEW_BSUID))
    assert sent_as(notice) == (PHONE, "Phone", PHONE, "Phone"), "the notice goes to the customer's conversation"
    assert await backends.store.get_aliases([(TENANT, NEW_BSUID)]) == {(TENANT, NEW_BSUID): PHONE}
    assert sent_as(await customer_of(CustomerIdentity(backends.cache, backends.store), body(user_id=NEW_BSUID))) == (
        PHONE, "Phone", PHONE, "Phone")  # fmt: skip

    # A customer known by BSUID alone keeps their first BSUID.
    await customer_of(identity, body(user_id="US.3"))
    assert sent_as(await customer_of(identity, bsuid_change("US.3", "US.4")))[0] == "US.3"
    assert sent_as(await customer_of(identity, body(user_id="US.4")))[0] == "US.3"


class FlakyStore:
    """The real store, whose alias reads fail `failures` times (PostgreSQL down)."""

    def __init__(self, inner, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.reads = 0

    async def get_aliases(self, keys):
        self.reads += 1
        if self.failures:
            self.failures -= 1
            raise BackendUnavailable("store", "postgresql: ConnectionRefusedError")
        return await self.inner.get_aliases(keys)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class RecordingRelay:
    def __init__(self) -> None:
        self.relayed: list[tuple[str, tuple[str, str, str, str]]] = []

    async def relay(self, tenant, inbound, received_at, *, replay: bool = False) -> str:
        self.relayed.append((inbound.route.wamid, sent_as(inbound)))
        return "delivered"


async def test_a_store_outage_while_resolving_holds_the_message_in_place_and_it_goes_under_its_customer(
    any_settings: Settings, monkeypatch
) -> None:
    """The store fails the alias read once: the message is held in place (past the outage hold, 0 here, too) and
    read again; the actor survives, and the message is relayed once, under the phone number."""
    monkeypatch.setattr("wabridge.actors.worker.PARK_AFTER", 60.0)
    settings = any_settings.replace(metrics_port=0, shards=1, outage_hold=0.0)
    async with opened_backends(settings) as backends:
        await backends.store.put_tenant(tenant(TENANT, (NUMBER_ID,), "s1"))
        await backends.store.put_alias(TENANT, BSUID, PHONE)
        message = webhooks.message("text", wa_id=None, user_id=BSUID)
        queued = encode_queued(QueuedWebhook(TENANT, time.time(), "", webhooks.webhook(NUMBER_ID, [message])))
        await backends.queue.publish(TENANT, queued, message_id="outage-1")
        relay, store = RecordingRelay(), FlakyStore(backends.store, failures=1)
        crashes = actor_failures.labels("tenant").get()
        async with running_worker(backends, relay) as worker:
            worker.identity = CustomerIdentity(backends.cache, store)  # read when the tenant's actor starts
            await wait_until(lambda: relay.relayed, timeout=30)
            await asyncio.sleep(0.2)
        assert store.reads == 2, "failed once, then read again in place"
        assert actor_failures.labels("tenant").get() == crashes, "the tenant actor did not crash"
        assert relay.relayed == [(message["id"], (PHONE, "Phone", PHONE, "Phone"))]
        assert await backends.queue.dead_letters(limit=10) == []
