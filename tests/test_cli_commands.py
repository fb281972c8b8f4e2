"""`hkconsole` commands against a real service: Flux's own outputs, and every error.

Most goldens are lines of `flux-transcript.md` (real `flux housekeeping list` output),
reproduced with the transcript's jobids and layout: J1 on ranks 0-1 with rank 0 already
done, J2 on rank 2, J3 on rank 3, release-after unset. Runtimes tick, so their column is
masked; everything else must match byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hkconsole.cli import main
from hkservice.jobid import encode_jobid
from tests.conftest import ME, RunningService, ServiceFactory

# The transcript's jobids: ƒEL6aVGK, ƒESBRYLP, ƒEWuhFUB.
J1, J2, J3 = 507426897920, 511419875328, 514523660288
LAYOUT = ((J1, "0-1"), (J2, "2"), (J3, "3"))
RUNTIME = re.compile(r" *\d+(\.\d+)?[smhd]")
BY = f" by {ME}"  # in the notices of kill, drain and undrain

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ASCII f58 (the transcript's FLUX_F58_FORCE_ASCII run) and no user config."""
    monkeypatch.setenv("HK_F58_FORCE_ASCII", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc"))
    for name in (
        "HK_ENDPOINT",
        "HK_LIST_FORMAT_DEFAULT",
        "FLUX_HOUSEKEEPING_FORMAT_DEFAULT",
        "FLUX_F58_FORCE_ASCII",
    ):
        monkeypatch.delenv(name, raising=False)


def write_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body.strip() + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def flux3() -> Iterator[RunningService]:
    """The transcript's section 3, shared by the tests that only read (or fail to act)."""
    base = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    command = write_script(base / "hk.sh", '[ "$HK_RANK" = 0 ] && exit 0\nexec sleep 600')
    service = RunningService(base, "node[0-3]", [command])
    try:
        service.start()
        for jobid, ranks in LAYOUT:
            service.call("housekeeping.start", {"jobid": jobid, "ranks": ranks, "userid": 42})
        service.wait_for(lambda r: [u["pending"] for u in r["units"]] == ["1", "2", "3"])
        yield service
    finally:
        service.stop()
        service.kill_leftovers()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sleeping(hk_service: ServiceFactory) -> RunningService:
    """The same layout with every rank still running (for kills)."""
    service = hk_service(hostlist="node[0-3]", command=["sleep", "600"])
    for jobid, ranks in LAYOUT:
        service.call("housekeeping.start", {"jobid": jobid, "ranks": ranks})
    return service


def runner(capsys: pytest.CaptureFixture[str], service: RunningService) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--endpoint", service.endpoint, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], flux3: RunningService) -> Run:
    return runner(capsys, flux3)


def f58(jobid: int) -> str:
    return encode_jobid(jobid, "f58")


def masked(text: str, start: int, width: int = 8, header: bool = True) -> list[str]:
    """Lines with the runtime column at [start, start+width) replaced by #s."""
    lines = text.splitlines()
    out = lines[:1] if header else []
    for line in lines[1:] if header else lines:
        cell = line[start : start + width]
        assert RUNTIME.fullmatch(cell), f"no runtime at column {start}: {line!r}"
        out.append(line[:start] + "#" * width + line[start + width :])
    return out


def lines(text: str) -> list[str]:
    return text.splitlines()


# -- list: Flux's outputs ------------------------------------------------------


def test_default_format_is_flux_s(run: Run) -> None:
    code, out, err = run("list")
    assert (code, err) == (0, "")
    expected = [
        "       JOBID NNODES #ACTIVE  RUNTIME NODELIST",
        "    fEL6aVGK      2       1 ######## node[0-1]",
        "    fESBRYLP      1       1 ######## node2",
        "    fEWuhFUB      1       1 ######## node3",
    ]
    assert masked(out, 28) == expected
    assert masked(run("list", "-o", "default")[1], 28) == expected
    assert masked(run("list", "-n")[1], 28, header=False) == expected[1:]


def test_pending_format_is_flux_s(run: Run) -> None:
    assert masked(run("list", "-o", "pending")[1], 21) == [
        "       JOBID #ACTIVE  RUNTIME ACTIVE_NODES",
        "    fEL6aVGK       1 ######## node1",
        "    fESBRYLP       1 ######## node2",
        "    fEWuhFUB       1 ######## node3",
    ]
    # A unit with nothing running on the included nodes keeps its row, empty at the end.
    assert masked(run("list", "-i", "0", "-o", "pending")[1], 21) == [
        "       JOBID #ACTIVE  RUNTIME ACTIVE_NODES",
        "    fEL6aVGK       0 ######## ",
    ]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            "{id} {id.dec} {id.hex} {id.f58} {id.f58plain} {id.kvs}",
            [
                "JOBID JOBID JOBID JOBID JOBID JOBID",
                "fEL6aVGK 507426897920 0x7625000000 fEL6aVGK fEL6aVGK job.0000.0076.2500.0000",
                "fESBRYLP 511419875328 0x7713000000 fESBRYLP fESBRYLP job.0000.0077.1300.0000",
                "fEWuhFUB 514523660288 0x77cc000000 fEWuhFUB fEWuhFUB job.0000.0077.cc00.0000",
            ],
        ),
        (
            "{id.words} | {id.dothex} | {id.emoji}",
            [
                "JOBID | JOBID | JOBID",
                "printer-bogart-east--catalog-academy-academy | 0000.0076.2500.0000 | 😅🎍🐱👅🕓",
                "robin-kitchen-cecilia--caviar-academy-academy | 0000.0077.1300.0000 | 😅🎰👆🌼😃",
                "lazarus-cheese-buenos--caviar-academy-academy | 0000.0077.cc00.0000 | 😅👜🍕🍱🕓",
            ],
        ),
        ("{nnodes} {ranks} {nodelist}", ["NNODES RANKS NODELIST", "4 0-3 node[0-3]"]),
        (
            "{id.f58} {nnodes} {ranks} {nodelist}",
            [
                "JOBID NNODES RANKS NODELIST",
                "fEL6aVGK 2 0-1 node[0-1]",
                "fESBRYLP 1 2 node2",
                "fEWuhFUB 1 3 node3",
            ],
        ),
        (
            "{id.f58} {allocated.nnodes} {allocated.ranks} {allocated.nodelist}",
            [
                "JOBID NNODES RANKS NODELIST",
                "fEL6aVGK 2 0-1 node[0-1]",
                "fESBRYLP 1 2 node2",
                "fEWuhFUB 1 3 node3",
            ],
        ),
        (
            "{id.f58} {pending.nnodes} {pending.ranks} {pending.nodelist}",
            [
                "JOBID #ACTIVE ACTIVE_RANKS ACTIVE_NODES",
                "fEL6aVGK 1 1 node1",
                "fESBRYLP 1 2 node2",
                "fEWuhFUB 1 3 node3",
            ],
        ),
        ("{nnodes}", ["NNODES", "4"]),
        ("{nodelist}", ["NODELIST", "node[0-3]"]),
        ("{pending.nnodes} {pending.nodelist}", ["#ACTIVE ACTIVE_NODES", "3 node[1-3]"]),
        ("{nnodes} {pending.nnodes}", ["NNODES #ACTIVE", "4 3"]),
        (
            "{id.f58:>4}|{nnodes:>1}|",
            ["JOBID|NNODES|", "fEL6aVGK|2|", "fESBRYLP|1|", "fEWuhFUB|1|"],
        ),
        (
            "+:{id.f58:>4}|{nnodes:>1}|",
            ["   JOBID|NNODES|", "fEL6aVGK|2|", "fESBRYLP|1|", "fEWuhFUB|1|"],
        ),
        (
            "?:{pending.nnodes:>7} {id.f58}",
            ["#ACTIVE JOBID", "      1 fEL6aVGK", "      1 fESBRYLP", "      1 fEWuhFUB"],
        ),
        ("{id.f58!s:>12}", ["       JOBID", "    fEL6aVGK", "    fESBRYLP", "    fEWuhFUB"]),
    ],
)
def test_formats_from_the_flux_transcript(run: Run, fmt: str, expected: list[str]) -> None:
    assert lines(run("list", "-o", fmt)[1]) == expected


