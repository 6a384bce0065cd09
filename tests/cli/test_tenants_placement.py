"""`wabridge tenants add` places each new tenant on the queue shard holding the fewest tenants, or on `--shard N`
(checked against WABRIDGE_SHARDS); an existing tenant keeps its shard; `tenants list` shows it. Embedded store, as
tests/cli/test_tenants.py."""

from __future__ import annotations

from collections import Counter

import anyio
import msgspec

from tests.cli.test_tenants import add, embedded, stored  # noqa: F401  (embedded: the autouse fixture)
from wabridge.adapters.store.sqlite import SqliteStore
from wabridge.cli import main
from wabridge.cli.placement import least_loaded_shard
from wabridge.engine.settings import load_settings


def add_numbered(tenant_id: str, number: int, *extra: str) -> list[str]:
    args = add(tenant_id, *extra)
    args[args.index("--phone-number-id") + 1] = str(1000 + number)
    return args


def test_ten_new_tenants_spread_over_the_four_shards_3_3_2_2(capsys) -> None:
    for n in range(10):
        assert main(add_numbered(f"tenant-{n}", n)) == 0
    shards = [stored(f"tenant-{n}").shard for n in range(10)]
    assert shards == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert sorted(Counter(shards).values()) == [2, 2, 3, 3]


def test_shard_is_honoured_and_checked_against_wabridge_shards(capsys, monkeypatch) -> None:
    assert main(add_numbered("acme", 0, "--shard", "2")) == 0
    assert stored("acme").shard == 2
    assert main(add_numbered("next", 1)) == 0
    assert stored("next").shard == 0  # shard 2 holds one already
    assert main(add_numbered("other", 2, "--shard", "4")) == 2
    assert "--shard must be within 0..3" in capsys.readouterr().err
    assert stored("other") is None
    monkeypatch.setenv("WABRIDGE_SHARDS", "8")
    assert main(add_numbered("other", 2, "--shard", "7")) == 0
    assert stored("other").shard == 7


def test_an_existing_tenant_keeps_its_shard_unless_told_and_a_move_is_noted(capsys) -> None:
    assert main(add_numbered("acme", 0, "--shard", "3")) == 0
    assert main(add_numbered("acme", 0, "--send-rate", "10")) == 0  # an update without --shard
    assert (stored("acme").shard, stored("acme").send_rate_per_second) == (3, 10)
    capsys.readouterr()
    assert main(add_numbered("acme", 0, "--shard", "1")) == 0
    assert stored("acme").shard == 1
    assert "moves from shard 3 to shard 1" in capsys.readouterr().err


def test_a_tenant_stored_before_placement_keeps_the_hash_routing_and_list_shows_both() -> None:
    assert main(add_numbered("placed", 0)) == 0

    async def put_unplaced() -> None:
        store = SqliteStore(load_settings())
        await store.open()
        try:
            old = await store.get_tenant("placed")
            await store.put_tenant(
                msgspec.structs.replace(old, tenant_id="old", phone_number_ids=("2000",), shard=None)
            )
        finally:
            await store.close()

    anyio.run(put_unplaced)
    assert main(add_numbered("old", 9, "--send-rate", "5")) == 0  # an update: still by hash
    assert stored("old").shard is None


def test_list_shows_the_shard_or_hash(capsys) -> None:
    assert main(add_numbered("acme", 0, "--shard", "2")) == 0
    capsys.readouterr()
    assert main(["tenants", "list"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "\tshard=2\t" in line


def test_least_loaded_ignores_unplaced_and_out_of_range_shards() -> None:
    assert least_loaded_shard([None, None, 5, 0, 0, 1], 4) == 2
    assert least_loaded_shard([], 4) == 0


def test_place_puts_an_unplaced_tenant_on_the_least_loaded_shard_and_keeps_its_secrets(capsys) -> None:
    for n in range(3):
        assert main(add_numbered(f"tenant-{n}", n)) == 0  # shards 0, 1, 2

    async def unplace() -> None:
        store = SqliteStore(load_settings())
        await store.open()
        try:
            await store._run(
                lambda db: db.execute("UPDATE tenant_credentials SET shard = NULL WHERE tenant_id = 'tenant-1'")
            )
        finally:
            await store.close()

    anyio.run(unplace)
    before = stored("tenant-1")
    assert before.shard is None
    capsys.readouterr()
    assert main(["tenants", "place", "tenant-1"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "tenant tenant-1 on shard 1"
    assert "moves from its hash shard to shard 1" in err
    assert stored("tenant-1") == msgspec.structs.replace(before, shard=1)
    assert main(["tenants", "place", "tenant-1", "--shard", "3"]) == 0
    assert stored("tenant-1").shard == 3
    assert main(["tenants", "place", "tenant-1", "--shard", "9"]) == 2
    assert main(["tenants", "place", "nobody"]) == 1
