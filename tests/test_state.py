"""What the service keeps on disk, and what it does when that is hostile or broken.

Output tails, the state directory's ownership and modes, the agent's socket and journal,
a missing or corrupt database and `--recover`, and kill -9 at random moments.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from hkservice.tail import LINE_BYTES, TRUNCATED, tail_lines
from tests.conftest import ServiceFactory

Script = Callable[[str], str]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# -- output tails ------------------------------------------------------------


def tail_of(path: Path, count: int, line_bytes: int = LINE_BYTES) -> list[str]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return tail_lines(fd, count, line_bytes)
    finally:
        os.close(fd)


def test_tail_lines_reads_whole_lines_and_cuts_only_overlong_ones(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"one\ntwo\r\nthree\n")
    assert tail_of(path, 2) == ["two", "three"]
    assert tail_of(path, 10) == ["one", "two", "three"]
    path.write_bytes(b"one\ntwo")  # no final newline
    assert tail_of(path, 1) == ["two"]
    path.write_bytes(b"")
    assert tail_of(path, 5) == []
    # A line over the limit keeps its end, marked; the lines after it are whole.
    path.write_bytes(b"a" * 100 + b"b" * 10 + b"\nshort\n")
    assert tail_of(path, 2, line_bytes=10) == [TRUNCATED + "b" * 10, "short"]
    # Only the end of a huge last line is read: the start of the file is never reached.
    path.write_bytes(b"start\n" + b"x" * 100_000)
    assert tail_of(path, 3, line_bytes=10) == [TRUNCATED + "x" * 10]


def read_bytes_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def test_a_64_mb_line_without_newline_gets_a_quick_truncated_tail(
    hk_service: ServiceFactory, script: Script
) -> None:
    size = 64 << 20
    cmd = script(f"echo first; head -c {size} /dev/zero | tr '\\0' x; sleep 600")
    svc = hk_service(hostlist="node[0-1]", command=[cmd])
    svc.call("housekeeping.start", {"jobid": 64, "ranks": "0"})
    out = svc.state_dir / "run" / "64" / "0.out"
    wait_until(lambda: out.exists() and out.stat().st_size == size + len("first\n"))
    assert svc.proc is not None
    before = read_bytes_of(svc.proc.pid)
    # The client's 5 s timeout would fail this on the old code, which read it all.
    lines = svc.call("housekeeping.output", {"jobid": 64, "tail": 20})["lines"]
    read = read_bytes_of(svc.proc.pid) - before
    assert lines == [[0, "out", TRUNCATED + "x" * LINE_BYTES]]
    assert read < 1 << 20, f"read {read} bytes for a 20-line tail"
    # It blocked nothing: the service still answers as usual.
    assert svc.call("housekeeping.list")["units"][0]["jobid"] == 64
    svc.call("housekeeping.kill", {"jobid": 64, "signum": 9})
    svc.wait_idle()