def test_no_header_and_every_node_field(run: Run) -> None:
    fmt = "{id.f58}:{nnodes}:{pending.nnodes}:{ranks}:{pending.ranks}:{nodelist}:{pending.nodelist}"
    assert run("list", "-no", fmt)[1] == (
        "fEL6aVGK:2:1:0-1:1:node[0-1]:node1\nfESBRYLP:1:1:2:2:node2:node2\n"
        "fEWuhFUB:1:1:3:3:node3:node3\n"
    )
    # Flux groups allocated.* rows by value (`2 2`, `2 1`); hk merges them as their synonyms.
    assert run("list", "-no", "{allocated.nnodes} {pending.nnodes}")[1] == "4 3\n"
    assert run("list", "-no", "{allocated.nodelist}")[1] == "node[0-3]\n"


def test_widths_on_rank_and_host_fields_where_flux_crashes(run: Run) -> None:
    fmt = (
        "{id.f58:>12} {nnodes:>6} {allocated.nnodes:>6} {pending.nnodes:>7} {ranks:>6} "
        "{allocated.ranks:>6} {pending.ranks:>12} {nodelist:>10} {allocated.nodelist:>10} "
        "{pending.nodelist}"
    )
    assert lines(run("list", "-o", fmt)[1]) == [
        "       JOBID NNODES NNODES #ACTIVE  RANKS  RANKS ACTIVE_RANKS   NODELIST   NODELIST "
        "ACTIVE_NODES",
        "    fEL6aVGK      2      2       1    0-1    0-1            1  node[0-1]  node[0-1] node1",
        "    fESBRYLP      1      1       1      2      2            2      node2      node2 node2",
        "    fEWuhFUB      1      1       1      3      3            3      node3      node3 node3",
    ]
    # Flux printed these headers, then crashed; hk prints the rows too.
    assert lines(run("list", "-o", "{id.f58:>12} +:{nodelist:>2} +:{pending.ranks:>2}|")[1]) == [
        "       JOBID  NODELIST ACTIVE_RANKS|",
        "    fEL6aVGK node[0-1]            1|",
        "    fESBRYLP     node2            2|",
        "    fEWuhFUB     node3            3|",
    ]
    assert lines(run("list", "-o", "{ranks:>6}")[1]) == [" RANKS", "   0-3"]
    assert lines(run("list", "-o", "{nodelist:<12}|{pending.nodelist:^12}|")[1]) == [
        "NODELIST    |ACTIVE_NODES|",
        "node[0-3]   | node[1-3]  |",
    ]
    assert lines(run("list", "-o", "{id.f58:>12} {nodelist:>10.5}")[1])[:2] == [
        "       JOBID   NODELIST",
        "    fEL6aVGK      node[",
    ]
    assert lines(run("list", "-o", "{id.f58:>12} ?:{pending.nodelist:>12}")[1])[:2] == [
        "       JOBID ACTIVE_NODES",
        "    fEL6aVGK        node1",
    ]


def test_numeric_alignment_keeps_the_header(run: Run) -> None:
    # `=` (pad after the sign) suits numbers; the heading, a string, is right-aligned.
    assert lines(run("list", "-o", "{nnodes:=6}|{pending.nnodes:=+8}")[1]) == [
        "NNODES| #ACTIVE",
        "     4|+      3",
    ]


def test_runtime_conversions(run: Run) -> None:
    out = lines(run("list", "-o", "{id.f58:<12}|{runtime!F:<10}|{nnodes:<3}|")[1])
    assert out[0] == "JOBID       |RUNTIME   |NNODES|"
    assert re.fullmatch(r"fEL6aVGK    \|\d\.\d{3}s {4}\|2  \|", out[1])
    out = lines(run("list", "-no", "{runtime!H} {runtime:.2f} {t_start!d:%Y::>6} {t_start!D}")[1])
    assert re.fullmatch(r"0:00:0\d \d\.\d\d   20\d\d 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d", out[0])


# Rows of `list -i`: J1 on node0 (done), on node1 (running), J2, J3.
I0 = "    fEL6aVGK      1       0 ######## node0"
I1 = "    fEL6aVGK      1       1 ######## node1"
I2 = "    fESBRYLP      1       1 ######## node2"
I3 = "    fEWuhFUB      1       1 ######## node3"


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        ("0", [I0]),
        ("1", [I1]),
        ("0,3", [I0, I3]),
        ("1-2", [I1, I2]),
        ("[1-2]", [I1, I2]),
        ("node0", [I0]),
        ("node[0,3]", [I0, I3]),
        ("node0,node2", [I0, I2]),
        ("node[2-5]", [I2, I3]),
        ("7", []),
        ("4-100", []),
        # Unknown hosts match nothing, as the man page says (Flux's code errors).
        ("nosuchhost", []),
        ("node[7-8]", []),
    ],
)
def test_include(run: Run, include: str, expected: list[str]) -> None:
    code, out, _ = run("list", "-i", include)
    assert code == 0
    assert masked(out, 28) == ["       JOBID NNODES #ACTIVE  RUNTIME NODELIST", *expected]


def test_include_intersects_and_merges(run: Run) -> None:
    assert run("list", "-i", "0,3", "-no", "{ranks}")[1] == "0,3\n"
    assert run("list", "-i", "0", "-no", "{ranks}")[1] == "0\n"
    fmt = "{id.f58} {nnodes} {ranks} {nodelist} {pending.nnodes} {pending.ranks} {pending.nodelist}"
    assert run("list", "-i", "0", "-no", fmt)[1] == "fEL6aVGK 1 0 node0 0  \n"
    fmt = "{nnodes} {ranks} {nodelist} {pending.nnodes} {pending.ranks} {pending.nodelist}"
    assert run("list", "-i", "0-1", "-no", fmt)[1] == "2 0-1 node[0-1] 1 1 node1\n"
    fmt = "{nnodes} {nodelist} {pending.nnodes} {pending.nodelist}"
    assert run("list", "-i", "0,2", "-no", fmt)[1] == "2 node[0,2] 1 node2\n"
    # An empty filter is no filter.
    assert run("list", "-i", "", "-no", "{id.dec}")[1] == f"{J1}\n{J2}\n{J3}\n"


