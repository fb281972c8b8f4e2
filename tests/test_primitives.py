"""Idsets, jobids, durations and the cluster's hosts, against Flux's reference values."""

from __future__ import annotations

import math
from collections.abc import Callable

import hostlist
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hkservice.cluster import Cluster, TargetError
from hkservice.fsd import format_duration_config, format_fsd, parse_duration
from hkservice.idset import IdsetError, format_idset, parse_idset
from hkservice.jobid import KINDS, JobidError, encode_jobid, parse_jobid

# -- idsets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids"),
    [("", set()), ("3", {3}), ("0-3,5,7-9", {0, 1, 2, 3, 5, 7, 8, 9}), ("[0-2,4]", {0, 1, 2, 4})],
)
def test_idset_parses(text: str, ids: set[int]) -> None:
    assert parse_idset(text) == ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3,1", "range '1' is out of order"),
        ("0-3,2", "range '2' is out of order"),
        ("3-3", "error parsing range '3-3'"),
        ("3-1", "error parsing range '3-1'"),
        ("01", "error parsing range '01'"),
        ("x", "error parsing range 'x'"),
        (" 1", "error parsing range ' 1'"),
        ("-1", "error parsing range '-1'"),
        ("[0-3", "mismatched or nested brackets"),
        ("[[0]]", "mismatched or nested brackets"),
        ("2147483648", "too large"),
    ],
)
def test_idset_rejects_like_flux(text: str, message: str) -> None:
    with pytest.raises(IdsetError, match=message.replace("[", r"\[")):
        parse_idset(text)


def test_empty_idset_can_be_refused() -> None:
    with pytest.raises(IdsetError, match="cannot create an empty idset"):
        parse_idset("", allow_empty=False)


@given(st.sets(st.integers(0, 5000)))
def test_idset_round_trip(ids: set[int]) -> None:
    assert parse_idset(format_idset(ids)) == ids


def test_idset_format() -> None:
    assert format_idset([9, 8, 7, 5, 0, 1, 2, 3]) == "0-3,5,7-9"
    assert format_idset([]) == ""
    assert format_idset(range(16384)) == "0-16383"


# -- jobids ------------------------------------------------------------------

REFERENCE = {
    2**64 - 1: {
        "dec": "18446744073709551615",
        "hex": "0xffffffffffffffff",
        "kvs": "job.ffff.ffff.ffff.ffff",
        "dothex": "ffff.ffff.ffff.ffff",
        "words": "natural-analyze-verbal--natural-analyze-verbal",
        "f58plain": "fjpXCZedGfVQ",
    },
    0: {
        "dec": "0",
        "hex": "0x0",
        "kvs": "job.0000.0000.0000.0000",
        "dothex": "0000.0000.0000.0000",
        "words": "academy-academy-academy--academy-academy-academy",
        "f58plain": "f1",
    },
}


@pytest.mark.parametrize("value", sorted(REFERENCE))
def test_jobid_reference_values(value: int) -> None:
    for kind, text in REFERENCE[value].items():
        assert encode_jobid(value, kind) == text
        assert parse_jobid(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "badstring",
        "job.0000.0000",
        "job.0000.0000.0000.000P",
        "42plusbad",
        "meep",
        "bad-words",
        "18446744073709551616",
        "",
        "f",
        "fjpXCZedGfVQQ",
    ],
)
def test_jobid_rejects(text: str) -> None:
    with pytest.raises(JobidError, match="is not a valid jobid"):
        parse_jobid(text)


@given(st.integers(0, 2**64 - 1), st.sampled_from(KINDS))
def test_jobid_round_trip(value: int, kind: str) -> None:
    assert parse_jobid(encode_jobid(value, kind)) == value


