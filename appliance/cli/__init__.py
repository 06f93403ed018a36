"""The `herald` command: one table of every command (`commands.py`: its help, its arguments
and what runs it), the parser built from it and `main` (`herald.py`), and the subcommands:
accounts, keys (`key_commands.py`), certificates, `serve` (the one place that builds a running
server: lock, sockets, keys, engine, gateway) and the demo it can start with.

The top of the house: it may import every other part of the appliance, and nothing of ours
imports it (`herald = "appliance.cli:main"` and `python -m appliance.cli` are its entries).
"""

from appliance.cli.herald import build_parser, main, version_text

__all__ = ["build_parser", "main", "version_text"]