def test_sort_works_after_merging(run: Run) -> None:
    assert run("list", "-no", "sort:-id {id.f58} {id.dec}")[1] == (
        f"fEWuhFUB {J3}\nfESBRYLP {J2}\nfEL6aVGK {J1}\n"
    )
    assert run("list", "-no", "sort:-nnodes,-pending.ranks {id.f58} {nnodes}")[1] == (
        "fEL6aVGK 2\nfEWuhFUB 1\nfESBRYLP 1\n"
    )
    assert run("list", "-no", "sort:-t_start {id.f58}")[1] == "fEWuhFUB\nfESBRYLP\nfEL6aVGK\n"
    assert run("list", "-no", "sort:nnodes {nnodes} {nodelist}")[1] == "4 node[0-3]\n"


def test_json(run: Run) -> None:
    document = json.loads(run("list", "-o", "json", "-i", "node[0,2]")[1])
    node0 = {"nnodes": 1, "ranks": "0", "nodelist": "node0"}
    node2 = {"nnodes": 1, "ranks": "2", "nodelist": "node2"}
    nothing = {"nnodes": 0, "ranks": "", "nodelist": ""}
    assert [(u["id"], u["userid"], u["allocated"], u["pending"]) for u in document["units"]] == [
        (J1, 42, node0, nothing),
        (J2, 42, node2, node2),
    ]
    assert all(u["runtime"] > 0 for u in document["units"])


def test_help_and_get_config_like_flux(run: Run) -> None:
    assert run("list", "-o", "help")[1] == (
        "\nConfigured hkconsole list output formats:\n\n"
        "  default      Default hkconsole list format string\n"
        "  pending      hkconsole list format string including active nodes only\n"
        "  failed       hkconsole list format string showing failed nodes\n"
        "  stuck        hkconsole list format string showing nodes running past warn-after\n"
    )
    assert lines(run("list", "-o", "get-config=default")[1]) == [
        "[formats.default]",
        'description = "Default hkconsole list format string"',
        'format = "{id.f58:>12} {nnodes:>6} {pending.nnodes:>7} {runtime!F:>8} {nodelist}"',
    ]
    assert lines(run("list", "-o", "get-config=pending")[1]) == [
        "[formats.pending]",
        'description = "hkconsole list format string including active nodes only"',
        'format = "{id.f58:>12} {pending.nnodes:>7} {runtime!F:>8} {pending.nodelist}"',
    ]


# flux-transcript.md section 3b: a Flux user's formats (its $XDG_CONFIG_HOME/flux file).
TRANSCRIPT_USER_FORMATS = """[formats.mine]
description = "my custom format"
format = "{id.f58plain:<12} {nnodes:>3} {pending.nnodes:>3} {nodelist}"

[formats.nodesonly]
format = "{nodelist}"
"""


def assert_the_transcript_s_user_formats(run: Run) -> None:
    """flux-transcript.md section 3b's outputs for its user formats `mine` and `nodesonly`."""
    assert lines(run("list", "-o", "mine")[1]) == [
        "JOBID        NNODES #ACTIVE NODELIST",
        "fEL6aVGK       2   1 node[0-1]",
        "fESBRYLP       1   1 node2",
        "fEWuhFUB       1   1 node3",
    ]
    assert lines(run("list", "-o", "nodesonly")[1]) == ["NODELIST", "node[0-3]"]
    assert lines(run("list", "-o", "get-config=mine")[1]) == [
        "[formats.mine]",
        'description = "my custom format"',
        'format = "{id.f58plain:<12} {nnodes:>3} {pending.nnodes:>3} {nodelist}"',
    ]


def test_configured_formats(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "home" / "hk").mkdir(parents=True)
    (tmp_path / "home" / "hk" / "hkconsole.toml").write_text(
        TRANSCRIPT_USER_FORMATS + '[nodes.formats.states]\nformat = "{state}"\n'
    )
    assert lines(run("list", "-o", "help")[1])[-2:] == [
        "  mine         my custom format",
        "  nodesonly   ",  # as Flux: the padded name, no separator for no description
    ]
    assert_the_transcript_s_user_formats(run)
    # A format with no description gets none, rather than `description = ""`.
    assert lines(run("list", "-o", "get-config=nodesonly")[1]) == [
        "[formats.nodesonly]",
        'format = "{nodelist}"',
    ]
    assert run("nodes", "-no", "states")[1] == "housekeeping\n"
    monkeypatch.setenv("HK_LIST_FORMAT_DEFAULT", "nodesonly")
    assert run("list", "-n")[1] == "node[0-3]\n"
    monkeypatch.setenv("HK_LIST_FORMAT_DEFAULT", "{nnodes}")
    assert run("list", "-n")[1] == "4\n"
    (tmp_path / "etc" / "hk").mkdir(parents=True)
    (tmp_path / "etc" / "hk" / "hkconsole.toml").write_text('[formats.pending]\nformat = "{id}"\n')
    code, _, err = run("list")
    assert code == 1
    assert err.endswith(": override of builtin format 'pending' not permitted\n")


def test_get_config_round_trips_and_config_errors_name_the_file(run: Run, tmp_path: Path) -> None:
    import tomllib

    config = tmp_path / "home" / "hk" / "hkconsole.toml"
    config.parent.mkdir(parents=True)
    description = 'C:\\path\\to "mine"\ttabbed'
    fmt = "{id.f58} \\ {nodelist}"
    config.write_text(
        "[formats.mine]\n"
        "description = 'C:\\path\\to \"mine\"\ttabbed'\n"
        "format = '{id.f58} \\ {nodelist}'\n"
    )
    code, out, _ = run("list", "-o", "get-config=mine")
    assert code == 0
    assert tomllib.loads(out) == {"formats": {"mine": {"description": description, "format": fmt}}}
    # nodes' formats live in [nodes.formats]: get-config prints the table to paste there.
    assert lines(run("nodes", "-o", "get-config=long")[1])[0] == "[nodes.formats.long]"

    config.write_bytes(b'[formats.mine]\ndescription = "caf\xe9"\nformat = "{id}"\n')
    code, out, err = run("list")
    assert (code, out) == (1, "")
    assert err == (
        f"hkconsole: ERROR: {config}: not UTF-8 text (byte 0xe9 on line 2); "
        "TOML files must be UTF-8\n"
    )
    config.write_text("formats = 3\n")
    assert run("list")[2] == f"hkconsole: ERROR: {config}: formats must be a table of formats\n"


