"""hk for Slurm, against a real Slurm: munged, slurmctld and 4 slurmd on this machine.

One Slurm is shared by the module (nodes resumed and jobs gone between tests); each test
runs its own hkservice with a fresh state directory on the endpoint the Slurm hooks use.
The cleanup command records when it starts and ends on each node, so the tests can check
against Slurm's own view that no node runs a job before its cleanup ended.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningService, missing_part, toml_value
from tests.slurm_cluster import SlurmCluster, slurm_missing

BIN = Path(sys.executable).parent


class SlurmService(RunningService):
    """hkservice with `[scheduler] kind = "slurm"`, its hostlist taken from Slurm."""

    scheduler: dict[str, str]

    def write_config(self) -> None:
        lines = [
            "[housekeeping]",
            f"command = {toml_value(self.command)}",
            *(f"{k} = {toml_value(v)}" for k, v in self.options.items()),
            "[service]",
            f"endpoint = {toml_value(self.endpoint)}",
            f"state-dir = {toml_value(str(self.state_dir))}",
            "[scheduler]",
            'kind = "slurm"',
            *(f"{k} = {toml_value(v)}" for k, v in self.scheduler.items()),
        ]
        self.config_path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    why = slurm_missing()
    if why is not None:
        missing_part(why)
    hooks = [BIN / "hk-slurm-epilog", BIN / "hk-slurm-epilog-slurmctld"]
    absent = [str(h) for h in hooks if not h.exists()]
    if absent:
        pytest.fail(f"{', '.join(absent)} not installed: run pip install -e .")
    # Short: munge's and hk's sockets live under it.
    base = Path(tempfile.mkdtemp(prefix="hk-slurm-", dir="/tmp"))
    (base / "hk").mkdir(mode=0o700)
    # EpilogSlurmctld takes no arguments: a wrapper names the endpoint the tests' hk uses.
    wrapper = base / "epilog-slurmctld.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {hooks[1]} --endpoint ipc://{base}/hk/hk.sock\n")
    wrapper.chmod(0o755)
    cluster = SlurmCluster(base / "slurm", epilog=str(hooks[0]), epilog_slurmctld=str(wrapper))
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(base, ignore_errors=True)


ServiceMaker = Callable[..., SlurmService]


@pytest.fixture
def hk(slurm: SlurmCluster) -> Iterator[ServiceMaker]:
    base = slurm.base.parent / "hk"
    shutil.rmtree(base / "state", ignore_errors=True)
    marks = base / "marks"
    shutil.rmtree(marks, ignore_errors=True)
    marks.mkdir()
    made: list[SlurmService] = []

    def make(cleanup: str, start: bool = True, **scheduler: str) -> SlurmService:
        script = base / "cleanup.sh"
        # Each node's cleanup records its start and end: `NODE.JOB.start` / `.end`.
        script.write_text(
            "#!/bin/sh\n"
            f'm={marks}/"$HK_HOSTNAME.$HK_JOB_ID"\n'
            'date +%s.%N > "$m.start"\n'
            f"{cleanup}\n"
            "rc=$?\n"
            'date +%s.%N > "$m.end"\n'
            "exit $rc\n"
        )
        script.chmod(0o755)
        svc = SlurmService(base, "", [str(script)], {"release-after": "0s"})
        svc.scheduler = {"reconcile-every": "1s", "orphan-grace": "1s", **scheduler}
        made.append(svc)
        return svc.start() if start else svc

    yield make
    for svc in made:
        svc.stop()
        svc.kill_leftovers()
    reset(slurm)


def reset(slurm: SlurmCluster) -> None:
    """No job left, every node resumed and idle: the next test starts from scratch."""
    slurm.run("scancel", "--full", "-u", "root", check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        active = slurm.run("squeue", "-h", "-t", "PD,R,CG", "-o", "%i").stdout.split()
        if not active:
            break
        time.sleep(0.1)
    for name, state in node_states(slurm).items():
        if "drain" in state[0] or "down" in state[0]:
            slurm.run("scontrol", "update", f"nodename={name}", "state=resume", check=False)
    wait_until(lambda: all(s[0] == "idle" for s in node_states(slurm).values()), 30)


def node_states(slurm: SlurmCluster) -> dict[str, tuple[str, str]]:
    """name -> (sinfo's %T state, reason)."""
    out = slurm.run("sinfo", "-h", "-N", "-o", "%N|%T|%E").stdout
    found: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        name, state, reason = line.split("|", 2)
        found[name] = (state, "" if reason == "none" else reason)
    return found


def job_state(slurm: SlurmCluster, jobid: int) -> str:
    return slurm.run("squeue", "-h", "-t", "all", "-j", str(jobid), "-o", "%T").stdout.strip()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what or predicate}")


