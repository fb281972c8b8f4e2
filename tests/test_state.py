"""What the service keeps on disk, and what it does when that is hostile or broken.

Output tails, the state directory's ownership and modes, the agent's socket and journal,
a missing or corrupt database and `--recover`, and kill -9 at random moments.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from hkservice.jobid import encode_jobid
from hkservice.protocol import pack
from hkservice.tail import LINE_BYTES, REPLY_BYTES, TRUNCATED, tail_lines
from tests.conftest import RunningService, ServiceFactory
from tests.test_service import drains, wait_until

Script = Callable[[str], str]


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


def test_a_reply_reads_at_most_its_limit_over_all_ranks(
    hk_service: ServiceFactory, script: Script
) -> None:
    # 4 ranks x 1,000 lines of 4 KiB: 16 MiB of tails, twice what one reply may read.
    cmd = script(
        'python3 -c \'import sys\nfor _ in range(1000): sys.stdout.write("y" * 4095 + "\\n")\''
    )
    svc = hk_service(hostlist="node[0-3]", command=[cmd])
    svc.call("housekeeping.start", {"jobid": 8, "ranks": "0-3"})
    svc.wait_idle()
    assert svc.proc is not None
    before = read_bytes_of(svc.proc.pid)
    with svc.client(timeout=20) as client:
        reply = client.call("housekeeping.output", {"jobid": 8, "tail": 1000})
    read = read_bytes_of(svc.proc.pid) - before
    assert reply["truncated"] is True
    ranks = [rank for rank, _, _ in reply["lines"]]
    assert ranks[0] == 0 and 0 < len(ranks) < 4000 and ranks == sorted(ranks)
    assert read < REPLY_BYTES + (1 << 20)
    whole = svc.call("housekeeping.output", {"jobid": 8, "rank": 3, "tail": 5})
    assert whole == {"lines": [[3, "out", "y" * 4095]] * 5, "truncated": False}


# -- helpers -------------------------------------------------------------------

NOBODY = 65534


def run_hkservice(
    svc: RunningService, *args: str, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """hkservice expected to refuse to start: it must exit, with one line."""
    svc.write_config()
    return subprocess.run(
        [sys.executable, "-m", "hkservice", "--config", str(svc.config_path), *args],
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=preexec,
    )


def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "hkservice: ERROR:" in line]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process group that nothing of hk may signal."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# -- modes, sockets and sessions (issue 11, security 1 and 6) --------------------


@dataclass
class ServiceWithReachableState(RunningService):
    """Its state directory in a directory other users may enter (the service's socket
    directory must stay private)."""

    shared: Path = Path("/nonexistent")

    @property
    def state_dir(self) -> Path:
        return self.shared / "state"


@pytest.fixture
def reachable_state_service(script: Script) -> Iterator[ServiceWithReachableState]:
    base = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    shared = Path(tempfile.mkdtemp(prefix="hk-shared-", dir="/tmp"))
    shared.chmod(0o755)
    svc = ServiceWithReachableState(
        base,
        "node[0-1]",
        [script("echo out; echo err >&2; sleep 600")],
        stop_commands_on_exit=False,
        umask=0,
        shared=shared,
    )
    yield svc
    svc.stop()
    svc.kill_leftovers()
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(shared, ignore_errors=True)


def test_under_umask_000_everything_is_private_and_another_user_cannot_reach_the_agent(
    reachable_state_service: ServiceWithReachableState,
) -> None:
    svc = reachable_state_service.start()
    svc.call("housekeeping.start", {"jobid": 3, "ranks": "0"})
    state, run = svc.state_dir, svc.state_dir / "run"
    wait_until(lambda: (run / "3" / "0.err").exists() and (run / "agent.journal").exists())
    for directory in (state, run, run / "3"):
        assert mode(directory) == 0o700, directory
    files = [
        state / "hk.db",
        state / "hk.db-wal",
        state / "hk.db-shm",
        state / "events.seq",
        state / "hkservice.lock",
        run / "agent.journal",
        run / "agent.log",
        run / "agent.lock",
        run / "agent.sock",
        run / "3" / "0.out",
        run / "3" / "0.err",
    ]
    assert {str(f.relative_to(state)): oct(mode(f)) for f in files} == {
        str(f.relative_to(state)): oct(0o600) for f in files
    }
    # Another local user cannot connect to the agent (which runs commands as root).
    probe = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect(sys.argv[1])\n"
            "except PermissionError:\n"
            "    print('refused')\n"
            "else:\n"
            "    print('connected')\n",
            str(run / "agent.sock"),
        ],
        user=NOBODY,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert probe.stdout.strip() == "refused", probe
    svc.call("housekeeping.kill", {"jobid": 3, "signum": 9})
    svc.wait_idle()


def test_a_hello_from_the_future_neither_takes_the_agent_nor_locks_the_service_out(
    hk_service: ServiceFactory, script: Script, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    cmd = script(f'echo "$HK_JOB_ID" >> "{runs}"')
    svc = hk_service(hostlist="node[0-1]", command=[cmd], stop_commands_on_exit=False)
    wait_until(lambda: svc.agent_pid() is not None)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{svc.state_dir}/run/agent.sock")
    try:
        future = time.monotonic_ns() + 10**15
        sock.send(pack({"op": "hello", "session": future}))
        launch = {
            "op": "launch",
            "session": future,
            "jobid": 666,
            "userid": 0,
            "ranks": [0],
            "all_ranks": "0",
            "argv": [cmd],
            "env": {},
            "hostnames": ["node0"],
        }
        sock.send(pack(launch))
        assert not sock.poll(1000), "the agent answered a hello from the future"
    finally:
        sock.close()
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-1"})
    svc.wait_idle(timeout=10)
    assert drains(svc) == {}
    assert runs.read_text().split() == ["7", "7"]


def plant_journal(svc: RunningService, victim_pid: int, how: str) -> Path:
    journal = svc.state_dir / "run" / "agent.journal"
    journal.write_text(f"B {boot_id()}\nL 1 0 {victim_pid} {start_time(victim_pid)}\n")
    if how == "other-owner":
        os.chown(journal, NOBODY, NOBODY)
        journal.chmod(0o600)
    else:
        journal.chmod(0o666)
    return journal


@pytest.mark.parametrize("how", ["other-owner", "world-writable"])
def test_a_journal_someone_else_could_write_is_not_trusted(
    hk_service: ServiceFactory, victim: subprocess.Popen[bytes], how: str
) -> None:
    svc = hk_service(stop_commands_on_exit=False)
    assert svc.stop() == 0
    svc.kill_leftovers()
    wait_until(lambda: svc.agent_pid() is None)
    journal = plant_journal(svc, victim.pid, how)
    what = "is owned by uid 65534" if how == "other-owner" else "is writable by group or others"
    assert_one_line_refusal(run_hkservice(svc), f"the journal {journal} {what}")
    # The agent, started by itself, does not act on it either.
    agent = subprocess.run(
        [
            sys.executable,
            "-m",
            "hkservice.agent",
            "--run-dir",
            str(journal.parent),
            "--endpoint",
            f"ipc://{journal.parent}/agent.sock",
            "--idle-exit",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert agent.returncode == 1
    assert "not trusted" in agent.stderr
    time.sleep(0.2)
    assert victim.poll() is None, "the forged journal line killed an unrelated process group"


# -- the state directory tree (issue 11, security 2) ---------------------------


@pytest.mark.parametrize(
    ("where", "how"),
    [
        ("state", "other-owner"),
        ("state", "group-writable"),
        ("state", "symlink"),
        ("run", "other-owner"),
        ("run", "world-writable"),
        ("run", "symlink"),
    ],
)
def test_a_state_tree_someone_else_owns_or_may_write_is_refused(
    hk_service: ServiceFactory, where: str, how: str
) -> None:
    svc = hk_service(start=False)
    target = svc.state_dir if where == "state" else svc.state_dir / "run"
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if how == "symlink":
        elsewhere = svc.base / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        target.symlink_to(elsewhere)
    else:
        target.mkdir(mode=0o700)
        if how == "other-owner":
            os.chown(target, NOBODY, NOBODY)
        else:
            target.chmod(0o770 if how == "group-writable" else 0o777)
    what = {
        "other-owner": "is owned by uid 65534",
        "group-writable": "is writable by group or others (mode 0770)",
        "world-writable": "is writable by group or others (mode 0777)",
        "symlink": "is a symlink",
    }[how]
    name = "the state directory" if where == "state" else "the run directory"
    assert_one_line_refusal(run_hkservice(svc), f"{name} {target} {what}")


@pytest.mark.parametrize("planted", ["file-symlink", "directory-symlink"])
def test_output_is_never_written_or_read_through_a_planted_symlink(
    hk_service: ServiceFactory, script: Script, planted: str
) -> None:
    svc = hk_service(hostlist="node[0-1]", command=[script("echo written-by-root")])
    precious = svc.base / "precious"
    precious.write_text("precious\n")
    unit_dir = svc.state_dir / "run" / "9"
    if planted == "file-symlink":
        unit_dir.mkdir(mode=0o700)
        (unit_dir / "0.out").symlink_to(precious)
    else:
        elsewhere = svc.base / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "0.out").symlink_to(precious)
        unit_dir.symlink_to(elsewhere)
    svc.call("housekeeping.start", {"jobid": 9, "ranks": "0-1"})
    svc.wait_idle()
    assert precious.read_text() == "precious\n"
    label = encode_jobid(9, "f58plain")
    reasons = drains(svc)
    assert reasons[0].startswith(f"housekeeping@{label} launch: ")
    assert "symbolic links" in reasons[0] or "Not a directory" in reasons[0]
    # Nor is it read back through the symlink.
    lines = svc.call("housekeeping.output", {"jobid": 9, "rank": 0})["lines"]
    assert "precious" not in str(lines)


# -- a lost database, --recover (issue 11, defects 4 and 5) ---------------------


def break_database(state: Path, how: str) -> None:
    db = state / "hk.db"
    if how == "truncated":
        db.write_bytes(b"")
    elif how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    else:
        db.write_bytes(os.urandom(8192))
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("truncated", "is empty (0 bytes)"),
        ("deleted", "is missing"),
        ("garbage", "is not a readable SQLite database"),
    ],
)
def test_a_lost_database_is_refused_and_recover_keeps_the_units_in_progress(
    hk_service: ServiceFactory, script: Script, tmp_path: Path, how: str, problem: str
) -> None:
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    # rank 0 fails before the loss (its outcome goes with the database), rank 1 ends
    # while the service is down (its exit waits in the agent), 2 and 3 run on.
    cmd = script(
        f"""
        echo "$HK_JOB_ID $HK_RANK" >> "{runs}"
        case "$HK_RANK" in
          0) exit 3;;
          1) while [ ! -e "{gate}" ]; do sleep 0.05; done; exit 0;;
          *) while [ ! -e "{gate}.2" ]; do sleep 0.05; done; exit 0;;
        esac
        """
    )
    svc = hk_service(command=[cmd], stop_commands_on_exit=False)
    svc.call("housekeeping.start", {"jobid": 5, "ranks": "0-3", "userid": 1234})
    svc.wait_for(lambda r: r["units"][0]["pending"] == "1-3")
    assert drains(svc) == {0: f"housekeeping@{encode_jobid(5, 'f58plain')} exit-code: exited 3"}
    svc.kill9()
    gate.touch()
    time.sleep(0.3)
    break_database(svc.state_dir, how)
    db = svc.state_dir / "hk.db"
    assert_one_line_refusal(
        run_hkservice(svc),
        f"{db} {problem}",
        "the local agent's journal",
        "the output of 1 unit",
        "--recover",
        f"move {svc.state_dir} away",
    )
    svc.args = ["--recover"]
    svc.start()
    svc.args = []
    unit = svc.wait_for(lambda r: r["units"][0]["pending"] == "2-3")["units"][0]
    assert (unit["jobid"], unit["userid"], unit["ranks"]) == (5, 1234, "0-3")
    assert (unit["pending"], unit["failed"], unit["allocated"]) == ("2-3", "0", "0-3")
    label = encode_jobid(5, "f58plain")
    assert drains(svc) == {
        0: f"housekeeping@{label} lost: outcome unknown: the state database was lost "
        "(rebuilt by --recover)"
    }
    assert list(svc.state_dir.glob("hk.db.broken-*")) or how == "deleted"
    Path(f"{gate}.2").touch()
    svc.wait_idle()
    history = svc.call("housekeeping.history")["units"]
    assert [(u["jobid"], u["failed"]) for u in history] == [(5, "0")]
    assert sorted(runs.read_text().splitlines()) == [f"5 {r}" for r in range(4)]
    # The rebuilt database is sound: a plain start uses it, --recover is refused.
    assert svc.stop() == 0
    assert_one_line_refusal(run_hkservice(svc, "--recover"), "is sound", "without --recover")
    svc.start()
    assert svc.call("housekeeping.history")["units"][0]["jobid"] == 5


def test_a_corrupt_page_is_found_by_quick_check(hk_service: ServiceFactory) -> None:
    svc = hk_service(stop_commands_on_exit=False)
    for jobid in range(1, 30):
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": "0-3"})
    svc.wait_idle()
    assert svc.stop() == 0  # checkpointed: everything is in hk.db itself
    db = svc.state_dir / "hk.db"
    with sqlite3.connect(db) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='history'").fetchone()
    conn.close()
    data = bytearray(db.read_bytes())
    start = (root - 1) * 4096 + 8  # past the page header: its cell pointers and more
    data[start : start + 392] = os.urandom(392)
    db.write_bytes(bytes(data))
    assert_one_line_refusal(run_hkservice(svc), f"{db} is corrupt (PRAGMA quick_check: ")


def test_garbage_alone_is_refused_not_overwritten(hk_service: ServiceFactory) -> None:
    svc = hk_service(start=False)
    svc.state_dir.mkdir(mode=0o700)
    db = svc.state_dir / "hk.db"
    db.write_bytes(b"not a database, but someone's file" * 100)
    proc = run_hkservice(svc)
    assert_one_line_refusal(proc, f"{db} is not a readable SQLite database", "move it away")
    assert db.read_bytes() == b"not a database, but someone's file" * 100


def limit_file_size(size: int) -> Callable[[], None]:
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_a_full_disk_at_start_is_one_line(hk_service: ServiceFactory) -> None:
    svc = hk_service(start=False)
    # A file size limit is a real write failure to SQLite (EFBIG, as ENOSPC).
    proc = run_hkservice(svc, preexec=limit_file_size(1024))
    assert_one_line_refusal(proc, "the state database", str(svc.state_dir / "hk.db"))
    assert "disk I/O error" in proc.stderr or "full" in proc.stderr
    # Nothing half made stands in the way of the next start.
    svc.start()
    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0"})
    svc.wait_idle()


def test_recover_after_the_agent_died_too_reports_its_commands_lost(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(hostlist="node[0-3]", command=["sleep", "600"], stop_commands_on_exit=False)
    svc.call("housekeeping.start", {"jobid": 12, "ranks": "1-3", "userid": 77})
    wait_until(lambda: len(svc.command_pids()) == 3)
    groups = set(svc.command_pids().values())
    svc.kill9()
    agent = svc.agent_pid()
    assert agent is not None
    os.kill(agent, 9)
    break_database(svc.state_dir, "deleted")
    svc.args = ["--recover"]
    svc.start()
    svc.args = []
    svc.wait_idle()
    history = svc.call("housekeeping.history")["units"]
    assert [(u["jobid"], u["userid"], u["ranks"], u["failed"]) for u in history] == [
        (12, 77, "1-3", "1-3")
    ]
    lost = f"housekeeping@{encode_jobid(12, 'f58plain')} lost: the local agent died"
    assert drains(svc) == dict.fromkeys(range(1, 4), lost)
    wait_until(lambda: not any(alive(pid) for pid in groups))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_commits_never_checkpoint_the_wal_a_thread_does(tmp_path: Path) -> None:
    """SQLite checkpoints inside the commit that crosses 1,000 WAL pages, fsync and all,
    on the event loop (a request then waited for the disk). The service's connection
    never does; a thread of its own moves the WAL into the database."""
    from hkservice.store import Store

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = Store(state)
    try:
        store.start_checkpoints()
        entry = {"t": 0.0, "method": "m", "params": "x" * 4000, "ok": 1, "effect": "e"}
        entry |= {"role": "operator", "who": "w", "how": "h", "reported": None}
        for _ in range(1500):  # about 1,500 pages: past the automatic checkpoint
            store.add_audit(entry)
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        wal = state / "hk.db-wal"
        deadline = time.monotonic() + 10
        while (state / "hk.db").stat().st_size < 4 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Checkpointed (the database has the rows) while the WAL was never reset by a
        # commit of ours: it holds every page written.
        assert (state / "hk.db").stat().st_size >= 4 << 20
        assert wal.stat().st_size >= 4 << 20
    finally:
        store.close()
