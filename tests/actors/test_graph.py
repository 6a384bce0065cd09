"""MetaGraph against the Meta simulator's sending side over loopback HTTP: sends, Meta's refusals mapped to Genesys
reasons, throttling waited out, blips retried, an outage held and resumed, the per-number send budget (in memory and
in Redis, shared by two graphs as by two processes), uploads and read marks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wabridge.engine.far_end import FarEnd
from wabridge.meta.graph import MetaGraph, SendRefused, meta_error, multipart
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.ports import BackendUnavailable, GenesysCredential, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.sim.meta import MetaSim
from wabridge.sim.meta_send import parse_multipart

pytestmark = pytest.mark.anyio

TOKEN = "EAAG-outbound-token"
PHONE = "106540352242922"
CUSTOMER = "16505551234"
NOW = 1_800_000_000.0  # a window boundary: the fake clock starts a fresh second


class FakeClock:
    """Wall-clock stand-in shared by the graph and the simulator: sleeping moves time on at once (no test waits out a
    backoff), and the simulator's throttling bucket runs on the same time."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        # A wait that never ends would otherwise spin here at full speed: a day of fake time fails the test.
        assert self.now - NOW < 24 * 3600, "waited a whole day"
        await anyio.sleep(0)


def tenant(token: str = TOKEN, *, rate: int = 80, tenant_id: str = "acme") -> TenantConfig:
    return TenantConfig(
        tenant_id=tenant_id,
        phone_number_ids=(PHONE,),
        app_secret=Secret("app"),
        verify_token=Secret("verify"),
        whatsapp_token=Secret(token),
        genesys_api_url="https://api.mypurecloud.ie",
        genesys_login_url="https://login.mypurecloud.ie",
        genesys_integration_id="int-1",
        credentials=(GenesysCredential("cid", Secret("s")),),
        send_rate_per_second=rate,
    )


def text(body: str = "Yes, it comes in blue.", **extra: Any) -> bytes:
    return msgspec.json.encode({"messaging_product": "whatsapp", "recipient_type": "individual", "to": CUSTOMER,
                                "type": "text", "text": {"body": body}, **extra})  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[MetaSim]:
    async with MetaSim(tokens=[TOKEN], numbers={PHONE: "secret"}, clock=clock, open_windows=True) as running:
        yield running


@contextlib.asynccontextmanager
async def graph_for(url: str, clock: FakeClock, cache: Any = None, **options: Any) -> AsyncIterator[MetaGraph]:
    graph = MetaGraph(cache if cache is not None else MemoryCache(), base_url=url, sleep=clock.sleep, clock=clock,
                      **{"timeout": 5.0, **options})  # fmt: skip
    try:
        yield graph
    finally:
        await graph.aclose()


@pytest.fixture
async def graph(sim: MetaSim, clock: FakeClock) -> AsyncIterator[MetaGraph]:
    async with graph_for(sim.graph_url, clock) as running:
        yield running


async def until(condition: Callable[[], bool], what: str) -> None:
    """Polls for a state the code reaches on its own (no assertion on how fast)."""
    with anyio.fail_after(30):
        while not condition():
            await asyncio.sleep(0.01)


# --- sends ------------------------------------------------------------------------------------------------------------


async def test_a_text_send_returns_the_sims_wamid_and_the_sim_recorded_the_body(graph: MetaGraph, sim: MetaSim) -> None:
    wamid = await graph.send(tenant(), PHONE, text(biz_opaque_callback_data="genesys-1"))
    (sent,) = sim.outbound.sent
    assert wamid == sent.wamid and wamid.startswith("wamid.")
    assert sent.phone_number_id == PHONE and sent.type == "text"
    assert sent.body == msgspec.json.decode(text(biz_opaque_callback_data="genesys-1"))
    assert graph.statistics().sent == 1 and graph.statistics().refused == 0


async def test_a_refused_token_is_final_and_a_general_error(graph: MetaGraph, sim: MetaSim, clock: FakeClock) -> None:
    with pytest.raises(SendRefused) as refused:
        await graph.send(tenant("EAAG-revoked"), PHONE, text())
    assert refused.value.reason.code == "GeneralError" and refused.value.status == 401 and refused.value.code == 190
    assert refused.value.reason.message.startswith("(#190) Invalid OAuth access token")
    assert "EAAG" not in repr(refused.value) and not sim.outbound.sent
    assert clock.slept == [] and graph.statistics().refused == 1  # final: not tried again


