"""The Textual operator console. Imported only when the console opens."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textual.pilot import Pilot

    from hkconsole.client import CurveKeys


def run_console(
    endpoint: str | None = None,
    read_only: bool = False,
    run_for: float | None = None,
    label: str = "",
    keys: CurveKeys | None = None,
) -> int:
    """Open the console; with `run_for` it runs headless for that long (demo tests).

    `label` is shown in the header beside the endpoint (the demo puts its seed there).
    """
    from hkconsole.tui.app import HkConsole
    from hkconsole.tui.config import load_settings

    settings = load_settings()
    app = HkConsole(
        endpoint=endpoint,
        read_only=read_only,
        keymap=settings.keymap,
        long_running=settings.long_running,
        label=label,
        keys=keys,
    )
    if run_for is None:
        app.run()
        return 0

    async def run_then_quit(pilot: Pilot[object]) -> None:
        await asyncio.sleep(run_for)
        await pilot.press("q")

    app.run(headless=True, auto_pilot=run_then_quit)
    return 0
