"""`hkconsole demo`: a real service and scheduler, run headless, leave nothing behind.

Every test finds the demo's processes by HK_DEMO_MARK, which the demo sets in its
service's environment (so the agent, every cleanup and every `sleep` a cleanup starts
carry it), checks that some exist while the demo runs, so it cannot pass for want of
any, and that none is left after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hkconsole.cli import main
from hkconsole.client import Client, ServiceError
from hkconsole.demo import MARK_VARIABLE, DemoCluster, Job, draw_job, jobid_base
from hkservice.idset import parse_idset


def marked(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process marked with `marker` in its environment or
    naming it in its command line; not this process."""
    needle = f"\0{MARK_VARIABLE}={marker}\0".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            environ = b"\0" + Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline or needle in environ:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def cleanups(marker: str) -> list[str]:
    """Command lines of the marked cleanups and the `sleep`s they run."""
    return [cmd for _, cmd in marked(marker) if "cleanup.sh" in cmd or cmd.startswith("sleep ")]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g} s")
        time.sleep(0.1)


# Its first job lasts 1.2 s and its cleanup 4.4 s: a demo of 4 s ends while it runs.
QUICK_SEED = 104


def demo_command(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hkconsole", "demo", "--state-dir", str(state), *args]


def run_headless(state: Path, *args: str) -> str:
    """Run the demo headless to its end, checking cleanups ran meanwhile; its stderr."""
    proc = subprocess.Popen(
        demo_command(state, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, MARK_VARIABLE: str(state)},
    )
    try:
        wait_for(lambda: cleanups(str(state)), 15, "cleanup running")
        # It ends while cleanups run: units in progress, what quitting must clean up.
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    return stderr


def test_demo_runs_headless_and_quits_leaving_nothing(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    stderr = run_headless(state, "--nodes", "16", "--seed", str(QUICK_SEED), "--run-for", "4")
    start, end = stderr.strip().splitlines()[-2:]
    seed = f"seed {QUICK_SEED} (reproduce with --seed {QUICK_SEED})"
    assert seed in start
    assert "hk demo: ended" in end and seed in end
    time.sleep(0.5)
    assert marked(str(state)) == []
    log = (state / "service.log").read_text()
    assert "started on sim" in log  # the scheduler handed jobs to housekeeping


def test_demo_cluster_shows_partial_release_and_failures() -> None:
    # Seed 282's first job lasts 1.1 s; of its four cleanups, one fails at 1.8 s and one
    # runs 24 s, past release-after (5 s), when the others' nodes are given back.
    with DemoCluster(nodes=32, seed=282) as demo:
        base = demo.base
        scheduler = demo.scheduler
        assert scheduler is not None
        seen_release = seen_failure = False
        deadline = time.monotonic() + 40
        with Client(demo.endpoint) as client:
            while time.monotonic() < deadline and not (seen_release and seen_failure):
                for unit in client.call("housekeeping.list")["units"]:
                    allocated = parse_idset(unit["allocated"])
                    if allocated and allocated != parse_idset(unit["ranks"]):
                        seen_release = True  # some nodes back, a straggler still held
                seen_failure = seen_failure or bool(client.call("resource.status")["drained"])
                time.sleep(0.2)
            assert cleanups(str(base)), "no cleanup running while the demo runs"
            # Fate files are pruned: each belongs to a unit still in housekeeping.
            files = {int(p.name.split(".")[0]) for p in (base / "fates").iterdir()}
            units = {u["jobid"] for u in client.call("housekeeping.list")["units"]}
            assert files <= units, f"fate files of finished jobs: {sorted(files - units)}"
        assert seen_release
        assert seen_failure
        assert scheduler.jobs_started > 0
    assert not base.exists()
    assert marked(str(base)) == []


def test_the_site_admin_undrains_failed_nodes_but_not_an_operators_drains() -> None:
    with DemoCluster(nodes=8, seed=1) as demo:
        assert demo.scheduler is not None
        demo.scheduler.undrain_after = 1.0  # 150 s in a demo: too long for a test
        with Client(demo.endpoint) as client:
            client.call("resource.drain", {"ranks": "6", "reason": "bad fan, ticket 42"})
            client.call(
                "resource.drain",
                {"ranks": "7", "reason": "housekeeping@f1 exit-code: exited 1"},
            )

            def drained() -> set[int]:
                status = client.call("resource.status")
                return set().union(*(parse_idset(e["ranks"]) for e in status["drained"]))

            wait_for(lambda: 7 not in drained(), 10, "undrain of rank 7")
            time.sleep(1.5)
            assert 6 in drained()
        assert demo.scheduler.undrained >= 1
        assert "site admin: undrained ranks" in (demo.base / "demo.log").read_text()


def test_failures_are_frequent_in_the_first_minute_and_rare_after() -> None:
    def bad_share(early: bool) -> float:
        fates = [f for n in range(2000) for f, _ in draw_job(9, n, 64, early).cleanups]
        return sum(f in ("fail", "hang") for f in fates) / len(fates)

    assert 0.06 < bad_share(True) < 0.12
    assert bad_share(False) < 0.015


def first_seed_with(fate: str, nodes: int) -> int:
    return next(
        s for s in range(1000) if any(f == fate for f, _ in draw_job(s, 0, nodes, True).cleanups)
    )


def test_backstop_kills_what_a_dead_service_left() -> None:
    # The service dies without stopping its cleanups: the demo's backstop must still
    # find all of them, the hung `exec sleep 100000` and plain `sleep`s included.
    seed = first_seed_with("hang", 16)
    demo = DemoCluster(nodes=16, seed=seed).start()
    base = str(demo.base)
    try:
        wait_for(
            lambda: (
                any(c == "sleep 100000 " for c in cleanups(base))
                and any(c.startswith("sleep ") and c != "sleep 100000 " for c in cleanups(base))
            ),
            20,
            "hung cleanup and sleeping cleanup",
        )
        assert demo.proc is not None
        demo.proc.send_signal(signal.SIGKILL)
        demo.proc.wait()
        assert cleanups(base)  # the agent outlives its service
    finally:
        demo.close()
    assert marked(base) == []


def run_briefly(seed: int, check_fates: bool) -> list[Job]:
    """The first three jobs a demo started, checking, if asked, that their cleanups did
    what their draw said."""
    with DemoCluster(nodes=16, seed=seed) as demo:
        scheduler = demo.scheduler
        assert scheduler is not None
        wait_for(lambda: len(scheduler.started) >= 3, 15, "three jobs started")
        jobs = list(scheduler.started)[:3]
        if not check_fates:
            return jobs
        with Client(demo.endpoint) as client:
            for job in jobs:
                for rank, (fate, _) in zip(scheduler.placed[job.jobid], job.cleanups, strict=True):
                    said = f"cleaning sim{rank} for job {job.jobid}: {fate}"
                    wait_for(
                        lambda s=said, j=job.jobid, r=rank: s in output(client, j, r), 15, said
                    )
    return jobs


def output(client: Client, jobid: int, rank: int) -> str:
    try:
        lines = client.call("housekeeping.output", {"jobid": jobid, "rank": rank})["lines"]
    except ServiceError:
        return ""  # not started yet
    return "\n".join(str(line) for line in lines)


def test_a_seed_replays_the_same_jobs_with_the_same_fates() -> None:
    # Seed 1718's first three jobs last 1.0-1.4 s: their cleanups start at once.
    first = run_briefly(1718, check_fates=True)
    again = run_briefly(1718, check_fates=False)
    other = run_briefly(1719, check_fates=False)
    assert first == again
    assert first[0].jobid == jobid_base(1718)
    assert [j.cleanups for j in other] != [j.cleanups for j in first]
    assert other[0].jobid != first[0].jobid


def test_the_seed_shows_in_the_console_header() -> None:
    import asyncio

    from textual.widgets import Static

    from hkconsole.tui.app import HkConsole

    async def header_text(demo: DemoCluster) -> str:
        app = HkConsole(endpoint=demo.endpoint, label=demo.label)
        async with app.run_test() as pilot:
            deadline = time.monotonic() + 10
            while not app.connected and time.monotonic() < deadline:
                await pilot.pause(0.1)
            return str(app.query_one("#header", Static).render())

    with DemoCluster(nodes=4, seed=987654) as demo:
        wait_for(lambda: cleanups(str(demo.base)), 15, "cleanup running")
        header = asyncio.run(header_text(demo))
    assert "CONNECTED" in header and "demo seed 987654" in header
    assert marked(str(demo.base)) == []


def test_a_kept_state_dir_starts_clean_when_used_again(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    for run in range(2):
        # Stopped while cleanups run: units in progress, the case a resume gets wrong.
        stderr = run_headless(state, "--nodes", "16", "--seed", str(QUICK_SEED), "--run-for", "4")
        assert ("previous demo's state there was cleared" in stderr) == (run == 1)
        time.sleep(0.3)
        assert marked(str(state)) == []
    log = (state / "service.log").read_text()
    assert "recovered" not in log, "the second demo recovered the first one's units"
    assert "lost" not in log


def test_a_state_dir_that_is_not_a_demos_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.db").write_text("keep me")
    assert main(["demo", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"--state-dir '{tmp_path}' is not empty and holds no earlier demo" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.db"]


def test_a_state_dir_too_long_for_a_socket_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_dir = tmp_path / ("d" * (110 - len(str(tmp_path))))
    started = time.monotonic()
    assert main(["demo", "--state-dir", str(long_dir)]) == 1
    assert time.monotonic() - started < 2
    err = capsys.readouterr().err
    assert err.startswith(f"hkconsole: ERROR: --state-dir '{long_dir}' is too long")
    assert "107-byte limit" in err and "Traceback" not in err
    assert not long_dir.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "5000"], "argument --nodes: '5000' is not a whole number from 1 to 4096"),
        (["--nodes", "0"], "argument --nodes: '0' is not a whole number from 1 to 4096"),
        (["--nodes", "many"], "argument --nodes: 'many' is not a whole number from 1 to 4096"),
        (["--seed", "-3"], "argument --seed: '-3' is not a whole number from 0 to"),
        (["--seed", "x1"], "argument --seed: 'x1' is not a whole number from 0 to"),
    ],
)
def test_bad_demo_options_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *args]) == 2
    assert message in capsys.readouterr().err


def test_demo_help_shows_every_option_with_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  --")}
    assert "(default: 64)" in lines["--nodes"]
    assert "(default: a random seed" in lines["--seed"]
    assert "(default: a temporary directory" in lines["--state-dir"]
    assert "(default: off)" in lines["--read-only"]
    assert "--run-for" not in out


def test_demo_without_a_terminal_is_a_usage_error(tmp_path: Path) -> None:
    """Textual with no terminal never exits and spins a CPU: the demo refuses at once,
    after its own option checks, and starts nothing."""
    state = tmp_path / "demo"
    proc = subprocess.run(
        demo_command(state),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "hkconsole: error: the console needs a terminal; use `hkconsole list` for scripts\n"
    )
    assert marked(str(state)) == []
    assert not (state / "state").exists()
