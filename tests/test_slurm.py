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

from hkservice.slurm.nodes import hold_reason
from tests.conftest import RunningService, ServiceFactory, missing_part, toml_value
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
    # A test can make the node Epilog late (a busy node) by creating `slow-epilog`.
    epilog = base / "epilog.sh"
    epilog.write_text(f"#!/bin/sh\n[ -e {base}/slow-epilog ] && sleep 1\nexec {hooks[0]}\n")
    epilog.chmod(0o755)
    cluster = SlurmCluster(base / "slurm", epilog=str(epilog), epilog_slurmctld=str(wrapper))
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


def hk_dir(slurm: SlurmCluster) -> Path:
    """The tests' hk: its socket, config, state, cleanup script and marks."""
    return slurm.base.parent / "hk"


@pytest.fixture
def hk(slurm: SlurmCluster) -> Iterator[ServiceMaker]:
    base = hk_dir(slurm)
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
        svc.scheduler = {"reconcile-every": "0.5s", "orphan-grace": "1s", **scheduler}
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
        # A busy machine makes slurmctld flag a slurmd as not responding for a moment
        # (`idle*`): the state is still the state.
        found[name] = (state.rstrip("*~#!%$@^-"), "" if reason == "none" else reason)
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
    # The big job's cleanup takes 5 s on node2 and 1 s elsewhere; the small jobs' 0.2 s.
    slow = hk_dir(slurm) / "slow-job"
    svc = hk(
        f'if [ "$HK_JOB_ID" = "$(cat {slow})" ]; then\n'
        '  case "$HK_HOSTNAME" in node2) sleep 5;; *) sleep 1;; esac\n'
        "else sleep 0.2; fi"
    )
    runs = svc.base / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    big = slurm.sbatch("-N4", "-H", script=f"#!/bin/sh\ndate +%s.%N > {runs}/big.end\n")
    slow.write_text(str(big))
    slurm.run("scontrol", "release", str(big))
    wait_until(lambda: job_state(slurm, big) != "PENDING", 10, "big job started")
    # Queued behind it: one that must land on node0, two that go wherever a node frees.
    record = f'#!/bin/sh\necho "$SLURMD_NODENAME $(date +%s.%N)" > {runs}/$SLURM_JOB_ID\n'
    first = slurm.sbatch("-N1", "-w", "node0", script=record)
    others = [slurm.sbatch("-N1", script=record) for _ in range(2)]
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
    svc = hk('case "$HK_HOSTNAME" in node1) sleep 3;; node2) sleep 3; exit 1;; *) sleep 0.2;; esac')
    job = slurm.sbatch("-N4")
    wait_until(lambda: mark(svc, "node1", job, "start").exists(), 10, "cleanup started")
    held = f"hk: held for cleanup of job {job}"
    wait_until(settled(slurm, {"node1": held, "node2": held}), 10, "held by the Epilog")
    for node in ("node1", "node2"):
        slurm.run("scontrol", "update", f"nodename={node}", "state=drain", "reason=admin: dimm")
    assert not mark(svc, "node1", job, "end").exists()
    svc.wait_idle(10)
    want = {"node0": "", "node1": "admin: dimm", "node2": "admin: dimm", "node3": ""}
    wait_until(settled(slurm, want), 10)
    time.sleep(0.8)  # a reconcile passes: still the admin's
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
    # The job must have ended and its cleanups begun: before it even starts, every node is
    # idle and 'node0 back' would hold at once.
    wait_until(lambda: mark(svc, "node0", job, "end").exists(), 10, "node0's cleanup ended")
    wait_until(lambda: mark(svc, "node3", job, "start").exists(), 10, "node3's cleanup began")
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
    time.sleep(0.5)
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


