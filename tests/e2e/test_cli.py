"""The command line as an operator meets it, in subprocesses: help, bad usage, tenants, migrate, and a bridge
whose main process is killed alone."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.e2e.harness import (
    APP_SECRET, CLIENT_SECRET, PHONE_NUMBER_ID, TENANT, VERIFY_TOKEN, WHATSAPP_TOKEN, Bridge, Genesys, free_ports,
    run_cli, tenant_config,
)  # fmt: skip
from wabridge.engine.settings import settings_environment
from wabridge.cli import COMMANDS
from wabridge.codecs.results import Inbound, pack_result
from wabridge.codecs.transform import transform
from wabridge.adapters.backends import open_backends
from wabridge.ports import TrackingRecord
from wabridge.engine.secrets import Secret, generate_key
from wabridge.engine.settings import Settings
from wabridge.sim import webhooks

pytestmark = pytest.mark.anyio

SECRETS = {"app": "app-secret-7f3a", "verify": "verify-token-91c2", "whatsapp": "wa-token-55e0",
           "client": "client-secret-0b9d"}  # fmt: skip


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WABRIDGE_")}
    env.update(settings_environment(settings))
    return env


def add_args(tenant_id: str, phone: str, *, app: str, verify: str, whatsapp: str, client: str) -> list[str]:
    return ["tenants", "add", tenant_id, "--phone-number-id", phone, "--app-secret", app, "--verify-token", verify,
            "--whatsapp-token", whatsapp, "--genesys-region", "mypurecloud.ie", "--genesys-client-id", "c1",
            "--genesys-client-secret", client, "--genesys-integration-id", "integration-1"]  # fmt: skip


SUBCOMMANDS = [c for c in COMMANDS if c != "sim"] + ["sim meta", "sim genesys", "tenants add", "tenants list",
                                                      "tenants remove"]  # fmt: skip


async def test_help_of_every_command_exits_0(embedded_settings: Settings) -> None:
    env = cli_env(embedded_settings)
    results = await asyncio.gather(*(run_cli(*c.split(), "--help", env=env) for c in ["", *SUBCOMMANDS]))
    for command, (status, out, err) in zip(["", *SUBCOMMANDS], results):
        assert status == 0, (command, err)
        assert "usage:" in out, command


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], ["serve", "--port", "eighty"], ["tenants"], ["tenants", "add", "t"],
     ["replay", "--since", "yesterday"], ["serve", "--role", "sideways"]],
    ids=["unknown-command", "bad-port", "missing-action", "missing-flags", "bad-time", "bad-role"],
)  # fmt: skip
async def test_bad_usage_exits_2_with_one_line_on_stderr(embedded_settings: Settings, args: list[str]) -> None:
    status, out, err = await run_cli(*args, env=cli_env(embedded_settings))
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "error" in err and out == ""


async def test_tenants_add_list_remove_round_trip_never_shows_a_secret(backend_settings: Settings) -> None:
    env = cli_env(backend_settings)
    status, out, err = await run_cli(*add_args("acme", "1111", **SECRETS), env=env)
    assert (status, out.strip()) == (0, "added tenant acme (1111)"), err

    status, out, err = await run_cli("tenants", "list", env=env)
    assert status == 0, err
    assert "acme\tphone_number_ids=1111" in out and "credentials=1" in out
    for secret in SECRETS.values():
        assert secret not in out + err

    assert (await run_cli(*add_args("other", "1111", **SECRETS), env=env))[0] == 1, "a phone number has one owner"
    status, out, _ = await run_cli("tenants", "remove", "acme", env=env)
    assert (status, out.strip()) == (0, "removed tenant acme")
    assert (await run_cli("tenants", "list", env=env))[1].strip() == "no tenants"
    status, _, err = await run_cli("tenants", "remove", "acme", env=env)
    assert status == 1 and "no tenant 'acme'" in err


async def test_a_rate_limit_of_zero_is_taken_as_no_budget_and_a_negative_one_is_refused(
    embedded_settings: Settings,
) -> None:
    """The README, the budget (ratelimit.py) and `tenants add` agree: 0 means no limit (`tenants add` refused it)."""
    env = cli_env(embedded_settings)
    status, out, err = await run_cli(*add_args("acme", "3333", **SECRETS), "--genesys-rate-limit", "0", env=env)
    assert status == 0, err
    async with open_backends(embedded_settings, ports=("store",)) as backends:
        tenant = await backends.store.get_tenant("acme")
    assert tenant is not None and tenant.rate_limit_per_minute == 0
    status, _, err = await run_cli(*add_args("other", "4444", **SECRETS), "--genesys-rate-limit", "-1", env=env)
    assert status != 0 and "--genesys-rate-limit" in err and "Traceback" not in err


async def test_secrets_given_as_dash_are_read_from_stdin_without_echo_or_warning(embedded_settings: Settings) -> None:
    piped = "\n".join([SECRETS["app"], SECRETS["verify"], SECRETS["client"]]) + "\n"
    args = add_args("acme", "2222", app="-", verify="-", whatsapp=SECRETS["whatsapp"], client="-")

    status, out, err = await run_cli(*args, env=cli_env(embedded_settings), stdin=piped.encode())

    assert (status, out.strip(), err) == (0, "added tenant acme (2222)", "")
    async with open_backends(embedded_settings, ports=("store",)) as backends:
        tenant = await backends.store.get_tenant("acme")
    assert tenant is not None
    assert tenant.app_secret.reveal() == SECRETS["app"]
    assert tenant.verify_token.reveal() == SECRETS["verify"]
    assert tenant.whatsapp_token.reveal() == SECRETS["whatsapp"]
    assert tenant.credentials[0].client_secret.reveal() == SECRETS["client"]


async def test_an_empty_secret_on_stdin_is_refused(embedded_settings: Settings) -> None:
    args = add_args("acme", "3333", app="-", verify="v", whatsapp="w", client="c")
    status, _, err = await run_cli(*args, env=cli_env(embedded_settings), stdin=b"\n")
    assert status != 0 and "must not be empty" in err


async def test_migrate_twice_leaves_the_schema_at_the_same_version(backend_settings: Settings) -> None:
    env = cli_env(backend_settings)
    first = await run_cli("migrate", env=env)
    second = await run_cli("migrate", env=env)
    assert first[0] == second[0] == 0, first[2] + second[2]
    assert first[1].startswith("schema at version ") and first[1] == second[1]


async def test_killing_only_the_bridge_main_process_stops_its_ingress_too(bridge: Bridge, genesys: Genesys) -> None:
    # Not the process group: only the worker process, as an OOM killer would.
    assert bridge.process is not None
    os.kill(bridge.process.pid, signal.SIGKILL)
    await bridge._reap(10)
    for _ in range(200):
        if await bridge.post(b"{}") == 0:
            break
        await asyncio.sleep(0.1)
    assert await bridge.post(b"{}") == 0, "the ingress outlived its bridge and still holds the port"
    await bridge.start()
    wamids = await bridge.send(webhooks.message("text"))
    assert (await bridge.wait_tracked(wamids))[wamids[0]].status == "delivered"


# Every command that opens the stored tenant secrets, run with a key that cannot open them.
WRONG_KEY_COMMANDS = {
    "tenants-list": ["tenants", "list"],
    "tenants-add": add_args(TENANT, PHONE_NUMBER_ID, **SECRETS),  # an update: it reads the tenant first
    # a new tenant: sealed with a key that cannot read the others, the bridge would then refuse to start
    "tenants-add-new": add_args("newcomer", "5555", **SECRETS),
    "tenants-remove": ["tenants", "remove", TENANT],
    "migrate-reencrypt": ["migrate", "--reencrypt-secrets"],
    "replay": ["replay"],
    "serve": ["serve"],
}


@pytest.mark.parametrize("command", WRONG_KEY_COMMANDS.values(), ids=WRONG_KEY_COMMANDS.keys())
async def test_a_wrong_secret_key_is_one_line_naming_the_cause_not_a_traceback(
    backend_settings: Settings, command: list[str]
) -> None:
    async with open_backends(backend_settings, ports=("store",)) as backends:
        await backends.store.put_tenant(tenant_config("http://127.0.0.1:9"))
        # A failed message for replay to pick up (it reads the tenant's secrets to relay it).
        [inbound] = [r for r in transform(webhooks.webhook(PHONE_NUMBER_ID, [webhooks.message("text")]))
                     if isinstance(r, Inbound)]  # fmt: skip
        await backends.store.write_tracking([TrackingRecord(
            wamid="wamid.wrong-key", tenant_id=TENANT, status="failed", error="http 500", payload=pack_result(inbound)
        )])  # fmt: skip
    port, metrics_port = free_ports(2)  # serve must fail before it listens; if it did not, it holds no shared port
    wrong = backend_settings.replace(secret_key=Secret(generate_key()), port=port, metrics_port=metrics_port)

    status, _, err = await run_cli(*command, env=cli_env(wrong), timeout=30)

    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot decrypt tenant secrets with WABRIDGE_SECRET_KEY" in err and "--reencrypt-secrets" in err, err
    assert all(secret not in err for secret in (APP_SECRET, VERIFY_TOKEN, WHATSAPP_TOKEN, CLIENT_SECRET))
