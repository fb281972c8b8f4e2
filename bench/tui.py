"""Console benchmark (not a test): 10,000 units over 16,384 nodes, headless.

Each change is timed twice, against issue 13's targets: `apply` is the views' own work
(their tables brought up to date), in CPU time; `until repainted`, in wall time, runs
from the moment the key reaches the console (or the update is applied) to the end of
the last repaint it caused. Pilot's own waits are left out: each press sleeps until the
process looks idle, ~90 ms even for a key that does nothing. The first load and the
resync are timed until the console is idle again.

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
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from hkconsole.tui.app import HkConsole
from hkconsole.tui.fixed import load
from hkconsole.tui.sample import T0
from hkconsole.tui.table import LiveTable
from hkconsole.tui.views.base import TableView
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


class Clocks:
    """When a key reached the console, how long its views took to apply it, and when
    the screen was last painted: a key's cost without Pilot's own waits (each press
    waits for the process to look idle, ~90 ms of sleeping even for a key that does
    nothing)."""

    def __init__(self, app: HkConsole) -> None:
        self.sent = self.painted = 0.0
        self.applying = 0.0
        driver = app._driver
        assert driver is not None
        send = driver.send_message

        def sent(message: Any) -> None:
            self.sent = time.perf_counter()
            send(message)

        driver.send_message = sent  # type: ignore[method-assign]
        paint = app.screen._compositor_refresh

        def painted() -> None:
            paint()
            self.painted = time.perf_counter()

        app.screen._compositor_refresh = painted  # type: ignore[method-assign]
        for name in ("apply", "catch_up"):
            self._time(name)

    def _time(self, name: str) -> None:
        method = getattr(TableView, name)

        def timed(view: TableView, *args: Any, **kwargs: Any) -> None:
            # CPU time: on a machine others share, wall time counts their turns too.
            start = time.process_time()
            method(view, *args, **kwargs)
            self.applying += time.process_time() - start

        setattr(TableView, name, timed)

    async def press(self, pilot: Pilot[Any], key: str) -> tuple[float, float]:
        """(applied, repainted) of one key: the views' work, and the time from the key
        reaching the console to the last repaint it caused."""
        self.applying = 0.0
        await pilot.press(key)
        await pilot.pause()
        return self.applying, max(0.0, self.painted - self.sent)


async def timed(pilot: Pilot[Any], step: Callable[[], Awaitable[None] | None]) -> float:
    start = time.perf_counter()
    result = step()
    if result is not None:
        await result
    await pilot.pause()
    return time.perf_counter() - start


async def main() -> int:
    rng = random.Random(1)
    config, units, status = data(rng)
    app = HkConsole(endpoint="ipc:///nowhere", clock=lambda: T0, live=False)
    figures: list[tuple[str, str, str]] = []

    def record(name: str, seconds: float, target: str) -> None:
        figures.append((name, f"{seconds * 1000:.0f} ms", target))

    async with app.run_test(size=(160, 50)) as pilot:
        record("first load", await timed(pilot, lambda: load(app, config, units, status)), "1 s")
        clocks = Clocks(app)

        async def updates(label: str) -> None:
            applies, repaints = [], []
            for _ in range(5):
                churn(rng, units)
                start = time.perf_counter()
                app.model.apply_list(units)
                app.apply_changes(app.model.take_changes())
                applies.append(time.perf_counter() - start)
                await pilot.pause()
                repaints.append(max(0.0, clocks.painted - start))
            record(f"{label}: apply", statistics.median(applies), "50 ms")
            record(f"{label}: until repainted", statistics.median(repaints), "150 ms")

        def keyed(name: str, applied: float, repainted: float) -> None:
            record(f"{name}: apply", applied, "50 ms")
            record(f"{name}: until repainted", repainted, "150 ms")

        async def slowest(keys: list[str]) -> tuple[float, float]:
            times = [await clocks.press(pilot, key) for key in keys]
            return max(a for a, _ in times), max(r for _, r in times)

        async def filtered(
            table: LiveTable, view: str, text: str, note: str = "", cleared: bool = True
        ) -> None:
            """Type a filter, then clear it (esc): the slowest key, and the clearing."""
            shown = table.row_count
            await pilot.press("slash")
            typing = await slowest([*text, "enter"])
            left = table.row_count
            keyed(f"{view} filter '{text}'{note}, slowest key ({shown} -> {left} rows)", *typing)
            clearing = await clocks.press(pilot, "escape")
            if cleared:
                keyed(f"{view} filter cleared (esc)", *clearing)

        await updates("units view, update of 1% of units")
        await filtered(app.units.table, "units", "1000")
        # Host prefixes: units holding any of node1, node10-19, node100-199, … match,
        # inside bracketed nodelists too (about half the hosts at `node1`).
        await filtered(app.units.table, "units", "node12", " (hosts)", cleared=False)

        keyed("switch to the nodes view", *await clocks.press(pilot, "2"))
        await updates("nodes view, update of 1% of units")
        await filtered(app.nodes.table, "nodes", "node1")
        await pilot.press("f", "f", "f")  # idle, housekeeping, draining
        state = await clocks.press(pilot, "f")
        drained = app.nodes.table.row_count
        keyed(f"nodes state filter: draining -> drained ({drained} rows)", *state)
        await pilot.press("f", "f")  # offline, then all again
        keyed("switch back to the units view", *await clocks.press(pilot, "1"))
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
