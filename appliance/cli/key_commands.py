"""`herald init` and `herald keys status|rotate|reseal|revoke|shred|passphrase`: the key
operations, on the data directory (docs/security.md, "Rotation, revocation, shredding"). A
running server picks up what they change within `KEY_REFRESH_MAX_INTERVAL_S` (5 s,
appliance/gateway/key_refresh.py) or the DEK cache lifetime; `passphrase` changes nothing it
holds (it keeps the master key in memory)."""

from __future__ import annotations

import datetime
import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.cert_expiry import CertificateUnreadable, describe_validity, read_validity
from appliance.cli.accounts import cli_actor, run_keyed
from appliance.cli.unlock import KeyedEngine, initialize, read_passphrase
from appliance.config import Config
from appliance.gateway.key_refresh import KEY_REFRESH_MAX_INTERVAL_S
from appliance.keys.errors import KeyManagementError, MasterKeyInHsm, PassphraseChangeBusy
from appliance.keys.manager import KeyManager
from appliance.keys.master import change_master_key_passphrase, load_master_key
from appliance.keys.master_place import master_key_place
from appliance.terminal import ask_secret, read_secret_file

__all__ = ["change_passphrase", "init", "key_status", "reseal", "revoke", "rotate", "shred"]


def init(config: Config, place: str | None = None) -> int:
    """`herald init`: the master key in `place` ("file" or "pkcs11"; default `[keys]
    master_key`); the passphrase is asked for only for a key file."""
    place = place or config.keys.master_key
    try:
        passphrase = read_passphrase(config, confirm=True) if place == "file" else None
        print(initialize(config, passphrase, place=place))
    except KeyManagementError as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    return 0


def change_passphrase(config: Config, passphrase_file: str | None,
                      new_passphrase_file: str | None) -> int:
    """`herald keys passphrase`: seal the same master key under a new passphrase. The current
    one comes from `passphrase_file`, else as for every command (`[keys] passphrase_file` or
    the terminal); the new one from `new_passphrase_file`, else the terminal, twice. Nothing is
    written unless the current passphrase opens master.key and the new one is long enough."""
    path = config.master_key_path
    try:
        place = master_key_place(config)
        if place == "pkcs11":
            raise MasterKeyInHsm(
                f"this appliance's master key is in an HSM ({config.hsm_master_key_path}): it "
                f"has no passphrase. To change the token's PIN use the HSM's own tools, then "
                f"put the new PIN in {config.keys.pkcs11_pin_file or '[keys] pkcs11_pin_file'}")
        if place is None:
            raise KeyManagementError(f"{config.data_dir} has no master key: run 'herald init'")
        with _one_change_at_a_time(path):
            master_key = load_master_key(path, _current_passphrase(config, passphrase_file))
            new = (read_secret_file(new_passphrase_file, error=KeyManagementError)
                   if new_passphrase_file is not None else ask_secret(
                       "New master key passphrase: ", confirm=True, error=KeyManagementError,
                       no_terminal="the new passphrase is needed and there is no terminal to "
                                   "ask on: pass --new-passphrase-file FILE (- reads it from "
                                   "standard input, after the current one if that comes from "
                                   "there too)",
                       differ="the new passphrases differ; nothing was changed"))
            change_master_key_passphrase(path, master_key, new)
    except KeyManagementError as exc:
        print(f"herald: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"herald: cannot write {path}: {exc.strerror}; nothing was changed",
              file=sys.stderr)
        return 1
    print(f"the master key in {path} is now sealed by the new passphrase (the key itself is "
          f"unchanged: no data is re-encrypted).\n"
          f"Copies of the old {path.name} (backups) still open with the OLD passphrase: replace "
          f"them with a copy of the new file, or keep the old passphrase as safe as the new.\n"
          f"A running `herald serve` needs nothing: it holds the key in memory.")
    stale = _stale_passphrase_file(config, new)
    if stale:
        print(stale)
    return 0


@contextmanager
def _one_change_at_a_time(path: Path) -> Iterator[None]:
    """An exclusive lock on the directory of the key file `path` while its passphrase changes:
    two changes at once would each read back the other's file. (A lock on the file itself would
    not do: the rename replaces the file it is taken on.) Raises `PassphraseChangeBusy`."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PassphraseChangeBusy(f"another `herald keys passphrase` is changing {path}; "
                                       f"let it finish, then check which passphrase opens "
                                       f"it") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _current_passphrase(config: Config, passphrase_file: str | None) -> str:
    """From `passphrase_file`, else `[keys] passphrase_file`, else the terminal."""
    if passphrase_file is not None:
        return read_secret_file(passphrase_file, error=KeyManagementError)
    if config.keys.passphrase_file:
        return read_passphrase(config)
    return ask_secret(
        "Current master key passphrase: ", error=KeyManagementError,
        no_terminal="the current passphrase is needed and there is no terminal to ask on: pass "
                    "--passphrase-file FILE (- reads it from standard input)")


def _stale_passphrase_file(config: Config, new: str) -> str:
    """A warning when `[keys] passphrase_file` still holds another passphrase: the next start
    of the server would be refused."""
    source = config.keys.passphrase_file
    if not source:
        return ""
    try:
        holds_new = read_secret_file(source, error=KeyManagementError) == new
    except KeyManagementError:
        holds_new = False  # unreadable now: the server could not start either
    if holds_new:
        return ""
    return (f"[keys] passphrase_file ({source}) does not hold the new passphrase: put it there "
            f"before the server next starts, or the start is refused (wrong_passphrase).")


def _manager(keyed: KeyedEngine) -> KeyManager:
    """The store's key manager; `KeyManagementError` for a store without keys."""
    if keyed.manager is None:
        raise KeyManagementError("this store is not sealed (created without encryption): it "
                                 "has no keys to manage")
    return keyed.manager


