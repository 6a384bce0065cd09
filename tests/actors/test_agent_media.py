"""AgentMedia against both simulators over loopback HTTP: the agent's file downloaded from the Genesys simulator
(which serves it to a valid bearer token only), kept in `media-outbound` (a directory, and the real S3 server), checked
against Meta's limits, uploaded to the Meta simulator."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from wabridge.actors.agent_media import AgentMedia, MediaRefused, real_mime
from wabridge.genesys.auth import TokenProvider
from wabridge.genesys.files import AgentFiles, genesys_host
from wabridge.meta.graph import MetaGraph
from wabridge.codecs.outbound import decode_outbound
from wabridge.codecs.outbound_results import MediaToFetch, Send
from wabridge.adapters.cache.memory import MemoryCache
from wabridge.adapters.objects.directory import DirectoryObjects
from wabridge.ports import MEDIA_OUTBOUND_BUCKET, GenesysCredential, Objects, TenantConfig
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings
from wabridge.sim.genesys import GenesysSim
from wabridge.sim.genesys_agent import Download, Party, SendSpec
from wabridge.sim.meta import MetaSim

pytestmark = pytest.mark.anyio

TOKEN = "EAAG-outbound-token"
PHONE = "106540352242922"
CUSTOMER = "16505551234"
INTEGRATION = "int-1"
PNG = bytes.fromhex("89504e470d0a1a0a") + b"\0" * 300
NOW = 1_800_000_000.0  # the day in the key: 2027-01-15 (UTC)


def tenant_for(genesys_url: str, *, api_url: str | None = None) -> TenantConfig:
    return TenantConfig(
        tenant_id="acme",
        phone_number_ids=(PHONE,),
        app_secret=Secret("app"),
        verify_token=Secret("verify"),
        whatsapp_token=Secret(TOKEN),
        genesys_api_url=api_url or genesys_url,
        genesys_login_url=genesys_url,
        genesys_integration_id=INTEGRATION,
        credentials=(GenesysCredential("cid", Secret("secret")),),
        rate_limit_per_minute=0,
    )


class World:
    """Both simulators, the Objects port under test, and an AgentMedia wired to them."""

    def __init__(self, genesys: GenesysSim, meta: MetaSim, objects: Any, media: AgentMedia, graph: MetaGraph) -> None:
        self.genesys, self.meta, self.objects, self.media, self.graph = genesys, meta, objects, media, graph
        self.tenant = tenant_for(genesys.url)

    def agent_sends(self, **spec: Any) -> Send:
        """What the codec makes of the simulator's outbound webhook for an attachment (served at /sim/downloads)."""
        spec = {"type": "attachment", "to": Party(id=CUSTOMER, idType="Phone"), "integrationId": INTEGRATION} | spec
        _, _, _, body = self.genesys.agent.build(SendSpec(**spec))
        send = decode_outbound(body)
        assert isinstance(send, Send) and send.media is not None, send
        return send

    def download_of(self, send: Send) -> Download:
        assert send.media is not None
        return self.genesys.agent.downloads[send.media.url.rsplit("/", 1)[1]]


@contextlib.asynccontextmanager
async def world(objects: Objects, **options: Any) -> AsyncIterator[World]:
    async def no_wait(seconds: float) -> None:  # retries without waiting them out: no test is timed
        pass

    async with GenesysSim(clients={"cid": "secret"}, integrations=[INTEGRATION], rate_limit=0) as genesys, \
            MetaSim(tokens=[TOKEN], open_windows=True) as meta:  # fmt: skip
        tokens = TokenProvider(MemoryCache())
        graph = MetaGraph(MemoryCache(), base_url=meta.graph_url, timeout=5.0)
        files = AgentFiles(tokens, timeout=5.0, allow_private_urls=options.pop("allow_private_urls", True))
        options = {"sleep": no_wait, "clock": lambda: NOW, **options}
        media = AgentMedia(objects, graph, files, **options)
        try:
            yield World(genesys, meta, objects, media, graph)
        finally:
            await files.aclose()
            await graph.aclose()
            await tokens.aclose()


@pytest.fixture
async def directory(embedded_settings: Settings) -> AsyncIterator[DirectoryObjects]:
    objects = DirectoryObjects(embedded_settings, fsync=False)
    await objects.open()
    yield objects
    await objects.close()


@pytest.fixture
async def w(directory: DirectoryObjects) -> AsyncIterator[World]:
    async with world(directory) as running:
        yield running


def expected_key(send: Send, ext: str) -> str:
    assert send.media is not None
    return f"acme/{send.media.meta_type}/2027-01-15/{send.id}.{ext}"


# --- the happy path ---------------------------------------------------------------------------------------------------


