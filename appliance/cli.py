"""The `herald` command line. Every subcommand has --help; errors say what to do next."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from pathlib import Path
from typing import Any

from appliance.config import LOG_LEVELS, MASTER_KEY_PLACES, ConfigError, load_config

__all__ = ["build_parser", "main", "version_text"]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (optional)")
    parser.add_argument(
        "--data-dir", type=Path, help="where Herald keeps its data (default: ./var)"
    )


def _add_user_action(commands: Any, name: str, help_: str, description: str) -> None:
    action = commands.add_parser(name, help=help_, description=description)
    _add_config_flags(action)
    action.add_argument("--tenant", required=True, help="tenant name")
    action.add_argument("login", help="the user's login name")
    if name == "passwd":
        action.add_argument("--password-stdin", action="store_true",
                            help="read the new password from one line of standard input")


def version_text() -> str:
    """What `herald --version` prints: the package's version (pyproject.toml's, from the
    installed metadata), the store formats this build opens and its wire protocol version."""
    from appliance.protocol.version import PROTOCOL_VERSION
    from engine.records import FORMAT_VERSION, SEALED_FORMAT_VERSION

    try:
        version = importlib.metadata.version("herald")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
        version = "(not installed: no package metadata)"
    return (f"herald {version}\n"
            f"store format {SEALED_FORMAT_VERSION} (sealed), {FORMAT_VERSION} (plain, opened "
            f"for the account commands only)\n"
            f"wire protocol {PROTOCOL_VERSION}")


class _PrintVersion(argparse.Action):
    """argparse's own "version" action rewraps the text into one paragraph: this one prints
    the lines as they are, and only when asked (the package metadata is read then)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald", description="Herald: an on-premise enterprise instant-messaging appliance.",
    )
    parser.add_argument("--version", action=_PrintVersion,
                        help="print Herald's version, its store formats and its wire protocol "
                             "version, and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the appliance",
                                description="Open the store and serve WebSocket clients.")
    _add_config_flags(serve)
    serve.add_argument("--listen", help="HOST:PORT to listen on (default: 127.0.0.1:8470)")
    serve.add_argument("--demo", action="store_true",
                       help="on an empty store, create a demo tenant with two users and print "
                            "their passwords")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE",
                       help="PEM certificate (chain): serve wss:// (overrides tls.cert_file)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE",
                       help="PEM private key of --tls-cert (overrides tls.key_file)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower,
                       help="how much to log to standard error (overrides [log] level; "
                            "default: info)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (overrides "
                            "[metrics] listen; default: off; docs/admin.md)")

    init = commands.add_parser(
        "init", help="create this appliance's master key (first start)",
        description="Create the master key and the appliance id, after checking that the "
                    "configured escrow answers; says what to back up. The master key goes in "
                    "a file in the data directory, sealed by a passphrase you choose (asked "
                    "twice, or [keys] passphrase_file), or with --master-key pkcs11 is "
                    "generated inside an HSM, never extractable ([keys] pkcs11_* settings; "
                    "back the token up with the HSM's own procedure).")
    _add_config_flags(init)
    init.add_argument("--master-key", choices=MASTER_KEY_PLACES, default=None,
                      help="where to create the master key: 'file' (sealed by a passphrase) or "
                           "'pkcs11' (an HSM token); default: [keys] master_key, else file")

    keys = commands.add_parser(
        "keys", help="tenant data keys: status, rotate, reseal, revoke, shred; the master key's "
                     "passphrase",
        description="Operate the tenants' data keys (docs/security.md, 'Rotation, revocation, "
                    "shredding'). Needs the master key's passphrase and the escrow. `passphrase` "
                    "changes the master key file's passphrase.")
    keys_cmds = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    keys_status = keys_cmds.add_parser(
        "status", help="each tenant's key epochs and states",
        description="List each tenant's key epochs and states, and how many of its message "
                    "blocks are still sealed under older epochs (what the background re-encrypt, "
                    "[keys] reseal_messages, or `herald keys reseal --messages` has left to do; "
                    "a shred of their epoch would destroy them).")
    _add_config_flags(keys_status)
    keys_rotate = keys_cmds.add_parser(
        "rotate", help="start a new key epoch for a tenant",
        description="Start a new key epoch: new messages are sealed under a fresh data key; "
                    "older ones stay readable under theirs and are not rewritten, unless a "
                    "server runs with [keys] reseal_messages = true (it re-seals them in the "
                    "background) or `herald keys reseal --messages` is run.")
    _add_config_flags(keys_rotate)
    keys_rotate.add_argument("--tenant", required=True, help="tenant name")
    keys_reseal = keys_cmds.add_parser(
        "reseal", help="re-seal a tenant's records under its current key epoch",
        description="Re-encrypt a tenant's users, groups and members (and with --messages its "
                    "messages) under its current key epoch, in batches, so that older epochs "
                    "can be shredded without losing accounts. `herald keys rotate` does it for "
                    "everything but messages. Safe to interrupt and run again.")
    _add_config_flags(keys_reseal)
    keys_reseal.add_argument("--tenant", required=True, help="tenant name")
    keys_reseal.add_argument("--messages", action="store_true",
                             help="re-seal the messages too (long: progress is shown)")
    keys_shred = keys_cmds.add_parser(
        "shred", help="destroy one old key epoch of a tenant (irreversible)",
        description="Destroy the data key of one retired epoch (and its escrow key): the "
                    "messages sealed under it can never be read again. Rotate first to shred "
                    "the current epoch; a shred is refused while the epoch still seals users "
                    "or groups (`herald keys reseal` moves them).")
    _add_config_flags(keys_shred)
    keys_shred.add_argument("--tenant", required=True, help="tenant name")
    keys_shred.add_argument("--epoch", required=True, type=int, help="the epoch to destroy")
    keys_shred.add_argument("--confirm", default="", metavar="TENANT",
                            help="the tenant's name again: shredding cannot be undone")
    keys_revoke = keys_cmds.add_parser(
        "revoke", help="revoke a tenant's escrow keys: its data is gone for good",
        description="Revoke every escrow key of a tenant: none of its stored data can be read "
                    "again, by anyone. Other tenants are unaffected. Irreversible.")
    _add_config_flags(keys_revoke)
    keys_revoke.add_argument("--tenant", required=True, help="tenant name")
    keys_revoke.add_argument("--confirm", default="", metavar="TENANT",
                             help="the tenant's name again: revocation cannot be undone")
    keys_passphrase = keys_cmds.add_parser(
        "passphrase", help="change the passphrase that seals the master key file",
        description="Seal the same master key (data_dir/master.key) under a new passphrase, "
                    "with a fresh salt and today's Argon2id parameters: asks the current "
                    "passphrase (or reads [keys] passphrase_file), then the new one twice. The "
                    "key itself is unchanged, so no data is re-encrypted, the escrow is not "
                    "needed and a running server needs nothing. Backups of the old master.key "
                    "still open with the OLD passphrase. Refused for a master key in an HSM "
                    "(change the token's PIN with the HSM's tools).")
    _add_config_flags(keys_passphrase)
    keys_passphrase.add_argument(
        "--passphrase-file", metavar="FILE",
        help="read the current passphrase from the first line of FILE ('-': a line of "
             "standard input) instead of [keys] passphrase_file or the terminal")
    keys_passphrase.add_argument(
        "--new-passphrase-file", metavar="FILE",
        help="read the new passphrase from the first line of FILE ('-': the next line of "
             "standard input) instead of asking twice on the terminal")

    cert = commands.add_parser("cert", help="make TLS certificates",
                               description="Make TLS certificates for wss://.")
    cert_cmds = cert.add_subparsers(dest="action", metavar="ACTION", required=True)
    selfsigned = cert_cmds.add_parser(
        "selfsigned", help="make a private key and a self-signed certificate to try wss://",
        description="Write herald-key.pem (ECDSA P-256, mode 0600) and herald-cert.pem (valid "
                    "one year, for the given hosts plus localhost and 127.0.0.1) into DIR, "
                    "and print how to configure the server and make clients trust it. "
                    "For production, use a certificate from your organisation's CA.")
    selfsigned.add_argument("--out", type=Path, required=True, metavar="DIR",
                            help="folder to write the two files into (created if missing)")
    selfsigned.add_argument("--host", action="append", default=[], metavar="NAME",
                            help="a DNS name or IP address clients use to reach the server; "
                                 "repeat for several")

    tenant = commands.add_parser("tenant", help="manage tenants (organisations)",
                                 description="Manage tenants (organisations).")
    tenant_cmds = tenant.add_subparsers(dest="action", metavar="ACTION", required=True)
    tenant_add = tenant_cmds.add_parser(
        "add", help="create a tenant", description="Create a tenant."
    )
    _add_config_flags(tenant_add)
    tenant_add.add_argument("name", help="short name: a-z, 0-9, '.', '_', '-'")
    tenant_list = tenant_cmds.add_parser("list", help="list tenants", description="List tenants.")
    _add_config_flags(tenant_list)

    user = commands.add_parser("user", help="manage users", description="Manage users.")
    user_cmds = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    user_add = user_cmds.add_parser("add", help="create a user (asks for a password)",
                                    description="Create a user; the password is asked for twice.")
    _add_config_flags(user_add)
    user_add.add_argument("--tenant", required=True, help="tenant name")
    user_add.add_argument("login", help="login name: a-z, 0-9, '.', '_', '-'")
    user_add.add_argument("--display-name", default="", help="name shown to others")
    user_add.add_argument("--password-stdin", action="store_true",
                          help="read the password from one line of standard input")
    user_list = user_cmds.add_parser("list", help="list a tenant's users",
                                     description="List a tenant's users.")
    _add_config_flags(user_list)
    user_list.add_argument("--tenant", required=True, help="tenant name")
    _add_user_action(user_cmds, "passwd", "set a user's password (ends all of its sessions)",
                     "Set a new password; the password is asked for twice. Every session of "
                     "the user ends: a running server closes its connections within seconds.")
    _add_user_action(user_cmds, "disable", "disable a user (ends all of its sessions)",
                     "Disable a user: it can no longer log in, and a running server closes "
                     "its connections within seconds.")
    _add_user_action(user_cmds, "enable", "enable a disabled user",
                     "Enable a user that was disabled; it may log in again.")
    _add_user_action(user_cmds, "sessions", "list a user's sessions",
                     "List a user's sessions: device, start and expiry.")
    _add_user_action(user_cmds, "revoke-sessions", "end all of a user's sessions",
                     "End every session of a user on all devices: a running server closes "
                     "its connections within seconds, and its devices must log in again.")

    group = commands.add_parser("group", help="manage groups", description="Manage groups.")
    group_cmds = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    group_add = group_cmds.add_parser("add", help="create a group", description="Create a group.")
    _add_config_flags(group_add)
    group_add.add_argument("--tenant", required=True, help="tenant name")
    group_add.add_argument("--owner", required=True, help="login of the group's owner")
    group_add.add_argument("--members", default="", help="comma-separated logins to add")
    group_add.add_argument("--open", action="store_true",
                           help="anyone in the tenant may join without being added")
    group_add.add_argument("title", help="the group's title")

    chat = commands.add_parser("chat", help="chat from the terminal (a client for trying Herald)",
                               description="Log in to a running Herald and chat: list "
                                           "conversations, open one, send lines, make and "
                                           "manage groups (/group, /add, /kick, /leave), "
                                           "recall your messages (/recall), change your "
                                           "password (/password, asked on the terminal). "
                                           "/help inside lists every command.")
    chat.add_argument("--url", default="ws://127.0.0.1:8470/ws",
                      help="the server's WebSocket URL (default: ws://127.0.0.1:8470/ws)")
    chat.add_argument("--tenant", required=True, help="tenant name")
    chat.add_argument("--login", required=True, help="your login name")
    chat.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")
    chat.add_argument("--ca", type=Path, metavar="FILE",
                      help="for wss://: trust the certificates in this PEM file (a private CA, "
                           "or a self-signed server certificate) instead of the system's")
    chat.add_argument("--cert", type=Path, metavar="FILE",
                      help="for wss:// with client certificates: this client's PEM certificate")
    chat.add_argument("--key", type=Path, metavar="FILE",
                      help="the private key of --cert (default: in the --cert file)")
    chat.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                      help="how long to wait for the server to answer when connecting "
                           "(default: 10)")
    _add_escrow_commands(commands)
    return parser


