"""Where `herald chat` reads its lines: a prompt on a terminal, or the lines of piped input.

On a terminal the line being typed must survive messages arriving meanwhile: prompt-toolkit's
`PromptSession` keeps it at the bottom and redraws it after every line printed above (the chat
runs under `patch_stdout`, which routes `print` through prompt-toolkit). prompt-toolkit runs on
asyncio and the chat on Trio, so each prompt runs in a worker thread, with its own asyncio loop
there; Trio keeps the network. Piped input (tests, scripts) is read a line at a time in a worker
thread, as plain text, so that the chat behaves the same with or without a terminal.
"""

from __future__ import annotations

import threading
from typing import Protocol, TextIO

import trio
from prompt_toolkit import PromptSession

__all__ = ["LineSource", "PipedLines", "PromptLines"]

PROMPT = "> "
_PROMPT_EXIT_WAIT_S = 2.0  # for a prompt told to end to give the terminal back


class LineSource(Protocol):
    async def next_line(self) -> str | None:
        """The next line typed, without its line end; None at the end of input (Ctrl-D, or
        Ctrl-C at the prompt)."""
        ...

    async def aclose(self) -> None:
        """End a prompt still waiting for a line, so that the terminal is left as it was."""
        ...


class PipedLines:
    """Lines of a stream that is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    async def next_line(self) -> str | None:
        line = await trio.to_thread.run_sync(self._stream.readline, abandon_on_cancel=True)
        return line.rstrip("\r\n") if line else None

    async def aclose(self) -> None:
        pass  # a thread still in readline is abandoned: it holds no terminal state


class PromptLines:
    """Lines typed at a prompt-toolkit prompt on the terminal."""

    def __init__(self, prompt: str = PROMPT) -> None:
        self._prompt = prompt
        self._session: PromptSession[str] = PromptSession()
        self._idle = threading.Event()  # no prompt is being shown
        self._idle.set()

    def _ask(self) -> str | None:
        self._idle.clear()
        try:
            return self._session.prompt(self._prompt)
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: both mean "leave"
            return None
        finally:
            self._idle.set()

    async def next_line(self) -> str | None:
        return await trio.to_thread.run_sync(self._ask, abandon_on_cancel=True)

    async def aclose(self) -> None:
        """A prompt abandoned by a cancelled `next_line` (the session ended, or SIGINT) still
        holds the terminal in raw mode: tell it to end, and wait until it has."""
        if self._idle.is_set():
            return
        app = self._session.app
        loop = app.loop
        if loop is not None and not loop.is_closed():
            def end() -> None:
                if app.is_running:
                    app.exit(exception=EOFError())
            loop.call_soon_threadsafe(end)
        await trio.to_thread.run_sync(self._idle.wait, _PROMPT_EXIT_WAIT_S)
