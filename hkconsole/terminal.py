"""Whether the console can run here: shared by the bare console and the demo."""

from __future__ import annotations

import sys

NO_TERMINAL = "the console needs a terminal; use `hkconsole list` for scripts"


def on_a_terminal() -> bool:
    """Both ends of the console on a terminal: without one, Textual never exits and spins."""
    try:
        return sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
