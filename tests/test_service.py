"""The real service on ipc, running real commands."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import zmq

from hkconsole.client import ServiceError
from hkservice.idset import parse_idset
from hkservice.jobid import encode_jobid
from hkservice.protocol import pack, unpack
from tests.conftest import ME, RunningService, ServiceFactory

Script = Callable[[str], str]


class Events:
    """A SUB socket on the service's event endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"housekeeping.")
        self.sock.setsockopt(zmq.SUBSCRIBE, b"resource.")
        self.sock.connect(endpoint)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def wait(
        self, predicate: Callable[[str, dict[str, Any]], bool], timeout: float = 10.0
    ) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(50):
                topic, body = self.sock.recv_multipart()
                event = (topic.decode(), unpack(body))
                self.seen.append(event)
                if predicate(*event):
                    return self.seen
        raise AssertionError(f"event not seen within {timeout}s; seen: {self.seen}")

    def releases(self, jobid: int) -> list[tuple[str, bool]]:
        return [
            (body["ranks"], body["final"])
            for topic, body in self.seen
            if topic == "housekeeping.released" and body["jobid"] == jobid
        ]

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def events() -> Iterator[Callable[[RunningService], Events]]:
    opened: list[Events] = []

    def subscribe(svc: RunningService) -> Events:
        ev = Events(svc.events_endpoint)
        opened.append(ev)
        time.sleep(0.2)  # a SUB socket misses what is published before it has joined
        return ev

    yield subscribe
    for ev in opened:
        ev.close()


def final_seen(jobid: int) -> Callable[[str, dict[str, Any]], bool]:
    return lambda topic, body: (
        topic == "housekeeping.released" and body["jobid"] == jobid and body["final"]
    )


def first_event_with(ev: Events, topic: str, rank: int) -> int:
    """Index in ev.seen of the first `topic` event whose ranks include `rank`."""
    return next(
        i
        for i, (seen_topic, body) in enumerate(ev.seen)
        if seen_topic == topic and rank in parse_idset(body["ranks"])
    )


def unit_of(result: dict[str, Any], jobid: int) -> dict[str, Any] | None:
    return next((u for u in result["units"] if u["jobid"] == jobid), None)


def drains(svc: RunningService) -> dict[int, str]:
    """rank -> drain reason (ranks drained in one batch come grouped: split them)."""
    return {
        rank: d["reason"]
        for d in svc.call("resource.status")["drained"]
        for rank in parse_idset(d["ranks"])
    }


def test_command_runs_on_exactly_the_units_ranks_with_its_environment(
    hk_service: ServiceFactory, script: Script, tmp_path: Path, events: Any
) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    cmd = script(f'env > "{flags}/$HK_RANK"')
    svc = hk_service(hostlist="node[0-3]", command=[cmd])
    ev = events(svc)
    svc.call("housekeeping.start", {"jobid": 4242, "ranks": "1-2", "userid": 5001})
    ev.wait(final_seen(4242))
    assert sorted(p.name for p in flags.iterdir()) == ["1", "2"]
    env = dict(line.split("=", 1) for line in (flags / "2").read_text().splitlines() if "=" in line)
    assert env["HK_JOB_ID"] == env["FLUX_JOB_ID"] == "4242"
    assert env["HK_JOB_USERID"] == env["FLUX_JOB_USERID"] == "5001"
    assert env["HK_JOB_RANKS"] == env["FLUX_JOB_RANKS"] == "1-2"
    assert env["HK_RANK"] == "2"
    assert env["HK_HOSTNAME"] == "node2"
    assert ev.releases(4242) == [("1-2", True)]


def test_unset_release_after_releases_all_at_once(
    hk_service: ServiceFactory, script: Script, events: Any
) -> None:
    cmd = script('[ "$HK_RANK" = 3 ] && sleep 1; exit 0')
    svc = hk_service(command=[cmd])
    ev = events(svc)
    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0-3"})
    unit = svc.wait_for(lambda r: unit_of(r, 1) is not None and unit_of(r, 1)["pending"] == "3")
    # #ACTIVE drops as ranks finish; NNODES stays until the release.
    assert unit_of(unit, 1)["allocated"] == "0-3"
    ev.wait(final_seen(1))
    assert ev.releases(1) == [("0-3", True)]
    assert svc.call("housekeeping.list")["units"] == []


def test_zero_release_after_releases_each_rank_as_it_finishes(
    hk_service: ServiceFactory, script: Script, events: Any
) -> None:
    cmd = script('sleep "0.$((HK_RANK * 3))"')
    svc = hk_service(command=[cmd], release_after="0")
    ev = events(svc)
    svc.call("housekeeping.start", {"jobid": 2, "ranks": "0-3"})
    ev.wait(final_seen(2))
    released = ev.releases(2)
    assert [r for r, _ in released] == ["0", "1", "2", "3"]
    assert [f for _, f in released] == [False, False, False, True]