def test_flux_housekeeping_formats_work_unchanged(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_flux = tmp_path / "home" / "flux" / "flux-housekeeping.toml"
    user_flux.parent.mkdir(parents=True)
    user_flux.write_text(TRANSCRIPT_USER_FORMATS)
    assert_the_transcript_s_user_formats(run)
    builtin_help = [
        "",
        "Configured hkconsole list output formats:",
        "",
        "  default      Default hkconsole list format string",
        "  pending      hkconsole list format string including active nodes only",
        "  failed       hkconsole list format string showing failed nodes",
        "  stuck        hkconsole list format string showing nodes running past warn-after",
    ]
    assert lines(run("list", "-o", "help")[1]) == [
        *builtin_help,
        "",
        f"From {user_flux}:",
        "",
        "  mine         my custom format",
        "  nodesonly   ",
    ]

    # hk's own file wins a clash of names; -o help says which file each format is from.
    hk_user = tmp_path / "home" / "hk" / "hkconsole.toml"
    hk_user.parent.mkdir(parents=True)
    hk_user.write_text('[formats.mine]\ndescription = "hk\'s mine"\nformat = "{id.dec}"\n')
    assert run("list", "-no", "mine")[1] == f"{J1}\n{J2}\n{J3}\n"
    assert lines(run("list", "-o", "help")[1])[len(builtin_help) :] == [
        "",
        f"From {hk_user}:",
        "",
        "  mine         hk's mine",
        "",
        f"From {user_flux}:",
        "",
        "  nodesonly   ",
    ]
    hk_user.unlink()

    # Every XDG dir, as Flux reads them: the user's file over the system's, key by key;
    # JSON too; a Flux file may redefine a built-in format, as flux-housekeeping allows.
    site_flux = tmp_path / "etc" / "flux" / "flux-housekeeping.json"
    site_flux.parent.mkdir(parents=True)
    site_flux.write_text(
        json.dumps(
            {
                "formats": {
                    "nodesonly": {"description": "site's", "format": "{ranks}"},
                    "default": {"format": "{id.emoji}"},
                }
            }
        )
    )
    assert run("list", "-no", "nodesonly")[1] == "node[0-3]\n"  # the user's format
    assert "  nodesonly    site's" in lines(run("list", "-o", "help")[1])
    assert run("list", "-n")[1] == "😅🎍🐱👅🕓\n😅🎰👆🌼😃\n😅👜🍕🍱🕓\n"
    # Flux's variable for the default format, under hk's own.
    monkeypatch.setenv("FLUX_HOUSEKEEPING_FORMAT_DEFAULT", "{nnodes}")
    assert run("list", "-n")[1] == "4\n"
    monkeypatch.setenv("HK_LIST_FORMAT_DEFAULT", "nodesonly")
    assert run("list", "-n")[1] == "node[0-3]\n"


def test_flux_housekeeping_files_hk_cannot_read(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flux_dir = tmp_path / "etc" / "flux"
    flux_dir.mkdir(parents=True)
    # YAML (Flux reads it with PyYAML, hk does not): never an error, but said where it counts.
    yaml_file = flux_dir / "flux-housekeeping.yaml"
    yaml_file.write_text("formats:\n  mine:\n    format: '{id}'\n")
    code, out, err = run("list", "-no", "{nnodes}")
    assert (code, out, err) == (0, "4\n", "")
    why = "hk reads TOML and JSON, not YAML"
    assert lines(run("list", "-o", "help")[1])[-1] == f"Not read: {yaml_file} ({why})"
    assert run("list", "-o", "mine")[2] == (
        "hkconsole: ERROR: --format: No such format mine (Did you mean '{mine}'?); "
        f"not read: {yaml_file} ({why})\n"
    )
    # Faults in a Flux file are named with the file, as in hk's own.
    toml_file = flux_dir / "flux-housekeeping.toml"
    toml_file.write_text("[formats.mine]\nformat = 5\n")
    assert run("list")[2] == f"hkconsole: ERROR: {toml_file}: formats.mine needs a format string\n"
    toml_file.write_text("[formats\n")
    assert run("list")[2].startswith(f"hkconsole: ERROR: {toml_file}: ")
    toml_file.unlink()
    json_file = flux_dir / "flux-housekeeping.json"
    json_file.write_text("[1, 2]")
    assert run("list")[2] == (
        f"hkconsole: ERROR: {json_file}: must hold a table (a JSON object), not list\n"
    )
    json_file.write_text("[" * 100_000)
    assert run("list")[2] == f"hkconsole: ERROR: {json_file}: nested too deeply\n"


# -- list and kill errors ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("list", "-o", "nosuch"), "--format: No such format nosuch (Did you mean '{nosuch}'?)"),
        (
            ("list", "-o", "static text"),
            "--format: No such format static text (Did you mean '{static} {text}'?)",
        ),
        (("list", "-o", ""), "--format: No such format  (Did you mean ''?)"),
        (("list", "-o", "get-config=nosuch"), "--format: No such format nosuch"),
        (("list", "-o", "{foo}"), "Error in user format: Unknown format field: foo"),
        (("list", "-o", "{0}"), "Error in user format: Unknown format field: 0"),
        (("list", "-o", "{id.foo}"), "Error in user format: Unknown format field: id.foo"),
        (("list", "-o", "{pending}"), "Error in user format: Unknown format field: pending"),
        (("list", "-o", "{allocated}"), "Error in user format: Unknown format field: allocated"),
        (("list", "-o", "{id"), "Error in user format: expected '}' before end of string"),
        (("list", "-o", "sort:foo {id.f58}"), "Error in user format: Invalid sort key: foo"),
        # Bad specs are errors with no rows to render too (-i 7 matches nothing).
        (
            ("list", "-i", "7", "-o", "{runtime!F:abc}"),
            "Error in user format: field runtime: invalid format specifier 'abc'",
        ),
        (
            ("list", "-o", "{runtime!F:abc}"),
            "Error in user format: field runtime: invalid format specifier 'abc'",
        ),
        (("history", "-o", "{t_end:>q}"), "Error in user format: field t_end: invalid format"),
        (("drain", "-o", "{reason:,s}"), "field reason: Cannot specify ',' with 's'."),
        (("list", "-o", "{nnodes:2000000000}"), "field nnodes: width 2000000000 is over"),
        (("list", "-o", "{}"), "Error in user format: empty field name {}: name a field"),
        (("list", "-o", "{id.f58} {}"), "Error in user format: empty field name {}"),
        # Sound specs that do not suit a value: the field is named.
        (("list", "-o", "{id!d}"), "Error in user format: field id: !d needs a number, not 'fE"),
        (("list", "-o", "{nodelist!H}"), "field nodelist: !H needs a number, not 'node[0-3]'"),
        (
            ("list", "-o", "{nodelist:=12}"),
            "Error in user format: field nodelist: '=' alignment not allowed",
        ),
        (("list", "-i", "foo["), "invalid targets 'foo[': not an idset or a hostlist"),
        (("list", "-i", "3,1"), "invalid targets '3,1': range '1' is out of order"),
        (("kill",), "specify at least one of --targets, --jobid, or --all"),
        (("kill", "--all", "--jobid=fEL6aVGK"), "do not specify --jobid with --all"),
        (("kill", "--all", "-j", "fEL6aVGK", "-t", "0"), "do not specify --jobid with --all"),
        (("kill", "-t", "foo["), "invalid targets 'foo[': not an idset or a hostlist"),
        (("kill", "-t", "nosuchhost"), "host 'nosuchhost' is not in the cluster"),
        (("kill", "-t", "node[3-5]"), "hosts 'node[4-5]' are not in the cluster"),
        (("kill", "-t", "7"), "ranks 7 are not in the cluster (0-3)"),
        (("kill", "-t", ""), "empty targets: give ranks (0-3) or hosts (node[0-3])"),
        (("kill", "-s", "notanumber", "--all"), "unknown signal 'notanumber'"),
        (("kill", "-s", "SIGFOO", "--all"), "unknown signal 'SIGFOO'"),
        (("kill", "-s", "0", "--all"), "invalid signal number '0' (1-64)"),
        (("kill", "-s", "999", "--all"), "invalid signal number '999' (1-64)"),
        (("kill", "-s", "9" * 5000, "--all"), "invalid signal number '9999"),
        # Only ASCII digits are numbers (`٩` was taken for 9, `²` crashed int()).
        (("kill", "-s", "²", "--all"), "unknown signal '²'"),
        (("kill", "-s", "٩", "-t", "0"), "unknown signal '٩'"),
        (("kill", "-s", " 9", "--all"), "unknown signal ' 9'"),
        # Matching nothing is an error (Flux says nothing), and jobid 0 is a real jobid
        # (Flux takes it for "every job").
        (("kill", "-j", "f1"), "no housekeeping running for job f1"),
        (("kill", "-j", "ƒ1"), "no housekeeping running for job f1"),
        (("kill", "-j", "12345"), "no housekeeping running for job f4fr"),
        (("kill", "-t", "0"), "no housekeeping running on ranks 0"),
        (("kill", "-j", "fEWuhFUB", "-t", "2"), "no housekeeping running"),
        (("start", "-j", str(J1), "-t", "0"), "is already in housekeeping"),
        (("start", "-j", "1", "-t", "9"), "ranks 9 are not in the cluster (0-3)"),
        (("drain", "node9", "x"), "host 'node9' is not in the cluster"),
        (("undrain", "1"), "rank 1 is not drained"),
        (("nodes", "-s", "sleepy"), "unknown state 'sleepy'"),
    ],
)
def test_errors(run: Run, args: tuple[str, ...], message: str) -> None:
    code, out, err = run(*args)
    assert (code, out) == (1, "")
    assert err.startswith("hkconsole: ERROR: ")
    assert message in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("kill", "-j", "all"), "'all' is not a jobid: use --all to target every job"),
        (("kill", "-j", "notajobid"), "argument -j/--jobid: 'notajobid' is not a valid jobid"),
        (("kill", "extra-arg", "--all"), "unrecognized arguments: extra-arg"),
        (("list", "--inc", "0"), "unrecognized arguments: --inc 0"),
        (("list", "--bogus"), "unrecognized arguments: --bogus"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("start", "-t", "0"), "the following arguments are required: -j/--jobid"),
        (("start", "-j", "1", "-t", "0", "--userid", "-5"), "'-5' is not a user id"),
        (
            ("start", "-j", "1", "-t", "0", "--userid", "99999999999999999999"),
            "'99999999999999999999' is not a user id (a number from 0 to 4294967295)",
        ),
        (("start", "-j", "1", "-t", "0", "--userid", "4294967296"), "'4294967296' is not a"),
        (("start", "-j", "1", "-t", "0", "--userid", "١"), "'١' is not a user id"),
        (("start", "-j", "1", "-t", "0", "--userid", "1_0"), "'1_0' is not a user id"),
        (("start", "-j", "1", "-t", "0", "--userid", "7\n"), "'7\\n' is not a user id"),
        (
            ("history", "-l", "99999999999999999999"),
            "argument -l/--limit: '99999999999999999999' is not a limit (a number from 1 to "
            "10,000)",
        ),
        (("history", "-l", "0"), "'0' is not a limit"),
        (("history", "-l", "10001"), "'10001' is not a limit"),
        (("history", "-l", "١"), "'١' is not a limit"),
        (("history", "-l", "-1"), "'-1' is not a limit"),
    ],
)
def test_usage_errors_exit_2(run: Run, args: tuple[str, ...], message: str) -> None:
    code, out, err = run(*args)
    assert (code, out) == (2, "")
    assert err.startswith("usage: hkconsole")
    assert message in err


