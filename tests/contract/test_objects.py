"""The Objects port: one contract for both adapters (a directory; S3 on the shared SeaweedFS), then what only one
of them has to show (S3: private buckets, real signatures, failing fast when down; directory: its own signed URLs,
path traversal, the shared key file), then the key builders."""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from wabridge.codecs.object_keys import MAX_PART, extension_for, key_part, media_key, utc_day, webhook_key
from wabridge.adapters.objects.directory import KEY_FILE, DirectoryObjects
from wabridge.ports import (
    MEDIA_BUCKET,
    MEDIA_OUTBOUND_BUCKET,
    WEBHOOKS_BUCKET,
    WEBHOOKS_OUTBOUND_BUCKET,
    BackendUnavailable,
    Objects,
)
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio

WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8


def s3_settings(tmp_path: Path, endpoint: str | None = None) -> Settings:
    return Settings(
        s3_endpoint=endpoint or os.environ["WABRIDGE_S3_ENDPOINT"],
        s3_access_key=Secret(os.environ["WABRIDGE_S3_ACCESS_KEY"]),
        s3_secret_key=Secret(os.environ["WABRIDGE_S3_SECRET_KEY"]),
        s3_bucket_prefix=f"t{uuid.uuid4().hex[:10]}-",
        data_dir=tmp_path / "data",
    )


async def remove_buckets(settings: Settings) -> None:
    """Leave the shared server as we found it: empty and drop this test's buckets."""
    from miniopy_async import Minio

    from wabridge.adapters.objects.s3 import BUCKETS

    assert settings.s3_access_key is not None and settings.s3_secret_key is not None
    client = Minio(
        urlsplit(settings.s3_endpoint or "").netloc,
        access_key=settings.s3_access_key.reveal(),
        secret_key=settings.s3_secret_key.reveal(),
        secure=False,
        region=settings.s3_region,
    )
    try:
        for plain in BUCKETS:
            name = settings.s3_bucket_prefix + plain
            if not await client.bucket_exists(name):
                continue
            async for obj in client.list_objects(name, recursive=True):
                await client.remove_object(name, obj.object_name)
            await client.remove_bucket(name)
    finally:
        await client.close_session()


@pytest.fixture
async def s3_objects(tmp_path: Path) -> AsyncIterator[Objects]:
    from wabridge.adapters.objects.s3 import S3Objects

    settings = s3_settings(tmp_path)
    objects = S3Objects(settings)
    await objects.open()
    try:
        yield objects
    finally:
        await objects.close()
        await remove_buckets(settings)


@pytest.fixture
async def dir_objects(embedded_settings: Settings) -> AsyncIterator[DirectoryObjects]:
    objects = DirectoryObjects(embedded_settings)
    await objects.open()
    yield objects
    await objects.close()


@pytest.fixture(params=["directory", pytest.param("s3", marks=pytest.mark.servers)])
def objects(request: pytest.FixtureRequest) -> Objects:
    return request.getfixturevalue("dir_objects" if request.param == "directory" else "s3_objects")


