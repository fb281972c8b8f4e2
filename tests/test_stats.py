"""Insight over time, on a real service: stuck ranks, node and user statistics, flapping
nodes, retention, and `hkconsole stats` and `list -o stuck` on top of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hkconsole.cli import main
from hkservice import core
from hkservice.config import ConfigError, parse_config
from hkservice.protocol import Prepacked, unpack
from hkservice.stats import History, Series, quantile
from hkservice.store import Store
from tests.conftest import RunningService, ServiceFactory
from tests.test_service import Events, events  # noqa: F401 - the fixture

Script = Callable[[str], str]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HK_F58_FORCE_ASCII", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc"))
    for name in ("HK_ENDPOINT", "HK_LIST_FORMAT_DEFAULT"):
        monkeypatch.delenv(name, raising=False)


def hkconsole(
    capsys: pytest.CaptureFixture[str], svc: RunningService, *args: str
) -> tuple[int, str, str]:
    code = main(["--endpoint", svc.endpoint, *args])
    out, err = capsys.readouterr()
    return code, out, err


def stuck_events(ev: Events, wait: float) -> list[dict[str, Any]]:
    """Every housekeeping.stuck event seen within `wait` seconds from now."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if ev.sock.poll(50):
            topic, body = ev.sock.recv_multipart()
            ev.seen.append((topic.decode(), unpack(body)))
    return [body for topic, body in ev.seen if topic == "housekeeping.stuck"]


def by_rank(svc: RunningService, **params: Any) -> dict[int, dict[str, Any]]:
    return {n["rank"]: n for n in svc.call("stats.nodes", params)["nodes"]}


