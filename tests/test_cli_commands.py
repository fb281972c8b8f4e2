"""`hkconsole` commands against a real service: golden outputs and every error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from hkconsole.cli import main
from hkservice.jobid import encode_jobid
from tests.conftest import RunningService, ServiceFactory

J1, J2, J3 = 1_000_001, 1_000_002, 1_000_003


@pytest.fixture
def svc(hk_service: ServiceFactory) -> RunningService:
    """Three units like the Flux transcript's: J1 on 0-1, J2 on 2, J3 on 3."""
    service = hk_service(hostlist="node[0-7]", command=["sleep", "600"], release_after="0")
    for jobid, ranks in ((J1, "0-1"), (J2, "2"), (J3, "3")):
        service.call("housekeeping.start", {"jobid": jobid, "ranks": ranks, "userid": 42})
    return service


def run(
    capsys: pytest.CaptureFixture[str], svc: RunningService, *args: str
) -> tuple[int, str, str]:
    code = main(["--endpoint", svc.endpoint, *args])
    out, err = capsys.readouterr()
    return code, out, err


def f58(jobid: int) -> str:
    return encode_jobid(jobid, "f58")


def test_list_default_format(capsys: Any, svc: RunningService) -> None:
    code, out, _ = run(capsys, svc, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "       JOBID NNODES #ACTIVE  RUNTIME NODELIST"
    pattern = r"^ {0,12}(\S+) +(\d+) +(\d+) +\S+s (\S+)$"
    rows = [re.match(pattern, line).groups() for line in lines[1:]]  # type: ignore[union-attr]
    assert rows == [
        (f58(J1), "2", "2", "node[0-1]"),
        (f58(J2), "1", "1", "node2"),
        (f58(J3), "1", "1", "node3"),
    ]
    assert all(len(line.split(" node")[0]) == 36 for line in lines[1:])


def test_list_pending_format_and_no_header(capsys: Any, svc: RunningService) -> None:
    _, out, _ = run(capsys, svc, "list", "-o", "pending")
    assert out.splitlines()[0] == "       JOBID #ACTIVE  RUNTIME ACTIVE_NODES"
    _, out, _ = run(capsys, svc, "list", "-n", "-o", "{id.dec} {pending.ranks}")
    assert out == f"{J1} 0-1\n{J2} 2\n{J3} 3\n"


def test_merging_and_include(capsys: Any, svc: RunningService) -> None:
    assert run(capsys, svc, "list", "-no", "{nnodes}")[1] == "4\n"
    assert run(capsys, svc, "list", "-no", "{nodelist}")[1] == "node[0-3]\n"
    assert run(capsys, svc, "list", "-i", "0,3", "-no", "{ranks}")[1] == "0,3\n"
    assert run(capsys, svc, "list", "-i", "node[1-2]", "-no", "{id.dec}")[1] == f"{J1}\n{J2}\n"
    # Unknown ranks and hosts in a filter match nothing: not an error.
    assert run(capsys, svc, "list", "-i", "5-7,100", "-n")[1] == ""
    assert run(capsys, svc, "list", "-i", "foo", "-n")[1] == ""
    assert run(capsys, svc, "list", "-no", "{allocated.nnodes} {nnodes}")[1] == "4 4\n"


def test_sort_after_merge_and_fit(capsys: Any, svc: RunningService) -> None:
    out = run(capsys, svc, "list", "-o", "sort:-nnodes,id.dec +:{id.dec} {nnodes:>3h}")[1]
    assert out.splitlines() == ["JOBID   NNODES", f"{J1}   2", f"{J2}   1", f"{J3}   1"]


def test_list_json(capsys: Any, svc: RunningService) -> None:
    document = json.loads(run(capsys, svc, "list", "-o", "json", "-i", "1-2")[1])
    assert [(u["id"], u["allocated"]["ranks"], u["userid"]) for u in document["units"]] == [
        (J1, "1", 42),
        (J2, "2", 42),
    ]
    assert document["units"][0]["allocated"]["nodelist"] == "node1"


def test_format_help_and_get_config(capsys: Any, svc: RunningService) -> None:
    out = run(capsys, svc, "list", "-o", "help")[1]
    assert out.startswith("\nConfigured hkconsole list output formats:\n\n  default      Default")
    out = run(capsys, svc, "list", "-o", "get-config=pending")[1]
    assert out.splitlines() == [
        "[formats.pending]",
        'description = "hkconsole list format string including active nodes only"',
        'format = "{id.f58:>12} {pending.nnodes:>7} {runtime!F:>8} {pending.nodelist}"',
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("list", "-o", "{foo}"), "Unknown format field: foo"),
        (
            ("list", "-o", "foo bar"),
            "--format: No such format foo bar (Did you mean '{foo} {bar}'?)",
        ),
        (("list", "-o", "sort:bogus {id}"), "Invalid sort key: bogus"),
        (("list", "-o", "{id"), "Error in user format"),
        (("list", "-i", "foo["), "invalid targets 'foo[': not an idset or a hostlist"),
        (("kill",), "specify at least one of --targets, --jobid, or --all"),
        (("kill", "--all", "-j", "1"), "do not specify --jobid with --all"),
        (("kill", "-s", "FOO", "--all"), "unknown signal 'FOO'"),
        (("kill", "-s", "99", "--all"), "invalid signal number 99"),
        (("kill", "-j", "ƒ2"), "no housekeeping running for job f2"),
        (("kill", "-t", "5-6"), "no housekeeping running on ranks 5-6"),
        (("kill", "-t", "node9"), "host 'node9' is not in the cluster"),
        (("kill", "-t", "3,1"), "invalid targets '3,1': range '1' is out of order"),
        (("undrain", "4"), "rank 4 is not drained"),
        (("drain", "9", "x"), "ranks 9 are not in the cluster (0-7)"),
        (("start", "-j", "1000001", "-t", "4"), "is already in housekeeping"),
        (("nodes", "-s", "sleepy"), "unknown state 'sleepy'"),
    ],
)
def test_errors(capsys: Any, svc: RunningService, args: tuple[str, ...], message: str) -> None:
    code, _, err = run(capsys, svc, *args)
    assert code == 1
    assert err.startswith("hkconsole: ERROR: ")
    assert message in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys: Any, svc: RunningService) -> None:
    for args in (("kill", "-j", "all"), ("kill", "-j", "notajob"), ("list", "--bogus")):
        with pytest.raises(SystemExit) as exc:
            main(["--endpoint", svc.endpoint, *args])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "use --all to target every job" in err
    assert "'notajob' is not a valid jobid" in err


