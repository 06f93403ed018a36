"""Secrets asked on the terminal: never echoed, asked twice when new, and a clear error (what
to pass instead) where there is no terminal to ask on, instead of a traceback."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable

__all__ = ["ask_secret"]


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