def test_timed_release_after_holds_then_releases_the_finished_ranks_together(
    hk_service: ServiceFactory, script: Script, events: Any
) -> None:
    cmd = script('[ "$HK_RANK" = 3 ] && sleep 2; exit 0')
    svc = hk_service(command=[cmd], release_after="700ms")
    ev = events(svc)
    svc.call("housekeeping.start", {"jobid": 3, "ranks": "0-3"})
    held = svc.wait_for(lambda r: unit_of(r, 3) is not None and unit_of(r, 3)["pending"] == "3")
    assert unit_of(held, 3)["allocated"] == "0-3"
    ev.wait(lambda t, b: t == "housekeeping.released" and b["jobid"] == 3)
    assert ev.releases(3) == [("0-2", False)]
    assert unit_of(svc.call("housekeeping.list"), 3)["allocated"] == "3"
    ev.wait(final_seen(3))
    assert ev.releases(3) == [("0-2", False), ("3", True)]


def test_drain_reasons_for_exit_signal_launch_and_timeout(
    hk_service: ServiceFactory, script: Script, events: Any
) -> None:
    fail = script('case "$HK_RANK" in 0) exit 1;; 1) sleep 600;; *) exit 0;; esac')
    svc = hk_service(hostlist="node[0-3]", command=[fail], release_after="0")
    ev = events(svc)
    svc.call("housekeeping.start", {"jobid": 10, "ranks": "0-2"})
    svc.wait_for(lambda r: unit_of(r, 10) is not None and unit_of(r, 10)["pending"] == "1")
    svc.call("housekeeping.kill", {"jobid": 10, "signum": 15})
    ev.wait(final_seen(10))
    label = encode_jobid(10, "f58plain")
    assert drains(svc) == {
        0: f"housekeeping@{label} exit-code: exited 1",
        1: f"housekeeping@{label} signal: killed TERM",
    }
    # Each failed rank is drained before the release that hands it back.
    for rank in (0, 1):
        assert first_event_with(ev, "resource.drained", rank) < first_event_with(
            ev, "housekeeping.released", rank
        )

    missing = hk_service(hostlist="node[0-1]", command=["/no/such/cleanup"])
    missing.call("housekeeping.start", {"jobid": 11, "ranks": "0"})
    missing.wait_idle()
    assert drains(missing) == {
        0: f"housekeeping@{encode_jobid(11, 'f58plain')} launch: No such file or directory"
    }

    slow = hk_service(hostlist="node[0-1]", command=["sleep", "600"], timeout="500ms")
    slow.call("housekeeping.start", {"jobid": 12, "ranks": "0-1"})
    slow.wait_idle()
    reason = f"housekeeping@{encode_jobid(12, 'f58plain')} timeout: killed TERM after 500ms"
    assert drains(slow) == {0: reason, 1: reason}


def test_kill_by_job_by_targets_and_all(hk_service: ServiceFactory) -> None:
    svc = hk_service(hostlist="node[0-7]", command=["sleep", "600"], release_after="0")
    for jobid, ranks in ((1, "0-1"), (2, "2-3"), (3, "4-5")):
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": ranks})
    result = svc.call("housekeeping.kill", {"ranks": "1,2", "signum": 15})
    assert result == {"units": 2, "ranks": 2, "signum": 15, "by": ME}
    svc.wait_for(lambda r: [u["allocated"] for u in r["units"]] == ["0", "3", "4-5"])
    assert svc.call("housekeeping.kill", {"jobid": 3, "signum": 9})["ranks"] == 2
    svc.wait_for(lambda r: [u["jobid"] for u in r["units"]] == [1, 2])
    assert svc.call("housekeeping.kill", {"all": True}) == {
        "units": 2,
        "ranks": 2,
        "signum": 15,
        "by": ME,
    }
    svc.wait_idle()
    assert drains(svc)[5].endswith("signal: killed KILL")
    with pytest.raises(ServiceError, match="no housekeeping running for job") as err:
        svc.call("housekeeping.kill", {"jobid": 3})
    assert err.value.code == "ENOENT"


def test_sigterm_ignored_escalates_to_sigkill_after_kill_grace(
    hk_service: ServiceFactory, script: Script
) -> None:
    stubborn = script("trap '' TERM; sleep 600 & wait; sleep 600")
    svc = hk_service(hostlist="node0", command=[stubborn], kill_grace="500ms")
    svc.call("housekeeping.start", {"jobid": 5, "ranks": "0"})
    time.sleep(0.3)
    svc.call("housekeeping.kill", {"jobid": 5})
    svc.wait_idle(timeout=5)
    assert drains(svc)[0].endswith("signal: killed KILL")


def test_output_is_kept_line_by_line_per_rank(hk_service: ServiceFactory, script: Script) -> None:
    cmd = script('echo "out of $HK_RANK"; echo "err of $HK_RANK" >&2; printf "a\\nb\\n"')
    svc = hk_service(command=[cmd])
    svc.call("housekeeping.start", {"jobid": 6, "ranks": "0-1"})
    svc.wait_idle()
    lines = svc.call("housekeeping.output", {"jobid": 6})["lines"]
    assert lines == [
        [0, "out", "out of 0"],
        [0, "out", "a"],
        [0, "out", "b"],
        [0, "err", "err of 0"],
        [1, "out", "out of 1"],
        [1, "out", "a"],
        [1, "out", "b"],
        [1, "err", "err of 1"],
    ]
    tail = svc.call("housekeeping.output", {"jobid": 6, "rank": 1, "tail": 1})["lines"]
    assert tail == [[1, "out", "b"], [1, "err", "err of 1"]]