def stamp(path: Path) -> float:
    return float(path.read_text())


def mark(svc: SlurmService, node: str, jobid: int, which: str) -> Path:
    return svc.base / "marks" / f"{node}.{jobid}.{which}"


def hkconsole(svc: SlurmService, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hkconsole"), "--endpoint", svc.endpoint, *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def settled(slurm: SlurmCluster, want: dict[str, str]) -> Callable[[], bool]:
    """Every node in `want` is idle ("") or drained with a reason containing the text."""

    def check() -> bool:
        states = node_states(slurm)
        for name, reason in want.items():
            state, have = states[name]
            if reason == "" and (state != "idle" or have):
                return False
            if reason and (state != "drained" or reason not in have):
                return False
        return True

    return check


def test_job_completes_at_once_and_nodes_come_back_one_by_one(
    slurm: SlurmCluster, hk: ServiceMaker
) -> None:
    svc = hk('case "$HK_HOSTNAME" in node2) sleep 5;; *) sleep 1;; esac')
    runs = svc.base / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    big = slurm.sbatch("-N4", script=f"#!/bin/sh\ndate +%s.%N > {runs}/big.end\n")
    wait_until(lambda: job_state(slurm, big) != "PENDING", 10, "big job started")
    # Queued behind it: one that must land on node0, three that go wherever a node frees.
    record = f'#!/bin/sh\necho "$SLURMD_NODENAME $(date +%s.%N)" > {runs}/$SLURM_JOB_ID\n'
    first = slurm.sbatch("-N1", "-w", "node0", script=record)
    others = [slurm.sbatch("-N1", script=record) for _ in range(3)]
    completed_at = 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if job_state(slurm, big) == "COMPLETED":
            completed_at = time.time()
            break
        time.sleep(0.02)
    assert completed_at, f"job {big} not COMPLETED: {job_state(slurm, big)}"
    assert completed_at - stamp(runs / "big.end") < 2.0

    jobs = [first, *others]
    wait_until(lambda: all(job_state(slurm, j) == "COMPLETED" for j in jobs), 30, "small jobs")
    wait_until(settled(slurm, dict.fromkeys(("node0", "node1", "node2", "node3"), "")), 20)
    svc.wait_idle(10)

    node2_clean = stamp(mark(svc, "node2", big, "end"))
    node, started = (runs / str(first)).read_text().split()
    assert node == "node0"
    # Partial release through Slurm: node0 ran a new job while node2 was still cleaning.
    assert float(started) < node2_clean
    # No node ran a job while a cleanup was running on it, or before it had ended.
    for job in jobs:
        node, text = (runs / str(job)).read_text().split()
        began = float(text)
        for end in svc.base.joinpath("marks").glob(f"{node}.*.end"):
            cleanup_start = stamp(end.with_suffix(".start"))
            assert not cleanup_start <= began <= stamp(end), (job, node, end.name)
        assert began > stamp(mark(svc, node, big, "end"))


def test_failed_cleanup_stays_drained_with_hk_reason(slurm: SlurmCluster, hk: ServiceMaker) -> None:
    svc = hk('[ "$HK_HOSTNAME" = node3 ] && exit 1; sleep 0.2')
    job = slurm.sbatch("-N4")
    reason = f"hk: exit-code: exited 1 (job {job})"
    want = {"node0": "", "node1": "", "node2": "", "node3": reason}
    wait_until(settled(slurm, want), 20, "node3 drained, the others back")
    listed = slurm.run("sinfo", "-R", "-h", "-o", "%N|%E").stdout
    assert f"node3|{reason}" in listed.splitlines()
    nodes = hkconsole(svc, "nodes")
    assert "drained" in nodes.stdout and "node3" in nodes.stdout, nodes
    # hk's undrain resumes it in Slurm too.
    assert hkconsole(svc, "undrain", "node3").returncode == 0
    wait_until(settled(slurm, {"node3": ""}), 10, "node3 resumed by hk's undrain")


def test_admin_drain_during_cleanup_survives(slurm: SlurmCluster, hk: ServiceMaker) -> None:
    # node1's cleanup succeeds, node2's fails: neither may touch the admin's drain.
    svc = hk('case "$HK_HOSTNAME" in node1) sleep 2;; node2) sleep 2; exit 1;; *) sleep 0.2;; esac')
    job = slurm.sbatch("-N4")
    wait_until(lambda: mark(svc, "node1", job, "start").exists(), 10, "cleanup started")
    for node in ("node1", "node2"):
        slurm.run("scontrol", "update", f"nodename={node}", "state=drain", "reason=admin: dimm")
    assert not mark(svc, "node1", job, "end").exists()
    svc.wait_idle(10)
    want = {"node0": "", "node1": "admin: dimm", "node2": "admin: dimm", "node3": ""}
    wait_until(settled(slurm, want), 10)
    time.sleep(1.5)  # a reconcile passes: still the admin's
    assert settled(slurm, want)()
    states = node_states(slurm)
    assert states["node1"][1] == states["node2"][1] == "admin: dimm"


def test_hk_killed_mid_cleanup_resumes_nothing_early(slurm: SlurmCluster, hk: ServiceMaker) -> None:
    svc = hk(
        'case "$HK_HOSTNAME" in node0) sleep 0.3;; node3) sleep 3; exit 1;; *) sleep 3;; esac',
        start=False,
    )
    svc.stop_commands_on_exit = False
    svc.start()
    job = slurm.sbatch("-N4")
    wait_until(settled(slurm, {"node0": ""}), 10, "node0 back")
    svc.kill9()
    time.sleep(0.5)
    svc.start()
    resumed: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(resumed) < 3:
        for name, (state, _) in node_states(slurm).items():
            if state == "idle" and name not in resumed:
                resumed[name] = time.time()
        time.sleep(0.05)
    assert sorted(resumed) == ["node0", "node1", "node2"]
    for name in ("node1", "node2"):
        assert resumed[name] >= stamp(mark(svc, name, job, "end")), name
    reason = f"hk: exit-code: exited 1 (job {job})"
    wait_until(settled(slurm, {"node3": reason}), 10)
    svc.wait_idle(5)


def test_hk_down_when_job_ends_then_reconciled(slurm: SlurmCluster, hk: ServiceMaker) -> None:
    svc = hk("sleep 0.2", start=False)
    job = slurm.sbatch("-N4")
    wait_until(lambda: job_state(slurm, job) == "COMPLETED", 10, "job completed without hk")
    held = f"hk: held for cleanup of job {job} (uid 0)"
    wait_until(settled(slurm, dict.fromkeys(("node0", "node1", "node2", "node3"), held)), 10)
    time.sleep(1)
    assert settled(slurm, dict.fromkeys(("node0", "node1", "node2", "node3"), held))()
    svc.start()
    wait_until(settled(slurm, dict.fromkeys(("node0", "node1", "node2", "node3"), "")), 15)
    for node in ("node0", "node1", "node2", "node3"):
        assert mark(svc, node, job, "end").exists(), node
    assert "with no housekeeping in hk" in svc.log()


def test_kill_of_a_slurm_jobs_cleanup_drains_with_signal(
    slurm: SlurmCluster, hk: ServiceMaker
) -> None:
    svc = hk('[ "$HK_HOSTNAME" = node1 ] && exec sleep 60; sleep 0.2')
    job = slurm.sbatch("-N4")
    wait_until(settled(slurm, {"node0": "", "node2": "", "node3": ""}), 10, "others back")
    wait_until(lambda: mark(svc, "node1", job, "start").exists(), 5)
    killed = hkconsole(svc, "kill", "-j", str(job))
    assert killed.returncode == 0, killed
    reason = f"hk: signal: killed TERM (job {job})"
    wait_until(settled(slurm, {"node1": reason}), 10, "node1 drained with the signal")
