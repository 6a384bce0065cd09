"""The media actor against the Meta simulator: Graph two-step download into the Objects port (a directory, and the
real S3 server), checksum, size limit, retries, and what the agent gets when media cannot be fetched."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest

from wabridge.actors.media import MediaFetcher, MediaOutcome
from wabridge.codecs.results import Inbound, sha256_digest
from wabridge.codecs.media_placeholder import MEDIA_PLACEHOLDER
from wabridge.codecs.transform import transform
from wabridge.adapters.objects.directory import DirectoryObjects
from wabridge.ports import MEDIA_BUCKET, BackendUnavailable, GenesysCredential, Objects, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks
from wabridge.sim.meta import MetaSim
from wabridge.meta.media import MetaMedia

pytestmark = pytest.mark.anyio

TOKEN = "EAAG-tenant-a"
PHONE = "106540352242922"
TENANT = TenantConfig(
    tenant_id="tenant-a",
    phone_number_ids=(PHONE,),
    app_secret=Secret("app"),
    verify_token=Secret("verify"),
    whatsapp_token=Secret(TOKEN),
    genesys_api_url="https://api.example.invalid",
    genesys_login_url="https://login.example.invalid",
    genesys_integration_id="integration-1",
    credentials=(GenesysCredential("client", Secret("secret")),),
)


def meta_media(settings: Settings) -> MetaMedia:
    """The Graph API's media downloads as the assembly opens them (cli/assembly.py)."""
    return MetaMedia(settings.graph_api_url, allow_private_urls=settings.allow_private_media_urls)


def inbound_for(kind: str = "image", **message_args) -> Inbound:
    """What the transform makes of a webhook carrying one media message built by the simulator's builders."""
    (result,) = transform(webhooks.webhook(PHONE, [webhooks.message(kind, **message_args)]))
    assert isinstance(result, Inbound) and result.media is not None
    return result


@pytest.fixture
async def sim() -> AsyncIterator[MetaSim]:
    async with MetaSim(tokens=[TOKEN]) as running:
        yield running


@pytest.fixture
async def objects(embedded_settings: Settings) -> AsyncIterator[DirectoryObjects]:
    objects = DirectoryObjects(embedded_settings, fsync=False)
    await objects.open()
    yield objects
    await objects.close()


@pytest.fixture
async def fetcher(objects: Objects, embedded_settings: Settings, sim: MetaSim) -> AsyncIterator[MediaFetcher]:
    fetcher = MediaFetcher(objects, meta_media(embedded_settings.replace(graph_api_url=sim.graph_url)), backoff=0.01)
    yield fetcher
    await fetcher.meta.aclose()


async def read_signed(objects: DirectoryObjects, url: str) -> bytes:
    """What the ingress does for GET /objects/…: serve a signed URL of the directory adapter."""
    parts = urlsplit(url)
    bucket, _, key = parts.path.removeprefix("/objects/").partition("/")
    query = parse_qs(parts.query)
    data, _ = await objects.open_signed(bucket, key, query["expires"][0], query["signature"][0])
    return data


def assert_delivered_as_notice(outcome: MediaOutcome, inbound: Inbound, reason: str) -> None:
    assert not outcome.stored and outcome.reason == reason and outcome.url is None
    assert outcome.error is not None and outcome.error.startswith(f"media {reason}")
    message = outcome.apply(inbound)
    assert message.content is None and message.text is not None and outcome.notice in message.text
    assert TOKEN not in (outcome.error + repr(outcome))


# --- the happy path ---------------------------------------------------------------------------------------------------


async def test_media_is_stored_under_the_seed_key_and_the_attachment_gets_a_signed_url(
    fetcher: MediaFetcher, objects: DirectoryObjects, sim: MetaSim
) -> None:
    inbound = inbound_for("image", wamid="wamid.HAPPY", ts=1_780_000_000)
    outcome = await fetcher.resolve(TENANT, inbound)
    sim_bytes = webhooks.media_bytes(inbound.media.media_id)
    assert outcome.stored and outcome.reason == "stored" and outcome.attempts == 1 and outcome.error is None
    assert outcome.key == "tenant-a/image/2026-05-28/wamid.HAPPY.jpeg"
    assert await objects.get(MEDIA_BUCKET, outcome.key) == sim_bytes
    assert await read_signed(objects, outcome.url) == sim_bytes
    (item,) = outcome.apply(inbound).content
    assert item.attachment.url == outcome.url and not outcome.url.startswith(MEDIA_PLACEHOLDER)
    assert sim.stats().lookups == 1 and sim.stats().downloads == 1
    assert fetcher.statistics().stored == 1 and fetcher.statistics().bytes_stored == len(sim_bytes)


