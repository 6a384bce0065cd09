"""The roles reach Genesys and Meta through their ports only: driven against the simulators (wabridge/sim/*), every
request of a role goes through the port object it was given, here the real HTTP adapter wrapped in a recorder."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.actors.test_agent_media import PHONE, PNG, world
from tests.actors.test_media import TENANT, TOKEN, inbound_for
from wabridge.actors.agent_media import AgentMedia
from wabridge.actors.media import MediaFetcher
from wabridge.adapters.objects.directory import DirectoryObjects
from wabridge.engine.settings import Settings
from wabridge.meta.media import MetaMedia
from wabridge.sim.meta import MetaSim

pytestmark = pytest.mark.anyio


class Recording:
    """Stands for a port: records the name of each call, and passes it to the adapter."""

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._adapter, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await method(*args, **kwargs)

        return call


@pytest.fixture
async def directory(embedded_settings: Settings):
    objects = DirectoryObjects(embedded_settings, fsync=False)
    await objects.open()
    yield objects
    await objects.close()


async def test_a_customer_s_media_is_fetched_from_the_meta_simulator_through_the_meta_media_port(
    directory: DirectoryObjects, embedded_settings: Settings
) -> None:
    async with MetaSim(tokens=[TOKEN]) as sim:
        adapter = MetaMedia(sim.graph_url, allow_private_urls=embedded_settings.allow_private_media_urls)
        port = Recording(adapter)
        try:
            outcome = await MediaFetcher(directory, port).resolve(TENANT, inbound_for("image"))
        finally:
            await adapter.aclose()
        assert outcome.stored
        assert port.calls == ["fetch"] and (sim.stats().lookups, sim.stats().downloads) == (1, 1)


async def test_an_agent_s_file_goes_from_the_genesys_simulator_to_the_meta_simulator_through_the_ports(
    directory: DirectoryObjects,
) -> None:
    async with world(directory) as w:
        files, graph = Recording(w.media._files), Recording(w.graph)
        media = AgentMedia(directory, graph, files)
        send = w.agent_sends(mime="image/png", data=base64.b64encode(PNG).decode())
        media_id = await media.upload(w.tenant, send, PHONE)
        assert files.calls == ["download"] and graph.calls == ["upload"]
        assert len(w.download_of(send).fetches) == 1 and w.meta.outbound.uploads[media_id]["size"] == len(PNG)