def test_help_exits_0(run: Run) -> None:
    code, out, _ = run("kill", "--help")
    assert code == 0
    assert "-s SIG, --signal SIG" in out


# -- kill ----------------------------------------------------------------------


def test_kill_sequence_like_flux(
    capsys: pytest.CaptureFixture[str], sleeping: RunningService
) -> None:
    """The transcript's section 4b: by host, by job and rank with KILL, INT, --all -t HUP."""
    run = runner(capsys, sleeping)
    status = "{id.f58} allocated={ranks} pending={pending.ranks}"
    assert run("kill", "-t", "node2") == (0, f"signalled 1 rank of 1 unit with SIGTERM{BY}\n", "")
    sleeping.wait_for(lambda r: len(r["units"]) == 2)
    assert run("list", "-no", status)[1] == (
        "fEL6aVGK allocated=0-1 pending=0-1\nfEWuhFUB allocated=3 pending=3\n"
    )
    code, out, _ = run("kill", "-j", "fEL6aVGK", "-t", "1", "-s", "9")
    assert (code, out) == (0, f"signalled 1 rank of 1 unit with SIGKILL{BY}\n")
    sleeping.wait_for(lambda r: r["units"][0]["pending"] == "0")
    fmt = "{id.f58} {nnodes} {ranks} {nodelist} {pending.nnodes} {pending.ranks} {pending.nodelist}"
    assert lines(run("list", "-o", fmt)[1]) == [
        "JOBID NNODES RANKS NODELIST #ACTIVE ACTIVE_RANKS ACTIVE_NODES",
        "fEL6aVGK 2 0-1 node[0-1] 1 0 node0",
        "fEWuhFUB 1 3 node3 1 3 node3",
    ]
    assert run("kill", "-q", "-t", "0", "-s", "2") == (0, "", "")
    sleeping.wait_for(lambda r: len(r["units"]) == 1)
    assert run("kill", "--all", "-t", "3", "-s", "SIGHUP")[1] == (
        f"signalled 1 rank of 1 unit with SIGHUP{BY}\n"
    )
    sleeping.wait_idle()
    assert run("list")[1] == "       JOBID NNODES #ACTIVE  RUNTIME NODELIST\n"
    # Each killed node is drained with the signal that stopped it.
    reasons = run("drain", "-no", "{nodelist} {reason}")[1]
    assert sorted(lines(reasons)) == [
        "node0 housekeeping@fEL6aVGK signal: killed INT",
        "node1 housekeeping@fEL6aVGK signal: killed KILL",
        "node2 housekeeping@fESBRYLP signal: killed TERM",
        "node3 housekeeping@fEWuhFUB signal: killed HUP",
    ]
    history = run("history", "-no", "sort:id {id.f58} {nnodes} {failed.ranks} {releases}")[1]
    assert history == "fEL6aVGK 2 0-1 1\nfESBRYLP 1 2 1\nfEWuhFUB 1 3 1\n"