@pytest.mark.parametrize(
    ("code", "reason", "words"),
    [
        (131026, "InvalidDestination", "(#131026) Message undeliverable: Unable to deliver message."),
        (131047, "MessageNotAllowed", "(#131047) Re-engagement message: Message failed to send because more than 24"),
        (131050, "RecipientOptedOut", "(#131050) User stopped marketing messages: Unable to deliver"),
        (131048, "RateLimited", "(#131048) Spam rate limit hit: "),  # a quality limit, final, not a throttle
    ],
)
async def test_a_final_refusal_maps_to_its_genesys_reason_with_metas_words(
    graph: MetaGraph, sim: MetaSim, clock: FakeClock, code: int, reason: str, words: str
) -> None:
    sim.outbound.inject(code=code)
    with pytest.raises(SendRefused) as refused:
        await graph.send(tenant(), PHONE, text())
    assert (refused.value.reason.code, refused.value.status, refused.value.code) == (reason, 400, code)
    assert refused.value.reason.message.startswith(words)  # Meta's "(#code)" prefix is not doubled
    assert not sim.outbound.sent and clock.slept == []


async def test_a_body_meta_finds_invalid_is_refused_with_the_fault_named(graph: MetaGraph, sim: MetaSim) -> None:
    with pytest.raises(SendRefused) as refused:
        await graph.send(tenant(), PHONE, text(body=""))
    assert refused.value.reason.code == "InvalidMessageStructure" and refused.value.code == 100
    assert "text.body is required" in refused.value.reason.message


async def test_throttling_is_waited_out_with_a_doubling_backoff_and_the_message_is_sent_once(
    graph: MetaGraph, sim: MetaSim, clock: FakeClock
) -> None:
    sim.outbound.inject(code=130429, count=2)
    wamid = await graph.send(tenant(), PHONE, text())
    assert [s.wamid for s in sim.outbound.sent] == [wamid]
    assert clock.slept == [1.0, 2.0]  # no Retry-After from Meta here: 1 s, then doubling
    stats = graph.statistics()
    assert (stats.throttled, stats.retries, stats.sent, stats.refused) == (2, 0, 1, 0)


async def test_throttling_past_the_longest_wait_gives_up_as_rate_limited(sim: MetaSim, clock: FakeClock) -> None:
    sim.outbound.inject(code=131056, count=-1)  # the pair rate limit, never lifting
    async with graph_for(sim.graph_url, clock, throttle_max_wait=10.0) as graph:
        with pytest.raises(SendRefused) as refused:
            await graph.send(tenant(), PHONE, text())
    assert refused.value.reason.code == "RateLimited" and refused.value.code == 131056
    assert clock.slept == [1.0, 2.0, 4.0, 3.0] and sum(clock.slept) == 10.0  # the last wait ends at the limit
    assert not sim.outbound.sent


def test_retry_after_is_honoured_and_capped() -> None:
    delay = MetaGraph._throttle_delay
    assert delay("7", 1) == 7.0 and delay("0.5", 3) == 0.5
    assert delay("3600", 1) == 60.0  # at most a minute per wait; the total is bounded by throttle_max_wait
    assert delay("Wed, 21 Oct 2026 07:28:00 GMT", 3) == 4.0 and delay("nan", 1) == 1.0 and delay("-5", 1) == 1.0
    assert delay(None, 10) == 60.0


async def test_a_few_503s_are_retried_and_the_message_is_sent_once(
    graph: MetaGraph, sim: MetaSim, clock: FakeClock
) -> None:
    sim.outbound.inject(status=503, count=2)
    wamid = await graph.send(tenant(), PHONE, text())
    assert [s.wamid for s in sim.outbound.sent] == [wamid]
    assert len(clock.slept) == 2 and graph.statistics().retries == 2
    assert not graph.far_end.is_down("acme")


async def test_metas_own_try_again_codes_are_retried_like_a_5xx(graph: MetaGraph, sim: MetaSim) -> None:
    sim.outbound.inject(code=131000, count=1)  # "Something went wrong", answered 400
    await graph.send(tenant(), PHONE, text())
    assert len(sim.outbound.sent) == 1 and graph.statistics().retries == 1


