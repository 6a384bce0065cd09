"""The aiormq internals the AMQP adapter writes into are checked at start-up (adapters/queue/amqp_wire.py): a release outside
the proven range, or a Channel without those attributes, refuses with one line instead of publishing into them."""

from __future__ import annotations

import pytest

from wabridge.adapters.queue import amqp_wire


def test_the_installed_aiormq_is_one_the_adapter_was_proven_against() -> None:
    amqp_wire.check()


@pytest.mark.parametrize("version", ["6.8.1", "7.1.9", "8.0.0", "10.2"])
def test_a_release_outside_the_proven_range_is_refused_by_name(version: str) -> None:
    with pytest.raises(amqp_wire.UnprovenAiormq, match=f"aiormq {version} is installed"):
        amqp_wire.check(version)


@pytest.mark.parametrize("version", ["7.2.0", "7.2.4", "7.9.12rc1"])
def test_releases_inside_the_range_pass(version: str) -> None:
    amqp_wire.check(version)


def test_a_channel_that_lost_an_internal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp_wire, "_channel_attributes", lambda cls: {"number", "write_queue"})
    with pytest.raises(amqp_wire.UnprovenAiormq, match="lacks delivery_tag, confirmations, max_content_size"):
        amqp_wire.check("7.2.4")