def _add_escrow_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    escrow = commands.add_parser(
        "escrow", help="run Herald's key escrow service (on the escrow's own machine)",
        description="Herald's own key escrow, for sites without an HSM: a third party runs it "
                    "on its own machine; the appliance asks it to unwrap tenant keys over "
                    "mutual TLS. See docs/security.md, 'Escrow backends'.")
    escrow_cmds = escrow.add_subparsers(dest="action", metavar="ACTION", required=True)
    passphrase_help = ("read the escrow passphrase from the first line of this file ('-' for "
                       "standard input) instead of the terminal")
    init = escrow_cmds.add_parser(
        "init", help="create an escrow: key file, CA and server certificate",
        description="Create the escrow's key file (sealed by a passphrase asked twice), its "
                    "private CA and the service's TLS certificate in --dir.")
    init.add_argument("--dir", type=Path, required=True, help="the escrow directory (new)")
    init.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                      help="a DNS name or IP address the appliance will dial (repeatable; "
                           "default: localhost and 127.0.0.1)")
    init.add_argument("--passphrase-file", help=passphrase_help)
    issue = escrow_cmds.add_parser(
        "issue-client", help="issue a client certificate for an appliance",
        description="Sign a client certificate for one appliance with the escrow's CA; writes "
                    "client.crt, client.key and ca.crt to --out, to be moved to the appliance.")
    issue.add_argument("--dir", type=Path, required=True, help="the escrow directory")
    issue.add_argument("--name", required=True, help="the appliance's name (certificate CN, "
                                                     "shown in the audit log)")
    issue.add_argument("--out", type=Path, required=True, help="where to write the files")
    issue.add_argument("--passphrase-file", help=passphrase_help)
    serve = escrow_cmds.add_parser(
        "serve", help="serve the escrow over mutual TLS",
        description="Open the escrow's key file and answer appliances (TLS 1.3, client "
                    "certificates from the escrow's CA). Every operation is audited.")
    serve.add_argument("--dir", type=Path, required=True, help="the escrow directory")
    serve.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    serve.add_argument("--passphrase-file", help=passphrase_help)
    keys = escrow_cmds.add_parser(
        "keys", help="list the escrow keys and their states (service stopped)",
        description="Say when the escrow's server certificate and CA certificate end (marked "
                    "RENEW SOON within 30 days), then list every key id and whether it is "
                    "active or revoked. The service must be stopped: it holds the key file.")
    keys.add_argument("--dir", type=Path, required=True, help="the escrow directory")
    keys.add_argument("--passphrase-file", help=passphrase_help)
    revoke = escrow_cmds.add_parser(
        "revoke", help="revoke an escrow key for good (service stopped)",
        description="Destroy one escrow key on the escrow machine itself: everything it "
                    "wrapped (a tenant's data keys) can never be opened again. The service "
                    "must be stopped; appliances can also revoke through it. Audited.")
    revoke.add_argument("--dir", type=Path, required=True, help="the escrow directory")
    revoke.add_argument("--key-id", required=True, help="the key to destroy")
    revoke.add_argument("--yes", action="store_true",
                        help="do not ask for confirmation (for scripts)")
    revoke.add_argument("--passphrase-file", help=passphrase_help)
    change = escrow_cmds.add_parser(
        "passphrase", help="change the escrow passphrase (service stopped)",
        description="Seal the escrow's files (escrow.keys, ca.key, server.key) under a new "
                    "passphrase: asks the current one, then the new one twice. The keys inside "
                    "are unchanged: appliances need nothing. The service must be stopped: it "
                    "holds the key file. Copies of the old files (backups) still open with the "
                    "OLD passphrase. Audited (never the passphrases). Interrupted, it is "
                    "finished by running it again with the same passphrases.")
    change.add_argument("--dir", type=Path, required=True, help="the escrow directory")
    change.add_argument("--passphrase-file", metavar="FILE",
                        help="read the current passphrase from the first line of FILE ('-': a "
                             "line of standard input) instead of the terminal")
    change.add_argument("--new-passphrase-file", metavar="FILE",
                        help="read the new passphrase from the first line of FILE ('-': the "
                             "next line of standard input) instead of asking twice on the "
                             "terminal")
    renew = escrow_cmds.add_parser(
        "renew", help="renew the escrow's server certificate (and with --ca its CA's)",
        description="Sign server.crt again for 825 days with the same key and host names; "
                    "with --ca, first sign ca.crt again for 3650 days with the same CA key and "
                    "name, so that the appliances' client certificates stay valid (give them "
                    "the new ca.crt). Restart herald escrow serve afterwards. Not `herald "
                    "escrow init`: a new escrow holds none of the existing escrow keys.")
    renew.add_argument("--dir", type=Path, required=True, help="the escrow directory")
    renew.add_argument("--ca", action="store_true",
                       help="renew the CA certificate too (then give ca.crt to the appliances)")
    renew.add_argument("--passphrase-file", help=passphrase_help)
    audit = escrow_cmds.add_parser(
        "audit", help="print the audit log and verify its hash chain",
        description="Print every audited operation and check that no line was edited, added "
                    "or removed. Exits 1 when the chain does not verify.")
    audit.add_argument("--dir", type=Path, required=True, help="the escrow directory")