def _check_confirmed(confirm: str, tenant_name: str, what: str) -> None:
    if confirm != tenant_name:
        raise KeyManagementError(f"{what} cannot be undone: repeat the tenant's name with "
                                 f"--confirm {tenant_name} to go ahead")


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M")


def key_status(config: Config) -> int:
    """Every tenant's key epochs, their states, and whether this process could unwrap them."""
    def action(keyed: KeyedEngine) -> str:
        manager = _manager(keyed)
        statuses = {s.tenant: s for s in manager.status()}
        where = keyed.master_key.describe() if keyed.master_key is not None else "unknown"
        lines = [f"master key: {where}", *_escrow_certificates(config)]
        for tenant, record in keyed.engine.tenants():
            status = statuses.get(tenant)
            state = status.state if status else "unknown"
            detail = f" ({status.detail})" if status and status.detail else ""
            lines.append(f"tenant {record.name} (id {tenant}): keys {state}{detail}")
            for epoch in keyed.engine.key_epochs(tenant):
                shredded = f"  shredded {_when(epoch.shredded_ms)}" if epoch.shredded_ms else ""
                lines.append(f"  epoch {epoch.epoch:<4} {epoch.state:<9} created "
                             f"{_when(epoch.created_ms)}  {epoch.seals:>12,} records sealed"
                             f"{shredded}")
            lines.append(_message_blocks(keyed, tenant, record.name))
        return "\n".join(lines if len(lines) > 1 else [*lines, "no tenants yet"])

    return run_keyed(config, action)


def _escrow_certificates(config: Config) -> list[str]:
    """With Herald's escrow service: when this appliance's client certificate and the escrow's
    CA end (either ended, no data key can be unwrapped: docs/security.md, "Certificate
    lifetimes")."""
    if config.escrow.backend != "service":
        return []
    now = datetime.datetime.now(datetime.UTC)
    lines = []
    for what, path in (("escrow client certificate", config.escrow.cert_file),
                       ("escrow CA certificate", config.escrow.ca_file)):
        try:
            shown = describe_validity(read_validity(Path(path)), now)
        except CertificateUnreadable as exc:
            shown = f"cannot be checked: {exc}"
        lines.append(f"{what}: {path}: {shown}")
    return lines


def _message_blocks(keyed: KeyedEngine, tenant: int, name: str) -> str:
    """How far the re-seal of the tenant's messages is: the blocks still under older epochs
    (a shred of their epoch would destroy them). Counts every block's header: a read, no
    write lock, proportional to the tenant's messages."""
    pending, total = keyed.engine.reseal_pending(tenant, "messages")
    if not pending:
        return f"  message blocks: {total:,}, none under older epochs"
    return (f"  message blocks: {pending:,} of {total:,} under older epochs (re-sealed by a "
            f"server with [keys] reseal_messages = true, or by `herald keys reseal --tenant "
            f"{name} --messages`)")


def rotate(config: Config, tenant_name: str) -> int:
    def action(keyed: KeyedEngine) -> str:
        manager = _manager(keyed)
        tenant = keyed.engine.find_tenant(tenant_name)
        epoch = manager.rotate(tenant, actor=cli_actor())
        return (f"tenant {tenant_name!r}: new data key, epoch {epoch}; its users and groups "
                f"are re-sealed under it, older messages stay readable under their epochs "
                f"(a server with [keys] reseal_messages = true moves them in the background, "
                f"as does `herald keys reseal --messages`)")

    return run_keyed(config, action)


def reseal(config: Config, tenant_name: str, messages: bool) -> int:
    """Re-seal a tenant's records under its current epoch, showing progress per table."""
    def action(keyed: KeyedEngine) -> str:
        manager = _manager(keyed)
        tenant = keyed.engine.find_tenant(tenant_name)

        def show(table: str, done: int, total: int) -> None:
            unit = "message blocks" if table == "messages" else "records"
            print(f"  {table}: {done:,} / {total:,} {unit} re-sealed", file=sys.stderr)

        count = manager.reseal(tenant, messages=messages, progress=show)
        what = "records and message blocks" if messages else "users, groups and members"
        return (f"tenant {tenant_name!r}: {count:,} {what} re-sealed under the current epoch; "
                f"older epochs can now be shredded"
                + ("" if messages else " (their messages die with them)"))

    return run_keyed(config, action)


def shred(config: Config, tenant_name: str, epoch: int, confirm: str) -> int:
    def action(keyed: KeyedEngine) -> str:
        manager = _manager(keyed)
        _check_confirmed(confirm, tenant_name, "shredding")
        tenant = keyed.engine.find_tenant(tenant_name)
        manager.shred(tenant, epoch, actor=cli_actor())
        return (f"tenant {tenant_name!r}: epoch {epoch} shredded; the messages sealed under "
                f"it can never be read again")

    return run_keyed(config, action)


def revoke(config: Config, tenant_name: str, confirm: str) -> int:
    def action(keyed: KeyedEngine) -> str:
        manager = _manager(keyed)
        _check_confirmed(confirm, tenant_name, "revoking")
        tenant = keyed.engine.find_tenant(tenant_name)
        manager.revoke(tenant, actor=cli_actor())
        return (f"tenant {tenant_name!r}: escrow keys revoked; none of its stored data can be "
                f"read again. The revocation is recorded in the store: a running server stops "
                f"serving the tenant at its next key refresh, within "
                f"{KEY_REFRESH_MAX_INTERVAL_S:g} s.")

    return run_keyed(config, action)
