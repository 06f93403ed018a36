"""Configuration: embedded defaults, overridden by a TOML file, overridden by flags.

With no file at all Herald runs: data in ./var, listening on 127.0.0.1:8470.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine import Limits

__all__ = ["DEFAULT_PORT", "Config", "ConfigError", "GatewayConfig", "load_config"]

DEFAULT_PORT = 8470


class ConfigError(Exception):
    """The configuration file or a flag is wrong; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The `[gateway]` table: limits and timers of client connections."""

    max_frame_bytes: int = 64 * 1024
    outbox_cap_bytes: int = 4 * 2**20  # past it a client is too slow: closed 1013, syncs later
    max_connections: int = 18_000  # under the ~20,000 descriptors a process may hold here
    sync_max_messages: int = 1000
    # A sync or history reply stops (saying `more`) before its messages pass this size, so
    # that one answer never fills the outbox and gets its reader closed for slowness.
    reply_max_bytes: int = 2**20
    login_failure_delay_s: float = 1.0  # also the first step of the login backoff
    # The server also caps it at half of login_timeout_s: a slowed login must still be
    # answered before the login deadline closes its connection.
    login_backoff_max_s: float = 15.0
    login_timeout_s: float = 30.0
    ping_interval_s: float = 30.0
    # Absolute, from the login: a resume does not extend it (docs/security.md, "Sessions").
    session_lifetime_s: int = 30 * 24 * 3600
    # How often the server re-reads the sessions of its connections, to close those revoked
    # by another process (the `herald` CLI): well within 5 s.
    session_check_interval_s: float = 2.0
    # Browser origins allowed to open a WebSocket (e.g. "https://chat.example.com"); a
    # request without an Origin header (not a browser) is always allowed.
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_origins",
                           tuple(origin.rstrip("/").lower() for origin in self.allowed_origins))
        if self.session_lifetime_s < 60:
            raise ConfigError("gateway.session_lifetime_s must be at least 60 (seconds)")
        if not 0 < self.session_check_interval_s <= 2.5:
            raise ConfigError("gateway.session_check_interval_s must be above 0 and at most "
                              "2.5, so that a revocation takes effect within 5 seconds")
        if not 0 < self.reply_max_bytes <= self.outbox_cap_bytes // 2:
            raise ConfigError(
                f"gateway.reply_max_bytes must be between 1 and half of "
                f"gateway.outbox_cap_bytes ({self.outbox_cap_bytes // 2}); "
                f"lower it or raise outbox_cap_bytes"
            )


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path = Path("var")
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    map_size_bytes: int = 64 * 2**30
    # The engine's cache of opened messages ([storage] message_cache_bytes; 0 turns it off:
    # docs/security.md "Opened messages in memory"). The engine's own default.
    message_cache_bytes: int = 64 * 2**20
    limits: Limits = field(default_factory=Limits)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "hot"

    @property
    def url(self) -> str:
        return f"ws://{self.listen_host}:{self.listen_port}/ws"


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {value!r} must look like HOST:PORT, e.g. 127.0.0.1:8470")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_config(
    path: Path | None = None, *, data_dir: Path | None = None, listen: str | None = None
) -> Config:
    """Defaults, then the TOML file at `path` (if given), then the flags given.

    Raises `ConfigError` for an unreadable file, unknown keys or values of the wrong type.
    """
    config = Config()
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        config = _apply_file(config, raw, path)
    if data_dir is not None:
        config = replace(config, data_dir=data_dir)
    if listen is not None:
        host, port = _parse_listen(listen)
        config = replace(config, listen_host=host, listen_port=port)
    return config


def _apply_file(config: Config, raw: dict[str, Any], path: Path) -> Config:
    known = {"data_dir", "listen", "storage", "limits", "gateway"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}; known are {sorted(known)}")
    if "data_dir" in raw:
        config = replace(config, data_dir=Path(_typed(raw["data_dir"], str, "data_dir", path)))
    if "listen" in raw:
        host, port = _parse_listen(_typed(raw["listen"], str, "listen", path))
        config = replace(config, listen_host=host, listen_port=port)
    storage = _typed(raw.get("storage", {}), dict, "storage", path)
    if "map_size_bytes" in storage:
        size = _typed(storage["map_size_bytes"], int, "storage.map_size_bytes", path)
        config = replace(config, map_size_bytes=size)
    if "message_cache_bytes" in storage:
        cache = _typed(storage["message_cache_bytes"], int, "storage.message_cache_bytes", path)
        if cache < 0:
            raise ConfigError(f"{path}: storage.message_cache_bytes must be 0 (no cache) or more")
        config = replace(config, message_cache_bytes=cache)
    limits = _table(raw, "limits", config.limits, path)
    gateway = _table(raw, "gateway", config.gateway, path)
    return replace(config, limits=limits, gateway=gateway)


def _table(raw: dict[str, Any], name: str, defaults: Any, path: Path) -> Any:
    """A TOML table overriding the fields of the dataclass `defaults`, type-checked."""
    table = _typed(raw.get(name, {}), dict, name, path)
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(defaults)}
    unknown = set(table) - set(types)
    if unknown:
        raise ConfigError(f"{path}: unknown [{name}] settings {sorted(unknown)}; "
                          f"known are {sorted(types)}")
    for key, value in table.items():
        if types[key] is float and isinstance(value, int) and not isinstance(value, bool):
            table[key] = float(value)
        if types[key] is tuple:
            items = _typed(table[key], list, f"{name}.{key}", path)
            table[key] = tuple(_typed(item, str, f"each of {name}.{key}", path) for item in items)
        _typed(table[key], types[key], f"{name}.{key}", path)
    try:
        return replace(defaults, **table)
    except ConfigError as exc:  # a check across settings, made by the dataclass itself
        raise ConfigError(f"{path}: {exc}") from None


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "a table",
               bool: "true or false", list: "a list", tuple: "a list"}


def _typed(value: Any, kind: type, name: str, path: Path) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {name} must be {_KIND_NAMES[kind]}, not {value!r}")
    return value