def _run_escrow(args: argparse.Namespace) -> int:
    from appliance.config import _parse_listen
    from appliance.keys.escrow_service import commands

    if args.action == "audit":
        return commands.audit(args.dir)
    if args.action == "revoke" and not args.yes:
        answer = input(f"Revoking {args.key_id!r} makes its data unreadable for good. Type the "
                       f"key id to confirm: ")
        if answer.strip() != args.key_id:
            print("herald escrow: not confirmed; nothing was revoked", file=sys.stderr)
            return 1
    if args.action == "passphrase":
        current = commands.read_passphrase(args.passphrase_file,
                                           prompt="Current escrow passphrase: ")
        new = commands.read_new_passphrase(args.new_passphrase_file)
        return commands.passphrase(args.dir, current, new)
    passphrase = commands.read_passphrase(args.passphrase_file, new=args.action == "init")
    if args.action == "init":
        return commands.init(args.dir, passphrase, args.hosts or ["localhost", "127.0.0.1"])
    if args.action == "issue-client":
        return commands.issue_client(args.dir, passphrase, args.name, args.out)
    if args.action == "keys":
        return commands.keys(args.dir, passphrase)
    if args.action == "revoke":
        return commands.revoke(args.dir, passphrase, args.key_id)
    if args.action == "renew":
        return commands.renew(args.dir, passphrase, args.ca)
    try:
        host, port = _parse_listen(args.listen)
    except ConfigError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    return commands.serve(args.dir, passphrase, host, port)