def test_a_rank_past_warn_after_is_stuck_said_once_listed_and_filtered(
    hk_service: ServiceFactory,
    script: Script,
    events: Callable[[RunningService], Events],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = script('[ "$HK_RANK" = 1 ] && exec sleep 600\nexit 0')
    svc = hk_service(
        hostlist="node[0-3]", command=[command], warn_after="0.5s", stop_commands_on_exit=False
    )
    ev = events(svc)
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-2", "userid": 42})
    svc.wait_for(lambda r: r["units"] and r["units"][0]["pending"] == "1")
    assert svc.call("housekeeping.list")["units"][0]["stuck"] == ""
    said = stuck_events(ev, 1.5)
    assert [(e["jobid"], e["ranks"]) for e in said] == [(7, "1")]
    assert svc.call("housekeeping.list")["units"][0]["stuck"] == "1"
    assert "f8 on node1: still running after warn-after" in svc.log()

    code, out, _ = hkconsole(capsys, svc, "list", "-o", "stuck")
    header, row = out.splitlines()
    assert code == 0 and header.split() == ["JOBID", "NNODES", "#STUCK", "RUNTIME", "STUCK_NODES"]
    assert row.split()[:3] == ["f8", "3", "1"] and row.split()[-1] == "node1"
    code, out, _ = hkconsole(capsys, svc, "list", "-o", "{id.dec} {stuck.ranks} {pending.ranks}")
    assert out.splitlines()[1:] == ["7 1 1"]
    assert [n["rank"] for n in svc.call("stats.nodes", {"stuck": True})["nodes"]] == [1]
    code, out, _ = hkconsole(capsys, svc, "stats", "nodes", "--stuck", "-o", "{hostname} {stuck}")
    assert (code, out.splitlines()) == (0, ["HOST STUCK", "node1 stuck"])
    code, out, _ = hkconsole(capsys, svc, "stats", "users", "--stuck", "-o", "{userid} {stuck}")
    assert (code, out.splitlines()) == (0, ["USERID STUCK", "42 1"])

    # A restart keeps the mark and does not say it again.
    svc.stop()
    svc.start()
    ev = events(svc)
    assert svc.call("housekeeping.list")["units"][0]["stuck"] == "1"
    assert stuck_events(ev, 1.0) == []
    assert svc.log().count("still running after warn-after") == 1
    svc.call("housekeeping.kill", {"jobid": 7, "signum": 9})
    svc.wait_idle()
    assert svc.call("stats.nodes", {"stuck": True})["nodes"] == []


def run_units(svc: RunningService, jobids: range, ranks: str, userid: int = 42) -> None:
    for jobid in jobids:
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": ranks, "userid": userid})
        svc.wait_idle()


def test_node_and_user_stats_failures_durations_and_flapping(
    hk_service: ServiceFactory, script: Script, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    healed = tmp_path / "healed"
    command = script(
        f'[ "$HK_RANK" = 0 ] && sleep 0.3\n'
        f'[ "$HK_RANK" = 1 ] && [ ! -e {healed} ] && exit 3\nexit 0'
    )
    svc = hk_service(
        hostlist="node[0-3]",
        command=[command],
        tables={"history": {"flapping-after": 2}},
        stop_commands_on_exit=False,
    )
    run_units(svc, range(1, 2), "0-1")
    nodes = by_rank(svc)
    assert set(nodes) == {0, 1}
    assert nodes[1]["failures"] == 1 and not nodes[1]["flapping"]
    assert svc.call("resource.status")["flapping"] == ""
    run_units(svc, range(2, 4), "0-1")
    run_units(svc, range(4, 5), "0", userid=43)
    nodes = by_rank(svc)
    assert {
        r: (n["runs"], n["failures"], n["streak"], n["flapping"]) for r, n in nodes.items()
    } == {
        0: (4, 0, 0, False),
        1: (3, 3, 3, True),
    }
    assert 0.3 <= nodes[0]["p50"] <= nodes[0]["p95"] <= nodes[0]["max"] < 5
    assert nodes[1]["last_jobid"] == 3 and nodes[1]["last_reason"] == "exited 3"
    assert svc.call("resource.status")["flapping"] == "1"
    users = {u["userid"]: u for u in svc.call("stats.users")["users"]}
    assert {k: (u["units"], u["ranks"], u["failures"]) for k, u in users.items()} == {
        42: (3, 6, 3),
        43: (1, 1, 0),
    }
    assert 0.3 <= users[43]["total"] <= nodes[0]["max"]

    # The command line: the same numbers through the format engine.
    code, out, _ = hkconsole(capsys, svc, "stats", "nodes")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "HOST", "RUNS", "FAILS", "FAILRATE", "P50", "P95", "MAX", "FLAPPING", "LAST_FAILURE",
        "LAST_REASON",
    ]  # fmt: skip
    assert rows[0].split()[:4] == ["node0", "4", "0", "0%"] and rows[0].rstrip().endswith("-")
    assert rows[1].split()[:4] == ["node1", "3", "3", "100%"] and "flapping" in rows[1]
    assert rows[1].endswith("exited 3")
    code, out, _ = hkconsole(capsys, svc, "stats", "nodes", "--flapping", "-no", "{rank} {streak}")
    assert (code, out) == (0, "1 3\n")
    code, out, _ = hkconsole(capsys, svc, "stats", "nodes", "-o", "json")
    document = json.loads(out)
    assert [(n["hostname"], n["failrate"]) for n in document["nodes"]] == [
        ("node0", 0.0),
        ("node1", 1.0),
    ]
    code, out, _ = hkconsole(capsys, svc, "stats", "users", "-o", "{userid} {units} {failrate!P}")
    assert out.splitlines() == ["USERID UNITS FAILRATE", "42 3 50.00%", "43 1 0%"]

    # A success ends the streak; a restart rebuilds it all from the database.
    healed.touch()
    run_units(svc, range(5, 6), "1")
    assert by_rank(svc)[1]["streak"] == 0 and svc.call("resource.status")["flapping"] == ""
    before = svc.call("stats.nodes")["nodes"]
    svc.stop()
    svc.start()
    assert svc.call("stats.nodes")["nodes"] == before
    # A window shorter than the time since the last run sees nothing.
    time.sleep(0.2)
    assert svc.call("stats.nodes", {"window": 0.1})["nodes"] == []
    assert len(svc.call("stats.nodes", {"window": 3600})["nodes"]) == 2


def test_formats_help_and_configured_formats_of_stats(
    hk_service: ServiceFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = hk_service(hostlist="node[0-3]")
    run_units(svc, range(1, 2), "2-3", userid=os.getuid())
    code, out, _ = hkconsole(capsys, svc, "stats", "nodes", "-o", "help")
    assert code == 0 and "failing" in out and "long" in out
    config = tmp_path / "home" / "hk" / "hkconsole.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[stats.users.formats.mine]\nformat = "{username}:{ranks}"\n')
    code, out, _ = hkconsole(capsys, svc, "stats", "users", "-n", "-o", "mine")
    assert (code, out.splitlines()) == (0, [f"{_me()}:2"])
    code, out, _ = hkconsole(capsys, svc, "stats", "nodes", "-o", "sort:-rank {hostname}")
    assert out.splitlines() == ["HOST", "node3", "node2"]
    code, _, err = hkconsole(capsys, svc, "stats", "nodes", "-o", "{nodelist}")
    assert code == 1 and "Unknown format field: nodelist" in err


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stats", "nodes", "--since", "yesterday"), "'yesterday' is not a window"),
        (("stats", "nodes", "--since", "0"), "'0' is not a window: give a duration above 0"),
        (("stats", "users", "--since", "inf"), "'inf' is not a window"),
        (("stats", "nodes", "--since=-5d"), "'-5d' is not a window"),
        (("stats", "nodes", "--since", "1e400"), "'1e400' is not a window"),
        (("stats", "users", "--flapping"), "unrecognized arguments: --flapping"),
        (("stats",), "the following arguments are required: nodes|users"),
    ],
)
def test_stats_usage_errors(
    hk_service: ServiceFactory,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    svc = hk_service(start=False)
    code, _, err = hkconsole(capsys, svc, *args)
    assert code == 2 and message in err
    assert "e.g. 0" not in err  # the examples of a duration in general are no window


@pytest.mark.parametrize("what", ["nodes", "users"])
def test_stats_of_a_service_that_is_down_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    stale = tmp_path / "stale.sock"
    stale.touch()  # left behind by a service that died
    for endpoint, message in (
        (f"ipc://{tmp_path}/none.sock", "(is hkservice running?"),
        (f"ipc://{stale}", "nothing listens on its socket"),
    ):
        assert main(["--endpoint", endpoint, "stats", what, "--since", "7d"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"hkconsole: ERROR: no hk service at {endpoint}")
        assert message in err and len(err.splitlines()) == 1


def test_bad_stats_requests_are_refused(hk_service: ServiceFactory) -> None:
    svc = hk_service()
    from hkconsole.client import ServiceError

    for params, code in (
        ({"window": -1}, "EINVAL"),
        ({"window": float("inf")}, "EINVAL"),
        ({"window": "7d"}, "EPROTO"),
        ({"stuck": 1}, "EPROTO"),
        ({"flapping": "yes"}, "EPROTO"),
    ):
        with pytest.raises(ServiceError) as info:
            svc.call("stats.nodes", params)
        assert info.value.code == code, params
    assert svc.call("stats.users", {"window": 60})["users"] == []


def test_history_keep_prunes_runs_and_finished_units(hk_service: ServiceFactory) -> None:
    svc = hk_service(hostlist="node[0-3]", tables={"history": {"keep": "1s"}})
    run_units(svc, range(1, 3), "0-3")
    assert len(svc.call("housekeeping.history")["units"]) == 2
    assert sum(n["runs"] for n in svc.call("stats.nodes")["nodes"]) == 8
    deadline = time.monotonic() + 10
    while svc.call("stats.nodes")["nodes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert svc.call("stats.nodes")["nodes"] == []
    while svc.call("housekeeping.history")["units"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert svc.call("housekeeping.history")["units"] == []
    db = sqlite3.connect(svc.state_dir / "hk.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"housekeeping": {"warn-after": "0"}},
            'housekeeping.warn-after: must be above 0 (or "inf"',
        ),
        ({"history": {"keep": "soon"}}, "history.keep: invalid duration 'soon'"),
        ({"history": {"flapping-after": 0}}, "history.flapping-after: must be from 1 to 1000"),
        ({"history": {"flapping-after": "3"}}, "history.flapping-after: expected a whole number"),
        ({"history": {"depth": 3}}, "history.depth: unknown key"),
        ({"metrics": {"endpoint": "9810"}}, "metrics.endpoint: '9810' is not HOST:PORT"),
        ({"metrics": {"endpoint": "localhost:0"}}, "the port must be a number from 1 to 65535"),
        ({"metrics": {"endpoint": "h:" + "9" * 5000}}, "the port must be a number from 1"),
    ],
)
def test_bad_history_and_metrics_config_is_named(
    tables: dict[str, dict[str, Any]], message: str
) -> None:
    data: dict[str, Any] = {"cluster": {"hostlist": "n[0-3]"}, "housekeeping": {"command": ["x"]}}
    for name, table in tables.items():
        data[name] = {**data.get(name, {}), **table}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value)


def test_history_and_metrics_defaults_and_inf() -> None:
    base: dict[str, Any] = {"cluster": {"hostlist": "n[0-3]"}, "housekeeping": {"command": ["x"]}}
    config = parse_config(base)
    assert (config.warn_after, config.history_keep, config.flapping_after) == (600, 90 * 86400, 3)
    assert config.metrics_endpoint is None
    config = parse_config(
        {
            **base,
            "housekeeping": {"command": ["x"], "warn-after": "inf"},
            "history": {"keep": "inf"},
            "metrics": {"endpoint": "[::1]:9810"},
        }
    )
    assert (config.warn_after, config.history_keep) == (None, None)
    assert config.metrics_endpoint == ("::1", 9810)


Run = tuple[float, int, float, int, int, str, str | None]


def save_runs(
    svc: RunningService, runs: Iterable[Run], units: Iterable[tuple[int, float]] = ()
) -> None:
    """Rows of `runs` (t_end, rank, duration, userid, jobid, result, reason), and finished
    `units` (userid, t_end), written into a service's new state directory before it
    starts: as if it had run them."""
    svc.state_dir.mkdir(mode=0o700)
    store = Store(svc.state_dir)
    store.db.execute("BEGIN")
    store.db.executemany(
        "INSERT INTO runs (t_end, rank, duration, userid, jobid, result, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        runs,
    )
    store.db.executemany(
        "INSERT INTO history (jobid, userid, t_start, t_end, ranks, failed, releases)"
        " VALUES (0, ?, ?, ?, '0', '', 1)",
        ((userid, t_end - 1, t_end) for userid, t_end in units),
    )
    store.db.execute("COMMIT")
    store.close()


def nodes_when_loaded(svc: RunningService) -> list[dict[str, Any]]:
    """stats.nodes, asked until the history is loaded."""
    from hkconsole.client import ServiceError

    while True:
        try:
            return svc.call("stats.nodes")["nodes"]
        except ServiceError as exc:  # asked while it loads: said so, never a partial answer
            assert exc.code == "EAGAIN" and "still loading" in str(exc)
            time.sleep(0.02)


def test_a_saved_history_larger_than_a_chunk_is_loaded_whole(hk_service: ServiceFactory) -> None:
    from hkservice.stats import LOAD_CHUNK

    svc = hk_service(hostlist="node[0-3]", start=False, tables={"history": {"keep": "inf"}})
    count = 5 * LOAD_CHUNK + 7
    now = time.time()
    save_runs(
        svc,
        (
            (
                now - count + i,
                i % 4,
                float(i % 13),
                42,
                i - (1 << 63),
                "exit" if i % 4 == 3 and i >= count - 12 else "ok",
                "exited 1" if i % 4 == 3 and i >= count - 12 else None,
            )
            for i in range(count)
        ),
    )
    svc.start()
    nodes = {n["rank"]: n for n in nodes_when_loaded(svc)}
    for rank in range(4):
        durations = sorted(float(i % 13) for i in range(rank, count, 4))
        node = nodes[rank]
        assert node["runs"] == len(durations)
        assert node["p50"] == durations[math.ceil(len(durations) / 2) - 1]
        assert node["p95"] == durations[math.ceil(len(durations) * 0.95) - 1]
        assert node["max"] == 12.0
    assert (nodes[3]["failures"], nodes[3]["streak"], nodes[3]["flapping"]) == (3, 3, True)
    assert nodes[3]["last_jobid"] == count - 1 - (count - 1 - 3) % 4
    assert svc.call("resource.status")["flapping"] == "3"


@contextlib.contextmanager
def one_socket(svc: RunningService) -> Iterator[Any]:
    """One DEALER to the service: it takes the requests in the order they were sent."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(svc.endpoint)
    try:
        yield sock
    finally:
        sock.close()


def then_a_list(sock: Any, method: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """`method` (id 1), then a housekeeping.list (id 2): the replies, as they came."""
    from hkservice.protocol import pack, request

    sock.send(pack(request(method, params, 1)))
    sock.send(pack(request("housekeeping.list", {}, 2)))
    return [unpack(sock.recv()) for _ in range(2)]


def test_a_since_request_being_made_holds_up_no_request_after_it(
    hk_service: ServiceFactory,
) -> None:
    """`stats.nodes --since` makes its rows in a worker thread (tens of milliseconds for
    8,192 nodes): a request the service takes after it is answered first, not behind it;
    and more than MAX_STATS_REQUESTS at once are told to try again, not queued."""

    from hkservice.protocol import pack, request
    from hkservice.stats import MAX_STATS_REQUESTS

    size = 8192
    svc = hk_service(hostlist=f"node[0-{size - 1}]", start=False)
    now = time.time()
    save_runs(
        svc,
        (
            (now - 60 - rank % 600, rank, float(rank % 13), 42, rank - (1 << 63), "ok", None)
            for rank in range(size)
        ),
    )
    svc.start()
    assert len(nodes_when_loaded(svc)) == size
    with one_socket(svc) as sock:
        replies = then_a_list(sock, "stats.nodes", {"window": 3600})
        assert [r["id"] for r in replies] == [2, 1]
        nodes = replies[1]["result"]["nodes"]
        assert [n["rank"] for n in nodes] == list(range(size))
        assert nodes[size - 1]["runs"] == 1 and nodes[size - 1]["max"] == (size - 1) % 13

        # The first MAX_STATS_REQUESTS are taken; those that come while that many are
        # still being answered (all of the rest, but for a very slow delivery) are not.
        burst = range(10, 10 + 2 * MAX_STATS_REQUESTS)
        for req_id in burst:
            sock.send(pack(request("stats.nodes", {"window": 3600}, req_id)))
        replies = {r["id"]: r for r in (unpack(sock.recv()) for _ in burst)}
        refused = {i: r["error"] for i, r in replies.items() if "error" in r}
        assert refused and min(refused) >= burst[MAX_STATS_REQUESTS]
        for error in refused.values():
            assert error == {
                "code": "EAGAIN",
                "message": f"{MAX_STATS_REQUESTS} stats.nodes|users requests are being answered: "
                "try again shortly",
            }
        answered = [r["result"]["nodes"] for i, r in replies.items() if i not in refused]
        assert answered == [nodes] * (len(burst) - len(refused))

        # A reply sent later, while the service waits for requests, leaves none unread
        # (sent through the wrong socket, one was lost within 30 to 200 rounds of this).
        with svc.client(timeout=5) as client:
            for req_id in range(100, 400):
                sock.send(pack(request("stats.nodes", {"window": 3600, "stuck": True}, req_id)))
                while not sock.poll(0):
                    client.call("housekeeping.list")
                reply = unpack(sock.recv())
                assert (reply["id"], reply["result"]["nodes"]) == (req_id, [])
    assert svc.call("housekeeping.list")["units"] == []


# The clock of the histories made in this process.
NOW = 1e9


@contextlib.contextmanager
def history_of(tmp_path: Path, size: int) -> Iterator[History]:
    """A History over a new store, in this process, for a cluster of `size` nodes."""
    (tmp_path / "state").mkdir(mode=0o700)
    store = Store(tmp_path / "state")
    hk = core.Housekeeping(size, core.Policy())
    try:
        yield History(store, hk, lambda: NOW, keep=None, flapping_after=3)
    finally:
        store.close()


def finished(rank: int, seconds: float, code: int, userid: int = 42) -> core.RankFinished:
    """A run of `rank` ending at NOW, with exit `code`."""
    return core.RankFinished(1, rank, core.Outcome("exit", code), NOW, NOW - seconds, userid)


@contextlib.contextmanager
def worker_held() -> Iterator[threading.Event]:
    """The running loop's worker thread held until the event is set: what is handed to
    asyncio.to_thread meanwhile waits (the loop's only worker from now on)."""
    gate = threading.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))  # shut down with the loop
    loop.run_in_executor(None, gate.wait)
    try:
        yield gate
    finally:
        gate.set()


