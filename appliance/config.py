"""Configuration: embedded defaults, overridden by a TOML file, overridden by flags.

With no file at all Herald runs: data in ./var, listening on 127.0.0.1:8470.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine import Limits

__all__ = [
    "CONFIG_IN_DATA_DIR",
    "DEFAULT_PORT",
    "LOG_LEVELS",
    "MASTER_KEY_PLACES",
    "Config",
    "ConfigError",
    "EscrowConfig",
    "GatewayConfig",
    "KeysConfig",
    "LogConfig",
    "MetricsConfig",
    "TlsConfig",
    "load_config",
]

DEFAULT_PORT = 8470
CONFIG_IN_DATA_DIR = "herald.toml"


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


ESCROW_BACKENDS = ("none", "pkcs11", "service")


@dataclass(frozen=True, slots=True)
class EscrowConfig:
    """The `[escrow]` table: which third party holds the tenants' escrow keys, and how to reach
    it (docs/security.md, "Escrow backends"). Relative paths in a configuration file are
    relative to that file's folder."""

    backend: str = "none"  # "pkcs11" (an HSM) or "service" (herald escrow serve)
    address: str = ""  # service: HOST:PORT of `herald escrow serve`
    ca_file: str = ""  # service: the escrow's ca.crt
    cert_file: str = ""  # service: this appliance's client.crt
    key_file: str = ""  # service: this appliance's client.key
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    pkcs11_token: str = ""  # the token's label
    pkcs11_pin_file: str = ""  # a file holding the user PIN (first line), mode 0600
    softhsm2_conf: str = ""  # with SoftHSM2: its configuration file (sets SOFTHSM2_CONF)
    timeout_s: float = 10.0  # per escrow call
    # Unwrapped DEKs are kept this long, then asked for again: a revocation at the escrow
    # takes effect within this time.
    cache_lifetime_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.backend not in ESCROW_BACKENDS:
            raise ConfigError(f"escrow.backend must be one of {list(ESCROW_BACKENDS)}, not "
                              f"{self.backend!r}")
        required = {"service": ("address", "ca_file", "cert_file", "key_file"),
                    "pkcs11": ("pkcs11_module", "pkcs11_token", "pkcs11_pin_file")}
        missing = [name for name in required.get(self.backend, ()) if not getattr(self, name)]
        if missing:
            raise ConfigError(f"escrow.backend = {self.backend!r} needs escrow settings "
                              f"{missing}; see docs/security.md, 'Escrow backends'")
        if not (self.timeout_s > 0 and self.cache_lifetime_s > 0):
            raise ConfigError("escrow.timeout_s and escrow.cache_lifetime_s must be positive")


MASTER_KEY_PLACES = ("file", "pkcs11")
# A batch of 1,024 blocks holds the write lock for some 30 ms: past that, appends stall.
MAX_RESEAL_BATCH_BLOCKS = 1024
MAX_RESEAL_PAUSE_S = 3600.0