# -- durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (math.inf, "inf"),
        (0.0004, "0s"),
        (5.1234, "5.123s"),
        (53.92, "53.92s"),
        (59.999, "60s"),
        (90, "1.5m"),
        (5400, "1.5h"),
        (3 * 86400, "3d"),
    ],
)
def test_fsd_matches_flux(seconds: float, text: str) -> None:
    assert format_fsd(seconds) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1.5d", 129600)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration_config(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "foo", "-1s", "nan", "infs", "5 m", "1x"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_inf_duration() -> None:
    assert parse_duration("inf") == parse_duration("infinity") == math.inf
    assert format_duration_config(None) == "unset"


# -- the cluster -------------------------------------------------------------


def test_cluster_ranks_and_nodelists() -> None:
    cluster = Cluster("node[0-127]")
    assert cluster.size == 128
    assert cluster.hostname(5) == "node5"
    assert cluster.rank_of("node7") == 7
    assert cluster.nodelist([5]) == "node5"
    assert cluster.nodelist([1, 3, 5, 6, 7]) == "node[1,3,5-7]"
    assert cluster.nodelist([]) == ""


def test_nodelist_rfc29_mixed_hosts() -> None:
    cluster = Cluster("foo1,foo2,foo3,fooi,i[00-05],foo[1,3]-bar")
    assert cluster.nodelist(range(4)) == "foo[1-3],fooi"
    assert cluster.nodelist([4, 5, 6]) == "i[00-02]"
    assert cluster.nodelist([10, 11]) == "foo1-bar,foo3-bar"


@given(st.sets(st.integers(0, 999), min_size=1))
def test_nodelist_matches_collect_hostlist(ranks: set[int]) -> None:
    cluster = _big()
    assert cluster.nodelist(ranks) == hostlist.collect_hostlist(
        [cluster.hostname(r) for r in ranks]
    )


_CLUSTER: list[Cluster] = []


def _big() -> Cluster:
    if not _CLUSTER:
        _CLUSTER.append(Cluster("node[0-999]"))
    return _CLUSTER[0]


@pytest.mark.parametrize("text", ["node[0-3", "", "a,a"])
def test_bad_cluster_hostlists(text: str) -> None:
    with pytest.raises(ValueError, match="hostlist"):
        Cluster(text)


def test_targets() -> None:
    cluster = Cluster("node[0-127]")
    assert cluster.parse_targets("0-3,7", strict=True) == {0, 1, 2, 3, 7}
    assert cluster.parse_targets("node[2-3]", strict=True) == {2, 3}
    assert cluster.parse_targets("3,200-201", strict=False) == {3}
    assert cluster.parse_targets("foo,node1", strict=False) == {1}
    with pytest.raises(TargetError, match=r"ranks 200-201 are not in the cluster \(0-127\)"):
        cluster.parse_targets("200-201", strict=True)
    with pytest.raises(TargetError, match=r"^host 'foo' is not in the cluster$"):
        cluster.parse_targets("foo", strict=True)
    with pytest.raises(TargetError, match=r"^hosts 'foo\[1-2\]' are not in the cluster$"):
        cluster.parse_targets("foo[1-2]", strict=True)
    with pytest.raises(TargetError, match=r"invalid targets 'foo\[': not an idset or a hostlist"):
        cluster.parse_targets("foo[", strict=False)
    with pytest.raises(TargetError, match=r"invalid targets '3,1': range '1' is out of order"):
        cluster.parse_targets("3,1", strict=False)
    with pytest.raises(TargetError, match="empty targets"):
        cluster.parse_targets("", strict=True)