def test_a_non_ascii_digit_signals_nothing(
    capsys: pytest.CaptureFixture[str], sleeping: RunningService
) -> None:
    """`kill -s ٩ --all` signalled every unit with SIGKILL."""
    deadline = time.monotonic() + 10
    while len(running := sleeping.command_pids()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(running) == 4
    code, _, err = runner(capsys, sleeping)("kill", "-s", "٩", "--all")
    assert (code, err) == (
        1,
        "hkconsole: ERROR: unknown signal '٩' (try TERM, KILL, INT, HUP or a number)\n",
    )
    time.sleep(0.3)
    assert sleeping.command_pids() == running
    assert [u["pending"] for u in sleeping.call("housekeeping.list")["units"]] == ["0-1", "2", "3"]


def test_limits_and_user_ids_at_their_bounds(
    capsys: pytest.CaptureFixture[str], hk_service: ServiceFactory
) -> None:
    service = hk_service(hostlist="node[0-1]", command=["true"])
    run = runner(capsys, service)
    assert run("start", "-j", "1", "-t", "0", "--userid", "4294967295") == (0, "", "")
    # History is newest first: job 1 must end before job 2 starts, whatever the load.
    service.wait_idle()
    assert run("start", "-j", "2", "-t", "1", "--userid", "0007") == (0, "", "")
    service.wait_idle()
    assert run("history", "-l", "10000", "-no", "{id.dec} {userid}")[1] == "2 7\n1 4294967295\n"
    assert run("history", "-l", "1", "-no", "{id.dec}")[1] == "2\n"


def test_kill_all_and_signal_names(
    capsys: pytest.CaptureFixture[str], sleeping: RunningService
) -> None:
    run = runner(capsys, sleeping)
    assert (
        run("kill", "-t", "1-2", "-s", "kill")[1]
        == f"signalled 2 ranks of 2 units with SIGKILL{BY}\n"
    )
    sleeping.wait_for(lambda r: [u["pending"] for u in r["units"]] == ["0", "3"])
    assert (
        run("kill", "--all", "-s", "TERM")[1] == f"signalled 2 ranks of 2 units with SIGTERM{BY}\n"
    )
    sleeping.wait_idle()


@pytest.mark.parametrize(
    "kind", ["dec", "hex", "f58", "f58plain", "dothex", "kvs", "words", "emoji"]
)
def test_kill_by_jobid_in_every_encoding(
    capsys: pytest.CaptureFixture[str], flux3: RunningService, kind: str
) -> None:
    """Every encoding reaches the unit: the service says which job it found nothing for."""
    text = encode_jobid(J3, kind)
    if kind == "f58":
        text = "ƒ" + text[1:]
    code, _, err = runner(capsys, flux3)("kill", "-j", text, "-t", "2")
    assert code == 1
    assert "for job fEWuhFUB" in err


@pytest.mark.parametrize(
    ("text", "f58plain"),
    [
        # flux-reference section 14's reference values, in each of their encodings.
        ("18446744073709551615", "fjpXCZedGfVQ"),
        ("0xffffffffffffffff", "fjpXCZedGfVQ"),
        ("job.ffff.ffff.ffff.ffff", "fjpXCZedGfVQ"),
        ("ffff.ffff.ffff.ffff", "fjpXCZedGfVQ"),
        ("natural-analyze-verbal--natural-analyze-verbal", "fjpXCZedGfVQ"),
        ("ƒjpXCZedGfVQ", "fjpXCZedGfVQ"),
        ("🚹💗💧👗😷📷📚", "fjpXCZedGfVQ"),
        ("0", "f1"),
        ("0x0", "f1"),
        ("job.0000.0000.0000.0000", "f1"),
        ("academy-academy-academy--academy-academy-academy", "f1"),
        ("f1", "f1"),
        ("😃", "f1"),
    ],
)
def test_reference_jobids_reach_the_service(run: Run, text: str, f58plain: str) -> None:
    code, _, err = run("kill", "-j", text)
    assert (code, err) == (1, f"hkconsole: ERROR: no housekeeping running for job {f58plain}\n")


@pytest.mark.parametrize(
    "text",
    [
        "badstring",
        "job.0000.0000",
        "job.0000.0000.0000.000P",
        "42plusbad",
        "bad-words",
        "😅🎍🐱👅🕓 ",
        "🎌🎌🎌🎌🎌🎌🎌",
    ],
)
def test_bad_jobids_are_usage_errors(run: Run, text: str) -> None:
    code, _, err = run("kill", "-j", text)
    assert code == 2
    assert f"'{text}' is not a valid jobid" in err


# -- nodes, drain, undrain, start, history -------------------------------------


def test_nodes_drain_undrain_start(
    capsys: pytest.CaptureFixture[str], hk_service: ServiceFactory
) -> None:
    service = hk_service(hostlist="node[0-7]", command=["sleep", "600"])
    run = runner(capsys, service)
    assert run("start", "-j", "fEL6aVGK", "-t", "node[0-3]", "--userid", "7") == (0, "", "")
    unit = service.call("housekeeping.list")["units"][0]
    assert (unit["jobid"], unit["ranks"], unit["userid"]) == (J1, "0-3", 7)
    # Without --userid, the caller's (a job on no node at all would be refused).
    assert run("start", "-j", "0", "-t", "4") == (0, "", "")
    assert service.call("housekeeping.list")["units"][1]["userid"] == os.getuid()
    assert run("kill", "-q", "-j", "f1") == (0, "", "")
    service.wait_for(lambda r: len(r["units"]) == 1)
    assert run("undrain", "4") == (0, "", f"undrained node4{BY}\n")
    assert lines(run("nodes")[1]) == [
        "       STATE NNODES RANKS NODELIST",
        "        idle      4 4-7   node[4-7]",
        "housekeeping      4 0-3   node[0-3]",
    ]
    # Drained while in housekeeping: draining (the transcript's section 8).
    assert run("drain", "3", "admin", "reason while in housekeeping") == (
        0,
        "",
        f"drained node3{BY}\n",
    )
    assert run("drain", "node6", "bad fan") == (0, "", f"drained node6{BY}\n")
    assert lines(run("nodes")[1]) == [
        "       STATE NNODES RANKS REASON                             NODELIST",
        "        idle      3 4-5,7                                    node[4-5,7]",
        "housekeeping      3 0-2                                      node[0-2]",
        "    draining      1 3     admin reason while in housekeeping node3",
        "     drained      1 6     bad fan                            node6",
    ]
    assert run("nodes", "-s", "drained,draining", "-no", "{state}:{ranks}")[1] == (
        "draining:3\ndrained:6\n"
    )
    listing = lines(run("drain")[1])
    assert listing[0] == ("TIMESTAMP    STATE    RANK  REASON                             NODELIST")
    assert re.fullmatch(
        r"\w{3}\d\d \d\d:\d\d  draining 3     admin reason while in housekeeping node3",
        listing[1],
    )
    assert listing[2].endswith("  drained  6     bad fan                            node6")
    out = run("drain", "-no", "{timestamp!d:%H:%M:%S} {state} {reason} {nodelist}")[1]
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d draining admin reason while in housekeeping node3", lines(out)[0]
    )
    document = json.loads(run("nodes", "-o", "json", "-s", "drained")[1])
    assert document["nodes"][0]["reason"] == "bad fan"
    # A drained node keeps its first reason; the command says so.
    code, _, err = run("drain", "6", "another")
    assert code == 0 and "node6 already drained: kept the first reason" in err
    # Its command killed, node3 stays held (ranks 0-2 still run, release-after unset).
    assert run("kill", "-q", "-t", "3") == (0, "", "")
    service.wait_for(lambda r: r["units"][0]["pending"] == "0-2")
    assert run("drain", "-no", "{state} {ranks}")[1] == "draining 3\ndrained 6\n"
    assert run("kill", "-q", "-j", "fEL6aVGK") == (0, "", "")
    service.wait_idle()
    assert run("drain", "-no", "{state} {ranks} {reason}")[1] == (
        "drained 3 admin reason while in housekeeping\n"
        "drained 6 bad fan\n"
        "drained 0-2 housekeeping@fEL6aVGK signal: killed TERM\n"
    )
    # Rows that differ only in their nodes merge, as in `flux resource status/drain`.
    assert run("drain", "-no", "{nodelist}")[1] == "node[0-3,6]\n"
    assert run("nodes", "-o", "{state:>12} {nnodes:>6}")[1] == (
        "       STATE NNODES\n        idle      3\n     drained      5\n"
    )
    assert run("nodes", "-s", "drained", "-no", "{state} {ranks}")[1] == "drained 0-3,6\n"
    assert run("undrain", "node[0-3,6]") == (0, "", f"undrained node[0-3,6]{BY}\n")
    assert run("drain", "-n")[1] == ""
    assert run("nodes", "-no", "{state} {nodelist}")[1] == "idle node[0-7]\n"
    history = run("history", "-no", "{id.f58} {nnodes} {failed.nnodes} {releases} {userid}")[1]
    assert history == f"fEL6aVGK 4 4 1 7\nf1 1 1 1 {os.getuid()}\n"  # newest first


