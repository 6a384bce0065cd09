"""The media URL guard in use: Meta's download url (actors/media.py) and the agent's attachment url
(actors/agent_media.py) come from outside, so by default they are fetched from public addresses only; a redirect from
https to http is refused; the token never follows a redirect to another host. The simulators live on 127.0.0.1, so
the refusal of a loopback url is the default's own test."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest

from tests.actors.test_agent_media import PHONE, PNG, world
from tests.actors.test_media import TOKEN, inbound_for, meta_media
from tests.actors.test_media import TENANT as INBOUND_TENANT
from tests.engine.test_http1 import _self_signed
from wabridge.actors.agent_media import MediaRefused
from wabridge.actors.media import MediaFetcher
from wabridge.http import client as http1
from wabridge.adapters.objects.directory import DirectoryObjects
from wabridge.engine.settings import Settings
from wabridge.ports import FetchFailed
from wabridge.sim.meta import MetaSim

pytestmark = pytest.mark.anyio


class Files:
    """A file server on 127.0.0.1 (optionally over TLS): path → (status, Location or body); records each request's
    path and Authorization header."""

    def __init__(self, routes: dict[str, tuple[int, bytes | str]], tls: ssl.SSLContext | None = None) -> None:
        self.routes, self.tls, self.seen = routes, tls, []

    async def __aenter__(self) -> Files:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
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
                    assert isinstance(value, bytes)
                    extra, body = "Content-Type: image/png\r\n", value
                else:
                    extra, body = f"Location: {value}\r\n", b""
                writer.write(f"HTTP/1.1 {status} X\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def directory(embedded_settings: Settings) -> AsyncIterator[DirectoryObjects]:
    objects = DirectoryObjects(embedded_settings, fsync=False)
    await objects.open()
    yield objects
    await objects.close()


@pytest.fixture
def trusted_tls(tmp_path, monkeypatch) -> ssl.SSLContext:
    """A server context for `localhost`, and the clients' shared context made to trust it."""
    cert, key = _self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=cert)
    monkeypatch.setattr(http1, "default_ssl_context", lambda: trusting)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server


# --- the default refuses loopback: inbound media becomes the usual notice ------------------------------------------------


async def test_by_default_meta_s_loopback_download_url_becomes_a_notice_with_the_reason_tracked(
    directory: DirectoryObjects, embedded_settings: Settings
) -> None:
    async with MetaSim(tokens=[TOKEN]) as sim:
        settings = embedded_settings.replace(graph_api_url=sim.graph_url, allow_private_media_urls=False)
        fetcher = MediaFetcher(directory, meta_media(settings), backoff=0.01)
        inbound = inbound_for("image")
        try:
            outcome = await fetcher.resolve(INBOUND_TENANT, inbound)
        finally:
            await fetcher.meta.aclose()
        # The lookup (our own setting, the Graph API) went through; the url it answered was not fetched.
        assert sim.stats().lookups == 1 and sim.stats().downloads == 0
    assert not outcome.stored and outcome.reason == "download_failed" and outcome.attempts == 1
    assert outcome.error is not None and "url refused" in outcome.error and "loopback address" in outcome.error
    message = outcome.apply(inbound)
    assert message.content is None and message.text is not None and outcome.notice in message.text
    assert fetcher.statistics().retries == 0


# --- ... and the agent's file becomes a Failed receipt's reason ---------------------------------------------------------


async def test_by_default_an_agent_s_loopback_attachment_is_refused_at_once_with_the_reason(
    directory: DirectoryObjects,
) -> None:
    async with world(directory, allow_private_urls=False) as w:
        send = w.agent_sends(mime="image/png", data="iVBORw0KGgo=")
        with pytest.raises(MediaRefused) as refused:
            await w.media.upload(w.tenant, send, PHONE)
        assert refused.value.reason.code == "GeneralError"
        assert "loopback address" in refused.value.reason.message and "127.0.0.1" in refused.value.reason.message
        assert w.download_of(send).fetches == [] and w.media.statistics().retries == 0


async def test_with_the_setting_the_simulators_loopback_urls_are_fetched(
    directory: DirectoryObjects, embedded_settings: Settings
) -> None:
    assert embedded_settings.allow_private_media_urls  # tests/conftest.py: the simulators are on 127.0.0.1
    async with MetaSim(tokens=[TOKEN]) as sim:
        fetcher = MediaFetcher(directory, meta_media(embedded_settings.replace(graph_api_url=sim.graph_url)))
        try:
            assert (await fetcher.resolve(INBOUND_TENANT, inbound_for("image"))).stored
        finally:
            await fetcher.meta.aclose()


# --- redirects: never https → http, never the token to another host ------------------------------------------------------


async def test_the_agent_s_file_redirected_from_https_to_http_is_refused(
    directory: DirectoryObjects, trusted_tls: ssl.SSLContext
) -> None:
    async with Files({"/file": (200, PNG)}) as plain:
        async with Files({"/start": (302, f"http://127.0.0.1:{plain.port}/file")}, tls=trusted_tls) as secure:
            async with world(directory) as w:
                send = w.agent_sends(url=f"https://localhost:{secure.port}/start", mime="image/png")
                with pytest.raises(MediaRefused, match="from https to http"):
                    await w.media.upload(w.tenant, send, PHONE)
        assert [path for path, _ in secure.seen] == ["/start"]
    assert plain.seen == []  # not even asked


async def test_meta_s_download_redirected_from_https_to_http_is_refused(
    directory: DirectoryObjects, embedded_settings: Settings, trusted_tls: ssl.SSLContext
) -> None:
    fetcher = MediaFetcher(directory, meta_media(embedded_settings))
    try:
        async with Files({"/file": (200, PNG)}) as plain:
            async with Files({"/start": (302, f"http://127.0.0.1:{plain.port}/file")}, tls=trusted_tls) as secure:
                with pytest.raises(FetchFailed, match="from https to http"):
                    await fetcher.meta._get(f"https://localhost:{secure.port}/start", {"Authorization": "Bearer t"},
                                       1000, fetcher.meta._downloads)  # fmt: skip
        assert plain.seen == []
    finally:
        await fetcher.meta.aclose()


async def test_the_agent_s_token_does_not_follow_a_redirect_to_another_host(directory: DirectoryObjects) -> None:
    async with Files({"/file": (200, PNG)}) as elsewhere:
        async with Files({"/start": (302, f"http://localhost:{elsewhere.port}/file")}) as genesys_host:
            async with world(directory) as w:
                # the tenant's Genesys API is on 127.0.0.1: a url there is a Genesys host, and gets the token
                send = w.agent_sends(url=f"http://127.0.0.1:{genesys_host.port}/start", mime="image/png")
                assert await w.media.upload(w.tenant, send, PHONE)
        assert len(genesys_host.seen) == 1 and (genesys_host.seen[0][1] or "").startswith("Bearer ")
    assert elsewhere.seen == [("/file", None)]


def test_the_setting_is_read_from_the_environment_and_passed_on_to_child_processes() -> None:
    from wabridge.engine.settings import settings_environment
    from wabridge.engine.settings import SettingsError, load_settings

    assert load_settings({}).allow_private_media_urls is False
    assert load_settings({"WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS": "1"}).allow_private_media_urls is True
    passed_on = settings_environment(Settings(allow_private_media_urls=True))  # what serve gives the ingress process
    assert load_settings(passed_on).allow_private_media_urls is True
    with pytest.raises(SettingsError, match="WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS must be true or false"):
        load_settings({"WABRIDGE_ALLOW_PRIVATE_MEDIA_URLS": "maybe"})
