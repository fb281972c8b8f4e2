"""Words in messages, the same in the service, the command line and the console."""

from __future__ import annotations

import unicodedata


def plural(count: int, noun: str) -> str:
    """`1 rank`, `4 ranks`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def acting(name: str, reported: str | None) -> str:
    """Who did something: `alice (as root)` when a client that is root reported alice
    (sudo), else `root`. The reported name is the client's word, never checked."""
    return f"{reported} (as {name})" if reported and reported != name else name


def quoted(text: str) -> str:
    """'text' in a message; escaped, as repr does, if it holds a newline or other control."""
    return f"'{text}'" if text.isprintable() else repr(text)


# Characters that act on a terminal rather than print: C0/C1 controls and DEL (Cc), line and
# paragraph separators, lone surrogates, and the bidi overrides that reorder what is shown.
_ACTING_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _acts(ch: str) -> bool:
    return unicodedata.category(ch) in _ACTING_CATEGORIES or ch in _BIDI_CONTROLS


def visible(text: str) -> str:
    """Text from outside made safe for a terminal: controls shown as escapes (`\\x1b[2J`).

    Command output, drain reasons and hostnames reach operators' terminals; an escape
    sequence in them could blank a screen, set a window title or forge table rows. Only
    the characters that act are escaped, so ordinary text (non-ASCII, emoji) reads as is.
    `-o json` and other machine output keep the exact text instead.
    """
    if text.isprintable():
        return text
    return "".join(_escaped(ch) if _acts(ch) else ch for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
