"""Words in messages, the same in the service, the command line and the console."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """`1 rank`, `4 ranks`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def quoted(text: str) -> str:
    """'text' in a message; escaped, as repr does, if it holds a newline or other control."""
    return f"'{text}'" if text.isprintable() else repr(text)
