"""The `herald` command line. Every subcommand has --help; errors say what to do next."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.config import ConfigError, load_config

__all__ = ["main"]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (optional)")
    parser.add_argument(
        "--data-dir", type=Path, help="where Herald keeps its data (default: ./var)"
    )
    parser.add_argument("--listen", help="HOST:PORT to listen on (default: 127.0.0.1:8470)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald",
        description="Herald: an on-premise enterprise instant-messaging appliance.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve", help="run the appliance", description="Open the store and serve clients."
    )
    _add_config_flags(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, data_dir=args.data_dir, listen=args.listen)
    except ConfigError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from appliance.serve import serve

        return serve(config)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