def test_hk_drain_and_undrain_act_in_slurm_and_unknown_hk_drains_are_adopted(
    slurm: SlurmCluster, hk: ServiceMaker
) -> None:
    svc = hk("true")
    assert hkconsole(svc, "drain", "node0", "fan", "check").returncode == 0
    wait_until(settled(slurm, {"node0": "hk: fan check"}), 10, "hk's drain in Slurm")
    # An admin's drain is never rewritten by hk's, nor resumed by hk's undrain.
    slurm.run("scontrol", "update", "nodename=node1", "state=drain", "reason=admin: psu")
    assert hkconsole(svc, "drain", "node1", "also").returncode == 0
    assert hkconsole(svc, "undrain", "node1").returncode == 0
    assert hkconsole(svc, "undrain", "node0").returncode == 0
    wait_until(settled(slurm, {"node0": ""}), 10, "hk's undrain in Slurm")
    assert node_states(slurm)["node1"] == ("drained", "admin: psu")
    # A drain of hk's that hk has no record of (its state was lost): reported, kept.
    lost = "hk: exit-code: exited 1 (job 99)"
    slurm.run("scontrol", "update", "nodename=node2", "state=drain", f"reason={lost}")
    wait_until(lambda: "no record in hk" in svc.log(), 10, "the reconcile's report")
    nodes = hkconsole(svc, "nodes", "-o", "long")
    assert "node2" in nodes.stdout and "exit-code: exited 1 (job 99)" in nodes.stdout, nodes
    time.sleep(0.8)  # a reconcile passes
    assert node_states(slurm)["node2"] == ("drained", lost)
    assert hkconsole(svc, "undrain", "node2").returncode == 0
    wait_until(settled(slurm, {"node2": ""}), 10, "resumed by hk's undrain only")


# -- without Slurm: config, hooks and a Slurm that does not answer ----------------------


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ('kind = "pbs"', "scheduler.kind: expected one of slurm"),
        ('kind = "slurm"\nreconcile-every = "0s"', "scheduler.reconcile-every: expected"),
        ('kind = "slurm"\nscontrol = ""', "scheduler.scontrol: expected a command"),
        ('kind = "slurm"\nsqueue = "x"', "scheduler.squeue: unknown key"),
        ("sinfo = 'x'", "scheduler.kind: required key is missing"),
        (
            'kind = "slurm"\nsinfo = "/nonexistent/sinfo"',
            "cluster.hostlist: cannot take it from Slurm: cannot run /nonexistent/sinfo",
        ),
    ],
)
def test_bad_scheduler_config_names_the_key(tmp_path: Path, scheduler: str, message: str) -> None:
    path = tmp_path / "hk.toml"
    path.write_text(f'[housekeeping]\ncommand = ["true"]\n[scheduler]\n{scheduler}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "hkservice", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1
    assert f"hkservice: ERROR: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_hung_slurm_never_blocks_the_service(hk_service: ServiceFactory, tmp_path: Path) -> None:
    hung = tmp_path / "hung"
    hung.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/pids\nexec sleep 60\n")
    hung.chmod(0o755)
    svc = hk_service(command=["true"], release_after="0s", start=False)
    svc.write_config()
    with open(svc.config_path, "a") as fh:
        fh.write(
            f'[scheduler]\nkind = "slurm"\nsinfo = "{hung}"\nscontrol = "{hung}"\n'
            'command-timeout = "2s"\nreconcile-every = "1s"\n'
        )
    svc.write_config = lambda: None  # type: ignore[method-assign]
    svc.start()
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-3"})
    svc.wait_idle(5)
    for _ in range(10):
        began = time.monotonic()
        svc.call("housekeeping.list")
        assert time.monotonic() - began < 0.5  # a loop blocked on sinfo would take 2 s
        time.sleep(0.1)
    wait_until(lambda: "did not answer within 2 s; trying again" in svc.log(), 10)
    assert svc.stop() == 0
    # Each timed-out call was killed, not left behind.
    for pid in (tmp_path / "pids").read_text().split():
        assert not Path(f"/proc/{pid}").exists() or "Z" in stat_state(int(pid))


def stat_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def hook(
    name: str, env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HK_"))}
    began = time.monotonic()
    proc = subprocess.run(
        [str(BIN / name), *args], env={**clean, **env}, capture_output=True, text=True, timeout=30
    )
    return proc, time.monotonic() - began


JOB_ENV = {"SLURM_JOB_ID": "12", "SLURM_JOB_UID": "1000", "SLURM_JOB_NODELIST": "node[0-3]"}


def test_epilog_slurmctld_exits_0_at_once_when_hk_is_down(tmp_path: Path) -> None:
    proc, took = hook(
        "hk-slurm-epilog-slurmctld", JOB_ENV, "--endpoint", f"ipc://{tmp_path}/none.sock"
    )
    assert proc.returncode == 0
    assert "job 12 on node[0-3] not handed to hk" in proc.stderr
    assert took < 5


def test_epilog_slurmctld_is_bounded_when_hk_hangs() -> None:
    import zmq

    base = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)
    try:
        silent.bind(f"ipc://{base}/hk.sock")
        proc, took = hook(
            "hk-slurm-epilog-slurmctld",
            JOB_ENV,
            "--endpoint",
            f"ipc://{base}/hk.sock",
            "--timeout",
            "0.5",
        )
    finally:
        silent.close(linger=0)
        ctx.term()
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 0
    assert "did not answer within 0.5 s" in proc.stderr
    assert took < 5


def test_epilog_slurmctld_hands_the_job_to_hk(hk_service: ServiceFactory) -> None:
    svc = hk_service(command=["sleep", "30"])
    proc, _ = hook("hk-slurm-epilog-slurmctld", {**JOB_ENV, "HK_ENDPOINT": svc.endpoint})
    assert proc.returncode == 0, proc.stderr
    unit = svc.call("housekeeping.list")["units"][0]
    assert (unit["jobid"], unit["userid"], unit["ranks"]) == (12, 1000, "0-3")
    # A second hand-over (hk's reconcile was first) is no error; the endpoint is read
    # from hk's own config this time.
    proc, _ = hook("hk-slurm-epilog-slurmctld", JOB_ENV, "--config", str(svc.config_path))
    assert proc.returncode == 0 and proc.stderr == ""


def test_epilog_slurmctld_reaches_a_remote_hk_with_a_scheduler_key(
    hk_service: ServiceFactory,
) -> None:
    from tests.test_trust import curve_service, tcp_service

    svc, _ = curve_service(tcp_service(hk_service))
    sam = ["--key", str(svc.base / "clients" / "sam.key_secret")]
    server = ["--server-key", str(svc.base / "keys" / "server.key")]
    proc, _ = hook("hk-slurm-epilog-slurmctld", JOB_ENV, "--endpoint", svc.endpoint, *sam, *server)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert [u["jobid"] for u in svc.call("housekeeping.list")["units"]] == [12]


def test_node_epilog_holds_its_node_with_no_search_path(
    slurm: SlurmCluster, hk: ServiceMaker
) -> None:
    # Slurm runs the Epilog with no PATH: scontrol and sinfo are still found.
    env = {
        "SLURMD_NODENAME": "node2",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_UID": "0",
        "SLURM_CONF": str(slurm.conf),
    }
    began = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "hk-slurm-epilog")], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began < 5
    assert node_states(slurm)["node2"] == ("drained", hold_reason(77, 0))


