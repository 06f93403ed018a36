"""Every `herald` command in one table: its place, its help, its arguments and what runs it.

`herald.build_parser` builds the argparse parser from `COMMANDS` (in their order, which is the
order `--help` lists them in) and `herald.main` runs the entry the command line chose: adding a
command is adding an entry here, never a branch elsewhere. The functions that run commands live
in their own modules (accounts.py, key_commands.py, serve.py, certs.py, appliance/escrow/
commands.py) and are imported only when their command runs, so that `herald chat` or
`herald --help` load none of the server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import LOG_LEVELS, MASTER_KEY_PLACES, Config, ConfigError

__all__ = [
    "COMMANDS", "CONFIG_FLAGS", "GROUPS", "Arg", "Command", "ConfiguredCommand", "Group", "arg",
]


@dataclass(frozen=True, slots=True)
class Arg:
    """One `add_argument` call: its flags (or name) and its options."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True, slots=True)
class Group:
    """A command with actions (`herald keys rotate`): its own help, and an ACTION to choose."""

    help: str
    description: str


@dataclass(frozen=True, slots=True)
class Command:
    """A command that needs no data directory (`herald chat`, `cert`, `escrow`)."""

    path: tuple[str, ...]  # ("chat",), or a group and an action: ("escrow", "serve")
    help: str
    description: str
    arguments: tuple[Arg, ...]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class ConfiguredCommand:
    """A command on a data directory: it takes --config and --data-dir, and runs with the
    configuration they load. A one-shot command's warnings read as 'herald: warning: ...'
    lines; `herald serve` (`logs_as_server`) logs structured lines instead."""

    path: tuple[str, ...]
    help: str
    description: str
    arguments: tuple[Arg, ...]
    run: Callable[[Config, argparse.Namespace], int]
    logs_as_server: bool = False


_SINCE_HELP = "a UTC date or time (2026-12-07, 2026-12-07T09:30) or an age (90s, 30m, 2h, 7d)"
CONFIG_FLAGS = (
    arg("--config", type=Path, help="TOML configuration file (optional)"),
    arg("--data-dir", type=Path, help="where Herald keeps its data (default: ./var)"),
)
TENANT = arg("--tenant", required=True, help="tenant name")
PASSPHRASE_HELP = ("read the escrow passphrase from the first line of this file ('-' for "
                   "standard input) instead of the terminal")
ESCROW_DIR = arg("--dir", type=Path, required=True, help="the escrow directory")
ESCROW_PASSPHRASE = arg("--passphrase-file", help=PASSPHRASE_HELP)


# What runs each command. Each imports its module when it runs (see the docstring above).

