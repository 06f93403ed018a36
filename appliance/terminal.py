"""Secrets from the operator: asked on the terminal (never echoed, asked twice when new, and a
clear error saying what to pass instead where there is no terminal, instead of a traceback), or
read from a file for scripts."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable

__all__ = ["ask_secret", "read_secret_file"]


def ask_secret(
    prompt: str, *, no_terminal: str, confirm: bool = False, differ: str = "",
    error: Callable[[str], BaseException] = SystemExit,
) -> str:
    """The secret typed after `prompt` (twice with `confirm`). Raises `error(no_terminal)`
    when standard input is not a terminal, `error(differ)` when the two differ, and
    `error("cancelled ...")` on end of input or Ctrl-C."""
    if not sys.stdin.isatty():
        raise error(no_terminal)
    try:
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != first:
            raise error(differ)
    except (EOFError, KeyboardInterrupt):
        raise error("cancelled at the prompt: nothing was changed") from None
    return first


def read_secret_file(source: str, *, error: Callable[[str], BaseException] = SystemExit) -> str:
    """The first line of the file `source`, without its line end; "-" reads the next line of
    standard input (so that two secrets can come in on two lines). Raises `error(...)` naming
    the file when it cannot be read."""
    if source == "-":
        return sys.stdin.readline().rstrip("\r\n")
    try:
        with open(source, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except OSError as exc:
        raise error(f"cannot read {source}: {exc.strerror}; check the path") from None
