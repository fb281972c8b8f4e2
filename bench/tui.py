"""Console benchmark (not a test): 10,000 units over 16,384 nodes, headless.

Prints the first load time (target <= 2 s), the time to apply an update where 1% of the
units change (target <= 50 ms), and the process RSS (target <= 400 MB).

usage: .venv/bin/python bench/tui.py
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from hkconsole.tui.app import HkConsole
from hkconsole.tui.sample import T0
from hkservice.idset import format_idset

NODES = 16384
UNITS = 10_000


def data(rng: random.Random) -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
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
    status = {"hostlist": config["hostlist"], "size": NODES, "housekeeping": "", "drained": []}
    return config, {"units": units}, status


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main() -> int:
    rng = random.Random(1)
    config, units, status = data(rng)
    app = HkConsole(endpoint="ipc:///nowhere", clock=lambda: T0, live=False)
    async with app.run_test(size=(160, 50)) as pilot:
        start = time.perf_counter()
        app.load(config, units, status)
        await pilot.pause()
        first_load = time.perf_counter() - start
        updates = []
        diffs = []
        for _ in range(5):
            changed = set()
            for unit in rng.sample(units["units"], UNITS // 100):
                ranks = unit["pending"].split("-")[0].split(",")[0]
                unit["pending"] = "" if unit["pending"] == ranks else ranks
                changed.add(unit["jobid"])
            start = time.perf_counter()
            changed_ids = app.model.apply_list(units)
            app.apply_changes(changed_ids)
            diffs.append(time.perf_counter() - start)
            # pause() also waits for Textual's next screen refresh tick, idle time included.
            await pilot.pause()
            updates.append(time.perf_counter() - start)
        rss = rss_mb()
    print(f"hk console benchmark: {UNITS} units over {NODES} nodes, headless")
    print(f"  first load: {first_load:.2f} s (target <= 2 s)")
    diff_ms = statistics.median(diffs) * 1000
    update_ms = statistics.median(updates) * 1000
    print(f"  update of 1% of rows: {diff_ms:.0f} ms to apply (target <= 50 ms),")
    print(f"    {update_ms:.0f} ms until repainted, waiting for Textual's refresh tick included")
    print(f"  RSS: {rss:.0f} MB (target <= 400 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
