"""Command-line benchmark (not a test): how fast `hkconsole list` answers.

Starts a real hkservice on node[0-3999] with 1,000 units in progress (`sleep 600`), then
prints the wall time of `hkconsole list` (median of several runs, a fresh process each)
beside `python3 -c pass` in the same run. Target: at most 5x (`flux housekeeping list`
measured 10x on the same kind of machine with 4 units).

usage: .venv/bin/python bench/cli.py
"""

from __future__ import annotations

import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hkconsole.client import Client, wait_for_service

UNITS = 1000
RUNS = 15


def timed(argv: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="hkc-", dir="/tmp"))
    endpoint = f"ipc://{base}/hk.sock"
    config = base / "hk.toml"
    config.write_text(
        '[cluster]\nhostlist = "node[0-3999]"\n[housekeeping]\ncommand = ["sleep", "600"]\n'
        f'[service]\nendpoint = "{endpoint}"\nstate-dir = "{base}/state"\n'
    )
    service = subprocess.Popen(
        [sys.executable, "-m", "hkservice", "--config", str(config), "--stop-commands-on-exit"],
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_service(endpoint, 30, alive=lambda: service.poll() is None):
            raise RuntimeError("hkservice did not start")
        with Client(endpoint, timeout=30) as client:
            for u in range(UNITS):
                ranks = f"{u * 4}-{u * 4 + 3}"
                client.call("housekeeping.start", {"jobid": 10_000 + u, "ranks": ranks})
        hkconsole = [sys.executable, "-m", "hkconsole", "--endpoint", endpoint, "list"]
        bare = timed([sys.executable, "-c", "pass"])
        listing = timed(hkconsole)
        print(f"hkconsole list with {UNITS} units in progress (median of {RUNS} runs)")
        print(f"  python3 -c pass: {bare * 1000:.0f} ms")
        print(f"  hkconsole list:  {listing * 1000:.0f} ms")
        print(f"  ratio {listing / bare:.1f}x (target <= 5x; flux housekeeping list: 10x)")
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