def main(argv: list[str] | None = None) -> int:
    """`herald`: run one command; Ctrl-C ends any of them with a line, not a traceback (every
    store write is a transaction, and the long ones say they are safe to run again), and so
    does a reader of its output that went away (`herald user list ... | head -1`)."""
    try:
        return _run_command(argv)
    except KeyboardInterrupt:
        print("\nherald: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    except BrokenPipeError:
        # What is left in stdout's buffer would fail again when Python flushes it at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as shells report a writer whose reader went away


def _log_for_a_person() -> None:
    """A one-shot command's warnings (a key the escrow refused, a certificate about to end)
    read as 'herald: warning: ...' lines on stderr, not as logging's bare last-resort text.
    `herald serve` logs structured lines instead (appliance.serve.configure_logging)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="herald: %(levelname)s: %(message)s")
    for level in (logging.WARNING, logging.ERROR, logging.CRITICAL):
        logging.addLevelName(level, logging.getLevelName(level).lower())


def _run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "chat":
        from appliance.chat import run

        return run(args.url, args.tenant, args.login, password_stdin=args.password_stdin,
                   ca_file=args.ca, cert_file=args.cert, key_file=args.key,
                   connect_timeout_s=args.connect_timeout)
    if args.command == "cert":
        return _self_signed(args.out, args.host)
    if args.command == "escrow":
        return _run_escrow(args)
    try:
        config = load_config(
            args.config, data_dir=args.data_dir, listen=getattr(args, "listen", None),
            tls_cert=getattr(args, "tls_cert", None), tls_key=getattr(args, "tls_key", None),
            log_level=getattr(args, "log_level", None),
            metrics_listen=getattr(args, "metrics_listen", None),
        )
    except ConfigError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from appliance.serve import serve

        return serve(config, demo=args.demo)
    _log_for_a_person()
    if args.command in ("init", "keys"):
        from appliance import key_commands

        if args.command == "init":
            return key_commands.init(config, args.master_key)
        if args.action == "status":
            return key_commands.key_status(config)
        if args.action == "rotate":
            return key_commands.rotate(config, args.tenant)
        if args.action == "reseal":
            return key_commands.reseal(config, args.tenant, args.messages)
        if args.action == "shred":
            return key_commands.shred(config, args.tenant, args.epoch, args.confirm)
        if args.action == "passphrase":
            return key_commands.change_passphrase(config, args.passphrase_file,
                                                  args.new_passphrase_file)
        return key_commands.revoke(config, args.tenant, args.confirm)
    from appliance import accounts

    if args.command == "tenant":
        if args.action == "add":
            return accounts.add_tenant(config, args.name)
        return accounts.list_tenants(config)
    if args.command == "user":
        if args.action == "add":
            password = accounts.read_password(args.password_stdin)
            return accounts.add_user(config, args.tenant, args.login, args.display_name, password)
        if args.action == "passwd":
            password = accounts.read_password(args.password_stdin, whose=repr(args.login))
            return accounts.change_password(config, args.tenant, args.login, password)
        if args.action in ("disable", "enable"):
            return accounts.set_disabled(config, args.tenant, args.login,
                                         args.action == "disable")
        if args.action == "sessions":
            return accounts.list_sessions(config, args.tenant, args.login)
        if args.action == "revoke-sessions":
            return accounts.revoke_sessions(config, args.tenant, args.login)
        return accounts.list_users(config, args.tenant)
    if args.command == "group":
        members = [m.strip() for m in args.members.split(",") if m.strip()]
        return accounts.add_group(config, args.tenant, args.title, args.owner, members, args.open)
    raise AssertionError(f"unhandled command {args.command}")


def _self_signed(out_dir: Path, hosts: list[str]) -> int:
    from appliance.certs import describe, make_self_signed

    try:
        made = make_self_signed(out_dir, hosts)
    except FileExistsError as exc:
        print(f"herald: {exc.args[0]} exists already; remove it or choose another --out",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"herald: cannot write into {out_dir}: {exc.strerror}; choose another --out",
              file=sys.stderr)
        return 1
    print(describe(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