async def test_runs_that_end_while_kept_rows_are_gathered_are_in_the_next_answer(
    tmp_path: Path,
) -> None:
    """`stats.nodes` without a window gathers the rows kept, and makes those of nodes that
    had a run since, in a worker thread (held here): runs that end meanwhile are in the
    next answer only, and a row made of a node that had one meanwhile is not kept."""
    size = 4096

    def seen(answer: Prepacked) -> list[tuple[int, int, float, int]]:
        return [(n["rank"], n["runs"], n["max"], n["failures"]) for n in unpack(answer.packed)]

    with history_of(tmp_path, size) as history:
        history.observe(finished(rank, 1.0, 0) for rank in range(size))
        await history.load()  # every row made and kept
        history.observe(finished(rank, 2.0, 0) for rank in range(0, size, 2))
        with worker_held() as gate:
            answer = asyncio.ensure_future(history.node_stats({}))
            await asyncio.sleep(0)  # its turn taken, its reading copied, the thread held
            history.observe(finished(rank, 5.0, 3) for rank in reversed(range(size)))
            gate.set()
            before = seen(await answer)
            after = seen(await history.node_stats({}))
            again = seen(await history.node_stats({}))
    assert before == [(r, 1 + (r % 2 == 0), 1.0 + (r % 2 == 0), 0) for r in range(size)]
    assert after == again == [(r, 2 + (r % 2 == 0), 5.0, 1) for r in range(size)]