def test_recovery_after_kill_9(hk_service: ServiceFactory, script: Script, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # rank 0 finishes at once; 1 and 2 wait for the gate (opened while the service is
    # dead) and then succeed or fail; rank 3 keeps running across the restart.
    cmd = script(
        f"""
        case "$HK_RANK" in
          0) exit 0;;
          1) while [ ! -e "{gate}" ]; do sleep 0.05; done; exit 0;;
          2) while [ ! -e "{gate}" ]; do sleep 0.05; done; exit 7;;
          3) while [ ! -e "{gate}.2" ]; do sleep 0.05; done; exit 0;;
        esac
        """
    )
    svc = hk_service(command=[cmd], release_after="0", stop_commands_on_exit=False)
    svc.call("housekeeping.start", {"jobid": 77, "ranks": "0-3"})
    svc.wait_for(lambda r: unit_of(r, 77) is not None and unit_of(r, 77)["allocated"] == "1-3")
    svc.kill9()
    gate.touch()
    time.sleep(0.5)
    svc.start()
    label = encode_jobid(77, "f58plain")
    after = svc.wait_for(lambda r: unit_of(r, 77) is not None and unit_of(r, 77)["pending"] == "3")
    assert unit_of(after, 77)["allocated"] == "3"
    assert drains(svc) == {2: f"housekeeping@{label} exit-code: exited 7"}
    Path(f"{gate}.2").touch()
    svc.wait_idle()
    history = svc.call("housekeeping.history")["units"]
    assert history[0]["jobid"] == 77 and history[0]["failed"] == "2"
    assert "adopted job 77 rank 3" in svc.log()
    assert set(svc.command_pids()) == set()


def test_commands_left_by_a_dead_agent_are_killed_and_drained_as_lost_with_it(
    hk_service: ServiceFactory, script: Script
) -> None:
    # The command's child must go too: the whole process group is killed.
    cmd = script("sleep 600 & wait")
    svc = hk_service(hostlist="node[0-1]", command=[cmd], stop_commands_on_exit=False)
    svc.call("housekeeping.start", {"jobid": 88, "ranks": "0-1"})
    wait_until(lambda: len(svc.command_pids()) == 2)
    groups = set(svc.command_pids().values())
    svc.kill9()
    agent = svc.agent_pid()
    assert agent is not None
    os.kill(agent, 9)  # the agent too: nobody can know how the commands end any more
    svc.start()
    svc.wait_idle()
    lost = f"housekeeping@{encode_jobid(88, 'f58plain')} lost: the local agent died"
    assert drains(svc) == {0: lost, 1: lost}
    assert not [pid for pid, _ in _processes_in_groups(groups)]


def _processes_in_groups(groups: set[int]) -> list[tuple[int, int]]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) in groups and fields[0] != "Z":
                found.append((int(entry.name), int(fields[2])))
    return found


def test_clean_restart_adopts_running_commands(hk_service: ServiceFactory) -> None:
    svc = hk_service(hostlist="node[0-1]", command=["sleep", "600"], stop_commands_on_exit=False)
    svc.call("housekeeping.start", {"jobid": 99, "ranks": "0-1"})
    time.sleep(0.2)
    assert svc.stop() == 0
    svc.start()
    assert unit_of(svc.call("housekeeping.list"), 99)["pending"] == "0-1"
    svc.call("housekeeping.kill", {"jobid": 99, "signum": 9})
    svc.wait_idle()


# -- bad input ---------------------------------------------------------------


def raw_call(svc: RunningService, body: bytes) -> dict[str, Any]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(svc.endpoint)
    try:
        sock.send(body)
        assert sock.poll(5000), "no reply"
        return unpack(sock.recv())
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (b"\xc1\xff\x00garbage", "EPROTO", "undecodable"),
        (pack([1, 2, 3]), "EPROTO", "expected a msgpack map"),
        (pack({"v": 1, "id": 3}), "EPROTO", "missing method"),
        (pack({"v": 1, "id": 4, "method": "housekeeping.explode"}), "ENOSYS", "unknown method"),
        (pack({"v": 9, "id": 5, "method": "housekeeping.list"}), "EPROTO", "protocol version"),
        (
            pack({"v": 1, "id": 6, "method": "housekeeping.start", "params": {"jobid": "x"}}),
            "EPROTO",
            "parameter 'jobid' has the wrong type",
        ),
        (
            pack({"v": 1, "id": 7, "method": "housekeeping.kill", "params": [1]}),
            "EPROTO",
            "params must be a map",
        ),
        (
            pack({"v": 1, "id": 8, "method": "housekeeping.kill", "params": {"ranks": "3,1"}}),
            "EINVAL",
            "out of order",
        ),
        (
            pack({"v": 1, "id": 9, "method": "housekeeping.start", "params": {"jobid": 1}}),
            "EPROTO",
            "missing parameter 'ranks'",
        ),
    ],
    ids=[
        "undecodable",
        "not-a-map",
        "no-method",
        "unknown-method",
        "bad-version",
        "wrong-type",
        "params-not-map",
        "bad-idset",
        "missing-param",
    ],
)
def test_bad_messages_get_clear_errors_and_service_keeps_serving(
    hk_service: ServiceFactory, body: bytes, code: str, text: str
) -> None:
    svc = hk_service()
    reply = raw_call(svc, body)
    assert reply["error"]["code"] == code
    assert text in reply["error"]["message"]
    assert svc.call("service.config")["size"] == 4