async def test_a_long_outage_holds_the_message_in_place_and_it_goes_once_meta_is_back(
    sim: MetaSim, clock: FakeClock, proxy_factory
) -> None:
    proxy, url = await proxy_factory(sim.graph_url)
    far_end = FarEnd("meta", hold_for=3600, retry_max=0.05)
    async with graph_for(url, clock, far_end=far_end) as graph:
        proxy.cut()
        held = asyncio.ensure_future(graph.send(tenant(), PHONE, text()))
        await until(lambda: far_end.is_down("acme"), "meta marked down")
        await asyncio.sleep(0.3)  # several probes' worth: it waits, it does not fail
        assert not held.done() and not sim.outbound.sent
        proxy.restore()
        wamid = await held
    assert [s.wamid for s in sim.outbound.sent] == [wamid] and not far_end.is_down("acme")


async def test_past_the_hold_the_send_is_refused_as_a_server_error_and_a_drain_hands_it_back(
    sim: MetaSim, clock: FakeClock
) -> None:
    sim.outbound.inject(status=503, count=-1)
    async with graph_for(sim.graph_url, clock, far_end=FarEnd("meta", hold_for=0)) as graph:
        with pytest.raises(SendRefused) as refused:
            await graph.send(tenant(), PHONE, text())
    assert refused.value.reason.code == "ServerError" and refused.value.status == 503
    assert "HTTP 503" in refused.value.reason.message

    far_end = FarEnd("meta", hold_for=3600, retry_max=0.05)
    async with graph_for(sim.graph_url, clock, far_end=far_end) as graph:
        held = asyncio.ensure_future(graph.send(tenant(), PHONE, text()))
        await until(lambda: far_end.is_down("acme"), "meta marked down")
        far_end.stop_holding()
        with pytest.raises(BackendUnavailable):
            await held  # nothing reached the customer: the caller hands it back to the queue
        with pytest.raises(BackendUnavailable):
            await graph.mark_read(tenant(), PHONE, "wamid.IN")  # a drain passes through a read mark too
    assert not sim.outbound.sent


# --- the send budget --------------------------------------------------------------------------------------------------


def per_second(sim: MetaSim) -> Counter[int]:
    return Counter(int(s.at) for s in sim.outbound.sent)


