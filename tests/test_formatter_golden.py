"""The format engine on fixed rows: Flux's verified outputs, and where hk goes further."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hkconsole.formatter import FormatError, FormatRegistry, OutputFormat, Row, merge_rows
from hkconsole.tables import (
    HISTORY_HEADINGS,
    HISTORY_NODE_FIELDS,
    NODE_HEADINGS,
    UNIT_FORMATS,
    UNIT_HEADINGS,
    UNIT_NODE_FIELDS,
    Finished,
    FinishedRow,
    Unit,
    command_formats,
    merge_finished,
    merge_units,
    node_groups,
    node_row,
    unit_formats,
    unit_row,
)
from hkservice.cluster import Cluster

HEADINGS = {"s": "STRING", "i": "INT", "f": "FLOAT", "t": "TIME", "x": "X"}
CLUSTER = Cluster("tuolumne[1000-1999]")
NOW = 1_718_000_100.0


def rows(*items: dict[str, Any]) -> list[Row]:
    return [Row({k: (lambda v=v: v) for k, v in item.items()}) for item in items]


def render(fmt: str, items: list[Row], header: bool = True) -> list[str]:
    return OutputFormat(fmt, HEADINGS).render(items, header=header)


def unit(jobid: int, allocated: set[int], pending: set[int], age: float) -> Unit:
    return Unit(jobid, 1000, NOW - age, allocated, pending, set())


UNITS = [
    unit(1, {174, 747, 748, 751}, {751}, 53.92),
    unit(2, {752, 753, 775, 776}, {752, 753, 775, 776}, 16.14),
]


def list_output(fmt_name_or_text: str, units: list[Unit], header: bool = True) -> list[str]:
    registry = FormatRegistry("hkconsole list", UNIT_FORMATS)
    fmt = OutputFormat(registry.resolve(fmt_name_or_text), UNIT_HEADINGS, UNIT_NODE_FIELDS)
    merged = merge_rows(units, fmt, lambda u: unit_row(u, CLUSTER, NOW), merge_units)
    return fmt.render(merged, header=header)


def test_default_format_matches_flux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HK_F58_FORCE_ASCII", "1")
    assert list_output("default", UNITS) == [
        "       JOBID NNODES #ACTIVE  RUNTIME NODELIST",
        "          f2      4       1   53.92s tuolumne[1174,1747-1748,1751]",
        "          f3      4       4   16.14s tuolumne[1752-1753,1775-1776]",
    ]


def test_pending_format_matches_flux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HK_F58_FORCE_ASCII", "1")
    assert list_output("pending", UNITS) == [
        "       JOBID #ACTIVE  RUNTIME ACTIVE_NODES",
        "          f2       1   53.92s tuolumne1751",
        "          f3       4   16.14s tuolumne[1752-1753,1775-1776]",
    ]


def test_merging_node_fields() -> None:
    assert list_output("{nnodes}", UNITS, header=False) == ["8"]
    assert list_output("{ranks}", UNITS, header=False) == ["174,747-748,751-753,775-776"]
    assert list_output("{nodelist}", UNITS) == [
        "NODELIST",
        "tuolumne[1174,1747-1748,1751-1753,1775-1776]",
    ]
    # allocated.* merge like their synonyms (Flux groups them by value instead).
    assert list_output("{allocated.nnodes} {nnodes}", UNITS, header=False) == ["8 8"]
    # Rows that differ in other fields stay apart.
    assert list_output("{id.dec} {pending.nnodes}", UNITS, header=False) == ["1 1", "2 4"]
    # Blank rows are skipped: a unit with nothing running prints nothing here.
    done = [unit(3, {5}, set(), 1.0)]
    assert list_output("{pending.nodelist}", done, header=False) == []


def test_rows_merge_on_printed_text_not_on_values() -> None:
    """What the man page says: runtime merges when it prints alike; the full id never does."""
    units = [*UNITS, unit(3, {100}, {100}, 53.6)]  # 53.6 s and 53.92 s are both 0:00:54
    assert list_output("{runtime!H} {nnodes}", units, header=False) == ["0:00:54 5", "0:00:16 4"]
    assert list_output("{runtime!F} {nnodes}", units, header=False) == [
        "53.92s 4",
        "16.14s 4",
        "53.6s 1",
    ]
    assert len(list_output("{id} {runtime!H}", units, header=False)) == 3


def test_widths_work_on_rank_and_host_fields() -> None:
    assert list_output("{ranks:>30}|{nodelist:.12+}|", UNITS[:1], header=False) == [
        "               174,747-748,751|tuolumne[11+|"
    ]


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("{t!F}", 53.92, "53.92s"),
        ("{t!F}", 90, "1.5m"),
        ("{t!F}", float("inf"), "inf"),
        ("{t!H}", 54.4, "0:00:54"),
        ("{t!H}", 0.3, "0:00:01"),
        ("{t!H}", 93784, "1 day, 2:03:04"),
        ("{t!P}", 0.5, "50.00%"),
        ("{t!P}", 1.5, "150%"),
        ("{t!F:>8}", 5.1234, "  5.123s"),
        ("{t!F:h}", 0, "-"),
        ("{t!H:h}", 0, "-"),
        ("{t!d:%Y::h}", 0, "-"),
        ("{t!D:h}", 0, "-"),
        ("{t:>6h}", 0, "     0"),
        ("{t:h}", "", "-"),
        ("{t:5.3+}", "abcdef", "ab+  "),
        ("{t:5.3}", "abcdef", "abc  "),
        ("{t!d}", "", ""),
    ],
)
def test_conversions_and_suffixes(fmt: str, value: Any, expected: str) -> None:
    assert render(fmt.replace("{t", "{t"), rows({"t": value}), header=False) == (
        [expected] if expected.strip() else []
    )


def test_date_conversions() -> None:
    epoch = time.mktime((2024, 6, 10, 8, 30, 15, 0, 0, -1))
    assert render("{t!d:%H:%M:%S::>10}", rows({"t": epoch}), header=False) == ["  08:30:15"]
    assert render("{t!D}", rows({"t": epoch}), header=False) == ["2024-06-10T08:30:15"]
    assert render("{t!d}", rows({"t": epoch}), header=False) == ["2024-06-10T08:30:15"]
    assert render("{t!d:%H:%M::>10}", rows({"t": epoch})) == ["      TIME", "     08:30"]


def test_header_keeps_only_alignment_and_width() -> None:
    assert render("{f:>8.2f}|{s:<7}|{i}", rows({"f": 1.5, "s": "a", "i": 3})) == [
        "   FLOAT|STRING |INT",
        "    1.50|a      |3",
    ]


def test_optional_and_fitted_columns() -> None:
    items = rows({"i": 23456789, "s": "", "f": 1.5}, {"i": 7, "s": "", "f": 2.25})
    # s is empty everywhere: it goes, with the text before it; i widens to fit.
    assert render("?+:{i:>7} ?:{s:>6} ?:{f:8.2}", items) == [
        "     INT FLOAT   ",
        "23456789      1.5",
        "       7      2.2",
    ]
    wide = rows({"s": "a string of 16ch", "i": 1234567, "f": 3.14159})
    assert render("+:{s:5.5} +:{i:4d} +:{f:.2f}", wide) == [
        "STRING           INT     FLOAT",
        "a string of 16ch 1234567  3.14",
    ]
    assert render("+:{s:5.5} +:{i:4d} +:{f:.2f}", wide, header=False) == [
        "a string of 16ch 1234567 3.14",
    ]


def test_sort_uses_display_value_ordering() -> None:
    items = rows({"s": "b", "i": 10}, {"s": "", "i": 2}, {"s": "a", "i": "1e5"}, {"s": "-", "i": 3})
    assert render("sort:i {i}", items, header=False) == ["2", "3", "10", "1e5"]
    assert render("sort:s {s}", items, header=False) == ["-", "a", "b"]
    assert render("sort:-s {s}:{i}", items, header=False) == ["b:10", "a:1e5", ":2", "-:3"]
    # Stable, last key first: empties tie on s and keep their -i order.
    assert render("sort:s,-i {s}:{i}", items, header=False) == ["-:3", ":2", "a:1e5", "b:10"]


def test_sort_after_merge_in_list() -> None:
    units = [*UNITS, unit(3, {100}, {100}, 5.0)]
    assert list_output("sort:-runtime,,nnodes {id.dec}", units, header=False) == ["1", "2", "3"]
    assert list_output("sort:nnodes {id.dec} {nnodes}", units, header=False)[0] == "3 1"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("{bogus}", "Unknown format field: bogus"),
        ("sort:nope {s}", "Invalid sort key: nope"),
        ("{s!z}", "Unknown conversion specifier z"),
        ("{s", "Error in user format"),
    ],
)
def test_format_errors(fmt: str, message: str) -> None:
    with pytest.raises(FormatError, match=message.replace("{", r"\{")):
        OutputFormat(fmt, HEADINGS)


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("{f:abc}", "field f: invalid format specifier 'abc'"),
        ("{t!F:abc}", "field t: invalid format specifier 'abc'"),
        ("{t!d:%H::abc}", "field t: invalid format specifier '%H::abc'"),
        ("{s:,s}", "field s: Cannot specify ',' with 's'. (',s')"),
        ("{t!H:=8}", "field t: '=' alignment not allowed in string format specifier ('=8')"),
        ("{i:{i}}", "field i: invalid format specifier '{i}'"),
        ("{i:>2000000}", "field i: width 2000000 is over 1,000,000 ('>2000000')"),
        ("{f:.9999999999}", "field f: precision 9999999999 is over 1,000,000 ('.9999999999')"),
        ("{}", "empty field name {}: name a field, e.g. {id}"),
        ("{s} {}", "empty field name {}: name a field, e.g. {id}"),
    ],
)
def test_every_spec_is_checked_before_any_row(fmt: str, message: str) -> None:
    """A bad format is an error with no rows at all, not a header and exit 0."""
    with pytest.raises(FormatError) as exc:
        OutputFormat(fmt, HEADINGS).render([])
    assert str(exc.value) == "Error in user format: " + message


@pytest.mark.parametrize(
    ("fmt", "value", "message"),
    [
        ("{s!d}", "fEL6aVGK", "field s: !d needs a number, not 'fEL6aVGK'"),
        ("{s!D}", "abc", "field s: !D needs a number, not 'abc'"),
        ("{s!F}", "abc", "field s: !F needs a number, not 'abc'"),
        ("{s!H}", "abc", "field s: !H needs a number, not 'abc'"),
        ("{s!P}", "abc", "field s: !P needs a number, not 'abc'"),
        ("{t!d}", 1e300, "field t: !d: 1e+300 is not a date"),
        ("{s:=6}", "node[0-3]", "field s: '=' alignment not allowed in string format specifier"),
        ("{i:c}", -1, "field i: %c arg not in range(0x110000)"),
    ],
)
def test_value_errors_name_the_field(fmt: str, value: Any, message: str) -> None:
    name = fmt[1]
    for prefix in ("", "+:", "?:"):  # fitted and optional columns format values too
        with pytest.raises(FormatError) as exc:
            OutputFormat(prefix + fmt, HEADINGS).render(rows({name: value}))
        assert str(exc.value) == "Error in user format: " + message


def test_equals_alignment_in_the_header() -> None:
    assert render("{i:=6}|{f:=+8.1f}|{i:0=4}", rows({"i": 3, "f": -1.25})) == [
        "   INT|   FLOAT| INT",
        "     3|-    1.2|0003",
    ]


def test_named_formats_help_get_config_and_suggestions() -> None:
    registry = FormatRegistry("hkconsole list", UNIT_FORMATS)
    assert registry.help_text().splitlines()[:4] == [
        "",
        "Configured hkconsole list output formats:",
        "",
        "  default      Default hkconsole list format string",
    ]
    with pytest.raises(
        FormatError, match=r"No such format foo bar \(Did you mean '\{foo\} \{bar\}'\?\)"
    ):
        registry.resolve("foo bar")
    with pytest.raises(FormatError, match=r"--format: No such format nope$"):
        registry.get_config("nope")
    assert registry.resolve("{id}") == "{id}"


@pytest.mark.parametrize(
    "text",
    [
        'back\\slash "quoted" {id}',
        "tab\there, newline\nthere, cr\r, bell\a, del\x7f, nul\x00",
        "unicode \u0192 \u00e9 \u6f22 \u2028",
        "trailing backslash \\",
        "'''  \"\"\"",
    ],
)
def test_get_config_is_valid_toml(text: str) -> None:
    import tomllib

    registry = FormatRegistry("hkconsole list", UNIT_FORMATS)
    registry.add_configured({"mine": {"description": text, "format": text}}, "test")
    registry.add_configured({"my format": {"description": "", "format": "{id}"}}, "test")
    assert tomllib.loads(registry.get_config("mine")) == {
        "formats": {"mine": {"description": text, "format": text}}
    }
    # An empty description is left out (as Flux), and reads back as no description.
    assert tomllib.loads(registry.get_config("my format")) == {
        "formats": {"my format": {"format": "{id}"}}
    }
    for name, builtin in registry.builtins.items():
        document = tomllib.loads(registry.get_config(name))
        assert document["formats"][name] == {
            "description": builtin.description,
            "format": builtin.format,
        }
    # nodes, drain and history read theirs from [COMMAND.formats]: get-config prints that.
    nodes = command_formats("nodes", {})
    assert tomllib.loads(nodes.get_config("long"))["nodes"]["formats"]["long"]["format"] == (
        nodes.builtins["long"].format
    )


def test_config_errors_name_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system, home = tmp_path / "etc", tmp_path / "home"
    for directory in (system, home):
        (directory / "hk").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(system))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    user, site = home / "hk" / "hkconsole.toml", system / "hk" / "hkconsole.toml"

    def error(load: Any) -> str:
        with pytest.raises(FormatError) as exc:
            load()
        return str(exc.value)

    user.write_bytes(b'[formats.mine]\nformat = "\xff{id}"\n')
    assert error(unit_formats) == (
        f"{user}: not UTF-8 text (byte 0xff on line 2); TOML files must be UTF-8"
    )
    site.write_text('[formats.site]\nformat = "{id}"\n')
    user.write_text('formats = "not a table"\n')
    assert error(unit_formats) == f"{user}: formats must be a table of formats"
    user.write_text("nodes = 5\n")
    assert error(lambda: command_formats("nodes")) == f"{user}: nodes must be a table"
    user.write_text('[history]\nformats = ["a"]\n')
    assert error(lambda: command_formats("history")) == (
        f"{user}: history.formats must be a table of formats"
    )
    # Two files: the one holding the offending entry is named, not both.
    user.write_text('[formats.mine]\nformat = "{id}"\n')
    site.write_text('[formats.pending]\nformat = "{id}"\n')
    assert error(unit_formats) == f"{site}: override of builtin format 'pending' not permitted"
    site.write_text("[formats.bad]\nformat = 5\n")
    assert error(unit_formats) == f"{site}: formats.bad needs a format string"


def test_configured_formats_from_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system, home = tmp_path / "etc", tmp_path / "home"
    for directory, fmt in ((system, "{id.hex}"), (home, "{id.dec}")):
        (directory / "hk").mkdir(parents=True)
        (directory / "hk" / "hkconsole.toml").write_text(
            f'[formats.mine]\ndescription = "mine"\nformat = "{fmt}"\n'
        )
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(system))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    registry = unit_formats()
    assert registry.resolve("mine") == "{id.dec}"  # the user's file wins over the system's
    assert "  mine         mine" in registry.help_text()
    monkeypatch.setenv("HK_LIST_FORMAT_DEFAULT", "mine")
    assert unit_formats().resolve("default") == "{id.dec}"
    monkeypatch.setenv("HK_LIST_FORMAT_DEFAULT", "{nnodes}")
    assert unit_formats().resolve("default") == "{nnodes}"
    (home / "hk" / "hkconsole.toml").write_text('[formats.default]\nformat = "{id}"\n')
    with pytest.raises(FormatError, match="override of builtin format 'default' not permitted"):
        unit_formats()


def test_sort_orders_jobids_by_number_and_nodes_by_first_rank() -> None:
    # As text, f21 (58) sorts before fz (57); node10 before node9.
    units = [unit(58, {10}, set(), 1.0), unit(57, {9}, set(), 1.0), unit(2**60 + 1, {2}, set(), 1)]
    units.append(unit(2**60, {100}, set(), 1.0))
    assert list_output("sort:id {id.dec}", units, header=False) == [
        "57",
        "58",
        str(2**60),
        str(2**60 + 1),
    ]
    assert list_output("sort:-id.f58plain {id.dec}", units, header=False)[:2] == [
        str(2**60 + 1),
        str(2**60),
    ]
    assert list_output("sort:nodelist {id.dec} {nodelist}", units[:3], header=False) == [
        f"{2**60 + 1} tuolumne1002",
        "57 tuolumne1009",
        "58 tuolumne1010",
    ]


def test_date_spec_without_separator_is_all_strftime() -> None:
    epoch = time.mktime((2024, 6, 10, 8, 30, 15, 0, 0, -1))
    assert render("{t!d:%H:%M:%S}|{t!d:%M::>4}", rows({"t": epoch})) == [
        "TIME|TIME",
        "08:30:15|  30",
    ]


def test_errors_read_as_flux_s() -> None:
    for fmt, message in (
        ("{bogus}", "Error in user format: Unknown format field: bogus"),
        ("sort:-nope {s}", "Error in user format: Invalid sort key: nope"),
        ("{s", "Error in user format: expected '}' before end of string"),
    ):
        with pytest.raises(FormatError) as exc:
            OutputFormat(fmt, HEADINGS)
        assert str(exc.value) == message


def test_every_command_reads_its_formats_from_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "hk").mkdir()
    (tmp_path / "hk" / "hkconsole.toml").write_text(
        '[nodes.formats.brief]\nformat = "{state} {nnodes}"\n'
        '[history.formats.ids]\ndescription = "ids"\nformat = "{id.dec}"\n'
        '[drain.formats.default]\nformat = "{reason}"\n'
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    assert command_formats("nodes").resolve("brief") == "{state} {nnodes}"
    assert "  ids          ids" in command_formats("history").help_text()
    with pytest.raises(FormatError, match="override of builtin format 'default' not permitted"):
        command_formats("drain")
    # list's own [formats] table is untouched by the other commands' tables.
    assert set(unit_formats().all()) == {"default", "pending", "failed", "stuck"}


def test_node_rows_and_history_rows() -> None:
    groups = node_groups(
        {
            "size": 8,
            "housekeeping": "0-3,6",
            "offline": "6-7",
            "drained": [{"ranks": "3,5", "reason": "fan", "t": 1.0}],
        }
    )
    fmt = OutputFormat(
        "sort:-nnodes {state:>12} {nnodes:>6} +:{ranks} ?:{reason:<6} {nodelist}", NODE_HEADINGS
    )
    assert fmt.render([node_row(g, CLUSTER) for g in groups]) == [
        "       STATE NNODES RANKS REASON NODELIST",
        "housekeeping      3 0-2          tuolumne[1000-1002]",
        "     offline      2 6-7          tuolumne[1006-1007]",
        "        idle      1 4            tuolumne1004",
        "    draining      1 3     fan    tuolumne1003",
        "     drained      1 5     fan    tuolumne1005",
    ]
    done = [
        Finished(5, 0, NOW - 90, NOW, 2, {1, 2}, {2}),
        Finished(6, 0, NOW - 30, NOW, 1, {3}, set()),
    ]
    fmt = OutputFormat("{nnodes} {failed.nnodes} {nodelist}", HISTORY_HEADINGS, HISTORY_NODE_FIELDS)
    merged = merge_rows(done, fmt, lambda e: FinishedRow(e, CLUSTER), merge_finished)
    assert fmt.render(merged) == ["NNODES #FAILED NODELIST", "3 1 tuolumne[1001-1003]"]
    fmt = OutputFormat("{id.dec} {runtime!F} {failed.nodelist:h}", HISTORY_HEADINGS)
    assert fmt.render([FinishedRow(e, CLUSTER) for e in done], header=False) == [
        "5 1.5m tuolumne1002",
        "6 30s -",
    ]


def test_fitted_dates() -> None:
    epoch = time.mktime((2024, 6, 10, 8, 30, 15, 0, 0, -1))
    items = rows({"t": epoch}, {"t": 0})
    assert render("+:{t!d:%H:%M::>2}|+:{t!d:%H}|+:{t!d:%H::h}|", items) == [
        " TIME|TIME|TIME|",
        "08:30|08  |08  |",
        "     |    |-   |",
    ]


def test_outside_text_shows_its_controls_as_escapes() -> None:
    """Hostnames and any string field print escaped in every table, `+:` and `.N+` included."""
    cluster = Cluster("evil\x1bc\x07,forged\nrow")  # ESC c resets the terminal
    fmt = OutputFormat("{id.dec} +:{nodelist} {pending.nodelist:8.8+}|", UNIT_HEADINGS)
    row = unit_row(Unit(7, 0, NOW, {0, 1}, {1}, set()), cluster, NOW)
    assert fmt.render([row]) == [
        "JOBID NODELIST                    ACTIVE_NODES|",
        "7 evil\\x1bc\\x07,forged\\x0arow forged\\+|",
    ]
    assert render("{s!r} {s}", rows({"s": "\x1b[2J"})) == ["STRING STRING", "'\\x1b[2J' \\x1b[2J"]


def test_help_shows_config_text_with_controls_escaped() -> None:
    registry = FormatRegistry("hkconsole list", UNIT_FORMATS)
    registry.add_configured(
        {"x\x1b[2J": {"description": "title\x1b]0;pwned\x07\nforged", "format": "{id}"}},
        "/etc/xdg/hk/hkconsole.toml",
    )
    assert registry.help_text().splitlines()[-1] == (
        "  x\\x1b[2J     title\\x1b]0;pwned\\x07\\x0aforged"
    )


def test_repeated_values_keep_their_own_text() -> None:
    # A column formats each distinct value once: values that are equal keys (-0.0 and
    # 0.0, True, 1 and 1.0) still show as themselves, and unhashable ones format too.
    values: list[Any] = [0.0, -0.0, 1, True, 1.0] * 3
    lines = render("{f}", rows(*({"f": v} for v in values)), header=False)
    assert lines == ["0.0", "-0.0", "1", "True", "1.0"] * 3
    assert render("{x}|", rows({"x": [1, 2]}, {"x": [1, 2]}), header=False) == ["[1, 2]|"] * 2


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("<3", ["a      |", "bbbbbbb|"]),
        ("*>3", ["******a|", "bbbbbbb|"]),
        ("<03", ["a000000|", "bbbbbbb|"]),
        ("^3", ["   a   |", "bbbbbbb|"]),
        ("<3.2+", ["a      |", "bbbbbbb|"]),
        (">3h", ["      a|", "bbbbbbb|", "      -|"]),
    ],
)
def test_fitted_columns_padded_like_formatted(spec: str, expected: list[str]) -> None:
    # A fitted column is padded on to its new width where that is the same as formatting
    # it anew (a fill to one side, nothing cut), and formatted anew otherwise.
    items = rows({"s": "a"}, {"s": "bbbbbbb"}, {"s": ""})
    assert render(f"+:{{s:{spec}}}|", items, header=False)[: len(expected)] == expected


def test_first_bad_row_is_reported_when_several_are_bad() -> None:
    # Formatted a column at a time, but the error is the one met row by row: the first
    # bad row's first bad field.
    items = rows({"i": 1, "t": "soon"}, {"i": None, "t": 0})
    with pytest.raises(FormatError, match="field t: !d needs a number, not 'soon'"):
        render("{i:d} {t!d}", items)