@dataclass(frozen=True, slots=True)
class KeysConfig:
    """The `[keys]` table: the appliance's master key file and how to unlock it
    (docs/security.md, "The master key"), and the background re-encrypt of messages. Relative
    paths in a configuration file are relative to that file's folder."""

    # Where `herald init` creates the master key: "file" (sealed by a passphrase) or "pkcs11"
    # (generated in an HSM, never extractable). Later commands follow what the data directory
    # holds (docs/security.md, "Where the master key lives").
    master_key: str = "file"
    master_key_file: str = ""  # default: DATA_DIR/master.key
    passphrase_file: str = ""  # its first line unlocks the master key; else asked for
    # With the master key in an HSM: a token of the appliance's own, never the escrow's.
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    pkcs11_token: str = ""  # the token's label
    pkcs11_pin_file: str = ""  # a file holding the user PIN (first line), mode 0600
    pkcs11_key_label: str = "herald-master-key"  # and LABEL-name for the name key
    # With SoftHSM2: its configuration file (sets SOFTHSM2_CONF); default escrow.softhsm2_conf
    softhsm2_conf: str = ""
    # The background re-encrypt (docs/security.md, "The background re-encrypt"): `herald
    # serve` re-seals every message block not under its tenant's current epoch, a few blocks
    # per write transaction, so that an older epoch can be shredded without losing messages.
    # Off by default: it rewrites the whole message history after each rotation.
    reseal_messages: bool = False
    # Blocks per transaction: each holds LMDB's write lock, which chat appends wait for;
    # 32 blocks hold it about 1.1-1.5 ms here (bench/reseal_batch.py).
    reseal_batch_blocks: int = 32
    reseal_pause_s: float = 0.05  # between two batches: appends get the lock 97% of the time

    def __post_init__(self) -> None:
        if not 1 <= self.reseal_batch_blocks <= MAX_RESEAL_BATCH_BLOCKS:
            raise ConfigError(f"keys.reseal_batch_blocks must be 1 to {MAX_RESEAL_BATCH_BLOCKS} "
                              f"(each batch holds the write lock chat appends wait for), not "
                              f"{self.reseal_batch_blocks}")
        if not 0 < self.reseal_pause_s <= MAX_RESEAL_PAUSE_S:
            raise ConfigError(f"keys.reseal_pause_s must be above 0 and at most "
                              f"{MAX_RESEAL_PAUSE_S:g} (seconds between two re-seal batches), "
                              f"not {self.reseal_pause_s}")
        if self.master_key not in MASTER_KEY_PLACES:
            raise ConfigError(f"keys.master_key must be one of {list(MASTER_KEY_PLACES)}, not "
                              f"{self.master_key!r}")
        missing = [name for name in ("pkcs11_module", "pkcs11_token", "pkcs11_pin_file",
                                     "pkcs11_key_label") if not getattr(self, name)]
        if self.master_key == "pkcs11" and missing:
            raise ConfigError(f"keys.master_key = 'pkcs11' needs the settings keys.{missing}; "
                              f"see docs/security.md, 'Where the master key lives'")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The `[tls]` table: the server's certificate, and client certificates (mutual TLS).

    With `cert_file` and `key_file` (PEM) the gateway serves wss:// only. With
    `client_ca_file` too, every client must present a certificate signed by one of its CAs.
    Without a certificate the gateway serves plain ws://, and only on a loopback address
    unless `allow_plaintext_on_network` says otherwise. Relative paths in a configuration file
    are relative to that file's folder.
    """

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    allow_plaintext_on_network: bool = False

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("tls.cert_file and tls.key_file go together: give both "
                              "(or neither, for plain ws:// on loopback)")
        if self.client_ca_file and not self.cert_file:
            raise ConfigError("tls.client_ca_file needs tls.cert_file and tls.key_file: "
                              "client certificates are asked for only over TLS")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The `[metrics]` table: where `herald serve` answers Prometheus's scrapes
    (docs/admin.md, "Metrics"). Off (empty) by default; a network address also needs
    `allow_network = true` (appliance/gateway/metrics.py: metrics_refusal)."""

    listen: str = ""  # HOST:PORT, e.g. "127.0.0.1:9470"
    allow_network: bool = False

    def __post_init__(self) -> None:
        if self.listen:
            _parse_listen(self.listen, "metrics.listen", "127.0.0.1:9470")

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @property
    def host(self) -> str:
        return _parse_listen(self.listen)[0] if self.listen else ""

    @property
    def port(self) -> int:
        return _parse_listen(self.listen)[1] if self.listen else 0


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """The `[log]` table: how much `herald serve` logs to standard error. `info` (the
    default) logs connections refused, logins refused and why, sessions and key events;
    `debug` adds every login attempt."""

    level: str = "info"

    def __post_init__(self) -> None:
        if self.level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log.level must be one of {list(LOG_LEVELS)}, not "
                              f"{self.level!r}")
        object.__setattr__(self, "level", self.level.lower())


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
    tls: TlsConfig = field(default_factory=TlsConfig)
    escrow: EscrowConfig = field(default_factory=EscrowConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def master_key_path(self) -> Path:
        return Path(self.keys.master_key_file) if self.keys.master_key_file else (
            self.data_dir / "master.key")

    @property
    def hsm_master_key_path(self) -> Path:
        """Written by `herald init` when the master key is in an HSM: which token and label."""
        return self.data_dir / "master-key.pkcs11"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "hot"

    @property
    def url(self) -> str:
        return self.url_for_port(self.listen_port)

    def url_for_port(self, port: int) -> str:
        """The URL clients use, for the port actually bound (the configured one may be 0)."""
        scheme = "wss" if self.tls.enabled else "ws"
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{scheme}://{host}:{port}/ws"


def _parse_listen(value: str, setting: str = "listen address",
                  example: str = "127.0.0.1:8470") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{setting} {value!r} must look like HOST:PORT, e.g. {example}")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_config(
    path: Path | None = None, *, data_dir: Path | None = None, listen: str | None = None,
    tls_cert: Path | None = None, tls_key: Path | None = None, log_level: str | None = None,
    metrics_listen: str | None = None,
) -> Config:
    """Defaults, then the TOML file at `path` (if given), then the flags given.

    Without `path`, a `herald.toml` in the data directory (`--data-dir`, else ./var) is read
    if there is one: `herald serve --demo` writes its escrow and key settings there, so that
    the other commands find them.

    Raises `ConfigError` for an unreadable file, unknown keys or values of the wrong type.
    """
    config = Config()
    if path is None:
        beside = (data_dir or config.data_dir) / CONFIG_IN_DATA_DIR
        path = beside if beside.is_file() else None
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
    if tls_cert is not None or tls_key is not None:
        cert = str(tls_cert) if tls_cert is not None else config.tls.cert_file
        key = str(tls_key) if tls_key is not None else config.tls.key_file
        config = replace(config, tls=replace(config.tls, cert_file=cert, key_file=key))
    if log_level is not None:
        config = replace(config, log=LogConfig(log_level))
    if metrics_listen is not None:
        config = replace(config, metrics=replace(config.metrics, listen=metrics_listen))
    return config