def test_bad_requests_are_rejected_without_losing_state(hk_service: ServiceFactory) -> None:
    svc = hk_service(command=["sleep", "600"])
    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0-1"})
    with pytest.raises(ServiceError, match="already in housekeeping") as err:
        svc.call("housekeeping.start", {"jobid": 1, "ranks": "2"})
    assert err.value.code == "EEXIST"
    with pytest.raises(ServiceError, match=r"ranks 4-9 are not in the cluster \(0-3\)"):
        svc.call("housekeeping.start", {"jobid": 2, "ranks": "2-9"})
    with pytest.raises(ServiceError, match="no housekeeping running for job") as err:
        svc.call("housekeeping.unit", {"jobid": 12345})
    assert err.value.code == "ENOENT"
    with pytest.raises(ServiceError, match="rank 3 is not drained"):
        svc.call("resource.undrain", {"ranks": "3"})
    units = svc.call("housekeeping.list")["units"]
    assert [(u["jobid"], u["pending"]) for u in units] == [(1, "0-1")]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            '[cluster]\nhostlist="n[0-3]"\n[housekeeping]\ncommand=["true"]\nxyz=42\n',
            "housekeeping.xyz: unknown key",
        ),
        (
            '[cluster]\nhostlist="n[0-3]"\n[housekeeping]\ncommand="true"\n',
            "housekeeping.command: expected a non-empty array of strings",
        ),
        (
            '[cluster]\nhostlist="n[0-3]"\n[housekeeping]\ncommand=["true"]\nrelease-after="foo"\n',
            "housekeeping.release-after: ",
        ),
        ('[housekeeping]\ncommand=["true"]\n', "cluster.hostlist: required key is missing"),
        ('[cluster]\nhostlist="n[0-3"\n[housekeeping]\ncommand=["true"]\n', "cluster.hostlist"),
        (
            '[cluster]\nhostlist="n0"\n[housekeeping]\ncommand=["true"]\n'
            '[service]\nagent-silence="0"\n',
            'service.agent-silence: must be above 0 (or "inf" for never)',
        ),
    ],
)
def test_bad_config_stops_the_start_naming_the_key(
    tmp_path: Path, config: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "hkservice", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1
    assert f"hkservice: ERROR: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stop_commands_on_exit_leaves_no_process(hk_service: ServiceFactory) -> None:
    svc = hk_service(hostlist="node[0-3]", command=["sleep", "600"])
    svc.call("housekeeping.start", {"jobid": 5, "ranks": "0-3"})
    deadline = time.monotonic() + 5
    while len(svc.command_pids()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(svc.command_pids()) == 4
    assert svc.agent_pid() is not None
    assert svc.stop() == 0
    deadline = time.monotonic() + 5
    while (svc.command_pids() or svc.agent_pid()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc.command_pids() == {}
    assert svc.agent_pid() is None


def test_a_second_service_on_the_same_state_dir_refuses_to_start(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service()
    proc = subprocess.run(
        [sys.executable, "-m", "hkservice", "--config", str(svc.config_path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 1
    assert "another hkservice is already running with state-dir" in proc.stderr
    assert svc.call("service.config")["size"] == 4  # the first one still serves


# -- audit fixes -------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def lock_the_store(svc: RunningService) -> sqlite3.Connection:
    """Hold SQLite's write lock on the service's database: its next write fails after
    the busy timeout, a real store failure with nothing faked."""
    db = sqlite3.connect(svc.state_dir / "hk.db", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    return db


def release_the_store(db: sqlite3.Connection) -> None:
    db.execute("ROLLBACK")
    db.close()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"jobid": 900, "ranks": "0", "userid": 2**64 - 1}, "userid 18446744073709551615 is out"),
        ({"jobid": 900, "ranks": "0", "userid": 2**32}, r"userid 4294967296 is out of range"),
        ({"jobid": 900, "ranks": "0", "userid": -1}, r"userid -1 is out of range \(0-4294967295\)"),
        ({"jobid": -1, "ranks": "0"}, r"jobid -1 is out of range \(0-18446744073709551615\)"),
    ],
    ids=["userid-2^64-1", "userid-2^32", "userid-negative", "jobid-negative"],
)
def test_ids_out_of_range_are_refused_and_leave_nothing_behind(
    hk_service: ServiceFactory, params: dict[str, Any], message: str
) -> None:
    svc = hk_service()
    with pytest.raises(ServiceError, match=message) as err:
        svc.call("housekeeping.start", params)
    assert err.value.code == "EINVAL"
    assert svc.call("housekeeping.list")["units"] == []
    assert svc.call("resource.status")["housekeeping"] == ""
    svc.call("housekeeping.start", {"jobid": 900, "ranks": "0", "userid": 2**32 - 1})
    svc.wait_idle()


def test_a_change_that_cannot_be_saved_stops_the_service_without_acting_on_it(
    hk_service: ServiceFactory, script: Script, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    svc = hk_service(command=[script(f'touch "{ran}"')], stop_commands_on_exit=False)
    db = lock_the_store(svc)
    try:
        with (
            svc.client(timeout=20) as client,
            pytest.raises(ServiceError, match=r"could not save the state .*is stopping") as err,
        ):
            client.call("housekeeping.start", {"jobid": 900, "ranks": "0"})
        answered = time.time()
        assert err.value.code == "EINTERNAL"
        # The answer follows the failure at once, not after another busy timeout (5 s)
        # spent on an audit entry that cannot be saved either.
        failed = next(line for line in svc.log().splitlines() if "CRITICAL" in line)
        failed_at = datetime.strptime(failed[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        assert answered - failed_at < 3
        assert svc.proc is not None
        assert svc.proc.wait(15) == 1
    finally:
        release_the_store(db)
    assert svc.stop() == 1
    assert "could not save the state" in svc.log()
    assert "Traceback" not in svc.log()
    svc.start()
    # What the disk says is what the service says: no unit, no held node, nothing run.
    assert svc.call("housekeeping.list")["units"] == []
    assert svc.call("resource.status")["housekeeping"] == ""
    assert not ran.exists()
    svc.call("housekeeping.start", {"jobid": 900, "ranks": "0"})
    svc.wait_idle()
    assert ran.exists()


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_huge_idsets_are_refused_without_expanding_them(hk_service: ServiceFactory) -> None:
    svc = hk_service(command=["sleep", "600"])
    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0-1"})
    assert svc.proc is not None
    before = peak_rss_kb(svc.proc.pid)
    huge = "0-2999999"  # three million ids: hundreds of MB had they been expanded
    for method, params in (
        ("resource.drain", {"ranks": huge, "reason": "x"}),
        ("resource.undrain", {"ranks": huge}),
        ("housekeeping.kill", {"ranks": huge}),
        ("housekeeping.start", {"jobid": 2, "ranks": huge}),
    ):
        with pytest.raises(ServiceError, match=r"ranks 4-2999999 are not in the cluster \(0-3\)"):
            svc.call(method, params)
    assert peak_rss_kb(svc.proc.pid) - before < 20_000
    assert [u["jobid"] for u in svc.call("housekeeping.list")["units"]] == [1]


def test_a_pending_sigkill_survives_a_kill_9_of_the_service(
    hk_service: ServiceFactory, script: Script
) -> None:
    stubborn = script("trap '' TERM; sleep 600 & wait; sleep 600")
    svc = hk_service(
        hostlist="node0", command=[stubborn], kill_grace="2s", stop_commands_on_exit=False
    )
    svc.call("housekeeping.start", {"jobid": 5, "ranks": "0"})
    wait_until(lambda: (5, 0) in svc.command_pids())
    svc.call("housekeeping.kill", {"jobid": 5})
    svc.kill9()
    svc.start()
    svc.wait_idle(timeout=10)
    assert drains(svc)[0].endswith("signal: killed KILL")


def test_an_operator_kill_trapped_and_exited_0_still_fails_after_a_kill_9(
    hk_service: ServiceFactory, script: Script, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    trapper = script(f"trap '' TERM; while [ ! -e \"{gate}\" ]; do sleep 0.05; done; exit 0")
    svc = hk_service(hostlist="node[0-1]", command=[trapper], stop_commands_on_exit=False)
    svc.call("housekeeping.start", {"jobid": 6, "ranks": "0"})
    wait_until(lambda: (6, 0) in svc.command_pids())
    svc.call("housekeeping.kill", {"jobid": 6})
    svc.kill9()
    svc.start()
    gate.touch()
    svc.wait_idle()
    assert drains(svc) == {0: f"housekeeping@{encode_jobid(6, 'f58plain')} signal: killed TERM"}
    assert svc.call("housekeeping.history")["units"][0]["failed"] == "0"


def test_an_exit_is_acknowledged_to_the_agent_only_once_saved(
    hk_service: ServiceFactory, script: Script, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    cmd = script(f'while [ ! -e "{gate}" ]; do sleep 0.05; done; exit 0')
    svc = hk_service(hostlist="node[0-1]", command=[cmd], stop_commands_on_exit=False)
    svc.call("housekeeping.start", {"jobid": 66, "ranks": "0"})
    wait_until(lambda: (66, 0) in svc.command_pids())
    # The service cannot save the exit while the lock is held: killed in that window,
    # it must learn the exit again from the agent, not call the rank lost.
    db = lock_the_store(svc)
    try:
        gate.touch()
        wait_until(lambda: (66, 0) not in svc.command_pids())
        time.sleep(1.0)  # the agent reports the exit; the service blocks on the lock
        svc.kill9()
    finally:
        release_the_store(db)
    svc.start()
    svc.wait_idle()
    assert drains(svc) == {}
    assert svc.call("housekeeping.history")["units"][0]["failed"] == ""


def test_commands_stopped_with_the_service_end_killed_and_saved(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(hostlist="node[0-3]", command=["sleep", "600"])
    svc.call("housekeeping.start", {"jobid": 5, "ranks": "0-3"})
    wait_until(lambda: len(svc.command_pids()) == 4)
    assert svc.stop() == 0
    log = svc.log()
    assert "Traceback" not in log and "Exception in callback" not in log
    svc.start()
    assert svc.call("housekeeping.list")["units"] == []
    reason = (
        f"housekeeping@{encode_jobid(5, 'f58plain')} signal: killed KILL as the service stopped"
    )
    assert drains(svc) == dict.fromkeys(range(4), reason)
    assert svc.call("housekeeping.history")["units"][0]["failed"] == "0-3"


def run_hkservice(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hkservice", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize("case", ["world-writable", "group-readable", "other-owner", "symlink"])
def test_the_socket_directory_must_be_private(case: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    try:
        sockets = base / "sockets"
        sockets.mkdir(mode=0o700)
        if case == "world-writable":
            sockets.chmod(0o777)
        elif case == "group-readable":
            sockets.chmod(0o750)
        elif case == "other-owner":
            os.chown(sockets, 65534, 65534)
        else:
            (base / "private").mkdir(mode=0o700)
            sockets.rmdir()
            sockets.symlink_to(base / "private")
        config = base / "hk.toml"
        config.write_text(
            '[cluster]\nhostlist = "node[0-1]"\n[housekeeping]\ncommand = ["true"]\n'
            f'[service]\nendpoint = "ipc://{sockets}/hk.sock"\nstate-dir = "{base}/state"\n'
        )
        proc = run_hkservice(config)
        assert proc.returncode == 1
        assert f"hkservice: ERROR: the socket directory {sockets} must be private" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (sockets / "hk.sock").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_req_client_gets_its_reply(hk_service: ServiceFactory) -> None:
    svc = hk_service()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(svc.endpoint)
    try:
        for req_id in (7, 8):
            sock.send(pack({"v": 1, "id": req_id, "method": "service.config"}))
            assert sock.poll(5000), "no reply to a REQ socket"
            reply = unpack(sock.recv())
            assert reply["id"] == req_id and reply["result"]["size"] == 4
    finally:
        sock.close()


LONG = "x" * 110


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ('endpoint = "bogus://x"', "service.endpoint: 'bogus://x' is not an ipc:// or tcp://"),
        (
            'endpoint = "bogus://x"\nevents-endpoint = "ipc:///tmp/hk-x/ev"',
            "service.endpoint: 'bogus://x' is not an ipc:// or tcp://",
        ),
        ('endpoint = "inproc://hk"', "service.endpoint: 'inproc://hk' is not an ipc:// or tcp://"),
        ('endpoint = "ipc://"', "service.endpoint: 'ipc://' has no socket path"),
        ('endpoint = "ipc://@hk"', "service.endpoint: 'ipc://@hk' is an abstract socket"),
        (
            f'endpoint = "ipc:///tmp/{LONG}/hk.sock"',
            "service.endpoint: the socket path of 'ipc:///tmp/x",
        ),
        (
            f'endpoint = "ipc:///tmp/hk-x/hk.sock"\nevents-endpoint = "ipc:///tmp/{LONG}/ev.sock"',
            "service.events-endpoint: the socket path of 'ipc:///tmp/x",
        ),
        ('endpoint = "tcp://localhost"', "service.endpoint: 'tcp://localhost' needs a host and"),
        (
            f'endpoint = "ipc:///tmp/hk-x/hk.sock"\nstate-dir = "/tmp/{"d" * 90}"',
            f"service.state-dir: '/tmp/{'d' * 90}' is too long: the local agent's socket",
        ),
    ],
    ids=[
        "bogus",
        "bogus-with-events",
        "inproc",
        "empty-ipc",
        "abstract",
        "long-ipc",
        "long-events",
        "tcp-no-port",
        "long-state-dir",
    ],
)
def test_bad_endpoints_stop_the_start_with_one_line(
    tmp_path: Path, service: str, message: str
) -> None:
    config = tmp_path / "hk.toml"
    config.write_text(
        '[cluster]\nhostlist = "n[0-3]"\n[housekeeping]\ncommand = ["true"]\n'
        f"[service]\n{service}\n"
    )
    proc = run_hkservice(config)
    assert proc.returncode == 1
    assert f"hkservice: ERROR: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_endpoint_that_cannot_be_bound_is_one_line() -> None:
    base = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    try:
        config = base / "hk.toml"
        config.write_text(
            '[cluster]\nhostlist = "n[0-3]"\n[housekeeping]\ncommand = ["true"]\n'
            '[service]\nendpoint = "tcp://no-such-host.invalid:5555"\n'
            f'events-endpoint = "ipc://{base}/ev"\nstate-dir = "{base}/state"\n'
            "insecure = true\n"
        )
        proc = run_hkservice(config)
        assert proc.returncode == 1
        assert "hkservice: ERROR: cannot bind tcp://no-such-host.invalid:5555: " in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_event_seq_keeps_increasing_over_a_restart(hk_service: ServiceFactory, events: Any) -> None:
    svc = hk_service(release_after="0")
    before = events(svc)
    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0"})
    before.wait(final_seen(1))
    first = [body["seq"] for _, body in before.seen]
    assert first == list(range(first[0], first[0] + len(first)))
    svc.stop()
    svc.start()
    after = events(svc)
    svc.call("housekeeping.start", {"jobid": 2, "ranks": "0"})
    after.wait(final_seen(2))
    second = [body["seq"] for _, body in after.seen]
    assert second == list(range(second[0], second[0] + len(second)))
    assert second[0] > first[-1]


def test_output_of_units_ended_before_a_restart_is_pruned_too(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(hostlist="node[0-1]", command=["true"])

    def run_units(first: int) -> None:
        for jobid in range(first, first + 60):
            svc.call("housekeeping.start", {"jobid": jobid, "ranks": "0"})
        svc.wait_idle(timeout=60)

    run_units(1000)
    svc.stop()
    svc.start()
    run_units(2000)
    kept = sorted(int(p.name) for p in (svc.state_dir / "run").iterdir() if p.name.isdigit())
    # The last 100 finished units, the oldest ones from before the restart pruned.
    assert kept == [*range(1020, 1060), *range(2000, 2060)]


def test_durations_bare_numbers_are_seconds_and_a_zero_timeout_is_refused() -> None:
    from hkservice.config import ConfigError, parse_config

    def config(**housekeeping: object) -> dict[str, Any]:
        return {
            "cluster": {"hostlist": "n[0-1]"},
            "housekeeping": {"command": ["true"], **housekeeping},
            "service": {"endpoint": "ipc:///tmp/hk-x/hk.sock", "state-dir": "/tmp/hk-x"},
        }

    parsed = parse_config(config(**{"release-after": 30, "kill-grace": 1.5, "timeout": "inf"}))
    assert (parsed.release_after, parsed.kill_grace, parsed.timeout) == (30.0, 1.5, None)
    for zero in ("0", 0, "0s"):
        with pytest.raises(ConfigError, match=r"^housekeeping.timeout: 0 would time every"):
            parse_config(config(timeout=zero))


def test_an_id_of_thousands_of_digits_is_invalid_not_internal(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service()
    huge = "9" * 5000
    with pytest.raises(ServiceError, match=r"id 9{20}…9{10} \(5000 characters\) in '0-9") as err:
        svc.call("housekeeping.start", {"jobid": 1, "ranks": f"0-{huge}"})
    assert err.value.code == "EINVAL"
    assert len(str(err.value)) < 200
    assert "Traceback" not in svc.log()


def test_a_full_disk_is_reported_as_such_when_the_service_stops(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(stop_commands_on_exit=False)
    for jobid in range(1, 4):  # grow the WAL past the service log's size
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": "0-3"})
    svc.wait_idle()
    wal = svc.state_dir / "hk.db-wal"
    limit = svc.log_path.stat().st_size + 2000
    assert wal.stat().st_size > limit
    assert svc.proc is not None
    # A file size limit is a real write failure to SQLite (EFBIG, as ENOSPC, makes it
    # roll back by itself; Python ignores SIGXFSZ), for the WAL only: the log is below
    # the limit, with room for the last messages.
    resource.prlimit(svc.proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    with pytest.raises(
        ServiceError,
        match=r"could not save the state .*\((disk I/O error|database or disk is full)\)",
    ):
        svc.call("housekeeping.start", {"jobid": 9, "ranks": "0"})
    assert svc.stop() == 1
    assert "no transaction is active" not in svc.log()
    assert re.search(r"(disk I/O error|database or disk is full); stopping", svc.log())


def ran_once_each(runs: Path, jobids: range, ranks: range) -> None:
    lines = runs.read_text().split()
    seen = [(int(lines[i]), int(lines[i + 1])) for i in range(0, len(lines), 2)]
    assert sorted(seen) == [(j, r) for j in jobids for r in ranks]


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_a_restart_with_launches_still_queued_runs_every_rank_exactly_once(
    hk_service: ServiceFactory, script: Script, tmp_path: Path, how: str
) -> None:
    runs = tmp_path / "runs"
    cmd = script(f'echo "$HK_JOB_ID $HK_RANK" >> "{runs}"; sleep 1; exit 0')
    svc = hk_service(
        hostlist="node[0-15]", command=[cmd], release_after="0", stop_commands_on_exit=False
    )
    jobids = range(5000, 5020)
    wait_until(lambda: svc.agent_pid() is not None)
    agent = svc.agent_pid()
    assert agent is not None
    # The agent is held still while the launches queue up for it and the service goes
    # (as on a loaded machine): once it goes on, it reads the new service's hello among
    # the old connection's launches.
    os.kill(agent, signal.SIGSTOP)
    try:
        with svc.client() as client:
            for jobid in jobids:
                client.call("housekeeping.start", {"jobid": jobid, "ranks": "0-15"})
        time.sleep(0.3)
        if how == "kill9":
            svc.kill9()
        else:
            assert svc.stop() == 0
        threading.Timer(1.0, os.kill, (agent, signal.SIGCONT)).start()
        svc.start()
    finally:
        os.kill(agent, signal.SIGCONT)
    svc.wait_idle(timeout=60)
    assert drains(svc) == {}
    history = svc.call("housekeeping.history")["units"]
    assert sorted(u["jobid"] for u in history) == list(jobids)
    assert all(u["failed"] == "" for u in history)
    ran_once_each(runs, jobids, range(16))
    assert "lost" not in svc.log()


def test_a_dead_agent_is_noticed_its_commands_killed_and_reported_lost(
    hk_service: ServiceFactory, script: Script
) -> None:
    svc = hk_service(
        hostlist="node[0-1]", command=[script("sleep 600 & wait")], stop_commands_on_exit=False
    )
    svc.call("housekeeping.start", {"jobid": 31, "ranks": "0-1"})
    wait_until(lambda: len(svc.command_pids()) == 2)
    groups = set(svc.command_pids().values())
    agent = svc.agent_pid()
    assert agent is not None
    os.kill(agent, 9)
    svc.wait_idle(timeout=8)
    lost = f"housekeeping@{encode_jobid(31, 'f58plain')} lost: the local agent died"
    assert drains(svc) == {0: lost, 1: lost}
    assert not _processes_in_groups(groups)
    assert f"the local agent (pid {agent}) died" in svc.log()
    # The new agent serves: work goes on.
    svc.call("resource.undrain", {"ranks": "0-1"})
    svc.call("housekeeping.start", {"jobid": 32, "ranks": "0-1"})
    wait_until(lambda: len(svc.command_pids()) == 2)
    svc.call("housekeeping.kill", {"jobid": 32, "signum": 9})
    svc.wait_idle()


def test_a_stopped_agent_makes_its_nodes_offline_and_kills_wait_for_it(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(
        hostlist="node[0-3]",
        command=["sleep", "600"],
        stop_commands_on_exit=False,
        start=False,
    )
    svc.service_options["agent-silence"] = "2s"
    svc.start()
    svc.call("housekeeping.start", {"jobid": 41, "ranks": "1-2"})
    wait_until(lambda: len(svc.command_pids()) == 2)
    agent = svc.agent_pid()
    assert agent is not None
    os.kill(agent, signal.SIGSTOP)
    try:
        # Well before the default agent-silence (20 s): the option is heeded.
        wait_until(lambda: svc.call("resource.status")["offline"] == "1-2", timeout=10)
        with pytest.raises(ServiceError, match="the local agent is not answering") as err:
            svc.call("housekeeping.kill", {"jobid": 41})
        assert err.value.code == "EAGAIN"
    finally:
        os.kill(agent, signal.SIGCONT)
    wait_until(lambda: svc.call("resource.status")["offline"] == "", timeout=30)
    assert unit_of(svc.call("housekeeping.list"), 41)["pending"] == "1-2"
    svc.call("housekeeping.kill", {"jobid": 41, "signum": 9})
    svc.wait_idle()


def test_an_output_directory_that_cannot_be_made_fails_the_launch(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(hostlist="node[0-1]", stop_commands_on_exit=False)
    # A file where the unit's output directory goes: mkdir fails, as on a full disk.
    (svc.state_dir / "run" / "13").write_text("in the way")
    svc.call("housekeeping.start", {"jobid": 13, "ranks": "0-1"})
    svc.wait_idle()
    reason = f"housekeeping@{encode_jobid(13, 'f58plain')} launch: File exists: "
    assert all(r.startswith(reason) for r in drains(svc).values())
    assert sorted(drains(svc)) == [0, 1]


def test_stopping_with_launches_queued_skips_them_and_loses_no_exit(
    hk_service: ServiceFactory, script: Script, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    svc = hk_service(
        hostlist="node[0-63]", command=[script(f'echo "$HK_RANK" >> "{runs}"; sleep 30')]
    )
    jobids = range(1, 41)
    with svc.client() as client:
        for jobid in jobids:
            client.call("housekeeping.start", {"jobid": jobid, "ranks": "0-63"})
    started = time.monotonic()
    assert svc.stop() == 0
    assert time.monotonic() - started < 10
    log = svc.log()
    assert "did not confirm" not in log and "Traceback" not in log
    wait_until(lambda: svc.agent_pid() is None)  # it left only with every exit acked
    # On a loaded machine the stop can come before the first launch: no file at all.
    launched = len(runs.read_text().split()) if runs.exists() else 0
    assert launched < 64 * len(jobids)  # the shutdown overtook queued launches
    svc.start()
    assert svc.call("housekeeping.list")["units"] == []
    history = svc.call("housekeeping.history", {"limit": 100})["units"]
    assert sorted(u["jobid"] for u in history) == list(jobids)
    assert all(u["failed"] == "0-63" for u in history)
    assert "lost" not in svc.log()


def test_a_burst_of_sigchld_fills_no_log_with_wakeup_fd_warnings() -> None:
    # The agent's own signal setup, then SIGCHLDs while the loop is busy (as when
    # thousands of commands end at once): asyncio's wakeup socket fills up.
    program = """
import asyncio, os, signal
from hkservice.agent import install_signal_wakeup

async def main() -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, lambda: None)
    install_signal_wakeup()
    for _ in range(5000):
        os.kill(os.getpid(), signal.SIGCHLD)
    await asyncio.sleep(0)

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr
    assert done.stderr == ""
