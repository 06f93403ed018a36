"""The `herald` command line: the parser built from the table of commands (commands.py), and
`main`, which runs the one the arguments chose. Every subcommand has --help; errors say what
to do next."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from typing import Any

from appliance.cli.commands import COMMANDS, CONFIG_FLAGS, GROUPS, Command, ConfiguredCommand
from appliance.config import ConfigError, load_config

__all__ = ["build_parser", "main", "version_text"]


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
    """The parser of every command in `COMMANDS`, in the table's order. Each command's parser
    remembers its entry (`args.herald_command`), which is how `main` knows what to run."""
    parser = argparse.ArgumentParser(
        prog="herald", description="Herald: an on-premise enterprise instant-messaging appliance.",
    )
    parser.add_argument("--version", action=_PrintVersion,
                        help="print Herald's version, its store formats and its wire protocol "
                             "version, and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    actions: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        *group_name, name = command.path
        parent = commands
        if group_name:
            (group,) = group_name
            if group not in actions:
                group_parser = commands.add_parser(group, help=GROUPS[group].help,
                                                   description=GROUPS[group].description)
                actions[group] = group_parser.add_subparsers(dest="action", metavar="ACTION",
                                                             required=True)
            parent = actions[group]
        command_parser = parent.add_parser(name, help=command.help,
                                           description=command.description)
        arguments = command.arguments
        if isinstance(command, ConfiguredCommand):
            arguments = CONFIG_FLAGS + arguments
        for argument in arguments:
            command_parser.add_argument(*argument.flags, **argument.options)
        command_parser.set_defaults(herald_command=command)
    return parser


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
    `herald serve` logs structured lines instead (appliance.cli.serve.configure_logging)."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="herald: %(levelname)s: %(message)s")
    for level in (logging.WARNING, logging.ERROR, logging.CRITICAL):
        logging.addLevelName(level, logging.getLevelName(level).lower())


def _run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command: Command | ConfiguredCommand = args.herald_command
    if isinstance(command, Command):
        return command.run(args)
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
    if not command.logs_as_server:
        _log_for_a_person()
    return command.run(config, args)
