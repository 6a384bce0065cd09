"""Fixtures of the end-to-end tests: every test runs on the embedded backends and, marked `servers`, on the real
ones. `bridge` is a started `wabridge serve` with the test tenant, wired to both simulators."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import WHATSAPP_TOKEN, Bridge, Genesys, put_tenant, running_bridge, running_genesys
from wabridge.engine.settings import Settings
from wabridge.sim.meta import MetaSim

BACKENDS = [pytest.param("embedded"), pytest.param("server", marks=pytest.mark.servers)]


@pytest.fixture(params=BACKENDS)
def backend_settings(request: pytest.FixtureRequest) -> Settings:
    return request.getfixturevalue(f"{request.param}_settings")


@pytest.fixture
async def genesys() -> AsyncIterator[Genesys]:
    async with running_genesys() as sim:
        yield sim


@pytest.fixture
async def meta() -> AsyncIterator[MetaSim]:
    async with MetaSim(tokens=[WHATSAPP_TOKEN]) as sim:
        yield sim


@pytest.fixture
async def bridge(
    backend_settings: Settings, genesys: Genesys, meta: MetaSim, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Bridge]:
    settings = backend_settings.replace(graph_api_url=meta.graph_url)
    if (hold := request.node.get_closest_marker("far_end_hold")) is not None:
        settings = settings.replace(far_end_hold=hold.args[0], far_end_retry_max=1)
    await put_tenant(settings, genesys.url)
    async with running_bridge(settings, tmp_path / "bridge") as running:
        yield running