def test_node_epilog_that_cannot_hold_its_node_fails_so_slurm_drains_it() -> None:
    env = {"SLURMD_NODENAME": "node1", "SLURM_JOB_ID": "12", "SLURM_JOB_UID": "0"}
    proc, took = hook("hk-slurm-epilog", env, "--sinfo", "/nonexistent/sinfo")
    # Non-zero: Slurm then drains the node itself ("Epilog error"), so it stays held.
    assert proc.returncode == 1
    assert "could not hold node1 for job 12: cannot run /nonexistent/sinfo" in proc.stderr
    assert took < 5
    proc, _ = hook("hk-slurm-epilog", {})
    assert proc.returncode == 0 and "not run by slurmd" in proc.stderr


def test_sinfo_output_and_reasons_read_strictly() -> None:
    from hkservice.slurm.bridge import slurm_reason
    from hkservice.slurm.nodes import hold_reason, parse_hold, parse_sinfo

    nodes = parse_sinfo(
        "node1|idle+drain|2026-01-02T03:04:05|hk: a|b c\n"
        "node2|mixed+completing|Unknown|none\n"
        "garbage line\n"
        "node3|idle*+drain|Unknown|admin: x\n"
    )
    assert nodes["node1"].reason == "hk: a|b c" and nodes["node1"].hk_owned
    assert nodes["node1"].reason_time is not None
    assert nodes["node2"].completing and not nodes["node2"].drained and not nodes["node2"].reason
    assert nodes["node3"].drained and not nodes["node3"].hk_owned
    assert set(nodes) == {"node1", "node2", "node3"}
    assert parse_hold(hold_reason(42, 1000)) == (42, 1000)
    assert parse_hold(hold_reason(42, 1000) + " extra") is None
    assert parse_hold(hold_reason(2**64, 0)) is None
    assert parse_hold(hold_reason(1, 2**32)) is None
    assert parse_hold("hk: held for cleanup of job \u0661 (uid 0)") is None
    assert slurm_reason("housekeeping@f38 exit-code: exited 1") == (
        "hk: exit-code: exited 1 (job 123)"
    )
    # An operator's reason: one line whatever it holds.
    assert slurm_reason("bad\nfan\x1b[2J") == "hk: bad fan [2J"


