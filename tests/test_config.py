"""Configuration: embedded defaults, then the TOML file, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Config, ConfigError, load_config


def test_with_no_file_the_embedded_defaults_apply() -> None:
    config = load_config()
    assert config == Config()
    assert config.url == "ws://127.0.0.1:8470/ws"
    assert config.store_dir == Path("var/hot")


def test_the_file_overrides_defaults_and_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "herald.toml"
    path.write_text(
        'data_dir = "/srv/herald"\nlisten = "0.0.0.0:9000"\n'
        "[storage]\nmessage_cache_bytes = 0\n"
        "[limits]\nmax_body_bytes = 4096\n"
        "[gateway]\nping_interval_s = 10\noutbox_cap_bytes = 8388608\n"
    )
    config = load_config(path)
    assert (config.data_dir, config.listen_host, config.listen_port) == (
        Path("/srv/herald"), "0.0.0.0", 9000)
    assert config.limits.max_body_bytes == 4096
    assert config.message_cache_bytes == 0 != Config().message_cache_bytes
    assert config.gateway.ping_interval_s == 10.0
    assert config.gateway.outbox_cap_bytes == 8388608
    flagged = load_config(path, data_dir=tmp_path, listen="[::1]:7000")
    assert (flagged.data_dir, flagged.listen_host, flagged.listen_port) == (tmp_path, "::1", 7000)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("colour = 1\n", "unknown settings ['colour']"),
        ("[limits]\nmax_body = 1\n", "unknown [limits] settings ['max_body']"),
        ('[gateway]\nping_interval_s = "soon"\n', "gateway.ping_interval_s must be a number"),
        ("[limits]\nmax_body_bytes = true\n", "limits.max_body_bytes must be an integer"),
        ('listen = "host:99999"\n', "must look like HOST:PORT"),
        ("[gateway]\noutbox_cap_bytes = 1048576\n",
         "gateway.reply_max_bytes must be between 1 and half of gateway.outbox_cap_bytes"),
        ("listen = [\n", "is not valid TOML"),
        ("[storage]\nmessage_cache_bytes = -1\n", "storage.message_cache_bytes must be 0"),
        # A longer client_msg_id would not fit an LMDB key (511 bytes) in a plain store's
        # dedupe index: every such send would fail with 'internal' instead of being refused.
        ("[limits]\nmax_client_msg_id_bytes = 600\n",
         "limits.max_client_msg_id_bytes must be from 1 to 256"),
        ("[limits]\nmax_client_msg_id_bytes = 0\n",
         "limits.max_client_msg_id_bytes must be from 1 to 256"),
        ('[storage]\nmessage_cache_bytes = "64M"\n',
         "storage.message_cache_bytes must be an integer"),
    ],
)
def test_mistakes_in_the_file_are_refused_with_the_setting_named(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "herald.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert says in str(refused.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "absent.toml")


def test_session_settings_and_allowed_origins_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "herald.toml"
    path.write_text('[gateway]\nallowed_origins = ["https://Chat.Example.com/", "http://10.0.0.5:8080"]'
                    "\nsession_lifetime_s = 86400\nsession_check_interval_s = 1\n")
    gateway = load_config(path).gateway
    assert gateway.allowed_origins == ("https://chat.example.com", "http://10.0.0.5:8080")
    assert (gateway.session_lifetime_s, gateway.session_check_interval_s) == (86400, 1.0)
    assert load_config().gateway.allowed_origins == ()  # no browser origin unless named
    for text, says in [
        ('allowed_origins = "https://a.example"', "gateway.allowed_origins must be a list"),
        ("allowed_origins = [1]", "each of gateway.allowed_origins must be a string"),
        ("session_check_interval_s = 5", "within 5 seconds"),
        ("session_lifetime_s = 10", "gateway.session_lifetime_s must be at least 60"),
    ]:
        path.write_text(f"[gateway]\n{text}\n")
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert says in str(refused.value), text


def test_the_background_reseal_is_off_by_default_and_its_pace_is_read_and_checked(
    tmp_path: Path,
) -> None:
    keys = load_config().keys
    assert keys.reseal_messages is False
    assert (keys.reseal_batch_blocks, keys.reseal_pause_s) == (32, 0.05)
    path = tmp_path / "herald.toml"
    path.write_text("[keys]\nreseal_messages = true\nreseal_batch_blocks = 8\nreseal_pause_s = 1\n")
    keys = load_config(path).keys
    assert (keys.reseal_messages, keys.reseal_batch_blocks, keys.reseal_pause_s) == (True, 8, 1.0)
    for text, says in [
        ('reseal_messages = "yes"', "keys.reseal_messages must be true or false"),
        ("reseal_messages = 1", "keys.reseal_messages must be true or false"),
        ("reseal_batch_blocks = 0", "keys.reseal_batch_blocks must be 1 to 1024"),
        ("reseal_batch_blocks = 1025", "keys.reseal_batch_blocks must be 1 to 1024"),
        ("reseal_batch_blocks = 2.5", "keys.reseal_batch_blocks must be an integer"),
        ("reseal_pause_s = 0", "keys.reseal_pause_s must be above 0 and at most 3600"),
        ("reseal_pause_s = -1", "keys.reseal_pause_s must be above 0"),
        ("reseal_pause_s = 3601", "keys.reseal_pause_s must be above 0 and at most 3600"),
    ]:
        path.write_text(f"[keys]\n{text}\n")
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert says in str(refused.value), text


def test_the_metrics_listener_is_off_by_default_and_its_address_is_read_and_checked(
    tmp_path: Path,
) -> None:
    assert load_config().metrics.enabled is False
    path = tmp_path / "herald.toml"
    path.write_text('[metrics]\nlisten = "127.0.0.1:9470"\n')
    metrics = load_config(path).metrics
    assert (metrics.enabled, metrics.host, metrics.port, metrics.allow_network) == (
        True, "127.0.0.1", 9470, False)
    flagged = load_config(path, metrics_listen="[::1]:9999").metrics
    assert (flagged.host, flagged.port) == ("::1", 9999)
    for text, says in [
        ('listen = "9470"', "metrics.listen '9470' must look like HOST:PORT"),
        ("listen = 9470", "metrics.listen must be a string"),
        ('allow_network = "yes"', "metrics.allow_network must be true or false"),
        ('port = 9470', "unknown [metrics] settings ['port']"),
    ]:
        path.write_text(f"[metrics]\n{text}\n")
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert says in str(refused.value), text
