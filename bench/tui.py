"""Console benchmark (not a test): 10,000 units over 16,384 nodes, headless.

Each figure is the time until the console is idle again (Textual's repaint included),
with issue 13's target:

- first load (<= 1 s), and an update where 1% of the units change (<= 50 ms to apply);
- typing a filter that hides ~90% of the units, and clearing it, and a host prefix that
  units match through the hosts they hold (<= 150 ms each until repainted);
- switching to the nodes view and back (<= 150 ms), an update of 1% of the units while it
  shows (<= 50 ms to apply), a substring filter and a state filter there (<= 150 ms);
- a resync in which 90% of the units ended (<= 500 ms);
- the process RSS (<= 400 MB);
- the idle cost: CPU time over 20 s in which nothing changes but RUNTIME (<= 2% of a
  core).

usage: .venv/bin/python bench/tui.py
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from hkconsole.tui.app import HkConsole
from hkconsole.tui.fixed import load
from hkconsole.tui.sample import T0
from hkconsole.tui.table import LiveTable
from hkservice.idset import format_idset

NODES = 16384
UNITS = 10_000
IDLE_SECONDS = 20.0


def data(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    config = {
        "hostlist": f"node[0-{NODES - 1}]",
        "size": NODES,
        "release-after": 30.0,
        "timeout": None,
        "kill-grace": 90.0,
        "events-endpoint": "",
    }
    units = []
    for i in range(UNITS):
        first = rng.randrange(NODES - 4)
        ranks = list(range(first, first + rng.choice((1, 1, 2, 4))))
        units.append(
            {
                "jobid": 1_000_000 + i,
                "userid": 1000 + i % 50,
                "t_start": T0 - rng.uniform(0, 3000),
                "ranks": format_idset(ranks),
                "allocated": format_idset(ranks),
                "pending": format_idset(ranks),
                "failed": "",
            }
        )
    # A few hundred drained nodes, so the state filter has something to find.
    drained = [
        {"ranks": format_idset(range(r, r + 4)), "reason": "bad fan", "t": T0 - 60}
        for r in range(0, NODES, 256)
    ]
    status = {"hostlist": config["hostlist"], "size": NODES, "drained": drained}
    return config, {"units": units}, status


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def churn(rng: random.Random, units: dict[str, Any]) -> None:
    """Change 1% of the units: a running rank finishes, or a finished one restarts."""
    for unit in rng.sample(units["units"], UNITS // 100):
        ranks = unit["pending"].split("-")[0].split(",")[0]
        unit["pending"] = "" if unit["pending"] == ranks else ranks
        unit["allocated"] = unit["pending"] or unit["ranks"]


async def timed(pilot: Pilot[Any], step: Callable[[], Awaitable[None] | None]) -> float:
    start = time.perf_counter()
    result = step()
    if result is not None:
        await result
    await pilot.pause()
    return time.perf_counter() - start


async def typed(pilot: Pilot[Any], keys: list[str]) -> float:
    """The slowest key stroke: each is timed until the console is idle again."""
    slowest = 0.0
    for key in keys:
        slowest = max(slowest, await timed(pilot, partial(pilot.press, key)))
    return slowest


async def main() -> int:
    rng = random.Random(1)
    config, units, status = data(rng)
    app = HkConsole(endpoint="ipc:///nowhere", clock=lambda: T0, live=False)
    figures: list[tuple[str, str, str]] = []

    def record(name: str, seconds: float, target: str) -> None:
        figures.append((name, f"{seconds * 1000:.0f} ms", target))

    async with app.run_test(size=(160, 50)) as pilot:
        record("first load", await timed(pilot, lambda: load(app, config, units, status)), "1 s")

        async def updates(label: str) -> None:
            applies, repaints = [], []
            for _ in range(5):
                churn(rng, units)
                start = time.perf_counter()
                app.model.apply_list(units)
                app.apply_changes(app.model.take_changes())
                applies.append(time.perf_counter() - start)
                # pause() also waits for Textual's next refresh tick, idle time included.
                await pilot.pause()
                repaints.append(time.perf_counter() - start)
            record(f"{label}: apply", statistics.median(applies), "50 ms")
            record(f"{label}: until repainted", statistics.median(repaints), "-")

        async def filtered(
            table: LiveTable, view: str, text: str, note: str = "", cleared: bool = True
        ) -> None:
            """Type a filter, then clear it (esc): the slowest key, and the clearing."""
            shown = table.row_count
            await pilot.press("slash")
            typing = await typed(pilot, [*text, "enter"])
            left = table.row_count
            name = f"{view} filter '{text}'{note}"
            record(f"{name}, slowest key ({shown} -> {left} rows)", typing, "150 ms")
            clearing = await timed(pilot, lambda: pilot.press("escape"))
            if cleared:
                record(f"{view} filter cleared (esc)", clearing, "150 ms")

        await updates("units view, update of 1% of units")
        await filtered(app.units.table, "units", "1000")
        # Host prefixes: units holding any of node1, node10-19, node100-199, … match,
        # inside bracketed nodelists too (about half the hosts at `node1`).
        await filtered(app.units.table, "units", "node12", " (hosts)", cleared=False)

        record("switch to the nodes view", await timed(pilot, lambda: pilot.press("2")), "150 ms")
        await updates("nodes view, update of 1% of units")
        await filtered(app.nodes.table, "nodes", "node1")
        await pilot.press("f", "f", "f")  # idle, housekeeping, draining
        state = await timed(pilot, lambda: pilot.press("f"))
        drained = app.nodes.table.row_count
        record(f"nodes state filter: draining -> drained ({drained} rows)", state, "150 ms")
        await pilot.press("f", "f")  # offline, then all again
        back = await timed(pilot, lambda: pilot.press("1"))
        record("switch back to the units view", back, "150 ms")
        # Idle: nothing changes but the clock, RUNTIME ticks once a second.
        now = [T0]
        app.clock = app.units.clock = app.nodes.clock = lambda: now[0]
        ticking = IDLE_SECONDS
        cpu, wall = time.process_time(), time.perf_counter()
        while time.perf_counter() - wall < ticking:
            now[0] = T0 + time.perf_counter() - wall
            await asyncio.sleep(0.1)
        idle = (time.process_time() - cpu) / (time.perf_counter() - wall)
        rss = rss_mb()
        # A resync after a long disconnect, in which 90% of the units ended.
        units["units"] = units["units"][: UNITS // 10]
        app.model.apply_list(units)
        resync = await timed(pilot, lambda: app.apply_changes(app.model.take_changes()))
        left = app.units.table.row_count
        record(f"resync where 90% of the units ended ({left} left)", resync, "500 ms")

    print(f"hk console benchmark: {UNITS} units over {NODES} nodes, headless")
    width = max(len(name) for name, _, _ in figures)
    for name, value, target in figures:
        print(
            f"  {name:<{width}}  {value:>9}  (target <= {target})"
            if target != "-"
            else f"  {name:<{width}}  {value:>9}"
        )
    print(f"  {'RSS':<{width}}  {rss:>6.0f} MB  (target <= 400 MB)")
    name = f"idle CPU, units view ticking ({IDLE_SECONDS:g} s)"
    print(f"  {name:<{width}}  {idle * 100:>7.1f} %  (target <= 2% of a core)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
