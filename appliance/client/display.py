"""Text from the network, made safe to show on a terminal: the one place that does it.

Anything another user or the server chose (a body, a display name, a group title, an error
message, a login) can hold characters a terminal obeys instead of showing: ESC starts CSI, OSC
and DCS sequences (colours, the window title, even key remapping on some terminals), C1 codes
such as U+009B do the same in one character, a carriage return or form feed moves the cursor,
and bidi overrides, isolates and zero-width characters make text read as something else. Every
such character is replaced by a visible escape (ESC becomes the four characters `\\x1b`, a
right-to-left override `\\u202e`), so what remains is printable text only; the rest of an
escape sequence is then plain text too.

What is escaped: every character of Unicode category Cc (C0, DEL, C1), Cf (format: bidi
controls, zero-width characters, soft hyphen, tags), Zl and Zp (line and paragraph separators)
and Cs (lone surrogates). Newlines are the one exception, and only where asked: a multi-line
message body keeps its lines, each continuation line starting with `continuation`, so that no
line of a body can pass for a line of the chat's own (another sender's message).
"""

from __future__ import annotations

import unicodedata

__all__ = ["UNSAFE_CATEGORIES", "visible"]

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def visible(text: str, *, continuation: str | None = None) -> str:
    """`text` with every control or format character replaced by its escape (`\\x1b`,
    `\\u202e`, `\\U000e0041`). With `continuation`, a newline stays a newline followed by
    `continuation` (which must itself be safe); without, it becomes `\\n` like the others.
    Raises nothing."""
    if text.isprintable() and continuation is None:
        return text  # the common case: nothing to escape (isprintable is False for all of them)
    shown: list[str] = []
    for char in text:
        if char == "\n" and continuation is not None:
            shown.append("\n" + continuation)
        elif unicodedata.category(char) in UNSAFE_CATEGORIES:
            shown.append(_escape(char))
        else:
            shown.append(char)
    return "".join(shown)


def _escape(char: str) -> str:
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"