async def test_runs_that_end_while_a_since_answer_is_made_are_in_the_next_one(
    tmp_path: Path,
) -> None:
    """A `--since` answer has the runs there were when its turn came: runs that end while
    the worker thread makes its rows go into copies of their nodes' Series, not under the
    thread's feet (here every node gets one, last node first, while the thread is held)."""
    size = 4096
    with history_of(tmp_path, size) as history:
        history.observe(finished(rank, 1.0, 0) for rank in range(size))
        await history.load()
        with worker_held() as gate:
            answer = asyncio.ensure_future(history.node_stats({"window": 60}))
            await asyncio.sleep(0)  # its turn taken, its reading copied, the thread held
            history.observe(finished(rank, 5.0, 3) for rank in reversed(range(size)))
            gate.set()
            before = unpack((await answer).packed)
            after = unpack((await history.node_stats({"window": 60})).packed)
    assert {(n["runs"], n["failures"], n["max"], n["last_reason"]) for n in before} == {
        (1, 0, 1.0, "")
    }
    assert {(n["runs"], n["failures"], n["max"], n["last_reason"]) for n in after} == {
        (2, 1, 5.0, "exited 3")
    }
    assert len(before) == len(after) == size


def test_a_list_sent_after_a_users_since_request_is_answered_first(
    hk_service: ServiceFactory,
) -> None:
    """`stats.users` is made in a worker thread, its SQLite count of units too (a scan of
    100,000 here: tens of milliseconds, as the thread must outlast the list's delivery): a
    request the service takes after it is answered first, and the answer is whole."""

    size = 64
    svc = hk_service(hostlist=f"node[0-{size - 1}]", start=False)
    now = time.time()
    save_runs(
        svc,
        (
            (now - 60 - i % 600, i % size, float(i % 13), 1000 + i % 50, i - (1 << 63), "ok", None)
            for i in range(5000)
        ),
        # Half of them in the window, 1,000 a user.
        ((1000 + i // 2 % 50, now - 60 if i % 2 else now - 86400) for i in range(100_000)),
    )
    svc.start()
    nodes_when_loaded(svc)
    with one_socket(svc) as sock:
        replies = then_a_list(sock, "stats.users", {"window": 3600})
    assert [r["id"] for r in replies] == [2, 1]
    users = replies[1]["result"]["users"]
    assert [(u["userid"], u["ranks"], u["units"]) for u in users] == [
        (1000 + i, 100, 1000) for i in range(50)
    ]
    assert users == svc.call("stats.users", {"window": 3600})["users"]


async def test_user_stats_are_those_of_the_runs_and_units_saved_when_asked(
    tmp_path: Path,
) -> None:
    """`stats.users` answered in a worker thread is what the event loop would have said
    when the request's turn came, counted by hand here: runs that end, and units saved,
    while the thread waits to run (held here behind another job) are in the next answer
    only; runs that came out of time order are counted in order."""
    import random

    now = NOW
    day = 86400.0
    rnd = random.Random(7)
    runs: list[tuple[float, float, int, bool]] = []  # t_end, duration, userid, failed
    units: list[tuple[float, int]] = []  # t_end, userid

    def add_runs(count: int, oldest: float) -> None:
        ends = [now - rnd.uniform(0, oldest) for _ in range(count)]
        # (t_end, t_start): the service's duration is their difference.
        added = [(t, t - rnd.uniform(0, 900), rnd.randrange(1000, 1012)) for t in ends]
        failed = [rnd.random() < 0.1 for _ in added]
        runs.extend((t, t - start, u, f) for (t, start, u), f in zip(added, failed, strict=True))
        history.observe(
            core.RankFinished(1, rnd.randrange(64), core.Outcome("exit", int(f)), t, start, u)
            for (t, start, u), f in zip(added, failed, strict=True)
        )

    def add_units(count: int, oldest: float) -> None:
        added = [(now - rnd.uniform(0, oldest), rnd.randrange(1000, 1013)) for _ in range(count)]
        units.extend(added)
        history.store.db.executemany(
            "INSERT INTO history (jobid, userid, t_start, t_end, ranks, failed, releases)"
            " VALUES (0, ?, ?, ?, '0', '', 1)",
            [(userid, t - 1, t) for t, userid in added],
        )

    def by_hand(window: float | None, only_stuck: bool) -> dict[str, Any]:
        since = None if window is None else now - window
        stuck = {1003: 2, 2000: 1}
        userids = {u for _, _, u, _ in runs} | set(stuck)
        rows = []
        for userid in sorted(set(stuck) if only_stuck else userids):
            kept = [r for r in runs if r[2] == userid and (since is None or r[0] >= since)]
            if not kept and userid not in stuck:
                continue
            durations = sorted(d for _, d, _, _ in kept)
            rows.append(
                {
                    "userid": userid,
                    "units": sum(u == userid and (since is None or t >= since) for t, u in units),
                    "ranks": len(kept),
                    "failures": sum(f for _, _, _, f in kept),
                    "total": math.fsum(durations),
                    "p95": quantile(durations, 0.95),
                    "stuck": stuck.get(userid, 0),
                }
            )
        return {"t_now": now, "since": since, "users": rows}

    async def asked(params: dict[str, Any]) -> dict[str, Any]:
        answer = await history.user_stats(params)
        return {**answer, answer.key: unpack(answer.packed)}

    with history_of(tmp_path, 64) as history:
        add_runs(3000, 90 * day)
        add_units(400, 90 * day)
        await history.load()
        add_runs(500, 90 * day)  # after loading: out of order again
        for jobid, userid, ranks in ((7, 1003, [0, 1]), (8, 2000, [5])):
            history.hk.start(jobid, userid, ranks, now)
            history.hk.units[jobid].stuck = True
        for window in (None, 7 * day, 60 * day):
            for only_stuck in (False, True):
                params = {"window": window, "stuck": only_stuck}
                assert await asked(params) == by_hand(window, only_stuck), params

        with worker_held() as gate:
            answer = asyncio.ensure_future(asked({"window": 60 * day}))
            await asyncio.sleep(0)  # its turn taken, its reading copied, the thread held
            expected = by_hand(60 * day, False)
            add_runs(300, 1 * day)
            add_units(30, 1 * day)
            gate.set()
            assert await answer == expected
            assert await asked({"window": 60 * day}) == by_hand(60 * day, False) != expected


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 50).map(float), st.integers(0, 9).map(float), st.booleans()),
        max_size=40,
    ),
    cutoff=st.integers(0, 55).map(float),
    since=st.none() | st.integers(0, 55).map(float),
)
def test_a_series_answers_as_its_runs_counted_by_hand(
    runs: list[tuple[float, float, bool]], cutoff: float, since: float | None
) -> None:
    """Runs arrive in any order (loaded behind new ones, a clock stepping back), are
    pruned, then asked about: the answer is that of the runs kept, counted by hand."""
    series = Series()
    for t_end, duration, failed in runs:
        series.add(t_end, duration, failed)
    if since is not None:  # as a worker thread reads it: runs in any order, left so
        ordered = series.ordered
        window = [r for r in runs if r[0] >= since]
        count, failures, durations = series.read_window(since)
        assert (count, failures) == (len(window), sum(f for _, _, f in window))
        assert list(durations) == sorted(d for _, d, _ in window)
        assert series.ordered == ordered
    series.drop_before(cutoff)
    kept = [r for r in runs if r[0] >= cutoff]
    window = [r for r in kept if since is None or r[0] >= since]
    count, failures, durations = series.window(since)
    assert (count, failures) == (len(window), sum(f for _, _, f in window))
    assert list(durations) == sorted(d for _, d, _ in window)
    assert len(series) == len(kept)
    ordered = sorted(kept, key=lambda r: r[0])
    streak = 0
    for _, _, failed in reversed(ordered):
        if not failed:
            break
        streak += 1
    # Runs ending at the same time have no order of their own: only check clear cases.
    if len({t for t, _, _ in ordered[-streak - 1 :]}) == len(ordered[-streak - 1 :]):
        assert series.streak() == streak
    if durations:
        assert quantile(durations, 0.5) == sorted(durations)[math.ceil(len(durations) / 2) - 1]


def test_stats_are_reads_served_on_the_read_only_endpoint(hk_service: ServiceFactory) -> None:
    from hkconsole.client import Client

    shared = Path(tempfile.mkdtemp(prefix="hk-read-", dir="/tmp"))
    shared.chmod(0o755)
    try:
        svc = hk_service(hostlist="node[0-3]", start=False)
        svc.service_options["read-endpoint"] = f"ipc://{shared}/read.sock"
        svc.start()
        run_units(svc, range(1, 2), "0")
        with Client(f"ipc://{shared}/read.sock", timeout=5) as client:
            assert [n["rank"] for n in client.call("stats.nodes")["nodes"]] == [0]
            assert [u["userid"] for u in client.call("stats.users")["users"]] == [42]
    finally:
        shutil.rmtree(shared, ignore_errors=True)