async def test_an_image_is_downloaded_with_the_token_kept_and_uploaded_to_meta(w: World) -> None:
    send = w.agent_sends(mime="image/png", filename="photo.png", data=base64.b64encode(PNG).decode(), text="Here")
    media_id = await w.media.upload(w.tenant, send, PHONE)
    assert w.meta.outbound.uploads[media_id] == {"mime": "image/png", "size": len(PNG),
                                                 "sha256": hashlib.sha256(PNG).hexdigest()}  # fmt: skip
    assert w.download_of(send).fetches[-1]["authorized"] is True  # the Genesys token went along
    key = expected_key(send, "png")
    assert await w.objects.get(MEDIA_OUTBOUND_BUCKET, key) == PNG
    meta = await w.objects.stat(MEDIA_OUTBOUND_BUCKET, key)
    assert meta.content_type == "image/png" and meta.metadata == {"genesys-id": send.id, "tenant": "acme"}
    stats = w.media.statistics()
    assert (stats.uploaded, stats.refused, stats.bytes_stored) == (1, 0, len(PNG))


async def test_a_document_keeps_its_type_and_name_and_a_generic_type_falls_back_to_genesyss(w: World) -> None:
    pdf = b"%PDF-1.4 invoice" * 50
    send = w.agent_sends(mime="application/pdf", filename="invoice.pdf", data=base64.b64encode(pdf).decode())
    w.download_of(send).mime = "application/octet-stream"  # what an object store answers when nobody said
    media_id = await w.media.upload(w.tenant, send, PHONE)
    assert w.meta.outbound.uploads[media_id]["mime"] == "application/pdf"
    assert await w.objects.get(MEDIA_OUTBOUND_BUCKET, expected_key(send, "pdf")) == pdf


# --- refusals ---------------------------------------------------------------------------------------------------------


async def test_without_the_token_the_download_is_refused_and_so_is_the_file(w: World) -> None:
    send = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
    elsewhere = tenant_for(w.genesys.url, api_url="https://api.mypurecloud.ie")  # the sim's host is not the tenant's
    with pytest.raises(MediaRefused) as refused:
        await w.media.upload(elsewhere, send, PHONE)
    assert refused.value.reason.code == "GeneralError" and "HTTP 401" in refused.value.reason.message
    assert [f["authorized"] for f in w.download_of(send).fetches] == [False]  # final at once, no token sent
    assert not w.meta.outbound.uploads and w.media.statistics().refused == 1


async def test_a_file_over_metas_limit_is_refused_without_being_read_whole(w: World) -> None:
    send = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
    w.download_of(send).data = PNG + b"\0" * (5 * 1024 * 1024)  # Genesys named a smaller size than it serves
    with pytest.raises(MediaRefused) as refused:
        await w.media.upload(w.tenant, send, PHONE)
    assert refused.value.reason.code == "InvalidMediaContentLength" and "5242880" in refused.value.reason.message
    assert not w.meta.outbound.uploads and w.media.statistics().bytes_stored == 0
    with pytest.raises(KeyError):  # reading stopped at the limit: nothing whole to keep
        await w.objects.get(MEDIA_OUTBOUND_BUCKET, expected_key(send, "png"))


async def test_a_file_of_a_type_meta_does_not_take_is_refused_by_its_real_type(w: World) -> None:
    send = w.agent_sends(mime="image/png", data=base64.b64encode(b"GIF89a" + b"\0" * 40).decode())
    w.download_of(send).mime = "image/gif"  # Genesys said png; the download says what it is
    with pytest.raises(MediaRefused) as refused:
        await w.media.upload(w.tenant, send, PHONE)
    assert refused.value.reason.code == "MediaTypeNotAllowed" and "image/gif" in refused.value.reason.message
    assert not w.meta.outbound.uploads
    assert await w.objects.get(MEDIA_OUTBOUND_BUCKET, expected_key(send, "gif"))  # kept: what the agent sent


async def test_meta_refusing_the_upload_is_a_media_refusal_with_metas_reason(w: World) -> None:
    send = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
    w.meta.outbound.inject(target="media", code=131053)
    with pytest.raises(MediaRefused) as refused:
        await w.media.upload(w.tenant, send, PHONE)
    assert refused.value.reason.code == "MediaTypeNotAllowed"
    assert refused.value.reason.message.startswith("(#131053) Media upload error")
    assert w.media.statistics().refused == 1 and w.graph.statistics().refused == 1


async def test_a_missing_file_is_refused_at_once(w: World) -> None:
    missing = Send(id="g-1", to_id=CUSTOMER, to_id_type="Phone", kind="image", parts=(),
                   media=MediaToFetch(url=f"{w.genesys.url}/sim/downloads/nothing", media_type="Image",
                                      meta_type="image", mime="image/png"))  # fmt: skip
    with pytest.raises(MediaRefused) as refused:
        await w.media.upload(w.tenant, missing, PHONE)
    assert refused.value.reason.code == "GeneralError" and "HTTP 404" in refused.value.reason.message
    assert w.media.statistics().retries == 0


