"""The fields, headers and named formats of `hkconsole stats nodes` and `stats users`.

The service answers `stats.nodes` and `stats.users` (hkservice/stats.py) with numbers;
hostnames, user names, rates and every layout are worked out here, on the format engine
of `list`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hkconsole.formatter import FormatRegistry, NamedFormat, Row
from hkconsole.tables import JOBID_KINDS, _add_formats, load_config
from hkservice.cluster import Cluster
from hkservice.jobid import encode_jobid

STATS_NODE_HEADINGS: dict[str, str] = {
    "rank": "RANK",
    "hostname": "HOST",
    "runs": "RUNS",
    "failures": "FAILS",
    "failrate": "FAILRATE",
    "p50": "P50",
    "p95": "P95",
    "max": "MAX",
    "last_failure": "LAST_FAILURE",
    "last_id": "LAST_JOBID",
    **{f"last_id.{kind}": "LAST_JOBID" for kind in JOBID_KINDS},
    "last_reason": "LAST_REASON",
    "streak": "STREAK",
    "flapping": "FLAPPING",
    "stuck": "STUCK",
}
STATS_NODE_FORMATS = (
    NamedFormat(
        "default",
        "Default hkconsole stats nodes format string",
        "+:{hostname:<5} {runs:>6} {failures:>5} {failrate!P:>8h} {p50!F:>7h} {p95!F:>7h} "
        "{max!F:>7h} ?:{flapping:<8} ?:{stuck:<5} "
        "{last_failure!d:%b%d %R::<12h} {last_reason}",
    ),
    NamedFormat(
        "long",
        "hkconsole stats nodes format with ranks, streaks and the last failed job",
        "{rank:>6} +:{hostname:<5} {runs:>6} {failures:>5} {failrate!P:>8h} {p50!F:>7h} "
        "{p95!F:>7h} {max!F:>7h} {streak:>6} {flapping:<8} {stuck:<5} "
        "{last_failure!d:%FT%T::<19h} {last_id:>12h} {last_reason}",
    ),
    NamedFormat(
        "failing",
        "hkconsole stats nodes format, most failing nodes first",
        "sort:-failrate,-failures +:{hostname:<5} {runs:>6} {failures:>5} {failrate!P:>8h} "
        "{streak:>6} ?:{flapping:<8} {last_failure!d:%b%d %R::<12h} {last_reason}",
    ),
)

STATS_USER_HEADINGS: dict[str, str] = {
    "userid": "USERID",
    "username": "USER",
    "units": "UNITS",
    "ranks": "RANKS",
    "failures": "FAILS",
    "failrate": "FAILRATE",
    "total": "TOTAL",
    "p95": "P95",
    "stuck": "STUCK",
}
STATS_USER_FORMATS = (
    NamedFormat(
        "default",
        "Default hkconsole stats users format string",
        "+:{username:<8} {units:>6} {ranks:>7} {failures:>5} {failrate!P:>8h} {total!H:>10} "
        "{p95!F:>7h} {stuck:>5}",
    ),
    NamedFormat(
        "long",
        "hkconsole stats users format with user ids",
        "{userid:>8} +:{username:<8} {units:>6} {ranks:>7} {failures:>5} {failrate!P:>8h} "
        "{total!F:>8} {total!H:>10} {p95!F:>7h} {stuck:>5}",
    ),
)


def stats_formats(what: str, config: Mapping[str, Any] | None = None) -> FormatRegistry:
    """`stats nodes|users` formats: built-in, then `[stats.WHAT.formats.NAME]`."""
    builtins = {"nodes": STATS_NODE_FORMATS, "users": STATS_USER_FORMATS}
    path = ("stats", what, "formats")
    registry = FormatRegistry(f"hkconsole stats {what}", builtins[what], None, ".".join(path))
    _add_formats(registry, path, load_config() if config is None else config)
    return registry


# The fields a node without runs (stuck or flapping only) or without failures has none of.
_NODE_FIELDS_OR_NONE = ("p50", "p95", "max", "last_failure")


def _blank(value: Any) -> Any:
    # Empty, not 0: a node with no run has no duration, and `h` shows it as `-`.
    return "" if value is None else value


def _rate(failures: int, runs: int) -> Any:
    return failures / runs if runs else ""


class NodeStatsRow(Row):
    def __init__(self, node: Mapping[str, Any], cluster: Cluster) -> None:
        super().__init__()
        self.node = node
        # The service's fields at once, a dict copy: a table of 16,384 nodes formats
        # 200,000 of them, and a compute() call or a loop step each was a third of its time.
        values = self._values = dict(node)
        if None in values.values():
            for name in _NODE_FIELDS_OR_NONE:
                if values[name] is None:
                    values[name] = ""
        values["flapping"] = "flapping" if node["flapping"] else ""
        values["stuck"] = "stuck" if node["stuck"] else ""
        values["failrate"] = _rate(node["failures"], node["runs"])
        values["hostname"] = cluster.hostname(node["rank"])

    def compute(self, name: str) -> Any:
        jobid = self.node["last_jobid"]  # last_id, last_id.KIND
        return "" if jobid is None else encode_jobid(jobid, name[8:] or "f58")

    def sort_value(self, name: str) -> Any:
        if name == "hostname":
            return self.node["rank"]  # node10 after node9
        if name == "last_id" or name.startswith("last_id."):
            return self.node["last_jobid"]
        return self.get(name)


def node_stats_json(node: Mapping[str, Any], cluster: Cluster) -> dict[str, Any]:
    return {
        **node,
        "hostname": cluster.hostname(node["rank"]),
        "failrate": _rate(node["failures"], node["runs"]) or 0.0,
    }


def _username(userid: int) -> str:
    import pwd  # only for this field

    try:
        return pwd.getpwuid(userid).pw_name
    except (KeyError, OverflowError):
        return str(userid)


class UserStatsRow(Row):
    def __init__(self, user: Mapping[str, Any]) -> None:
        super().__init__()
        self.user = user

    def compute(self, name: str) -> Any:
        user = self.user
        if name == "username":
            return _username(user["userid"])
        if name == "failrate":
            return _rate(user["failures"], user["ranks"])
        return _blank(user[name])


def user_stats_json(user: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **user,
        "username": _username(user["userid"]),
        "failrate": _rate(user["failures"], user["ranks"]) or 0.0,
    }
