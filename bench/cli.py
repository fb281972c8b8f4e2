"""Command-line benchmark (not a test): how fast `hkconsole list` answers.

Starts a real hkservice on node[0-3999] with 1,000 units in progress (`sleep 600` on
4 nodes each), waits until every command runs, then prints the wall time of
`hkconsole list` (median of several runs, a fresh process each) beside `python3 -c pass`
in the same run. Target: at most 5x (`flux housekeeping list` measured 10x on the same
kind of machine with 4 units). Everything is killed and removed at the end.

usage: .venv/bin/python bench/cli.py
"""

from __future__ import annotations

import os
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
NODES = 4000
RUNS = 15


# As installed: with byte-code caches (an environment may disable them, and then every
# run would compile hk's modules from source).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_commands(cmdline: bytes) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    count += fh.read() == cmdline
            except OSError:
                pass
    return count


def cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, total


def wait_quiet(idle: float = 0.9, timeout: float = 30.0) -> None:
    """Until the machine is at least `idle` idle over half a second (the service settled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle0, total0 = cpu_times()
        time.sleep(0.5)
        idle1, total1 = cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle:
            return


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="hkc-", dir="/tmp"))
    endpoint = f"ipc://{base}/hk.sock"
    # A duration no other process uses, so this run's commands can be counted.
    duration = f"600.{os.getpid()}"
    config = base / "hk.toml"
    config.write_text(
        f'[cluster]\nhostlist = "node[0-{NODES - 1}]"\n'
        f'[housekeeping]\ncommand = ["sleep", "{duration}"]\n'
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
        # Measure a quiet service, not one still spawning 4,000 processes.
        cmdline = f"sleep\0{duration}\0".encode()
        deadline = time.monotonic() + 60
        while count_commands(cmdline) < NODES and time.monotonic() < deadline:
            time.sleep(0.2)
        wait_quiet()
        hkconsole = [sys.executable, "-m", "hkconsole", "--endpoint", endpoint, "list"]
        # The first run also writes the byte-code caches.
        rows = subprocess.run(hkconsole, check=True, capture_output=True, env=ENV).stdout.count(
            b"\n"
        )
        assert rows == UNITS + 1, f"expected {UNITS} units and a header, got {rows} lines"
        bare = timed([sys.executable, "-c", "pass"])
        listing = timed(hkconsole)
        print(f"hkconsole list with {UNITS} units in progress (median of {RUNS} runs)")
        print(f"  python3 -c pass: {bare * 1000:.0f} ms")
        print(f"  hkconsole list:  {listing * 1000:.0f} ms")
        print(f"  ratio {listing / bare:.1f}x (target <= 5x; flux housekeeping list: 10x)")
    finally:
        try:
            with Client(endpoint, timeout=10) as client:
                client.call("housekeeping.kill", {"signum": signal.SIGKILL, "all": True})
        except Exception as exc:  # the service may be the thing that failed
            print(f"kill --all: {exc}", file=sys.stderr)
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