async def run_budget(sim: MetaSim, clock: FakeClock, make_cache: Callable[[], Any], sends: int, rate: int) -> None:
    """`sends` sends from two graphs in turn (two processes sharing one count), on the simulator whose bucket allows
    `rate` a second: without the budget it answers 130429 past it, and the graph throttles."""
    first, second = make_cache(), make_cache()
    async with graph_for(sim.graph_url, clock, first) as a, graph_for(sim.graph_url, clock, second) as b:
        for i in range(sends):
            await (a if i % 2 else b).send(tenant(rate=rate), PHONE, text(f"message {i}"))
        stats = [a.statistics(), b.statistics()]
    assert len(sim.outbound.sent) == sends
    assert max(per_second(sim).values()) <= rate and len(per_second(sim)) == -(-sends // rate)
    assert sum(s.throttled for s in stats) == 0, "the budget kept the number under Meta's limit"
    assert sum(s.budget_waits for s in stats) >= sends // rate - 1


@pytest.mark.parametrize("rate", [5, 40])  # 40: blocks of 2 grants per counter round trip
async def test_the_send_budget_spreads_a_numbers_sends_over_seconds_across_graphs(clock: FakeClock, rate: int) -> None:
    async with MetaSim(tokens=[TOKEN], rate=rate, clock=clock, open_windows=True) as sim:
        shared = MemoryCache()
        await run_budget(sim, clock, lambda: shared, sends=3 * rate + 1, rate=rate)


@pytest.mark.servers
async def test_the_send_budget_is_shared_through_redis(clock: FakeClock) -> None:
    from wabridge.adapters.cache.redis import RedisCache

    settings = Settings(redis_url=os.environ["WABRIDGE_REDIS_URL"], key_prefix=f"t{uuid.uuid4().hex[:10]}:")
    caches: list[RedisCache] = []

    def make() -> RedisCache:
        caches.append(RedisCache(settings))
        return caches[-1]

    try:
        async with MetaSim(tokens=[TOKEN], rate=8, clock=clock, open_windows=True) as sim:
            await run_budget(sim, clock, make, sends=25, rate=8)
    finally:
        for cache in caches:
            await cache.close()


async def test_a_budget_of_zero_sends_without_counting(clock: FakeClock) -> None:
    async with MetaSim(tokens=[TOKEN], rate=0, clock=clock, open_windows=True) as sim:
        async with graph_for(sim.graph_url, clock) as graph:
            for i in range(30):
                await graph.send(tenant(rate=0), PHONE, text(f"m{i}"))
            assert graph.statistics().budget_waits == 0 and clock.slept == []
    assert per_second(sim) == {int(NOW): 30}


# --- uploads ----------------------------------------------------------------------------------------------------------


PNG = bytes.fromhex("89504e470d0a1a0a") + b"\0" * 200


async def test_an_upload_returns_an_id_the_sim_knows_and_a_send_by_that_id_is_accepted(
    graph: MetaGraph, sim: MetaSim
) -> None:
    media_id = await graph.upload(tenant(), PHONE, PNG, "image/png", "photo.png")
    assert sim.outbound.uploads[media_id] == {"mime": "image/png", "size": len(PNG),
                                              "sha256": hashlib.sha256(PNG).hexdigest()}  # fmt: skip
    body = msgspec.json.encode({"messaging_product": "whatsapp", "recipient_type": "individual", "to": CUSTOMER,
                                "type": "image", "image": {"id": media_id}})  # fmt: skip
    await graph.send(tenant(), PHONE, body)
    (sent,) = sim.outbound.sent
    assert sent.failure is None  # an unknown media id would get a failed status (131053)
    assert graph.statistics().uploads == 1


async def test_an_upload_meta_refuses_is_final_with_its_reason(graph: MetaGraph, sim: MetaSim) -> None:
    too_big = PNG + b"\0" * (5 * 1024 * 1024)
    with pytest.raises(SendRefused) as refused:
        await graph.upload(tenant(), PHONE, too_big, "image/png", None)
    assert refused.value.reason.code == "MediaTypeNotAllowed" and refused.value.code == 131053
    assert "allows at most" in refused.value.reason.message and not sim.outbound.uploads


@pytest.mark.parametrize("filename", ['in"voice\r\nX-Evil: 1.pdf', "résumé.pdf", None])
def test_the_upload_form_reads_back_whole_whatever_the_file_name(filename: str | None) -> None:
    data = b"%PDF-1.4\r\n--not-a-boundary\r\n" * 100
    body, content_type = multipart(data, "application/pdf", filename)
    form = parse_multipart(body, content_type)
    assert form["messaging_product"] == ("", b"whatsapp") and form["type"] == ("", b"application/pdf")
    assert form["file"] == ("application/pdf", data)
    assert not any(line.startswith(b"X-Evil") for line in body.split(b"\r\n"))  # the name cannot add a header


# --- read marks -------------------------------------------------------------------------------------------------------


async def test_read_marks_with_and_without_typing(graph: MetaGraph, sim: MetaSim) -> None:
    assert await graph.mark_read(tenant(), PHONE, "wamid.IN1") is True
    assert await graph.mark_read(tenant(), PHONE, "wamid.IN2", typing=True) is True
    assert [(r["phone_number_id"], r["message_id"], r["typing"]) for r in sim.outbound.reads] == [
        (PHONE, "wamid.IN1", False), (PHONE, "wamid.IN2", True)]
    assert not sim.outbound.sent and graph.statistics().read_marks == 2


async def test_a_read_mark_meta_refuses_or_throttles_is_given_up_without_waiting(
    graph: MetaGraph, sim: MetaSim, clock: FakeClock
) -> None:
    assert await graph.mark_read(tenant("EAAG-revoked"), PHONE, "wamid.IN1") is False
    assert await graph.mark_read(tenant(), PHONE, "") is False  # Meta: message_id is required
    sim.outbound.inject(code=130429)
    assert await graph.mark_read(tenant(), PHONE, "wamid.IN1") is False
    assert clock.slept == [] and graph.statistics().read_marks_failed == 3


# --- Meta's error body, read totally ----------------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["error", "message", "code", "error_data", "details", "error_user_title", "error_user_msg", "x"]), inner,
        max_size=5),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(msgspec.json.encode)))
def test_any_answer_body_reads_as_an_error_or_none(content: bytes) -> None:
    code, words, details = meta_error(content)
    assert words is None or isinstance(words, str)
    assert details is None or isinstance(details, str)


def test_metas_error_shape_reads_its_code_words_and_details() -> None:
    body = {"error": {"message": "(#131047) Re-engagement message", "type": "OAuthException", "code": 131047,
                      "error_data": {"messaging_product": "whatsapp", "details": "More than 24 hours"},
                      "error_subcode": 2494010, "fbtrace_id": "x"}}  # fmt: skip
    assert meta_error(msgspec.json.encode(body)) == (131047, "Re-engagement message", "More than 24 hours")
    assert meta_error(b'{"error": "nope"}') == (None, None, None)
    assert meta_error(b"<html>502</html>") == (None, None, None)

