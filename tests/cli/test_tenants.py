"""`wabridge tenants add|list` for the outbound half (issue 17): the Genesys webhook secret, the Meta send budget and
read marks. In-process on the embedded store: the store itself is covered on both backends by tests/contract/."""

from __future__ import annotations

import io
import sys

import anyio
import pytest

from wabridge.cli import main
from wabridge.ports import TenantConfig
from wabridge.engine.secrets import generate_key
from wabridge.engine.settings import load_settings
from wabridge.adapters.store.sqlite import SqliteStore

WEBHOOK_SECRET = "genesys-webhook-secret-4d1e"
SECRETS = ("app-secret-7f3a", "verify-token-91c2", "wa-token-55e0", "client-secret-0b9d", WEBHOOK_SECRET)


@pytest.fixture(autouse=True)
def embedded(tmp_path, monkeypatch):
    for var in ("WABRIDGE_DATABASE_URL", "WABRIDGE_REDIS_URL", "WABRIDGE_AMQP_URL", "WABRIDGE_S3_ENDPOINT",
                "WABRIDGE_CONFIG"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WABRIDGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("WABRIDGE_SECRET_KEY", generate_key())


def add(tenant_id: str = "acme", *extra: str, app: str = SECRETS[0], client: str = SECRETS[3]) -> list[str]:
    return ["tenants", "add", tenant_id, "--phone-number-id", "1111", "--app-secret", app, "--verify-token",
            SECRETS[1], "--whatsapp-token", SECRETS[2], "--genesys-region", "mypurecloud.ie", "--genesys-client-id",
            "c1", "--genesys-client-secret", client, "--genesys-integration-id", "integration-1", *extra]  # fmt: skip


def stored(tenant_id: str = "acme") -> TenantConfig | None:
    async def read() -> TenantConfig | None:
        store = SqliteStore(load_settings())
        await store.open()
        try:
            await store.migrate()
            return await store.get_tenant(tenant_id)
        finally:
            await store.close()

    return anyio.run(read)


def test_add_stores_the_webhook_secret_and_send_settings_and_list_shows_them_but_never_the_secret(capsys):
    assert main(add("acme", "--genesys-webhook-secret", WEBHOOK_SECRET, "--send-rate", "20", "--no-read-marks")) == 0
    tenant = stored()
    assert tenant.genesys_webhook_secret.reveal() == WEBHOOK_SECRET
    assert (tenant.send_rate_per_second, tenant.read_marks) == (20, False)

    assert main(["tenants", "list"]) == 0
    out, err = capsys.readouterr()
    line = out.strip().splitlines()[-1]
    assert line.startswith("acme\t")
    assert "\twebhook_secret=set\t" in line and "\tsend_rate=20/s\t" in line and line.endswith("\tread_marks=off")
    for secret in SECRETS:
        assert secret not in out + err


def test_without_the_new_flags_a_tenant_has_no_webhook_secret_80_sends_per_second_and_read_marks(capsys):
    assert main(add("acme")) == 0
    tenant = stored()
    assert (tenant.genesys_webhook_secret, tenant.send_rate_per_second, tenant.read_marks) == (None, 80, True)
    assert main(["tenants", "list"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "\twebhook_secret=none\t" in line and "\tsend_rate=80/s\t" in line and line.endswith("\tread_marks=on")


def test_a_send_rate_of_zero_is_no_budget_and_a_negative_one_is_refused(capsys):
    assert main(add("acme", "--send-rate", "0", "--read-marks")) == 0
    assert (stored().send_rate_per_second, stored().read_marks) == (0, True)
    main(["tenants", "list"])
    assert "\tsend_rate=none\t" in capsys.readouterr().out
    assert main(add("other", "--send-rate", "-1")) == 2
    assert "--send-rate" in capsys.readouterr().err
    assert stored("other") is None


def test_a_webhook_secret_given_as_dash_is_read_from_stdin_after_the_secrets_listed_before_it(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{SECRETS[0]}\n{SECRETS[3]}\n{WEBHOOK_SECRET}\n"))
    assert main(add("acme", "--genesys-webhook-secret", "-", app="-", client="-")) == 0
    tenant = stored()
    assert tenant.app_secret.reveal() == SECRETS[0]
    assert tenant.credentials[0].client_secret.reveal() == SECRETS[3]
    assert tenant.genesys_webhook_secret.reveal() == WEBHOOK_SECRET
    assert WEBHOOK_SECRET not in "".join(capsys.readouterr())


def test_an_empty_webhook_secret_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    with pytest.raises(SystemExit, match="Genesys webhook secret must not be empty"):
        main(add("acme", "--genesys-webhook-secret", "-"))
    assert stored() is None


def test_an_update_replaces_the_tenant_whole_and_says_so_when_it_drops_the_webhook_secret(capsys):
    assert main(add("acme", "--genesys-webhook-secret", WEBHOOK_SECRET, "--send-rate", "5")) == 0
    capsys.readouterr()
    assert main(add("acme", "--genesys-webhook-secret", "a-new-one")) == 0
    out, err = capsys.readouterr()
    assert (out.strip(), err) == ("updated tenant acme (1111)", "")
    assert stored().genesys_webhook_secret.reveal() == "a-new-one"
    assert stored().send_rate_per_second == 80  # not given: the default, as every other setting of `add`

    assert main(add("acme")) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "updated tenant acme (1111)"
    assert "no longer has a Genesys webhook secret" in err and "a-new-one" not in err
    assert stored().genesys_webhook_secret is None
