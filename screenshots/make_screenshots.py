"""Make the README's screenshots from the real console on fixed sample data.

Each state is driven headless with Pilot, exported with Textual's SVG export, and turned
into a PNG by cairosvg. The SVGs ask for Fira Code: install Debian's `fonts-firacode`
first, or the PNGs fall back to a proportional font.

usage: .venv/bin/python screenshots/make_screenshots.py   (needs the `screenshots` extra)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cairosvg  # type: ignore[import-untyped]
from textual.pilot import Pilot

from hkconsole.tui.fixed import disconnect, fixed_app, load_sample

OUT = Path(__file__).resolve().parent
SIZE = (120, 36)


async def shoot(name: str, steps: Callable[[Pilot[Any]], Awaitable[None]]) -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        await steps(pilot)
        await pilot.pause(0.3)
        svg = app.export_screenshot(title=f"hkconsole: {name}")
    svg_path = OUT / f"{name}.svg"
    svg_path.write_text(svg)
    cairosvg.svg2png(url=str(svg_path), write_to=str(OUT / f"{name}.png"), output_width=1600)
    svg_path.unlink()
    print(f"wrote {OUT / name}.png")


async def nothing(pilot: Pilot[Any]) -> None:
    return None


async def main() -> int:
    async def nodes(pilot: Pilot[Any]) -> None:
        # The last node: drained by an operator, who the bar and the BY column name.
        await pilot.press("2", "G")

    async def kill_dialog(pilot: Pilot[Any]) -> None:
        await pilot.press("down", "k")

    async def detail(pilot: Pilot[Any]) -> None:
        # The 8-node unit with a failed node and a straggler: its detail shows the
        # failure and its stderr, the node still cleaning, and the ones released.
        await pilot.press("down", "down")

    async def finished(pilot: Pilot[Any]) -> None:
        # The unit whose node timed out: the bar below has its reason in full.
        await pilot.press("3", "down", "down", "down")

    async def gone(pilot: Pilot[Any]) -> None:
        disconnect(pilot.app)  # type: ignore[arg-type]

    await shoot("units", nothing)
    await shoot("nodes", nodes)
    await shoot("detail", detail)
    await shoot("kill-dialog", kill_dialog)
    await shoot("finished", finished)
    await shoot("disconnected", gone)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
