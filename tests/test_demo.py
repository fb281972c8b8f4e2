"""`hkconsole demo`: a real service and scheduler, run headless, leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hkconsole.demo import DemoCluster
from hkservice.idset import parse_idset


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    found.append(int(entry.name))
                environ = Path(f"/proc/{entry.name}/environ").read_bytes()
                if f"HK_DEMO_MARK={marker}".encode() in environ:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_demo_runs_headless_and_quits_leaving_nothing(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    env = {**os.environ, "HK_DEMO_MARK": str(state)}
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "hkconsole", "demo", "--nodes", "16", "--seed", "42"),
            *("--state-dir", str(state), "--run-for", "7"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "seed 42" in proc.stderr
    time.sleep(0.5)
    assert processes_mentioning(str(state)) == []
    log = (state / "service.log").read_text()
    assert "started on sim" in log  # the scheduler handed jobs to housekeeping


def test_demo_cluster_shows_partial_release_and_failures() -> None:
    with DemoCluster(nodes=32, seed=3) as demo:
        base = demo.base
        assert demo.scheduler is not None
        seen_release = False
        deadline = time.monotonic() + 25
        from hkconsole.client import Client

        with Client(demo.endpoint) as client:
            while time.monotonic() < deadline and not seen_release:
                for unit in client.call("housekeeping.list")["units"]:
                    allocated = parse_idset(unit["allocated"])
                    if allocated and allocated != parse_idset(unit["ranks"]):
                        seen_release = True  # some nodes back, a straggler still held
                time.sleep(0.2)
        assert seen_release
        assert demo.scheduler.jobs_started > 0
    assert not base.exists()
    assert processes_mentioning(str(base)) == []


def test_demo_cleans_up_when_its_terminal_goes_away(tmp_path: Path) -> None:
    import signal

    state = tmp_path / "demo"
    env = {**os.environ, "HK_DEMO_MARK": str(state)}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hkconsole", "demo", "--nodes", "8", "--seed", "1"),
            *("--state-dir", str(state), "--run-for", "60"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 20
    while not (state / "hk.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(30) == 128 + signal.SIGHUP
    time.sleep(0.5)
    assert processes_mentioning(str(state)) == []