# -- the service away, pipes, imports, locales -----------------------------------


# Blanks the screen, sets the window title, then forges a row on a line of its own.
HOSTILE_REASON = "disk\x1b[2J gone\x1b]0;pwned\x07\n     drained      1 9     forged node9"
HOSTILE_SHOWN = "disk\\x1b[2J gone\\x1b]0;pwned\\x07\\x0a     drained      1 9     forged node9"


def test_drain_reasons_cannot_act_on_the_terminal(
    capsys: pytest.CaptureFixture[str], hk_service: ServiceFactory
) -> None:
    """Every table shows a reason's controls as escapes, one row per group; json keeps it."""
    service = hk_service(hostlist="node[0-3]")
    run = runner(capsys, service)
    # The service refuses such a reason from a client (EINVAL); one saved by an older
    # version is still shown, so it is put in the state database directly.
    assert run("drain", "1", HOSTILE_REASON)[0] == 1
    service.stop()
    with sqlite3.connect(service.state_dir / "hk.db") as db:
        db.execute("INSERT INTO drains (rank, reason, t) VALUES (1, ?, ?)", (HOSTILE_REASON, 1.0))
    service.start()
    assert service.call("resource.status")["drained"][0]["reason"] == HOSTILE_REASON
    tables = {
        "drain": run("drain")[1],
        "drain -o": run("drain", "-o", "{state} {reason:<20} {nodelist}")[1],
        "nodes": run("nodes", "-o", "long")[1],
        "nodes default": run("nodes")[1],
    }
    for name, out in tables.items():
        assert "\x1b" not in out and "\x07" not in out, name
        assert len(lines(out)) == (2 if name.startswith("drain") else 3), name
        row = next(line for line in lines(out) if "node1" in line)
        assert HOSTILE_SHOWN in row, name
    assert lines(tables["drain -o"])[1] == f"drained {HOSTILE_SHOWN} node1"
    # Widths count the escapes as shown: the column after a reason stays aligned.
    header, idle, drained = lines(tables["nodes"])
    assert drained.index("node1") == header.index("NODELIST") == idle.index("node[0,2-3]")
    # Machine output keeps the exact text.
    document = json.loads(run("drain", "-o", "json")[1])
    assert document["drained"][0]["reason"] == HOSTILE_REASON
    document = json.loads(run("nodes", "-o", "json", "-s", "drained")[1])
    assert document["nodes"][0]["reason"] == HOSTILE_REASON


def test_error_messages_show_controls_as_escapes(run: Run) -> None:
    code, out, err = run("list", "-o", "{node\x1bc\nlist}")
    assert (code, out) == (1, "")
    field = "node\\x1bc\\x0alist"  # ESC c would reset the terminal
    assert err == f"hkconsole: ERROR: Error in user format: Unknown format field: {field}\n"


def test_service_down_is_said_at_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    start = time.monotonic()
    assert main(["--endpoint", f"ipc://{tmp_path}/none.sock", "list"]) == 1
    assert capsys.readouterr().err.startswith(
        f"hkconsole: ERROR: no hk service at ipc://{tmp_path}/none.sock"
    )
    stale = tmp_path / "stale.sock"
    stale.touch()  # a socket file left behind by a dead service
    assert main(["--endpoint", f"ipc://{stale}", "kill", "--all"]) == 1
    assert "nothing listens on its socket" in capsys.readouterr().err
    assert time.monotonic() - start < 1
    # Formats are listed without a service.
    assert main(["--endpoint", f"ipc://{stale}", "list", "-o", "help"]) == 0


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("bogus://x", "invalid endpoint: 'bogus://x' is not an ipc:// or tcp:// endpoint"),
        ("/tmp/hk.sock", "invalid endpoint: '/tmp/hk.sock' is not an ipc:// or tcp://"),
        ("ipc://", "invalid endpoint: 'ipc://' has no socket path"),
        ("ipc://@hk", "invalid endpoint: 'ipc://@hk' is an abstract socket"),
        ("ipc:///" + "x" * 200, "bytes, over the 107-byte limit of ipc socket paths"),
        ("tcp://127.0.0.1", "invalid endpoint: 'tcp://127.0.0.1' needs a host and a port"),
        ("tcp://:5555", "needs a host and a port"),
        ("tcp://127.0.0.1:99999", "needs a host and a port"),
        ("tcp://127.0.0.1:٥٥", "needs a host and a port"),
        ("tcp://nosuchhost.invalid:5555", "unknown host 'nosuchhost.invalid'"),
    ],
)
def test_bad_endpoints_are_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, endpoint: str, message: str
) -> None:
    for argv in (["--endpoint", endpoint, "list"], ["kill", "--all"]):
        monkeypatch.setenv("HK_ENDPOINT", endpoint)  # the second run takes it from here
        start = time.monotonic()
        assert main(argv) == 1
        assert time.monotonic() - start < 1
        err = capsys.readouterr().err
        assert err.startswith("hkconsole: ERROR: ") and message in err, err
        assert len(err.splitlines()) == 1