def test_targets_beyond_the_cluster_are_decided_before_expanding() -> None:
    import tracemalloc

    cluster = Cluster("node[0-127]")

    def peak_bytes(call: Callable[[], object]) -> int:
        tracemalloc.start()
        try:
            call()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def strict_targets() -> None:
        # Three million ids would take hundreds of MB as a set: only ranges are built.
        with pytest.raises(
            TargetError, match=r"^ranks 128-2999999 are not in the cluster \(0-127\)$"
        ):
            cluster.parse_targets("0-2999999", strict=True)

    assert peak_bytes(strict_targets) < 1 << 20
    assert peak_bytes(lambda: cluster.parse_targets("0-2999999", strict=False)) < 1 << 20
    assert cluster.parse_targets("0-2999999", strict=False) == set(range(128))

    def strict_ranks() -> None:
        with pytest.raises(TargetError, match=r"^ranks 128-2999999 are not in the cluster"):
            cluster.parse_ranks("5,100-2999999", strict=True)

    assert peak_bytes(strict_ranks) < 1 << 20
    assert cluster.parse_ranks("5,100-2999999", strict=False) == {5, *range(100, 128)}
    # Adjacent ranges outside are reported as one, as format_idset would.
    with pytest.raises(TargetError, match=r"^ranks 128-131,140 are not in the cluster"):
        cluster.parse_targets("120-129,130-131,140", strict=True)
    assert cluster.parse_targets("120-129,130-131,140", strict=False) == set(range(120, 128))
    with pytest.raises(TargetError, match="too large"):
        cluster.parse_targets("2147483648", strict=False)
    with pytest.raises(TargetError, match=r"are not in the cluster \(0\)$"):
        Cluster("solo").parse_ranks("0-1", strict=True)


@pytest.mark.parametrize("text", [" 1", "1 ", "a b", "node1, node2", "0,\t1"])
@pytest.mark.parametrize("strict", [True, False])
def test_targets_with_whitespace_are_malformed(text: str, strict: bool) -> None:
    cluster = Cluster("node[0-7]")
    quoted = text.replace("[", r"\[")
    with pytest.raises(TargetError, match=rf"^invalid targets '{quoted}': .*whitespace"):
        cluster.parse_targets(text, strict=strict)


def test_ranges_and_their_formatting() -> None:
    from hkservice.idset import clip_ranges, format_ranges, parse_ranges, ranges_outside

    ranges = parse_ranges("0-3,5,7-2147483646")
    assert ranges == [(0, 3), (5, 5), (7, 2147483646)]
    assert clip_ranges(ranges, 6) == [(0, 3), (5, 5)]
    assert clip_ranges(ranges, 9) == [(0, 3), (5, 5), (7, 8)]
    assert ranges_outside(ranges, 9) == [(9, 2147483646)]
    assert ranges_outside(ranges, 2) == [(2, 3), (5, 5), (7, 2147483646)]
    assert format_ranges([(0, 3), (4, 4), (6, 6), (7, 9)]) == "0-4,6-9"
    assert format_ranges([]) == ""
    assert format_ranges([(0, 0)]) == "0"


def test_visible_shows_controls_as_escapes_and_leaves_text_alone() -> None:
    from hkservice.text import visible

    assert visible("exited 1 on sim[0-3] é ƒ 🦀") == "exited 1 on sim[0-3] é ƒ 🦀"
    assert visible("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert visible("title\x1b]0;pwned\x07") == "title\\x1b]0;pwned\\x07"
    assert visible("two\nrows\r\t") == "two\\x0arows\\x0d\\x09"
    assert visible("\x9b\x7f") == "\\x9b\\x7f"
    assert visible("abc\u202edef\u2028") == "abc\\u202edef\\u2028"


def test_a_prepacked_reply_is_what_packing_it_whole_gives() -> None:
    """housekeeping.list packs its units once between changes and splices the bytes in:
    a client must not tell the difference."""
    from hkservice.protocol import Prepacked, pack, pack_reply, reply_ok

    units = [{"jobid": 1 << 63, "ranks": "0-3", "stuck": ""}, {"jobid": 2, "ranks": "é"}]
    spliced = pack_reply(reply_ok(7, Prepacked({"t_now": 1.25}, "units", pack(units))))
    assert spliced == pack(reply_ok(7, {"t_now": 1.25, "units": units}))
    assert pack_reply(reply_ok(7, {"x": 1})) == pack(reply_ok(7, {"x": 1}))
