"""Text from the network shown on a terminal: nothing in it can drive the terminal."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.client.display import UNSAFE_CATEGORIES, visible

# What a hostile sender would try: each must come out as plain printable text.
HOSTILE = {
    "red": ("\x1b[31mred", "\\x1b[31mred"),
    "title (OSC, BEL)": ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
    "title (OSC, ST)": ("\x1b]2;owned\x1b\\", "\\x1b]2;owned\\x1b\\"),
    "hyperlink (OSC 8)": ("\x1b]8;;http://evil\x1b\\x\x1b]8;;\x1b\\",
                          "\\x1b]8;;http://evil\\x1b\\x\\x1b]8;;\\x1b\\"),
    "DCS": ("\x1bP1$r\x1b\\", "\\x1bP1$r\\x1b\\"),
    "clear screen": ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    "cursor up": ("\x1b[1A\x1b[2K", "\\x1b[1A\\x1b[2K"),
    "C1 CSI": ("\x9b31m", "\\x9b31m"),
    "C1 OSC": ("\x9d0;t\x9c", "\\x9d0;t\\x9c"),
    "form feed": ("a\x0cb", "a\\x0cb"),
    "carriage return": ("ok\rBob Li: fake", "ok\\x0dBob Li: fake"),
    "backspace": ("abc\x08\x08", "abc\\x08\\x08"),
    "bell": ("\x07", "\\x07"),
    "NUL": ("a\x00b", "a\\x00b"),
    "DEL": ("a\x7f", "a\\x7f"),
    "tab": ("a\tb", "a\\x09b"),
    "newline": ("a\nb", "a\\x0ab"),
    "RLO": ("abc\u202efdp.exe", "abc\\u202efdp.exe"),
    "LRE PDF": ("\u202aa\u202c", "\\u202aa\\u202c"),
    "isolates": ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
    "zero width": ("ad\u200bmin\u200c\u200d\ufeff", "ad\\u200bmin\\u200c\\u200d\\ufeff"),
    "line separator": ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
    "soft hyphen": ("ad\xadmin", "ad\\xadmin"),
    "tag characters": ("\U000e0041", "\\U000e0041"),
    "lone surrogate": ("\ud800", "\\ud800"),
}


@pytest.mark.parametrize(("hostile", "shown"), HOSTILE.values(), ids=HOSTILE.keys())
def test_control_and_format_characters_are_shown_as_escapes(hostile: str, shown: str) -> None:
    assert visible(hostile) == shown
    assert "\x1b" not in visible(hostile)


def test_ordinary_text_is_shown_as_it_is() -> None:
    for text in ("hello", "Grüße, Zoë", "日本語のテキスト", "emoji 👍🏽", "a b", "C:\\path", ""):
        assert visible(text) == text


def test_a_multi_line_body_keeps_its_lines_each_after_the_continuation_mark() -> None:
    assert visible("one\ntwo\n12:00 Bob Li: fake", continuation="  | ") == (
        "one\n  | two\n  | 12:00 Bob Li: fake")
    assert visible("a\r\nb", continuation="  | ") == "a\\x0d\n  | b"


@given(st.text())
def test_no_control_or_format_character_survives_any_text(text: str) -> None:
    assert all(unicodedata.category(c) not in UNSAFE_CATEGORIES for c in visible(text))


@given(st.text())
def test_with_a_continuation_only_newlines_survive_and_each_is_followed_by_it(
    text: str,
) -> None:
    shown = visible(text, continuation="  | ")
    lines = shown.split("\n")
    assert all(line.startswith("  | ") for line in lines[1:])
    assert all(unicodedata.category(c) not in UNSAFE_CATEGORIES for c in "".join(lines))
    assert len(lines) == text.count("\n") + 1
