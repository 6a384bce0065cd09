import os
import stat

import pytest

from wabridge.engine.secrets import Secret, SecretBox, generate_key
from wabridge.engine.settings import Settings, SettingsError, load_settings


def test_defaults_select_the_embedded_backends():
    s = load_settings({})
    assert s.embedded and s.shards == 4 and s.queue_name == "INBOUND_WHATSAPP_MESSAGES"


def test_environment_overrides_toml_file(tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_text('shards = 8\nport = 9000\n')
    s = load_settings({"WABRIDGE_SHARDS": "2"}, cfg)
    assert (s.shards, s.port) == (2, 9000)


@pytest.mark.parametrize(
    "env, names",
    [
        ({"WABRIDGE_SHARDS": "many"}, "WABRIDGE_SHARDS"),
        ({"WABRIDGE_SHARDS": "0"}, "WABRIDGE_SHARDS"),
        ({"WABRIDGE_DATABASE_URL": "mysql://x"}, "WABRIDGE_DATABASE_URL"),
        ({"WABRIDGE_DATABASE_URL": "postgresql://x/y"}, "WABRIDGE_SECRET_KEY"),
        ({"WABRIDGE_S3_ENDPOINT": "http://x"}, "WABRIDGE_S3_ACCESS_KEY"),
        ({"WABRIDGE_SECRET_KEY": "not base64!"}, "WABRIDGE_SECRET_KEY"),
        ({"WABRIDGE_SECRET_KEY": "c2hvcnQ="}, "WABRIDGE_SECRET_KEY"),
        ({"WABRIDGE_GENESYS_TIMEOUT": "soon"}, "WABRIDGE_GENESYS_TIMEOUT"),
        ({"WABRIDGE_GENESYS_TIMEOUT": "0"}, "WABRIDGE_GENESYS_TIMEOUT"),
        ({"WABRIDGE_GENESYS_TIMEOUT": "301"}, "WABRIDGE_GENESYS_TIMEOUT"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(env, names):
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert names in message and "\n" not in message


def test_secrets_never_appear_in_repr():
    key = generate_key()
    s = load_settings({"WABRIDGE_SECRET_KEY": key, "WABRIDGE_DATABASE_URL": "postgresql://u:hunter2@h/db"})
    text = repr(s) + str(s)
    assert key not in text and "hunter2" not in text
    assert s.database_url.reveal() == "postgresql://u:hunter2@h/db"


def test_embedded_key_is_generated_once_with_mode_0600(tmp_path):
    s = Settings(data_dir=tmp_path)
    first = s.secret_box()
    again = Settings(data_dir=tmp_path).secret_box()
    assert first.primary_key_id == again.primary_key_id
    mode = stat.S_IMODE(os.stat(tmp_path / "secret.key").st_mode)
    assert mode == 0o600


def test_rotation_decrypts_with_old_key_and_encrypts_with_new():
    old, new = generate_key(), generate_key()
    sealed = SecretBox.from_text(old).encrypt("app-secret", context="t1")
    ring = SecretBox.from_text(f"{new},{old}")
    assert ring.decrypt(sealed, context="t1") == "app-secret"
    assert ring.needs_rotation(sealed)
    assert not ring.needs_rotation(ring.encrypt("x"))


def test_ciphertext_bound_to_its_context():
    box = SecretBox.from_text(generate_key())
    sealed = box.encrypt("s", context="tenant-a")
    with pytest.raises(Exception):
        box.decrypt(sealed, context="tenant-b")


def test_secret_hides_value():
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in f"{s}" and s.reveal() == "hunter2"


def test_the_embedded_data_directory_is_private_to_its_owner(tmp_path):
    data = tmp_path / "data"
    Settings(data_dir=data).secret_box()
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700


def test_a_password_inside_a_plain_url_is_masked_in_the_repr():
    s = load_settings({"WABRIDGE_REDIS_URL": "redis://:hunter2@cache.internal:6379/0"})
    assert "hunter2" not in repr(s) and "redis://:****@cache.internal:6379/0" in repr(s)
    assert s.redis_url == "redis://:hunter2@cache.internal:6379/0"  # the value itself is intact for the client


def test_the_genesys_timeout_is_a_setting_in_seconds_fractions_allowed():
    assert load_settings({}).genesys_timeout == 10.0
    assert load_settings({"WABRIDGE_GENESYS_TIMEOUT": "2.5"}).genesys_timeout == 2.5
