"""The fuzz run over real HTTP (tests/fuzz/ingress.py), short, on both backends: the embedded ones (SQLite, a
directory) and the real servers. `make fuzz` runs it long. A failure prints the seed: WABRIDGE_FUZZ_SEED replays it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.ingress import fuzz_ingress
from wabridge.engine.settings import Settings

pytestmark = pytest.mark.anyio

REQUESTS = int(os.environ.get("WABRIDGE_FUZZ_REQUESTS", "10000"))  # per backend
SEED = int(os.environ["WABRIDGE_FUZZ_SEED"]) if os.environ.get("WABRIDGE_FUZZ_SEED") else None


async def fuzz(settings: Settings, workdir: Path) -> None:
    report = await fuzz_ingress(settings, workdir, requests=REQUESTS, seed=SEED)
    print(report.summary())
    assert report.problems == [], report.summary() + "\n" + "\n".join(p[:2000] for p in report.problems[:10])
    assert sum(report.statuses.values()) + report.solo_closed >= REQUESTS  # every request was sent and judged


async def test_on_embedded_backends_no_request_crashes_the_served_ingress_or_gets_in_unsigned(
    embedded_settings: Settings, tmp_path: Path
) -> None:
    await fuzz(embedded_settings, tmp_path)


@pytest.mark.servers
async def test_on_real_servers_no_request_crashes_the_served_ingress_or_gets_in_unsigned(
    server_settings: Settings, tmp_path: Path
) -> None:
    await fuzz(server_settings, tmp_path)