async def download(objects: Objects, url: str) -> tuple[int, bytes, str]:
    """Fetch a presigned URL as Genesys would: over HTTP from S3; from the directory adapter through the same call
    the ingress route makes (`open_signed`), mapping its errors to the status codes the ingress answers."""
    if isinstance(objects, DirectoryObjects):
        parts = urlsplit(url)
        assert parts.path.startswith("/objects/")
        bucket, _, key = parts.path.removeprefix("/objects/").partition("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        try:
            body, content_type = await objects.open_signed(bucket, key, query["expires"], query["signature"])
        except PermissionError:
            return 403, b"", ""
        except KeyError:
            return 404, b"", ""
        return 200, body, content_type
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    return response.status_code, response.content, response.headers.get("content-type", "")


def tamper(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = "signature" if "signature" in query else "X-Amz-Signature"
    good = query[name][0]
    bad = ("0" if good[0] != "0" else "1") + good[1:]
    return url.replace(f"{name}={good}", f"{name}={bad}")


# --- the contract, on both adapters -----------------------------------------------------------------------------------


async def test_an_object_put_is_read_back_byte_for_byte(objects: Objects) -> None:
    await objects.put(WEBHOOKS_BUCKET, "acme/2026-06-08/w1.json", b'{"object":"x"}', content_type="application/json")
    assert await objects.get(WEBHOOKS_BUCKET, "acme/2026-06-08/w1.json") == b'{"object":"x"}'


async def test_reading_an_absent_object_raises_key_error(objects: Objects) -> None:
    with pytest.raises(KeyError):
        await objects.get(MEDIA_BUCKET, "acme/image/2026-06-08/nothing.jpeg")


async def test_a_second_put_under_the_same_key_replaces_the_first(objects: Objects) -> None:
    await objects.put(MEDIA_BUCKET, "k/one.bin", b"first", content_type="application/octet-stream")
    await objects.put(MEDIA_BUCKET, "k/one.bin", b"second, longer", content_type="application/octet-stream")
    assert await objects.get(MEDIA_BUCKET, "k/one.bin") == b"second, longer"


async def test_the_two_buckets_are_separate(objects: Objects) -> None:
    await objects.put(WEBHOOKS_BUCKET, "same/key", b"webhook", content_type="application/json")
    with pytest.raises(KeyError):
        await objects.get(MEDIA_BUCKET, "same/key")


async def test_the_outbound_buckets_take_objects_and_are_apart_from_the_inbound_ones(objects: Objects) -> None:
    """Issue 17: Genesys's webhooks and the agents' media have buckets of their own, made by open()."""
    buckets = (WEBHOOKS_BUCKET, MEDIA_BUCKET, WEBHOOKS_OUTBOUND_BUCKET, MEDIA_OUTBOUND_BUCKET)
    for bucket in buckets:
        await objects.put(bucket, "acme/same-key", bucket.encode(), content_type="application/octet-stream")
    assert [await objects.get(bucket, "acme/same-key") for bucket in buckets] == [b.encode() for b in buckets]
    key = media_key("acme", "image", 1780000000, "genesys-id-1", extension_for("image/jpeg"))
    await objects.put(MEDIA_OUTBOUND_BUCKET, key, JPEG, content_type="image/jpeg")
    assert (await download(objects, await objects.presigned_get(MEDIA_OUTBOUND_BUCKET, key)))[:2] == (200, JPEG)


async def test_a_presigned_url_downloads_the_bytes_with_their_content_type(objects: Objects) -> None:
    key = media_key("acme", "image", 1780000000, WAMID, extension_for("image/jpeg"))
    await objects.put(MEDIA_BUCKET, key, JPEG, content_type="image/jpeg", metadata={"sha256": "abc"})
    url = await objects.presigned_get(MEDIA_BUCKET, key)
    status, body, content_type = await download(objects, url)
    assert (status, body, content_type) == (200, JPEG, "image/jpeg")


async def test_a_presigned_url_with_a_tampered_signature_is_refused(objects: Objects) -> None:
    await objects.put(MEDIA_BUCKET, "acme/doc.pdf", b"%PDF-1.7", content_type="application/pdf")
    url = await objects.presigned_get(MEDIA_BUCKET, "acme/doc.pdf")
    status, body, _ = await download(objects, tamper(url))
    assert status == 403 and b"%PDF" not in body


async def test_a_presigned_url_stops_working_after_it_expires(objects: Objects) -> None:
    await objects.put(MEDIA_BUCKET, "acme/short.ogg", b"OggS", content_type="audio/ogg")
    # S3 dates a signature to the whole second (rounded down): a 1 s URL could already be stale when a slow machine
    # first used it (seen once in a CI-style run). 3 s leaves at least 2 s for the first download.
    url = await objects.presigned_get(MEDIA_BUCKET, "acme/short.ogg", expires=3)
    assert (await download(objects, url))[0] == 200
    await anyio.sleep(4.1)
    assert (await download(objects, url))[0] == 403


async def test_opening_again_and_concurrently_keeps_the_stored_objects(objects: Objects) -> None:
    await objects.put(WEBHOOKS_BUCKET, "acme/keep.json", b"{}", content_type="application/json")
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(objects.open)
    assert await objects.get(WEBHOOKS_BUCKET, "acme/keep.json") == b"{}"
    assert await objects.ping() is True


async def test_an_unknown_bucket_is_a_caller_error(objects: Objects) -> None:
    with pytest.raises(ValueError):
        await objects.put("public-stuff", "k", b"x", content_type="text/plain")


async def test_many_concurrent_puts_all_land(objects: Objects) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(
                lambda i=i: objects.put(MEDIA_BUCKET, f"acme/n/{i}.txt", str(i).encode(), content_type="text/plain")
            )
    for i in range(40):
        assert await objects.get(MEDIA_BUCKET, f"acme/n/{i}.txt") == str(i).encode()


# --- S3 only ----------------------------------------------------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.parametrize("plain", [MEDIA_BUCKET, WEBHOOKS_OUTBOUND_BUCKET, MEDIA_OUTBOUND_BUCKET])
async def test_s3_buckets_are_private_to_anonymous_readers(s3_objects, plain: str) -> None:
    await s3_objects.put(plain, "acme/secret.png", b"\x89PNG", content_type="image/png")
    endpoint = os.environ["WABRIDGE_S3_ENDPOINT"]
    bucket = s3_objects.bucket_name(plain)
    async with httpx.AsyncClient() as client:
        object_status = (await client.get(f"{endpoint}/{bucket}/acme/secret.png")).status_code
        listing_status = (await client.get(f"{endpoint}/{bucket}")).status_code
    assert (object_status, listing_status) == (403, 403)


@pytest.mark.servers
async def test_s3_keeps_content_type_and_metadata(s3_objects) -> None:
    await s3_objects.put(MEDIA_BUCKET, "acme/m.mp4", b"\x00\x00\x00\x18ftyp", content_type="video/mp4",
                         metadata={"wamid": "w1", "sha256": "ab12"})
    info = await s3_objects._require().stat_object(s3_objects.bucket_name(MEDIA_BUCKET), "acme/m.mp4")
    assert info.content_type == "video/mp4"
    assert {k.lower(): v for k, v in info.metadata.items()}.get("x-amz-meta-wamid") == "w1"


@pytest.mark.servers
async def test_s3_puts_a_body_hashed_off_the_loop_byte_for_byte(s3_objects) -> None:
    from wabridge.adapters.objects.s3 import HASH_INLINE_BYTES

    data = os.urandom(HASH_INLINE_BYTES + 1)  # past the inline limit: its SHA-256 is taken in a thread
    await s3_objects.put(MEDIA_BUCKET, "acme/v.mp4", data, content_type="video/mp4", metadata={"wamid": "w2"})
    assert await s3_objects.get(MEDIA_BUCKET, "acme/v.mp4") == data


@pytest.mark.servers
async def test_s3_refusing_a_put_is_the_servers_error_not_an_outage_and_keeps_the_secret(tmp_path: Path) -> None:
    from miniopy_async.error import S3Error

    from wabridge.adapters.objects.s3 import S3Objects

    settings = s3_settings(tmp_path)
    objects = S3Objects(settings)
    try:
        await objects.open()
        objects._settings = settings.replace(s3_secret_key=Secret("not-the-secret"))  # rotated under a running process
        with pytest.raises(S3Error) as refused:
            await objects.put(WEBHOOKS_BUCKET, "acme/x.json", b"{}", content_type="application/json")
        assert refused.value.code == "SignatureDoesNotMatch"
        assert "not-the-secret" not in str(refused.value)
    finally:
        await objects.close()
        await remove_buckets(settings)


@pytest.mark.servers
@pytest.mark.parametrize(
    ("status", "body", "outage"),
    [
        (503, b"<html>bad gateway</html>", True),  # a proxy in the way: not S3's XML
        (500, b"<Error><Code>NotImplemented</Code></Error>", True),  # any 5xx
        (400, b"<Error><Code>RequestTimeout</Code><Message>slow</Message></Error>", True),  # S3's busy codes
        (403, b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>", False),  # the caller's mistake
    ],
)
async def test_s3_put_answers_are_an_outage_or_the_servers_error(tmp_path: Path, status, body, outage) -> None:
    """The put bypasses miniopy's transport: its answers must be translated as miniopy's calls are."""
    import asyncio

    from miniopy_async.error import S3Error

    from wabridge.http.client import Http1Pool
    from wabridge.adapters.objects.s3 import S3Objects

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        await reader.readexactly(int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length"))))
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    settings = s3_settings(tmp_path)
    objects = S3Objects(settings)
    try:
        await objects.open()
        await objects._puts.aclose()
        objects._puts = Http1Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        with pytest.raises(BackendUnavailable if outage else S3Error):
            await objects.put(WEBHOOKS_BUCKET, "acme/x.json", b"{}", content_type="application/json")
    finally:
        server.close()
        await objects.close()
        await remove_buckets(settings)


@pytest.mark.servers
async def test_s3_applies_the_bucket_prefix(s3_objects) -> None:
    assert s3_objects.bucket_name(WEBHOOKS_BUCKET).endswith("-webhooks-inbound")
    assert s3_objects.bucket_name(WEBHOOKS_BUCKET) != "webhooks-inbound"


@pytest.mark.servers
async def test_s3_processes_starting_together_all_open_the_same_new_buckets(tmp_path: Path) -> None:
    from wabridge.adapters.objects.s3 import S3Objects

    settings = s3_settings(tmp_path)
    starters = [S3Objects(settings) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for objects in starters:
                tg.start_soon(objects.open)
        await starters[0].put(WEBHOOKS_BUCKET, "acme/w.json", b"{}", content_type="application/json")
        assert await starters[3].get(WEBHOOKS_BUCKET, "acme/w.json") == b"{}"
    finally:
        for objects in starters:
            await objects.close()
        await remove_buckets(settings)


@pytest.mark.servers
async def test_s3_going_down_surfaces_backend_unavailable_quickly(tmp_path: Path, proxy_factory) -> None:
    from wabridge.adapters.objects.s3 import S3Objects

    proxy, url = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    settings = s3_settings(tmp_path, endpoint=url)
    objects = S3Objects(settings)
    try:
        await objects.open()
        await objects.put(WEBHOOKS_BUCKET, "acme/before.json", b"{}", content_type="application/json")
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as put_error:
            await objects.put(WEBHOOKS_BUCKET, "acme/after.json", b"{}", content_type="application/json")
        with pytest.raises(BackendUnavailable):
            await objects.get(WEBHOOKS_BUCKET, "acme/before.json")
        assert await objects.ping() is False
        assert time.monotonic() - started < 5.0
        assert put_error.value.port == "objects"
        assert os.environ["WABRIDGE_S3_SECRET_KEY"] not in str(put_error.value)
        proxy.restore()
        assert await objects.get(WEBHOOKS_BUCKET, "acme/before.json") == b"{}"
    finally:
        await objects.close()
        await remove_buckets(s3_settings(tmp_path).replace(s3_bucket_prefix=settings.s3_bucket_prefix))


@pytest.mark.servers
async def test_s3_unreachable_at_start_up_fails_open_with_backend_unavailable(tmp_path: Path, proxy_factory) -> None:
    from wabridge.adapters.objects.s3 import S3Objects

    proxy, url = await proxy_factory(os.environ["WABRIDGE_S3_ENDPOINT"])
    proxy.cut()
    objects = S3Objects(s3_settings(tmp_path, endpoint=url))
    try:
        with anyio.fail_after(5):
            with pytest.raises(BackendUnavailable):
                await objects.open()
    finally:
        await objects.close()


@pytest.mark.servers
async def test_s3_repr_never_shows_the_keys(tmp_path: Path) -> None:
    from wabridge.adapters.objects.s3 import S3Objects

    text = repr(S3Objects(s3_settings(tmp_path)))
    assert os.environ["WABRIDGE_S3_SECRET_KEY"] not in text and os.environ["WABRIDGE_S3_ACCESS_KEY"] not in text


# --- directory only ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["../objects.key", "acme/../../objects.key", "/etc/passwd", "a//b", "a\\..\\b", ".", ""]
)
async def test_the_directory_refuses_keys_that_could_leave_the_bucket(dir_objects: DirectoryObjects, key: str) -> None:
    with pytest.raises(ValueError):
        await dir_objects.put(MEDIA_BUCKET, key, b"x", content_type="text/plain")
    with pytest.raises(ValueError):
        await dir_objects.presigned_get(MEDIA_BUCKET, key)
    with pytest.raises(PermissionError):
        await dir_objects.open_signed(MEDIA_BUCKET, key, str(int(time.time()) + 60), "0" * 64)


async def test_the_directory_writes_objects_where_an_operator_finds_them(dir_objects: DirectoryObjects) -> None:
    await dir_objects.put(WEBHOOKS_BUCKET, "acme/2026-06-08/w.json", b"{}", content_type="application/json",
                          metadata={"signature": "ok"})
    assert (dir_objects.root / WEBHOOKS_BUCKET / "acme" / "2026-06-08" / "w.json").read_bytes() == b"{}"
    meta = await dir_objects.stat(WEBHOOKS_BUCKET, "acme/2026-06-08/w.json")
    assert (meta.content_type, meta.metadata) == ("application/json", {"signature": "ok"})
    assert list((dir_objects.root / ".tmp").iterdir()) == []  # no partial file left behind


async def test_a_directory_url_points_at_the_bridge_and_names_the_key(embedded_settings: Settings) -> None:
    objects = DirectoryObjects(embedded_settings.replace(public_url="https://bridge.example.com/"))
    await objects.open()
    url = await objects.presigned_get(MEDIA_BUCKET, f"acme/image/2026-06-08/{WAMID}.jpeg", expires=3600)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert f"{parts.scheme}://{parts.netloc}" == "https://bridge.example.com"
    assert parts.path == f"/objects/media-inbound/acme/image/2026-06-08/{WAMID}.jpeg"
    assert abs(int(query["expires"][0]) - (time.time() + 3600)) < 5
    assert len(query["signature"][0]) == 64


async def test_a_directory_url_is_honoured_by_another_process_on_the_same_data_dir(
    embedded_settings: Settings,
) -> None:
    writer, server = DirectoryObjects(embedded_settings), DirectoryObjects(embedded_settings)
    await writer.open()
    await server.open()
    await writer.put(MEDIA_BUCKET, "acme/a.ogg", b"OggS", content_type="audio/ogg")
    status, body, content_type = await download(server, await writer.presigned_get(MEDIA_BUCKET, "acme/a.ogg"))
    assert (status, body, content_type) == (200, b"OggS", "audio/ogg")


def test_the_signing_key_is_made_once_private_and_shared(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from wabridge.adapters.objects.directory import load_signing_key

    path = tmp_path / "data" / KEY_FILE
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(lambda _: load_signing_key(path), range(32)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no temp file left behind


async def test_a_url_signed_by_another_data_dir_is_refused(tmp_path: Path, dir_objects: DirectoryObjects) -> None:
    other = DirectoryObjects(Settings(data_dir=tmp_path / "elsewhere"))
    await other.open()
    await dir_objects.put(MEDIA_BUCKET, "acme/x.png", b"\x89PNG", content_type="image/png")
    assert (await download(dir_objects, await other.presigned_get(MEDIA_BUCKET, "acme/x.png")))[0] == 403


async def test_a_signed_url_for_a_removed_object_is_not_found(dir_objects: DirectoryObjects) -> None:
    await dir_objects.put(MEDIA_BUCKET, "acme/gone.png", b"\x89PNG", content_type="image/png")
    url = await dir_objects.presigned_get(MEDIA_BUCKET, "acme/gone.png")
    (dir_objects.root / MEDIA_BUCKET / "acme" / "gone.png").unlink()
    assert (await download(dir_objects, url))[0] == 404


async def test_a_key_still_percent_encoded_by_the_router_is_served(dir_objects: DirectoryObjects) -> None:
    await dir_objects.put(MEDIA_BUCKET, "acme/my photo.png", b"\x89PNG", content_type="image/png")
    url = await dir_objects.presigned_get(MEDIA_BUCKET, "acme/my photo.png")
    assert "my%20photo.png" in url
    assert (await download(dir_objects, url)) == (200, b"\x89PNG", "image/png")


@pytest.mark.parametrize("expires", ["", "-5", "1e9", "99999999999999999999", "１２３"])
async def test_a_malformed_expiry_is_refused(dir_objects: DirectoryObjects, expires: str) -> None:
    with pytest.raises(PermissionError):
        await dir_objects.open_signed(MEDIA_BUCKET, "acme/x", expires, "0" * 64)


# --- keys -------------------------------------------------------------------------------------------------------------


def test_a_webhook_key_is_tenant_then_utc_day_then_id() -> None:
    assert webhook_key("acme", 1780876799.9, "w-1") == "acme/2026-06-07/w-1.json"
    assert webhook_key("acme", 1780876800.0, "w-1") == "acme/2026-06-08/w-1.json"


def test_a_media_key_has_the_seed_shape() -> None:
    assert media_key("acme", "Image", "2026-06-08", WAMID, "jpeg") == f"acme/image/2026-06-08/{WAMID}.jpeg"
    assert media_key("acme", "audio", 1780876800, "m1", ".ogg") == "acme/audio/2026-06-08/m1.ogg"


@pytest.mark.parametrize("hostile", ["..", ".", "", "a/b", "../../etc", "a\\b", "x\x00y", "ü/.."])
def test_a_key_part_from_outside_never_holds_a_separator_or_traversal(hostile: str) -> None:
    part = key_part(hostile)
    assert part and "/" not in part and "\\" not in part and "\x00" not in part
    assert part.strip(".") != ""


def test_distinct_inputs_give_distinct_key_parts() -> None:
    inputs = ["a/b", "a_b", "a~2Fb", "a~b", "..", "~2E~2E", "", "~", "x" * 500, "x" * 501]
    assert len({key_part(v) for v in inputs}) == len(inputs)


def test_a_long_key_part_is_bounded() -> None:
    assert len(key_part("z" * 5000)) == MAX_PART


def test_an_invalid_day_string_never_reaches_a_key() -> None:
    with pytest.raises(ValueError):
        utc_day("2026-06-08/../x")


@pytest.mark.parametrize(
    ("mime", "ext"),
    [
        ("image/jpeg", "jpeg"),
        ("image/png", "png"),
        ("image/webp", "webp"),
        ("video/mp4", "mp4"),
        ("video/3gpp", "3gp"),
        ("audio/ogg; codecs=opus", "ogg"),
        ("audio/mpeg", "mp3"),
        ("audio/aac", "aac"),
        ("audio/amr", "amr"),
        ("audio/mp4", "m4a"),
        ("application/pdf", "pdf"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
        ("APPLICATION/PDF", "pdf"),
        ("application/x-unheard-of", "bin"),
        ("", "bin"),
        (None, "bin"),
    ],
)
def test_a_mime_type_maps_to_its_extension(mime: str | None, ext: str) -> None:
    assert extension_for(mime) == ext


@pytest.mark.servers
async def test_s3_serves_its_own_presigned_urls_so_the_bridge_serves_none(tmp_path: Path) -> None:
    """`open_signed` is part of the port: on S3 no signed URL reaches the bridge's `/objects/…` (the ingress says
    404), whatever its signature."""
    from wabridge.adapters.objects.s3 import S3Objects

    objects = S3Objects(s3_settings(tmp_path))
    with pytest.raises(KeyError):
        await objects.open_signed(MEDIA_BUCKET, "acme/x.jpg", str(int(time.time()) + 60), "0" * 64)