async def test_a_webhook_without_mime_type_gets_the_lookup_s_on_the_attachment_genesys_requires_one(
    fetcher: MediaFetcher, objects: DirectoryObjects
) -> None:
    message = webhooks.message("image", wamid="wamid.NOMIME")
    del message["image"]["mime_type"]
    (inbound,) = transform(webhooks.webhook(PHONE, [message]))
    assert inbound.message.content[0].attachment.mime is None
    outcome = await fetcher.resolve(TENANT, inbound)
    assert outcome.stored and outcome.mime == "image/jpeg"  # the simulator's lookup names it
    (item,) = outcome.apply(inbound).content
    assert item.attachment.mime == "image/jpeg"


@pytest.mark.parametrize("kind", ["video", "voice", "document", "sticker"])
async def test_every_media_kind_goes_through_with_its_extension(fetcher: MediaFetcher, kind: str) -> None:
    outcome = await fetcher.resolve(TENANT, inbound_for(kind))
    extension = {"video": "mp4", "voice": "ogg", "document": "pdf", "sticker": "webp"}[kind]
    assert outcome.stored and outcome.key.endswith(f".{extension}")


def test_sha256_is_read_the_same_in_hex_and_in_base64() -> None:
    media_id = webhooks.media_id_for("image/png", 64)
    assert sha256_digest(webhooks.sha256_hex(media_id)) == sha256_digest(webhooks.sha256_b64(media_id))
    assert sha256_digest(webhooks.sha256_b64(media_id).rstrip("=")) == webhooks.media_sha256(media_id)
    assert sha256_digest("4654+8g=") is None and sha256_digest(None) is None


# --- failures that become a text notice -------------------------------------------------------------------------------


async def test_a_checksum_mismatch_becomes_a_notice_at_once(fetcher: MediaFetcher, sim: MetaSim) -> None:
    sim.inject(corrupt=1)
    inbound = inbound_for("document")
    outcome = await fetcher.resolve(TENANT, inbound)
    assert_delivered_as_notice(outcome, inbound, "sha256_mismatch")
    assert outcome.attempts == 1 and sim.stats().downloads == 1


async def test_a_missing_media_id_becomes_a_notice_without_retrying(fetcher: MediaFetcher, sim: MetaSim) -> None:
    inbound = inbound_for("image")
    sim.inject(missing=[inbound.media.media_id])
    outcome = await fetcher.resolve(TENANT, inbound)
    assert_delivered_as_notice(outcome, inbound, "not_found")
    assert outcome.attempts == 1 and sim.stats().not_found == 1 and sim.stats().downloads == 0
    assert "Does it come in another color?" in outcome.apply(inbound).text  # the caption survives


async def test_a_server_error_twice_is_retried_and_the_third_attempt_succeeds(
    fetcher: MediaFetcher, sim: MetaSim
) -> None:
    sim.inject(media_status=500, count=2)
    outcome = await fetcher.resolve(TENANT, inbound_for("image"))
    assert outcome.stored and outcome.attempts == 3
    assert sim.stats().faults_served == 2 and fetcher.statistics().retries == 2


async def test_an_expired_download_url_is_retried_with_a_fresh_lookup(fetcher: MediaFetcher, sim: MetaSim) -> None:
    sim.inject(media_status=404, count=1, phase="download")
    outcome = await fetcher.resolve(TENANT, inbound_for("audio"))
    assert outcome.stored and outcome.attempts == 2 and sim.stats().lookups == 2