def test_cleanup_done_before_the_node_epilog_held_the_node(
    slurm: SlurmCluster, hk: ServiceMaker
) -> None:
    # EpilogSlurmctld runs before the node Epilogs: an instant cleanup can end before a
    # late node Epilog held its node. hk waits for each node's Epilog to end, then lifts
    # its hold, once.
    svc = hk(f"echo ran >> {hk_dir(slurm)}/marks/$HK_HOSTNAME.count")
    slow = slurm.base.parent / "slow-epilog"
    slow.touch()
    try:
        job = slurm.sbatch("-N4")
        wait_until(lambda: mark(svc, "node0", job, "end").exists(), 10, "cleanup done")
    finally:
        slow.unlink()
    wait_until(lambda: job_state(slurm, job) == "COMPLETED", 10)
    wait_until(settled(slurm, dict.fromkeys(("node0", "node1", "node2", "node3"), "")), 10)
    time.sleep(2)  # orphan-grace and two reconciles: nothing is run again
    assert settled(slurm, dict.fromkeys(("node0", "node1", "node2", "node3"), ""))()
    for node in ("node0", "node1", "node2", "node3"):
        assert (svc.base / "marks" / f"{node}.count").read_text() == "ran\n", node


def test_what_the_bridge_does_for_each_wish_and_node_state() -> None:
    from hkservice.slurm.bridge import NEVER_HELD_SECONDS, Wish, decide
    from hkservice.slurm.nodes import SlurmNode, hold_reason

    def node(state: str, reason: str = "") -> SlurmNode:
        return SlurmNode("node1", frozenset(state.split("+")), reason, None)

    hold = hold_reason(7, 0)
    now = 1000.0
    fresh, old = now - 0.1, now - NEVER_HELD_SECONDS - 1
    admin = "admin: dimm"
    cases = [
        (Wish("resume-hold", since=fresh), node("idle+completing"), ("wait", None)),
        (Wish("resume-hold", since=fresh), node("idle+completing+drain", hold), ("wait", None)),
        (Wish("resume-hold", since=fresh), node("idle+drain", hold), ("resume", None)),
        (Wish("resume-hold", since=fresh), node("idle+drain", admin), ("done", "kept")),
        (Wish("resume-hold", since=fresh), node("idle+drain", "hk: fan"), ("done", None)),
        (Wish("resume-hold", since=fresh), node("idle"), ("wait", None)),
        (Wish("resume-hold", since=old), node("idle"), ("done", "never-held")),
        (Wish("drain", "hk: x"), node("idle+drain", admin), ("done", "kept")),
        (Wish("drain", "hk: x"), node("idle+drain", hold), ("drain", None)),
        (Wish("drain", "hk: x"), node("idle+drain", "hk: x"), ("done", None)),
        (Wish("drain", "hk: x"), node("mixed+completing"), ("drain", None)),
        (Wish("hold", hold), node("idle+completing"), ("wait", None)),
        (Wish("hold", hold), node("idle+drain", "hk: fan"), ("done", None)),
        (Wish("hold", hold), node("idle+drain", admin), ("done", "kept")),
        (Wish("hold", hold), node("allocated"), ("drain", None)),
        (Wish("resume"), node("idle+drain", "hk: fan"), ("resume", None)),
        (Wish("resume"), node("idle+drain", admin), ("done", None)),
        (Wish("resume"), node("idle"), ("done", None)),
        (Wish("resume"), None, ("done", "unknown")),
    ]
    for wish, state, expected in cases:
        assert decide(wish, state, now) == expected, (wish, state)


def test_a_failing_scontrol_is_logged_and_retried(slurm: SlurmCluster, hk: ServiceMaker) -> None:
    broken = hk_dir(slurm) / "scontrol-broken"
    wrapper = hk_dir(slurm) / "scontrol.sh"
    real = shutil.which("scontrol")
    wrapper.write_text(
        f'#!/bin/sh\n[ -e {broken} ] && {{ echo "refused for the test" >&2; exit 1; }}\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    broken.touch()
    try:
        svc = hk("sleep 0.2", scontrol=str(wrapper))
        job = slurm.sbatch("-N2")
        wait_until(lambda: mark(svc, "node1", job, "end").exists(), 10, "cleanup done")
        wait_until(lambda: "refused for the test; trying again" in svc.log(), 10)
        held = f"hk: held for cleanup of job {job}"
        assert settled(slurm, {"node0": held, "node1": held})()
    finally:
        broken.unlink()
    wait_until(settled(slurm, {"node0": "", "node1": ""}), 10, "resumed once scontrol works")