def _serve(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli.serve import serve

    return serve(config, demo=args.demo)


def _init(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import key_commands

    return key_commands.init(config, args.master_key)


def _keys_status(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import key_commands

    return key_commands.key_status(config)


def _keys_rotate(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import key_commands

    return key_commands.rotate(config, args.tenant)


def _keys_reseal(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import key_commands

    return key_commands.reseal(config, args.tenant, args.messages)


def _keys_shred(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import key_commands

    return key_commands.shred(config, args.tenant, args.epoch, args.confirm)


def _keys_revoke(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import key_commands

    return key_commands.revoke(config, args.tenant, args.confirm)


def _keys_passphrase(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import key_commands

    return key_commands.change_passphrase(config, args.passphrase_file, args.new_passphrase_file)


def _cert_selfsigned(args: argparse.Namespace) -> int:
    from appliance.cli.certs import describe, make_self_signed

    try:
        made = make_self_signed(args.out, args.host)
    except FileExistsError as exc:
        print(f"herald: {exc.args[0]} exists already; remove it or choose another --out",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"herald: cannot write into {args.out}: {exc.strerror}; choose another --out",
              file=sys.stderr)
        return 1
    print(describe(made))
    return 0


def _tenant_add(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    return accounts.add_tenant(config, args.name)


def _tenant_list(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    return accounts.list_tenants(config)


def _user_add(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    password = accounts.read_password(args.password_stdin)
    return accounts.add_user(config, args.tenant, args.login, args.display_name, password)


def _user_list(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    return accounts.list_users(config, args.tenant)


def _user_passwd(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    password = accounts.read_password(args.password_stdin, whose=repr(args.login))
    return accounts.change_password(config, args.tenant, args.login, password)


def _user_disable(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    return accounts.set_disabled(config, args.tenant, args.login, True)


def _user_enable(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    return accounts.set_disabled(config, args.tenant, args.login, False)


def _user_sessions(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    return accounts.list_sessions(config, args.tenant, args.login)


def _user_revoke_sessions(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    return accounts.revoke_sessions(config, args.tenant, args.login)


def _group_add(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import accounts

    members = [m.strip() for m in args.members.split(",") if m.strip()]
    return accounts.add_group(config, args.tenant, args.title, args.owner, members, args.open)


def _audit_verify(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import audit_commands

    return audit_commands.verify(config)


def _audit_list(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import audit_commands

    return audit_commands.list_entries(config, args.tenant, args.action, args.since, args.json)


def _chat(args: argparse.Namespace) -> int:
    from appliance.chat.chat import run

    return run(args.url, args.tenant, args.login, password_stdin=args.password_stdin,
               ca_file=args.ca, cert_file=args.cert, key_file=args.key,
               connect_timeout_s=args.connect_timeout)


def _escrow_passphrase(args: argparse.Namespace, *, new: bool = False) -> str:
    from appliance.escrow import commands

    return commands.read_passphrase(args.passphrase_file, new=new)


def _escrow_init(args: argparse.Namespace) -> int:
    from appliance.escrow import commands

    passphrase = _escrow_passphrase(args, new=True)
    return commands.init(args.dir, passphrase, args.hosts or ["localhost", "127.0.0.1"])


def _escrow_issue_client(args: argparse.Namespace) -> int:
    from appliance.escrow import commands

    return commands.issue_client(args.dir, _escrow_passphrase(args), args.name, args.out)


def _escrow_serve(args: argparse.Namespace) -> int:
    from appliance.config import _parse_listen
    from appliance.escrow import commands

    passphrase = _escrow_passphrase(args)
    try:
        host, port = _parse_listen(args.listen)
    except ConfigError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    return commands.serve(args.dir, passphrase, host, port)


def _escrow_keys(args: argparse.Namespace) -> int:
    from appliance.escrow import commands

    return commands.keys(args.dir, _escrow_passphrase(args))


def _escrow_revoke(args: argparse.Namespace) -> int:
    from appliance.escrow import commands

    if not args.yes:
        answer = input(f"Revoking {args.key_id!r} makes its data unreadable for good. Type the "
                       f"key id to confirm: ")
        if answer.strip() != args.key_id:
            print("herald escrow: not confirmed; nothing was revoked", file=sys.stderr)
            return 1
    return commands.revoke(args.dir, _escrow_passphrase(args), args.key_id)


def _escrow_change_passphrase(args: argparse.Namespace) -> int:
    from appliance.escrow import commands

    current = commands.read_passphrase(args.passphrase_file, prompt="Current escrow passphrase: ")
    new = commands.read_new_passphrase(args.new_passphrase_file)
    return commands.passphrase(args.dir, current, new)


def _escrow_renew(args: argparse.Namespace) -> int:
    from appliance.escrow import commands

    return commands.renew(args.dir, _escrow_passphrase(args), args.ca)


def _escrow_audit(args: argparse.Namespace) -> int:
    from appliance.escrow import commands

    return commands.audit(args.dir)


def _user_action(action: str, help_: str, description: str,
                 run: Callable[[Config, argparse.Namespace], int]) -> ConfiguredCommand:
    """`herald user ACTION --tenant T LOGIN`: an action on one existing user."""
    arguments = (TENANT, arg("login", help="the user's login name"))
    if action == "passwd":
        arguments += (arg("--password-stdin", action="store_true",
                          help="read the new password from one line of standard input"),)
    return ConfiguredCommand(("user", action), help_, description, arguments, run)


# -- herald admin ... (appliance/cli/admin_commands.py) ----------------------------------------

TOKEN_FILE = arg("--token-file", type=Path, metavar="FILE",
                 help="where the admin session token is kept (default: "
                      "~/.config/herald/admin-token, mode 0600)")
AS_JSON = arg("--json", action="store_true", help="print the answer as JSON, for scripts")


def _admin_add(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import admin_commands

    return admin_commands.add_admin(config, args.login, args.display_name, args.role,
                                    args.password_stdin)


def _admin_passwd(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import admin_commands

    return admin_commands.set_admin_password(config, args.login, args.password_stdin)


def _admin_login(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import admin_commands

    return admin_commands.admin_login(config, args.login, args.password_stdin,
                                      admin_commands.token_file(args.token_file))


def _admin_status(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import admin_commands

    return admin_commands.admin_status(config, admin_commands.token_file(args.token_file),
                                       args.json)


def _admin_tenants(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import admin_commands

    return admin_commands.admin_tenants(config, admin_commands.token_file(args.token_file),
                                        args.json)


def _admin_users(config: Config, args: argparse.Namespace) -> int:
    from appliance.cli import admin_commands

    return admin_commands.admin_users(config, admin_commands.token_file(args.token_file),
                                      args.tenant, args.json)


ADMIN_COMMANDS = (
    ConfiguredCommand(
        ("admin", "add"), "create an administrator in the store (asks for a password)",
        "Create an administrator of the appliance (of no tenant) in the data directory's store "
        "itself, as `herald user add` does: how the first one is made. The password is asked "
        "for twice.", (
            arg("login", help="login name: a-z, 0-9, '.', '_', '-'"),
            arg("--role", required=True, choices=["operator", "security_officer"],
                help="operator: views and manages accounts and groups; security_officer: "
                     "also keys and the audit log"),
            arg("--display-name", default="", help="the administrator's name"),
            arg("--password-stdin", action="store_true",
                help="read the password from one line of standard input"),
        ), _admin_add),
    ConfiguredCommand(
        ("admin", "passwd"), "set an administrator's password in the store (ends its sessions)",
        "Set an administrator's password in the data directory's store itself, asked twice; "
        "every session of that administrator ends (a running server refuses their tokens at "
        "once).", (
            arg("login", help="the administrator's login"),
            arg("--password-stdin", action="store_true",
                help="read the password from one line of standard input"),
        ), _admin_passwd),
    ConfiguredCommand(
        ("admin", "login"), "log in to the running server's admin API",
        "Log in as an administrator over DATA_DIR/admin.sock and keep the session token (8 "
        "hours) in --token-file for the other `herald admin` commands.", (
            arg("login", help="the administrator's login"),
            arg("--password-stdin", action="store_true",
                help="read the password from one line of standard input"),
            TOKEN_FILE,
        ), _admin_login),
    ConfiguredCommand(
        ("admin", "status"), "the running server's status",
        "Version, uptime, store format, connections, online users, tenants and store size, "
        "from the running server.", (TOKEN_FILE, AS_JSON), _admin_status),
    ConfiguredCommand(("admin", "tenants"), "list tenants (through the running server)",
                      "List the tenants, from the running server.", (TOKEN_FILE, AS_JSON),
                      _admin_tenants),
    ConfiguredCommand(("admin", "users"), "list a tenant's users (through the running server)",
                      "List a tenant's users, from the running server.",
                      (TENANT, TOKEN_FILE, AS_JSON), _admin_users),
)


GROUPS = {
    "keys": Group(
        help="tenant data keys: status, rotate, reseal, revoke, shred; the master key's "
             "passphrase",
        description="Operate the tenants' data keys (docs/security.md, 'Rotation, revocation, "
                    "shredding'). Needs the master key's passphrase and the escrow. `passphrase` "
                    "changes the master key file's passphrase."),
    "cert": Group(help="make TLS certificates", description="Make TLS certificates for wss://."),
    "tenant": Group(help="manage tenants (organisations)",
                    description="Manage tenants (organisations)."),
    "user": Group(help="manage users", description="Manage users."),
    "group": Group(help="manage groups", description="Manage groups."),
    "admin": Group(help="administer a running server through its admin API",
                   description="Administer the running server through its admin API "
                               "(DATA_DIR/admin.sock); `add` and `passwd` work on the store "
                               "offline."),
    "audit": Group(
        help="the appliance's audit log: verify its chain, list its entries",
        description="Read the appliance's audit log (docs/admin.md, 'Audit log'): every admin "
                    "action and security event, hash-chained. Offline and read-only: needs the "
                    "master key's passphrase (for the name key), not the escrow, and works "
                    "beside a running server."),
    "escrow": Group(
        help="run Herald's key escrow service (on the escrow's own machine)",
        description="Herald's own key escrow, for sites without an HSM: a third party runs it "
                    "on its own machine; the appliance asks it to unwrap tenant keys over "
                    "mutual TLS. See docs/security.md, 'Escrow backends'."),
}

COMMANDS: tuple[Command | ConfiguredCommand, ...] = (
    ConfiguredCommand(
        ("serve",), "run the appliance", "Open the store and serve WebSocket clients.", (
            arg("--listen", help="HOST:PORT to listen on (default: 127.0.0.1:8470)"),
            arg("--demo", action="store_true",
                help="on an empty store, create a demo tenant with two users and print their "
                     "passwords"),
            arg("--tls-cert", type=Path, metavar="FILE",
                help="PEM certificate (chain): serve wss:// (overrides tls.cert_file)"),
            arg("--tls-key", type=Path, metavar="FILE",
                help="PEM private key of --tls-cert (overrides tls.key_file)"),
            arg("--log-level", choices=LOG_LEVELS, type=str.lower,
                help="how much to log to standard error (overrides [log] level; default: "
                     "info)"),
            arg("--metrics-listen", metavar="HOST:PORT",
                help="serve Prometheus metrics at http://HOST:PORT/metrics (overrides "
                     "[metrics] listen; default: off; docs/admin.md)"),
        ), _serve, logs_as_server=True),
    ConfiguredCommand(
        ("init",), "create this appliance's master key (first start)",
        "Create the master key and the appliance id, after checking that the configured "
        "escrow answers; says what to back up. The master key goes in a file in the data "
        "directory, sealed by a passphrase you choose (asked twice, or [keys] "
        "passphrase_file), or with --master-key pkcs11 is generated inside an HSM, never "
        "extractable ([keys] pkcs11_* settings; back the token up with the HSM's own "
        "procedure).", (
            arg("--master-key", choices=MASTER_KEY_PLACES, default=None,
                help="where to create the master key: 'file' (sealed by a passphrase) or "
                     "'pkcs11' (an HSM token); default: [keys] master_key, else file"),
        ), _init),
    ConfiguredCommand(
        ("keys", "status"), "each tenant's key epochs and states",
        "List each tenant's key epochs and states, and how many of its message blocks are "
        "still sealed under older epochs (what the background re-encrypt, [keys] "
        "reseal_messages, or `herald keys reseal --messages` has left to do; a shred of their "
        "epoch would destroy them).", (), _keys_status),
    ConfiguredCommand(
        ("keys", "rotate"), "start a new key epoch for a tenant",
        "Start a new key epoch: new messages are sealed under a fresh data key; older ones "
        "stay readable under theirs and are not rewritten, unless a server runs with [keys] "
        "reseal_messages = true (it re-seals them in the background) or `herald keys reseal "
        "--messages` is run.", (TENANT,), _keys_rotate),
    ConfiguredCommand(
        ("keys", "reseal"), "re-seal a tenant's records under its current key epoch",
        "Re-encrypt a tenant's users, groups and members (and with --messages its messages) "
        "under its current key epoch, in batches, so that older epochs can be shredded "
        "without losing accounts. `herald keys rotate` does it for everything but messages. "
        "Safe to interrupt and run again.", (
            TENANT,
            arg("--messages", action="store_true",
                help="re-seal the messages too (long: progress is shown)"),
        ), _keys_reseal),
    ConfiguredCommand(
        ("keys", "shred"), "destroy one old key epoch of a tenant (irreversible)",
        "Destroy the data key of one retired epoch (and its escrow key): the messages sealed "
        "under it can never be read again. Rotate first to shred the current epoch; a shred "
        "is refused while the epoch still seals users or groups (`herald keys reseal` moves "
        "them).", (
            TENANT,
            arg("--epoch", required=True, type=int, help="the epoch to destroy"),
            arg("--confirm", default="", metavar="TENANT",
                help="the tenant's name again: shredding cannot be undone"),
        ), _keys_shred),
    ConfiguredCommand(
        ("keys", "revoke"), "revoke a tenant's escrow keys: its data is gone for good",
        "Revoke every escrow key of a tenant: none of its stored data can be read again, by "
        "anyone. Other tenants are unaffected. Irreversible.", (
            TENANT,
            arg("--confirm", default="", metavar="TENANT",
                help="the tenant's name again: revocation cannot be undone"),
        ), _keys_revoke),
    ConfiguredCommand(
        ("keys", "passphrase"), "change the passphrase that seals the master key file",
        "Seal the same master key (data_dir/master.key) under a new passphrase, with a fresh "
        "salt and today's Argon2id parameters: asks the current passphrase (or reads [keys] "
        "passphrase_file), then the new one twice. The key itself is unchanged, so no data is "
        "re-encrypted, the escrow is not needed and a running server needs nothing. Backups "
        "of the old master.key still open with the OLD passphrase. Refused for a master key "
        "in an HSM (change the token's PIN with the HSM's tools).", (
            arg("--passphrase-file", metavar="FILE",
                help="read the current passphrase from the first line of FILE ('-': a line of "
                     "standard input) instead of [keys] passphrase_file or the terminal"),
            arg("--new-passphrase-file", metavar="FILE",
                help="read the new passphrase from the first line of FILE ('-': the next line "
                     "of standard input) instead of asking twice on the terminal"),
        ), _keys_passphrase),
    Command(
        ("cert", "selfsigned"), "make a private key and a self-signed certificate to try wss://",
        "Write herald-key.pem (ECDSA P-256, mode 0600) and herald-cert.pem (valid one year, "
        "for the given hosts plus localhost and 127.0.0.1) into DIR, and print how to "
        "configure the server and make clients trust it. For production, use a certificate "
        "from your organisation's CA.", (
            arg("--out", type=Path, required=True, metavar="DIR",
                help="folder to write the two files into (created if missing)"),
            arg("--host", action="append", default=[], metavar="NAME",
                help="a DNS name or IP address clients use to reach the server; repeat for "
                     "several"),
        ), _cert_selfsigned),
    ConfiguredCommand(
        ("tenant", "add"), "create a tenant", "Create a tenant.",
        (arg("name", help="short name: a-z, 0-9, '.', '_', '-'"),), _tenant_add),
    ConfiguredCommand(("tenant", "list"), "list tenants", "List tenants.", (), _tenant_list),
    ConfiguredCommand(
        ("user", "add"), "create a user (asks for a password)",
        "Create a user; the password is asked for twice.", (
            TENANT,
            arg("login", help="login name: a-z, 0-9, '.', '_', '-'"),
            arg("--display-name", default="", help="name shown to others"),
            arg("--password-stdin", action="store_true",
                help="read the password from one line of standard input"),
        ), _user_add),
    ConfiguredCommand(("user", "list"), "list a tenant's users", "List a tenant's users.",
                      (TENANT,), _user_list),
    _user_action("passwd", "set a user's password (ends all of its sessions)",
                 "Set a new password; the password is asked for twice. Every session of the "
                 "user ends: a running server closes its connections within seconds.",
                 _user_passwd),
    _user_action("disable", "disable a user (ends all of its sessions)",
                 "Disable a user: it can no longer log in, and a running server closes its "
                 "connections within seconds.", _user_disable),
    _user_action("enable", "enable a disabled user",
                 "Enable a user that was disabled; it may log in again.", _user_enable),
    _user_action("sessions", "list a user's sessions",
                 "List a user's sessions: device, start and expiry.", _user_sessions),
    _user_action("revoke-sessions", "end all of a user's sessions",
                 "End every session of a user on all devices: a running server closes its "
                 "connections within seconds, and its devices must log in again.",
                 _user_revoke_sessions),
    ConfiguredCommand(
        ("group", "add"), "create a group", "Create a group.", (
            TENANT,
            arg("--owner", required=True, help="login of the group's owner"),
            arg("--members", default="", help="comma-separated logins to add"),
            arg("--open", action="store_true",
                help="anyone in the tenant may join without being added"),
            arg("title", help="the group's title"),
        ), _group_add),
    ConfiguredCommand(
        ("audit", "verify"), "check the audit log's hash chain",
        "Check every entry of the audit log in order: it opens, matches its hash, follows its "
        "predecessor, with no gap, and the last is the one the head names. Prints the count "
        "and the last entry's hash (note them down elsewhere), or names the first bad entry "
        "and exits 1.", (), _audit_verify),
    ConfiguredCommand(
        ("audit", "list"), "list audit entries, oldest first",
        "List the audit log's entries that match every filter given, oldest first: a table, "
        "or with --json one JSON object a line.", (
            arg("--tenant", help="only entries about this tenant (its name)"),
            arg("--action", help="only this action (tenant.create, login.failed, ...)"),
            arg("--since", metavar="WHEN", help=f"only entries from then on: {_SINCE_HELP}"),
            arg("--json", action="store_true", help="one JSON object a line, for machines"),
        ), _audit_list),
    Command(
        ("chat",), "chat from the terminal (a client for trying Herald)",
        "Log in to a running Herald and chat: list conversations, open one, send lines, make "
        "and manage groups (/group, /add, /kick, /leave), recall your messages (/recall), "
        "change your password (/password, asked on the terminal). /help inside lists every "
        "command.", (
            arg("--url", default="ws://127.0.0.1:8470/ws",
                help="the server's WebSocket URL (default: ws://127.0.0.1:8470/ws)"),
            TENANT,
            arg("--login", required=True, help="your login name"),
            arg("--password-stdin", action="store_true",
                help="read the password from the first line of standard input"),
            arg("--ca", type=Path, metavar="FILE",
                help="for wss://: trust the certificates in this PEM file (a private CA, or a "
                     "self-signed server certificate) instead of the system's"),
            arg("--cert", type=Path, metavar="FILE",
                help="for wss:// with client certificates: this client's PEM certificate"),
            arg("--key", type=Path, metavar="FILE",
                help="the private key of --cert (default: in the --cert file)"),
            arg("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                help="how long to wait for the server to answer when connecting (default: "
                     "10)"),
        ), _chat),
    Command(
        ("escrow", "init"), "create an escrow: key file, CA and server certificate",
        "Create the escrow's key file (sealed by a passphrase asked twice), its private CA "
        "and the service's TLS certificate in --dir.", (
            arg("--dir", type=Path, required=True, help="the escrow directory (new)"),
            arg("--host", action="append", dest="hosts", metavar="NAME",
                help="a DNS name or IP address the appliance will dial (repeatable; default: "
                     "localhost and 127.0.0.1)"),
            ESCROW_PASSPHRASE,
        ), _escrow_init),
    Command(
        ("escrow", "issue-client"), "issue a client certificate for an appliance",
        "Sign a client certificate for one appliance with the escrow's CA; writes client.crt, "
        "client.key and ca.crt to --out, to be moved to the appliance.", (
            ESCROW_DIR,
            arg("--name", required=True,
                help="the appliance's name (certificate CN, shown in the audit log)"),
            arg("--out", type=Path, required=True, help="where to write the files"),
            ESCROW_PASSPHRASE,
        ), _escrow_issue_client),
    Command(
        ("escrow", "serve"), "serve the escrow over mutual TLS",
        "Open the escrow's key file and answer appliances (TLS 1.3, client certificates from "
        "the escrow's CA). Every operation is audited.", (
            ESCROW_DIR,
            arg("--listen", required=True, help="HOST:PORT to listen on"),
            ESCROW_PASSPHRASE,
        ), _escrow_serve),
    Command(
        ("escrow", "keys"), "list the escrow keys and their states (service stopped)",
        "Say when the escrow's server certificate and CA certificate end (marked RENEW SOON "
        "within 30 days), then list every key id and whether it is active or revoked. The "
        "service must be stopped: it holds the key file.",
        (ESCROW_DIR, ESCROW_PASSPHRASE), _escrow_keys),
    Command(
        ("escrow", "revoke"), "revoke an escrow key for good (service stopped)",
        "Destroy one escrow key on the escrow machine itself: everything it wrapped (a "
        "tenant's data keys) can never be opened again. The service must be stopped; "
        "appliances can also revoke through it. Audited.", (
            ESCROW_DIR,
            arg("--key-id", required=True, help="the key to destroy"),
            arg("--yes", action="store_true", help="do not ask for confirmation (for scripts)"),
            ESCROW_PASSPHRASE,
        ), _escrow_revoke),
    Command(
        ("escrow", "passphrase"), "change the escrow passphrase (service stopped)",
        "Seal the escrow's files (escrow.keys, ca.key, server.key) under a new passphrase: "
        "asks the current one, then the new one twice. The keys inside are unchanged: "
        "appliances need nothing. The service must be stopped: it holds the key file. Copies "
        "of the old files (backups) still open with the OLD passphrase. Audited (never the "
        "passphrases). Interrupted, it is finished by running it again with the same "
        "passphrases.", (
            ESCROW_DIR,
            arg("--passphrase-file", metavar="FILE",
                help="read the current passphrase from the first line of FILE ('-': a line of "
                     "standard input) instead of the terminal"),
            arg("--new-passphrase-file", metavar="FILE",
                help="read the new passphrase from the first line of FILE ('-': the next line "
                     "of standard input) instead of asking twice on the terminal"),
        ), _escrow_change_passphrase),
    Command(
        ("escrow", "renew"), "renew the escrow's server certificate (and with --ca its CA's)",
        "Sign server.crt again for 825 days with the same key and host names; with --ca, "
        "first sign ca.crt again for 3650 days with the same CA key and name, so that the "
        "appliances' client certificates stay valid (give them the new ca.crt). Restart "
        "herald escrow serve afterwards. Not `herald escrow init`: a new escrow holds none of "
        "the existing escrow keys.", (
            ESCROW_DIR,
            arg("--ca", action="store_true",
                help="renew the CA certificate too (then give ca.crt to the appliances)"),
            ESCROW_PASSPHRASE,
        ), _escrow_renew),
    Command(
        ("escrow", "audit"), "print the audit log and verify its hash chain",
        "Print every audited operation and check that no line was edited, added or removed. "
        "Exits 1 when the chain does not verify.", (ESCROW_DIR,), _escrow_audit),
    *ADMIN_COMMANDS,
)
