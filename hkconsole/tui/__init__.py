"""The Textual operator console. Imported only when the console opens."""

from __future__ import annotations


def run_console(
    endpoint: str | None = None, read_only: bool = False, run_for: float | None = None
) -> int:
    """Open the console; with `run_for` it runs headless for that long (demo tests)."""
    from hkconsole.tui.app import HkConsole
    from hkconsole.tui.config import load_keymap

    app = HkConsole(endpoint=endpoint, read_only=read_only, keymap=load_keymap())
    if run_for is not None:
        app.call_later(lambda: app.set_timer(run_for, app.exit))
        app.run(headless=True)
    else:
        app.run()
    return 0