async def test_an_unreachable_download_host_is_tried_a_few_times_then_refused(w: World, proxy_factory) -> None:
    send = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
    proxy, url = await proxy_factory(send.media.url)
    proxy.cut()
    through_proxy = msgspec.structs.replace(send, media=msgspec.structs.replace(send.media, url=url))
    with pytest.raises(MediaRefused) as refused:
        await w.media.upload(w.tenant, through_proxy, PHONE)
    assert refused.value.reason.code == "GeneralError" and "(3 tries)" in refused.value.reason.message
    assert w.media.statistics().retries == 2 and not w.meta.outbound.uploads


async def test_a_revoked_token_is_replaced_once_and_the_download_goes_through(directory: DirectoryObjects) -> None:
    async with world(directory, attempts=1) as w:  # the new login is not a failed attempt
        first = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
        await w.media.upload(w.tenant, first, PHONE)
        async with httpx.AsyncClient() as client:
            assert (await client.post(w.genesys.url + "/sim/revoke-tokens")).status_code == 200
        second = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
        assert await w.media.upload(w.tenant, second, PHONE) in w.meta.outbound.uploads
        assert [f["authorized"] for f in w.download_of(second).fetches] == [False, True]


# --- whose host gets the token ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "api", "sent"),
    [
        ("https://api-downloads.mypurecloud.ie/api/v2/downloads/x", "https://api.mypurecloud.ie", True),
        ("https://api.mypurecloud.ie/api/v2/downloads/x", "https://api.mypurecloud.ie", True),
        ("https://api-downloads.mypurecloud.com.au/x", "https://api.mypurecloud.ie", True),  # *.mypurecloud.*
        ("https://apps.euw2.pure.cloud/x", "https://api.mypurecloud.ie", True),
        ("http://api-downloads.mypurecloud.com/x", "https://api.mypurecloud.ie", False),  # never in clear text
        ("http://api-downloads.mypurecloud.ie/x", "https://api.mypurecloud.ie", False),  # nor below the API's scheme
        ("https://mypurecloud.ie.evil.example/x", "https://api.mypurecloud.ie", False),
        ("https://evilmypurecloud.ie/x", "https://api.mypurecloud.ie", False),
        ("https://cdn.example.com/x.png", "https://api.mypurecloud.ie", False),
        ("https://pure.cloud/x", "https://api.mypurecloud.ie", False),
        ("http://127.0.0.1:9/x", "http://127.0.0.1:9", True),  # a tenant whose API is here (the simulator)
        ("not a url", "https://api.mypurecloud.ie", False),
    ],
)
def test_the_genesys_token_goes_only_to_genesys_hosts(url: str, api: str, sent: bool) -> None:
    assert genesys_host(url, tenant_for("https://login.mypurecloud.ie", api_url=api)) is sent


def test_the_real_type_is_the_downloads_then_genesyss_then_the_file_names() -> None:
    media = MediaToFetch(url="x", media_type="File", meta_type="document", mime="application/pdf", filename="a.txt")
    assert real_mime("image/PNG; charset=binary", media) == "image/png"
    assert real_mime("binary/octet-stream", media) == "application/pdf"
    assert real_mime(None, msgspec.structs.replace(media, mime=None)) == "text/plain"
    assert real_mime(None, msgspec.structs.replace(media, mime=None, filename=None)) == "application/octet-stream"


# --- the real S3 server -----------------------------------------------------------------------------------------------


@pytest.mark.servers
async def test_on_s3_the_agents_file_is_kept_in_media_outbound(tmp_path: Path) -> None:
    from miniopy_async import Minio

    from wabridge.adapters.objects.s3 import S3Objects

    settings = Settings(
        s3_endpoint=os.environ["WABRIDGE_S3_ENDPOINT"],
        s3_access_key=Secret(os.environ["WABRIDGE_S3_ACCESS_KEY"]),
        s3_secret_key=Secret(os.environ["WABRIDGE_S3_SECRET_KEY"]),
        s3_bucket_prefix=f"t{uuid.uuid4().hex[:10]}-",
        data_dir=tmp_path,
    )
    objects = S3Objects(settings)
    await objects.open()
    try:
        async with world(objects) as w:
            send = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
            media_id = await w.media.upload(w.tenant, send, PHONE)
            assert media_id in w.meta.outbound.uploads
            assert await objects.get(MEDIA_OUTBOUND_BUCKET, expected_key(send, "png")) == PNG
    finally:
        await objects.close()
        client = Minio(urlsplit(settings.s3_endpoint).netloc, access_key=settings.s3_access_key.reveal(),
                       secret_key=settings.s3_secret_key.reveal(), secure=False, region=settings.s3_region)  # fmt: skip
        try:  # leave the shared server as we found it
            for name in [b.name for b in await client.list_buckets() if b.name.startswith(settings.s3_bucket_prefix)]:
                async for obj in client.list_objects(name, recursive=True):
                    await client.remove_object(name, obj.object_name)
                await client.remove_bucket(name)
        finally:
            await client.close_session()