@pytest.mark.parametrize("jobid", [str(J2), hex(J2), encode_jobid(J2, "f58plain")])
def test_kill_by_jobid_in_any_encoding(capsys: Any, svc: RunningService, jobid: str) -> None:
    code, out, _ = run(capsys, svc, "kill", "-j", jobid)
    assert (code, out) == (0, "signalled 1 rank of 1 unit with SIGTERM\n")
    svc.wait_for(lambda r: J2 not in [u["jobid"] for u in r["units"]])


def test_kill_variants(capsys: Any, svc: RunningService) -> None:
    assert run(capsys, svc, "kill", "-t", "node[1-2]", "-s", "kill")[1] == (
        "signalled 2 ranks of 2 units with SIGKILL\n"
    )
    svc.wait_for(lambda r: [u["pending"] for u in r["units"]] == ["0", "3"])
    assert run(capsys, svc, "kill", "-q", "--all", "-t", "3", "-s", "SIGINT")[1] == ""
    svc.wait_for(lambda r: [u["pending"] for u in r["units"]] == ["0"])
    assert run(capsys, svc, "kill", "--all", "-s", "9")[1] == (
        "signalled 1 rank of 1 unit with SIGKILL\n"
    )
    svc.wait_idle()
    reasons = {d["ranks"]: d["reason"] for d in svc.call("resource.status")["drained"]}
    assert reasons["3"] == f"housekeeping@{encode_jobid(J3, 'f58plain')} signal: killed INT"


def test_nodes_drain_undrain_start(capsys: Any, svc: RunningService) -> None:
    assert run(capsys, svc, "drain", "node6", "bad", "fan")[0] == 0
    out = run(capsys, svc, "nodes")[1].splitlines()
    assert out[0].split() == ["STATE", "NNODES", "RANKS", "REASON", "NODELIST"]
    assert out[1].split() == ["idle", "3", "4-5,7", "node[4-5,7]"]
    assert out[2].split() == ["housekeeping", "4", "0-3", "node[0-3]"]
    assert out[3].split() == ["drained", "1", "6", "bad", "fan", "node6"]
    assert run(capsys, svc, "nodes", "-s", "drained", "-no", "{ranks}")[1] == "6\n"
    listing = run(capsys, svc, "drain")[1].splitlines()
    assert listing[0].split() == ["TIMESTAMP", "STATE", "RANK", "REASON", "NODELIST"]
    assert listing[1].split()[2:] == ["drained", "6", "bad", "fan", "node6"]
    code, _, err = run(capsys, svc, "drain", "6", "another")
    assert code == 0 and "node6 already drained: kept the first reason" in err
    assert run(capsys, svc, "undrain", "node6")[0] == 0
    assert run(capsys, svc, "drain", "-n")[1] == ""
    assert run(capsys, svc, "start", "-j", "ƒ2", "-t", "node[6-7]", "--userid", "7")[0] == 0
    unit = svc.call("housekeeping.list")["units"][-1]
    assert (unit["jobid"], unit["ranks"], unit["userid"]) == (1, "6-7", 7)


def test_service_down_is_reported_quickly(capsys: Any, tmp_path: Any) -> None:
    start = time.monotonic()
    code = main(["--endpoint", f"ipc://{tmp_path}/nothing.sock", "list"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"hkconsole: ERROR: no hk service at ipc://{tmp_path}/nothing.sock" in err
    stale = tmp_path / "stale.sock"
    stale.touch()  # a socket file left behind by a dead service
    code = main(["--endpoint", f"ipc://{stale}", "list"])
    assert code == 1
    assert "did not answer within 4 s" in capsys.readouterr().err
    assert time.monotonic() - start < 5.5


def test_list_never_imports_textual(svc: RunningService) -> None:
    check = (
        "import sys; from hkconsole.cli import main; "
        f"code = main(['--endpoint', '{svc.endpoint}', 'list', '-n']); "
        "assert 'textual' not in sys.modules, 'textual imported'; sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3


def test_pipe_to_head_is_not_an_error(svc: RunningService) -> None:
    proc = subprocess.run(
        f"{sys.executable} -m hkconsole --endpoint {svc.endpoint} list | head -c 5",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert proc.stdout == "     "
    assert "Traceback" not in proc.stderr
