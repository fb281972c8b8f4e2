"""Old output is deleted off the service's event loop (bench/load.py: inline deletes of
finished units' output held up every request for seconds)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from hkservice.runner import DOOMED_PREFIX, LocalRunner

_deleting_threads: list[int] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "shutil.rmtree":
        _deleting_threads.append(threading.get_ident())


sys.addaudithook(_audit)


def unit_with_output(run_dir: Path, jobid: int, ranks: int) -> Path:
    unit = run_dir / str(jobid)
    unit.mkdir()
    for rank in range(ranks):
        (unit / f"{rank}.out").write_text("cleaning\n")
    return unit


def test_forgotten_output_is_deleted_by_another_thread_and_its_name_freed_at_once(
    tmp_path: Path,
) -> None:
    runner = LocalRunner(["true"], tmp_path, lambda rank: f"n{rank}", keep_finished=1)
    old = unit_with_output(tmp_path, 1, 500)
    unit_with_output(tmp_path, 2, 1)
    _deleting_threads.clear()
    runner.forget(1)
    runner.forget(2)
    # The name is free as soon as forget returns: a jobid started again gets a new directory.
    assert not old.exists()
    deadline = time.monotonic() + 10
    while any(p.name.startswith(DOOMED_PREFIX) for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline, "the set-aside output was never deleted"
        time.sleep(0.01)
    assert _deleting_threads, "nothing was deleted"
    assert threading.main_thread().ident not in _deleting_threads
    assert (tmp_path / "2").is_dir()


def test_output_set_aside_by_a_stopped_service_is_deleted_at_start(tmp_path: Path) -> None:
    leftover = tmp_path / f"{DOOMED_PREFIX}7-123"
    leftover.mkdir()
    (leftover / "0.out").write_text("x\n")
    runner = LocalRunner(["true"], tmp_path, lambda rank: f"n{rank}")
    runner._prune_output(set())
    deadline = time.monotonic() + 10
    while leftover.exists():
        assert time.monotonic() < deadline, "the leftover was never deleted"
        time.sleep(0.01)