def test_tcp_connection_refused_is_said_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    # Bound but not listening: connections to it are refused, and no one else can take
    # the port while the test runs.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
        start = time.monotonic()
        assert main(["--endpoint", endpoint, "list"]) == 1
        assert time.monotonic() - start < 1
    assert capsys.readouterr().err == (
        f"hkconsole: ERROR: no hk service at {endpoint}: connection refused "
        "(is hkservice running? is this its port?)\n"
    )


class TcpService(RunningService):
    port = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def free_port_pair() -> int:
    """A port p with p and p + 1 (the events endpoint) free just now."""
    import socket

    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports")


def test_a_tcp_service_is_reached(capsys: pytest.CaptureFixture[str]) -> None:
    """The TCP probe lets a real service through (and goes away before ZeroMQ connects)."""
    base = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
    service = TcpService(base, "node[0-1]", ["sleep", "600"])
    service.port = free_port_pair()
    service.service_options["insecure"] = True  # CURVE has tests of its own (test_trust)
    try:
        service.start()
        run = runner(capsys, service)
        assert run("start", "-j", "1", "-t", "0") == (0, "", "")
        assert run("list", "-no", "{id.dec} {nodelist}") == (0, "1 node0\n", "")
        assert run("kill", "--all", "-q") == (0, "", "")
    finally:
        service.stop()
        service.kill_leftovers()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("argv", [[], ["--endpoint", "ipc:///nonexistent/hk.sock"]])
def test_console_without_a_terminal_is_a_usage_error(argv: list[str]) -> None:
    """Textual, started with no terminal, never exits and spins a CPU: refuse at once."""
    check = (
        "import sys; from hkconsole.cli import main; code = main(sys.argv[1:]); "
        "assert 'textual' not in sys.modules, 'textual imported'; sys.exit(code)"
    )
    message = "the console needs a terminal; use `hkconsole list` for scripts"
    # stdin from /dev/null, stdout a pipe; then stdin a terminal but stdout still a pipe.
    master, slave = os.openpty()
    try:
        for stdin in (subprocess.DEVNULL, slave):
            proc = subprocess.run(
                [sys.executable, "-c", check, *argv],
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
            assert proc.stderr == f"hkconsole: error: {message}\n"
    finally:
        os.close(master)
        os.close(slave)


def test_hung_service_is_reported_within_5_s(
    capsys: pytest.CaptureFixture[str], flux3: RunningService
) -> None:
    assert flux3.proc is not None
    os.kill(flux3.proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        code = main(["--endpoint", flux3.endpoint, "list"])
        elapsed = time.monotonic() - start
    finally:
        os.kill(flux3.proc.pid, signal.SIGCONT)
    assert code == 1
    assert elapsed < 5
    assert "did not answer within 4.5 s" in capsys.readouterr().err


def hkconsole(service: RunningService, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.endswith("F58_FORCE_ASCII")}
    return subprocess.run(
        [sys.executable, "-m", "hkconsole", "--endpoint", service.endpoint, *args],
        capture_output=True,
        text=True,
        env={**environ, **env},
    )


def test_f58_prefix_follows_the_locale(flux3: RunningService) -> None:
    utf8 = hkconsole(flux3, "list", "-no", "{id}", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    assert utf8.stdout.splitlines()[0] == "ƒEL6aVGK"
    ascii_ = hkconsole(flux3, "list", "-no", "{id}", FLUX_F58_FORCE_ASCII="1")
    assert ascii_.stdout.splitlines()[0] == "fEL6aVGK"


def test_list_never_imports_textual(flux3: RunningService) -> None:
    check = (
        "import sys; from hkconsole.cli import main; "
        f"code = main(['--endpoint', '{flux3.endpoint}', 'list', '-n']); "
        "assert 'textual' not in sys.modules, 'textual imported'; sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3


def test_pipe_closed_early_is_not_an_error(flux3: RunningService) -> None:
    # A line longer than a pipe's buffer, so the write fails after `head` has gone.
    proc = subprocess.run(
        f"set -o pipefail; {sys.executable} -m hkconsole --endpoint {flux3.endpoint} "
        "list -o '{nodelist:>200000}' | head -c 5",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "     ", "")


def test_output_shows_each_ranks_last_lines(
    capsys: pytest.CaptureFixture[str], hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    service = hk_service(
        hostlist="node[0-1]",
        command=[script('echo "one $HK_RANK"\necho two\nprintf "\\033[2J" >&2')],
    )
    run = runner(capsys, service)
    assert run("start", "-j", "7", "-t", "node[0-1]")[0] == 0
    service.wait_idle()
    assert run("output", "-j", "7", "-r", "1") == (
        0,
        "node1 out: one 1\nnode1 out: two\nnode1 err: \\x1b[2J\n",
        "",
    )
    assert run("output", "-j", "7", "-n", "1")[1] == (
        "node0 out: two\nnode0 err: \\x1b[2J\nnode1 out: two\nnode1 err: \\x1b[2J\n"
    )


def test_list_default_aligns_the_widest_ids_under_their_header(
    hk_service: ServiceFactory,
) -> None:
    """Issue 13, defect 10: each row's id ends where its header does, for the widest
    ids there are (2**64-1 is 12 characters in f58, its prefix included: the column's
    width) and the demo's, in each prefix the default shows (ƒ in a UTF-8 locale, f
    otherwise or when forced)."""
    demo = 9_183_742_615 << 24 | 2_731 << 10 | 77  # hkconsole/tui/sample.py's JOBID_BASE + 77
    ids = (0, 1, 2**63 - 1, 2**64 - 1, demo)
    svc = hk_service(hostlist="node[0-4]", command=["sleep", "600"])
    for rank, jobid in enumerate(ids):
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": str(rank)})
    for env, prefix in (
        ({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}, "ƒ"),
        ({"LANG": "C", "LC_ALL": "C"}, "f"),
        ({"LC_ALL": "C.UTF-8", "FLUX_F58_FORCE_ASCII": "1"}, "f"),
    ):
        header, *rows = hkconsole(svc, "list", **env).stdout.splitlines()
        end = header.index("JOBID") + len("JOBID")
        assert len(rows) == len(ids)
        for row in rows:
            assert row[end - 1] != " " and row[end] == " ", (env, header, row)
        shown = sorted(row[:end].strip() for row in rows)
        assert shown == sorted(prefix + f58(jobid)[1:] for jobid in ids)
        # The columns after it line up too: NNODES ends where its header does.
        nnodes = header.index("NNODES") + len("NNODES")
        assert all(row[nnodes - 1] == "1" and row[nnodes] == " " for row in rows)