def _apply_file(config: Config, raw: dict[str, Any], path: Path) -> Config:
    known = {"data_dir", "listen", "storage", "limits", "gateway", "tls", "escrow", "keys", "log",
             "metrics"}
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
    if not 1 <= limits.max_client_msg_id_bytes <= MAX_CLIENT_MSG_ID_BYTES:
        raise ConfigError(f"{path}: limits.max_client_msg_id_bytes must be from 1 to "
                          f"{MAX_CLIENT_MSG_ID_BYTES}")
    gateway = _table(raw, "gateway", config.gateway, path)
    tls = _table(raw, "tls", config.tls, path)
    tls = replace(tls, **{name: str(path.parent / value) for name in _TLS_PATHS
                          if (value := getattr(tls, name)) and not Path(value).is_absolute()})
    escrow = _table(raw, "escrow", config.escrow, path)
    escrow = replace(escrow, **{
        name: str(path.parent / value) for name in _ESCROW_PATHS
        if (value := getattr(escrow, name)) and not Path(value).is_absolute()
    })
    keys = _table(raw, "keys", config.keys, path)
    keys = replace(keys, **{name: str(path.parent / value) for name in _KEYS_PATHS
                            if (value := getattr(keys, name)) and not Path(value).is_absolute()})
    log = _table(raw, "log", config.log, path)
    metrics = _table(raw, "metrics", config.metrics, path)
    return replace(config, limits=limits, gateway=gateway, tls=tls, escrow=escrow, keys=keys,
                   log=log, metrics=metrics)


# A plain store's dedupe key is 24 bytes and the client_msg_id, and LMDB keys end at 511 bytes:
# past that every send with a long id would fail as an internal error instead of `invalid`.
MAX_CLIENT_MSG_ID_BYTES = 256
_KEYS_PATHS = ("master_key_file", "passphrase_file", "pkcs11_pin_file", "softhsm2_conf")
_ESCROW_PATHS = ("ca_file", "cert_file", "key_file", "pkcs11_pin_file", "softhsm2_conf")


_TLS_PATHS = ("cert_file", "key_file", "client_ca_file")


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