async def test_three_failed_attempts_deliver_a_notice_saying_the_media_could_not_be_fetched(
    fetcher: MediaFetcher, sim: MetaSim
) -> None:
    sim.inject(media_status=503, count=5)
    inbound = inbound_for("video")
    outcome = await fetcher.resolve(TENANT, inbound)
    assert_delivered_as_notice(outcome, inbound, "download_failed")
    assert outcome.attempts == 3 and "HTTP 503" in outcome.detail and sim.stats().faults_served == 3
    assert fetcher.statistics().notices == 1


class Redirector:
    """A server that answers from a table: path → (status, Location or body); records each request's token."""

    def __init__(self, routes: dict[str, tuple[int, str]]) -> None:
        self.routes, self.seen = routes, []

    async def __aenter__(self) -> Redirector:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
                self.seen.append((path, headers.get("authorization")))
                status, value = self.routes[path]
                if status == 200:
                    extra, body = "", value.encode()
                else:
                    extra, body = f"Location: {value.format(port=self.port)}\r\n", b""
                writer.write(f"HTTP/1.1 {status} X\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_redirects_are_followed_and_the_token_never_leaves_its_origin(fetcher: MediaFetcher) -> None:
    routes = {
        "/start": (302, "/same?x=1"),  # relative, same origin: the token goes along
        "/same?x=1": (307, "http://localhost:{port}/cdn"),  # another origin (host name): followed without the token
        "/cdn": (301, "http://127.0.0.1:{port}/back"),  # and it does not come back with a return to the first
        "/back": (200, "the bytes"),
    }
    async with Redirector(routes) as server:
        reply = await fetcher.meta._get(f"http://127.0.0.1:{server.port}/start", {"Authorization": "Bearer t"}, 1000)
    assert reply.status == 200 and reply.body == b"the bytes"
    assert server.seen == [("/start", "Bearer t"), ("/same?x=1", "Bearer t"), ("/cdn", None), ("/back", None)]


async def test_a_redirect_loop_is_an_attempt_that_failed(
    objects: DirectoryObjects, embedded_settings: Settings
) -> None:
    async with Redirector({"/v19.0/loop": (302, "/v19.0/loop")}) as server:
        graph = f"http://127.0.0.1:{server.port}/v19.0"
        fetcher = MediaFetcher(objects, meta_media(embedded_settings.replace(graph_api_url=graph)), backoff=0.01)
        try:
            inbound = inbound_for("image")
            inbound = msgspec.structs.replace(inbound, media=msgspec.structs.replace(inbound.media, media_id="loop"))
            outcome = await fetcher.resolve(TENANT, inbound)
        finally:
            await fetcher.meta.aclose()
    assert_delivered_as_notice(outcome, inbound, "download_failed")
    assert outcome.attempts == 3 and "redirects" in outcome.detail
    assert len(server.seen) == 3 * 6  # each attempt: the first request and MAX_REDIRECTS more


async def test_media_above_the_genesys_limit_becomes_a_notice_without_downloading(
    fetcher: MediaFetcher, sim: MetaSim
) -> None:
    inbound = inbound_for("video", size=26 * 1024 * 1024)
    outcome = await fetcher.resolve(TENANT, inbound)
    assert_delivered_as_notice(outcome, inbound, "too_large")
    assert "25 MB" in outcome.notice and outcome.size == 26 * 1024 * 1024
    assert sim.stats().lookups == 1 and sim.stats().downloads == 0


async def test_media_larger_than_meta_announced_is_cut_off_while_streaming(
    objects: DirectoryObjects, embedded_settings: Settings, sim: MetaSim
) -> None:
    sim.inject(file_size=100, count=1)  # Meta understates the size: only counting the bytes catches it
    inbound = inbound_for("image", size=20_000_000)
    meta = meta_media(embedded_settings.replace(graph_api_url=sim.graph_url))
    fetcher = MediaFetcher(objects, meta, max_bytes=100_000)
    try:
        outcome = await fetcher.resolve(TENANT, inbound)
    finally:
        await fetcher.meta.aclose()
    assert_delivered_as_notice(outcome, inbound, "too_large")
    assert sim.stats().downloads == 1 and sim.stats().bytes_served < 20_000_000
    assert not any((objects.root / MEDIA_BUCKET).rglob("*.jpeg")), "nothing kept"


async def test_a_refused_whatsapp_token_becomes_a_notice_at_once(
    fetcher: MediaFetcher, sim: MetaSim
) -> None:
    inbound = inbound_for("sticker")
    wrong = TENANT.__class__(**{**{f: getattr(TENANT, f) for f in TENANT.__struct_fields__},
                                "whatsapp_token": Secret("revoked")})  # fmt: skip
    outcome = await fetcher.resolve(wrong, inbound)
    assert_delivered_as_notice(outcome, inbound, "unauthorized")
    assert outcome.attempts == 1 and sim.stats().unauthorized == 1


async def test_resolving_an_inbound_without_media_is_refused(fetcher: MediaFetcher) -> None:
    (text,) = transform(webhooks.webhook(PHONE, [webhooks.message("text")]))
    with pytest.raises(ValueError):
        await fetcher.resolve(TENANT, text)


# --- the real S3 server -----------------------------------------------------------------------------------------------


def s3_settings(tmp_path: Path, graph_url: str, endpoint: str | None = None) -> Settings:
    return Settings(
        s3_endpoint=endpoint or os.environ["WABRIDGE_S3_ENDPOINT"],
        s3_access_key=Secret(os.environ["WABRIDGE_S3_ACCESS_KEY"]),
        s3_secret_key=Secret(os.environ["WABRIDGE_S3_SECRET_KEY"]),
        s3_bucket_prefix=f"t{uuid.uuid4().hex[:10]}-",
        data_dir=tmp_path,
        graph_api_url=graph_url,
        allow_private_media_urls=True,
    )


async def drop_buckets(settings: Settings) -> None:
    """Leave the shared server as we found it."""
    from miniopy_async import Minio

    client = Minio(urlsplit(settings.s3_endpoint).netloc, access_key=settings.s3_access_key.reveal(),
                   secret_key=settings.s3_secret_key.reveal(), secure=False, region=settings.s3_region)  # fmt: skip
    try:
        for plain in ("webhooks-inbound", "media-inbound"):
            name = settings.s3_bucket_prefix + plain
            if await client.bucket_exists(name):
                async for obj in client.list_objects(name, recursive=True):
                    await client.remove_object(name, obj.object_name)
                await client.remove_bucket(name)
    finally:
        await client.close_session()


@pytest.mark.servers
async def test_on_s3_the_presigned_url_downloads_the_exact_bytes(tmp_path: Path, sim: MetaSim) -> None:
    from wabridge.adapters.objects.s3 import S3Objects

    settings = s3_settings(tmp_path, sim.graph_url)
    objects = S3Objects(settings)
    await objects.open()
    fetcher = MediaFetcher(objects, meta_media(settings))
    try:
        inbound = inbound_for("image", size=200_000)
        outcome = await fetcher.resolve(TENANT, inbound)
        async with httpx.AsyncClient() as client:
            got = await client.get(outcome.url)
        assert got.status_code == 200 and got.content == webhooks.media_bytes(inbound.media.media_id)
        assert got.headers["content-type"] == "image/jpeg"
    finally:
        await fetcher.meta.aclose()
        await objects.close()
        await drop_buckets(settings)


@pytest.mark.servers
async def test_when_s3_is_down_the_error_surfaces_instead_of_a_notice(
    tmp_path: Path, sim: MetaSim, proxy_factory
) -> None:
    from wabridge.adapters.objects.s3 import S3Objects

    proxy, endpoint = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    settings = s3_settings(tmp_path, sim.graph_url, endpoint)
    objects = S3Objects(settings, connect_timeout=1.0, read_timeout=2.0)
    await objects.open()
    fetcher = MediaFetcher(objects, meta_media(settings))
    try:
        proxy.cut()
        with pytest.raises(BackendUnavailable):
            await fetcher.resolve(TENANT, inbound_for("image"))
        assert sim.stats().downloads == 1, "Meta's side worked; only the store failed"
    finally:
        proxy.restore()
        await fetcher.meta.aclose()
        await objects.close()
        await drop_buckets(settings)
