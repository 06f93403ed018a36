"""Configuration: embedded defaults, overridden by a TOML file, overridden by flags.

With no file at all Herald runs: data in ./var, listening on 127.0.0.1:8470.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine import Limits

__all__ = ["DEFAULT_PORT", "Config", "ConfigError", "load_config"]

DEFAULT_PORT = 8470


class ConfigError(Exception):
    """The configuration file or a flag is wrong; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path = Path("var")
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    map_size_bytes: int = 64 * 2**30
    limits: Limits = field(default_factory=Limits)

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
    known = {"data_dir", "listen", "storage", "limits"}
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
    limits = _typed(raw.get("limits", {}), dict, "limits", path)
    names = {f.name for f in fields(Limits)}
    unknown = set(limits) - names
    if unknown:
        raise ConfigError(f"{path}: unknown limits {sorted(unknown)}; known are {sorted(names)}")
    for name, value in limits.items():
        _typed(value, int, f"limits.{name}", path)
    return replace(config, limits=replace(config.limits, **limits))


def _typed(value: Any, kind: type, name: str, path: Path) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: {name} must be a {kind.__name__}, not {value!r}")
    return value
