"""The fields, headers and named formats of `list`, `nodes` and `drain`.

Units arrive from the service with integer jobids and idset strings; everything shown is
derived here, on the client, from one `service.config` (for the cluster's hostlist) and
the command's own request.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from hkconsole.formatter import FormatError, FormatRegistry, NamedFormat, Row
from hkservice.cluster import Cluster
from hkservice.idset import IdsetError, format_idset, parse_idset
from hkservice.jobid import KINDS as JOBID_KINDS
from hkservice.jobid import encode_jobid
from hkservice.text import acting

UNIT_HEADINGS: dict[str, str] = {
    "id": "JOBID",
    **{f"id.{kind}": "JOBID" for kind in JOBID_KINDS},
    "userid": "USERID",
    "t_start": "T_START",
    "runtime": "RUNTIME",
    "nnodes": "NNODES",
    "ranks": "RANKS",
    "nodelist": "NODELIST",
    "allocated.nnodes": "NNODES",
    "allocated.ranks": "RANKS",
    "allocated.nodelist": "NODELIST",
    "pending.nnodes": "#ACTIVE",
    "pending.ranks": "ACTIVE_RANKS",
    "pending.nodelist": "ACTIVE_NODES",
    "failed.nnodes": "#FAILED",
    "failed.ranks": "FAILED_RANKS",
    "failed.nodelist": "FAILED_NODES",
    "stuck.nnodes": "#STUCK",
    "stuck.ranks": "STUCK_RANKS",
    "stuck.nodelist": "STUCK_NODES",
}
UNIT_NODE_FIELDS = frozenset(
    f"{prefix}{name}"
    for prefix in ("", "allocated.", "pending.", "failed.", "stuck.")
    for name in ("nnodes", "ranks", "nodelist")
)
UNIT_FORMATS = (
    NamedFormat(
        "default",
        "Default hkconsole list format string",
        "{id.f58:>12} {nnodes:>6} {pending.nnodes:>7} {runtime!F:>8} {nodelist}",
    ),
    NamedFormat(
        "pending",
        "hkconsole list format string including active nodes only",
        "{id.f58:>12} {pending.nnodes:>7} {runtime!F:>8} {pending.nodelist}",
    ),
    NamedFormat(
        "failed",
        "hkconsole list format string showing failed nodes",
        "{id.f58:>12} {nnodes:>6} {failed.nnodes:>7} {runtime!F:>8} {failed.nodelist}",
    ),
    NamedFormat(
        "stuck",
        "hkconsole list format string showing nodes running past warn-after",
        "{id.f58:>12} {nnodes:>6} {stuck.nnodes:>6} {runtime!F:>8} {stuck.nodelist}",
    ),
)

NODE_HEADINGS = {
    "state": "STATE",
    "nnodes": "NNODES",
    "ranks": "RANKS",
    "nodelist": "NODELIST",
    "reason": "REASON",
    "by": "BY",
}
NODE_FORMATS = (
    NamedFormat(
        "default",
        "Default hkconsole nodes format string",
        "{state:>12} {nnodes:>6} +:{ranks:<5} ?+:{reason:<6} {nodelist}",
    ),
    NamedFormat(
        "long",
        "hkconsole nodes format with drain reasons",
        "{state:>12} {nnodes:>6} +:{ranks:<5} +:{reason:<6} {nodelist}",
    ),
)
NODE_STATES = ("idle", "housekeeping", "draining", "drained", "offline")

DRAIN_HEADINGS = {
    "timestamp": "TIMESTAMP",
    "state": "STATE",
    "ranks": "RANK",
    "nnodes": "NNODES",
    "reason": "REASON",
    "by": "BY",
    "nodelist": "NODELIST",
}
DRAIN_FORMATS = (
    NamedFormat(
        "default",
        "Default hkconsole drain format string",
        "{timestamp!d:%b%d %R::<12} {state:<8.8} +:{ranks:<5} +:{reason:<6} {nodelist}",
    ),
    NamedFormat(
        "long",
        "hkconsole drain format string with who drained",
        "{timestamp!d:%b%d %R::<12} {state:<8.8} +:{ranks:<5} +:{reason:<6} +:{by:<2} {nodelist}",
    ),
)


def node_field(what: str, ranks: set[int], cluster: Cluster) -> Any:
    """`nnodes`, `ranks` or `nodelist` of a set of ranks: the node fields of every table."""
    if what == "nnodes":
        return len(ranks)
    if what == "ranks":
        return format_idset(ranks)
    return cluster.nodelist(ranks)


def node_fields(ranks: set[int], cluster: Cluster) -> dict[str, Any]:
    """All three node fields, as `-o json` shows a rank set."""
    return {what: node_field(what, ranks, cluster) for what in ("nnodes", "ranks", "nodelist")}


class Unit(NamedTuple):
    """One housekeeping unit (or several merged) as the client sees it."""

    jobid: int
    userid: int
    t_start: float
    allocated: set[int]
    pending: set[int]
    failed: set[int]
    # Running past warn-after (as of the snapshot: a rank that ends is no longer stuck).
    stuck: frozenset[int] = frozenset()

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Unit:
        return cls(
            jobid=int(wire["jobid"]),
            userid=int(wire["userid"]),
            t_start=float(wire["t_start"]),
            allocated=parse_idset(wire["allocated"]),
            pending=parse_idset(wire["pending"]),
            failed=parse_idset(wire.get("failed", "")),
            stuck=frozenset(parse_idset(wire.get("stuck", ""))),
        )

    def restricted(self, include: set[int]) -> Unit:
        return Unit(
            self.jobid,
            self.userid,
            self.t_start,
            self.allocated & include,
            self.pending & include,
            self.failed & include,
            self.stuck & include,
        )

    def to_json(self, cluster: Cluster, now: float) -> dict[str, Any]:
        return {
            "id": self.jobid,
            "userid": self.userid,
            "t_start": self.t_start,
            "runtime": max(0.0, now - self.t_start),
            "allocated": node_fields(self.allocated, cluster),
            "pending": node_fields(self.pending, cluster),
            "failed": node_fields(self.failed, cluster),
            "stuck": node_fields(set(self.stuck), cluster),
        }


def merge_units(units: list[Unit]) -> Unit:
    first = units[0]
    allocated: set[int] = set()
    pending: set[int] = set()
    failed: set[int] = set()
    stuck: set[int] = set()
    for unit in units:
        allocated |= unit.allocated
        pending |= unit.pending
        failed |= unit.failed
        stuck |= unit.stuck
    return Unit(
        first.jobid, first.userid, first.t_start, allocated, pending, failed, frozenset(stuck)
    )


class JobRow(Row):
    """A row about one job (a unit in progress, or one that ended): jobid and node fields.

    Node fields are `[SET.]nnodes`, `[SET.]ranks` and `[SET.]nodelist`; each kind of row
    says which rank set a SET prefix names.
    """

    def __init__(self, jobid: int, cluster: Cluster) -> None:
        super().__init__()
        self.jobid = jobid
        self.cluster = cluster

    def rank_set(self, prefix: str) -> set[int]:
        raise NotImplementedError

    def job_field(self, name: str) -> Any:
        """Anything but a jobid or node field."""
        raise NotImplementedError

    def compute(self, name: str) -> Any:
        if name == "id":
            return encode_jobid(self.jobid, "f58")
        if name.startswith("id."):
            return encode_jobid(self.jobid, name[3:])
        prefix, _, what = name.rpartition(".")
        if what not in ("nnodes", "ranks", "nodelist"):
            return self.job_field(name)
        return node_field(what, self.rank_set(prefix), self.cluster)

    def sort_value(self, name: str) -> Any:
        # Jobids order by number (their f58 text does not), rank and host fields by their
        # first rank (as text, node10 would come before node2).
        if name == "id" or name.startswith("id."):
            return self.jobid
        prefix, _, what = name.rpartition(".")
        if what in ("ranks", "nodelist"):
            ranks = self.rank_set(prefix)
            return min(ranks) if ranks else None
        return self.get(name)


class UnitRow(JobRow):
    """A unit's fields, each computed only if the format asks for it."""

    def __init__(self, unit: Unit, cluster: Cluster, now: float) -> None:
        super().__init__(unit.jobid, cluster)
        self.unit = unit
        self.now = now

    def rank_set(self, prefix: str) -> set[int]:
        if prefix == "pending":
            return self.unit.pending
        if prefix == "failed":
            return self.unit.failed
        if prefix == "stuck":
            return set(self.unit.stuck)
        return self.unit.allocated  # "" and "allocated"

    def job_field(self, name: str) -> Any:
        if name == "runtime":
            return max(0.0, self.now - self.unit.t_start)
        return getattr(self.unit, name)  # userid, t_start


def unit_row(unit: Unit, cluster: Cluster, now: float) -> Row:
    return UnitRow(unit, cluster, now)


class NodeGroup(NamedTuple):
    state: str
    ranks: set[int]
    reason: str = ""
    t: float = 0.0
    by: str = ""  # who drained (an operator), "" for the service's own drains


def node_groups(status: Mapping[str, Any]) -> list[NodeGroup]:
    """Nodes grouped by state (and, when drained, by reason), like `flux resource status`."""
    size = int(status["size"])
    housekeeping = parse_idset(status["housekeeping"])
    offline = parse_idset(status.get("offline", ""))
    groups: list[NodeGroup] = []
    drained_all: set[int] = set()
    draining: list[NodeGroup] = []
    drained: list[NodeGroup] = []
    for entry in status["drained"]:
        ranks = parse_idset(entry["ranks"])
        drained_all |= ranks
        busy = ranks & housekeeping
        reason, t, by = entry["reason"], entry["t"], entry.get("by") or ""
        if busy:
            draining.append(NodeGroup("draining", busy, reason, t, by))
        if ranks - busy:
            drained.append(NodeGroup("drained", ranks - busy, reason, t, by))
    idle = set(range(size)) - housekeeping - drained_all - offline
    if idle:
        groups.append(NodeGroup("idle", idle))
    # Each node in one row: an unreachable node shows as offline, even with a unit on it.
    if housekeeping - drained_all - offline:
        groups.append(NodeGroup("housekeeping", housekeeping - drained_all - offline))
    groups.extend(draining)
    groups.extend(drained)
    if offline - drained_all:
        groups.extend(_offline_groups(offline - drained_all, status.get("offline_since")))
    return groups


def _offline_groups(offline: set[int], since: Any) -> list[NodeGroup]:
    """Offline nodes, by since when their node agent is gone (`offline_since`, sent by a
    service with node agents); one group without a time otherwise."""
    groups: list[NodeGroup] = []
    left = set(offline)
    if isinstance(since, list):
        for entry in since:
            try:
                ranks = parse_idset(entry["ranks"]) & left
                t = float(entry["t"])
            except (KeyError, TypeError, ValueError, IdsetError):
                continue
            if ranks:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
                groups.append(NodeGroup("offline", ranks, f"no agent since {stamp}", t))
                left -= ranks
    if left:
        groups.append(NodeGroup("offline", left))
    return groups


class NodeRow(Row):
    """A group of nodes (`nodes`, `drain`): one state, and one reason when drained."""

    def __init__(self, group: NodeGroup, cluster: Cluster) -> None:
        super().__init__()
        self.group = group
        self.cluster = cluster

    def compute(self, name: str) -> Any:
        if name in ("nnodes", "ranks", "nodelist"):
            return node_field(name, self.group.ranks, self.cluster)
        if name == "timestamp":
            return self.group.t
        return getattr(self.group, name)

    def sort_value(self, name: str) -> Any:
        if name in ("ranks", "nodelist"):
            return min(self.group.ranks) if self.group.ranks else None
        return self.get(name)


# The fields `nodes` and `drain` merge rows over (as `flux resource status` does).
GROUP_NODE_FIELDS = frozenset({"nnodes", "ranks", "nodelist"})


def merge_groups(groups: list[NodeGroup]) -> NodeGroup:
    """Groups whose rows print alike but for their nodes: one row with all their nodes."""
    ranks: set[int] = set()
    for group in groups:
        ranks |= group.ranks
    return groups[0]._replace(ranks=ranks, t=min(g.t for g in groups))


def node_row(group: NodeGroup, cluster: Cluster) -> Row:
    return NodeRow(group, cluster)


HISTORY_HEADINGS: dict[str, str] = {
    "id": "JOBID",
    **{f"id.{kind}": "JOBID" for kind in JOBID_KINDS},
    "userid": "USERID",
    "t_start": "T_START",
    "t_end": "T_END",
    "runtime": "RUNTIME",
    "releases": "RELEASES",
    "nnodes": "NNODES",
    "ranks": "RANKS",
    "nodelist": "NODELIST",
    "failed.nnodes": "#FAILED",
    "failed.ranks": "FAILED_RANKS",
    "failed.nodelist": "FAILED_NODES",
}
HISTORY_NODE_FIELDS = frozenset(
    f"{prefix}{name}" for prefix in ("", "failed.") for name in ("nnodes", "ranks", "nodelist")
)
HISTORY_FORMATS = (
    NamedFormat(
        "default",
        "Default hkconsole history format string",
        "{id.f58:>12} {t_end!d:%b%d %R::<12} {nnodes:>6} {failed.nnodes:>7} {runtime!F:>8} "
        "{nodelist}",
    ),
    NamedFormat(
        "failed",
        "hkconsole history format string showing failed nodes",
        "{id.f58:>12} {t_end!d:%b%d %R::<12} {failed.nnodes:>7} {runtime!F:>8} {failed.nodelist}",
    ),
    NamedFormat(
        "long",
        "hkconsole history format string with user, start and releases",
        "{id.f58:>12} {userid:>6} {t_start!d:%FT%T::<19} {t_end!d:%FT%T::<19} "
        "{runtime!F:>8} {releases:>8} {nnodes:>6} {failed.nnodes:>7} {nodelist}",
    ),
)


class Finished(NamedTuple):
    """A unit that has ended (or several merged), from `housekeeping.history`."""

    jobid: int
    userid: int
    t_start: float
    t_end: float
    releases: int
    ranks: set[int]
    failed: set[int]
    # (ranks, reason) of each way its failed ranks failed ("exited 1", "killed TERM").
    reasons: tuple[tuple[frozenset[int], str], ...] = ()

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Finished:
        return cls(
            int(wire["jobid"]),
            int(wire["userid"]),
            float(wire["t_start"]),
            float(wire["t_end"]),
            int(wire.get("releases", 0)),
            parse_idset(wire["ranks"]),
            parse_idset(wire.get("failed", "")),
            _reasons(wire.get("reasons")),
        )

    def to_json(self, cluster: Cluster) -> dict[str, Any]:
        return {
            "id": self.jobid,
            "userid": self.userid,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "runtime": self.t_end - self.t_start,
            "releases": self.releases,
            **node_fields(self.ranks, cluster),
            "failed": node_fields(self.failed, cluster),
        }


def _reasons(wire: Any) -> tuple[tuple[frozenset[int], str], ...]:
    """`reasons` of a history entry; what is not a {ranks, reason} entry is left out
    (an older service sends none)."""
    reasons: list[tuple[frozenset[int], str]] = []
    for entry in wire if isinstance(wire, list) else ():
        try:
            ranks, reason = parse_idset(entry["ranks"]), entry["reason"]
        except (KeyError, TypeError, ValueError, IdsetError):
            continue
        if isinstance(reason, str) and ranks:
            reasons.append((frozenset(ranks), reason))
    return tuple(reasons)


def merge_finished(entries: list[Finished]) -> Finished:
    ranks: set[int] = set()
    failed: set[int] = set()
    for entry in entries:
        ranks |= entry.ranks
        failed |= entry.failed
    return entries[0]._replace(ranks=ranks, failed=failed)


class FinishedRow(JobRow):
    def __init__(self, entry: Finished, cluster: Cluster) -> None:
        super().__init__(entry.jobid, cluster)
        self.entry = entry

    def rank_set(self, prefix: str) -> set[int]:
        return self.entry.failed if prefix == "failed" else self.entry.ranks

    def job_field(self, name: str) -> Any:
        if name == "runtime":
            return max(0.0, self.entry.t_end - self.entry.t_start)
        return getattr(self.entry, name)  # userid, t_start, t_end, releases


AUDIT_HEADINGS = {
    "time": "TIME",
    "who": "WHO",
    "how": "HOW",
    "role": "ROLE",
    "reported": "REPORTED",
    "by": "BY",
    "method": "METHOD",
    "params": "PARAMS",
    "result": "RESULT",
    "effect": "EFFECT",
}
AUDIT_FORMATS = (
    NamedFormat(
        "default",
        "Default hkconsole audit format string",
        "{time!d:%b%d %T::<15} {by:<16} {method:<18} {effect}",
    ),
    NamedFormat(
        "long",
        "hkconsole audit format string with the role, how the caller was known, and the parameters",
        "{time!d:%FT%T::<19} {who:<10} {reported:<10} {role:<9} {how:<10} {result:<7} "
        "{method:<18} {params} {effect}",
    ),
)


def audit_row(entry: Mapping[str, Any]) -> Row:
    """One audit record, as `housekeeping.audit` returns it."""
    import json  # only for this table

    who = str(entry["who"])
    reported = str(entry.get("reported") or "")
    by = acting(who, reported or None)
    params = entry.get("params")
    return Row(
        {
            "time": lambda: float(entry["t"]),
            "who": lambda: who,
            "how": lambda: str(entry["how"]),
            "role": lambda: str(entry["role"]),
            "reported": lambda: reported,
            "by": lambda: by,
            "method": lambda: str(entry["method"]),
            "params": lambda: json.dumps(params, ensure_ascii=False, sort_keys=True),
            "result": lambda: "ok" if entry["ok"] else "refused",
            "effect": lambda: str(entry["effect"]),
        }
    )


def config_dirs() -> list[str]:
    """XDG config directories, lowest precedence first (as Flux's UtilConfig)."""
    system = (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
    home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [d for d in reversed(system) if d] + [home]


def load_config() -> dict[str, Any]:
    """hk/hkconsole.toml from every XDG config dir, deep-merged, later ones winning.

    `__files__` keeps each file's own table, so an error can name the file it is in.
    """
    return _load_files(os.path.join(d, "hk", "hkconsole.toml") for d in config_dirs())


# Flux's UtilConfig reads `<name>.*` with these extensions, in sorted order, in each dir.
FLUX_CONFIG_EXTENSIONS = (".json", ".toml", ".yaml")


def load_flux_config() -> dict[str, Any]:
    """flux/flux-housekeeping.{json,toml,yaml} from the XDG config dirs, as Flux reads them.

    So the formats of a Flux site work unchanged in `hkconsole list`.
    """
    return _load_files(
        os.path.join(d, "flux", "flux-housekeeping" + ext)
        for d in config_dirs()
        for ext in FLUX_CONFIG_EXTENSIONS
    )


def _load_files(paths: Iterable[str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        if not os.path.isfile(path):
            continue
        if path.endswith(".yaml"):
            # Not an error: a site's YAML file would stop every user's `list`. Its formats
            # are missing; `-o help` and a format not found say so.
            merged.setdefault("__unread__", []).append(path)
            continue
        data = _read_config_file(path)
        _deep_merge(merged, data)
        merged.setdefault("__sources__", []).append(path)
        merged.setdefault("__files__", []).append((path, data))
    return merged


def _read_config_file(path: str) -> dict[str, Any]:
    """A TOML or JSON file as a table; any fault is a FormatError naming the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8")
        if path.endswith(".json"):
            import json  # only when there is a file: most runs have none

            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        kind = "JSON" if path.endswith(".json") else "TOML"
        raise FormatError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            f"{kind} files must be UTF-8"
        ) from None
    except OSError as exc:
        raise FormatError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise FormatError(f"{path}: {exc}") from None
    except RecursionError:
        raise FormatError(f"{path}: nested too deeply") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: must hold a table (a JSON object), not {type(data).__name__}")
    return data


def config_source(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """The file whose value of `keys` (a dotted path) won the merge, for messages."""
    for path, data in reversed(config.get("__files__", [])):
        value: Any = data
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                break
            value = value[key]
        else:
            return str(path)
    return " ".join(config.get("__sources__", [])) or "hkconsole.toml"


def _deep_merge(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            _deep_merge(into[key], value)
        else:
            into[key] = value


def unit_formats(
    config: Mapping[str, Any] | None = None, flux_config: Mapping[str, Any] | None = None
) -> FormatRegistry:
    """`list`'s formats: built-in, then `[formats.NAME]` of Flux's flux-housekeeping files,
    then of hkconsole.toml, which wins a clash.

    A Flux file may redefine a built-in format, as flux-housekeeping lets it; hk's may not.
    """
    env_default = os.environ.get("HK_LIST_FORMAT_DEFAULT") or os.environ.get(
        "FLUX_HOUSEKEEPING_FORMAT_DEFAULT"
    )
    registry = FormatRegistry("hkconsole list", UNIT_FORMATS, env_default, "formats")
    flux_config = load_flux_config() if flux_config is None else flux_config
    _add_formats(registry, ("formats",), flux_config, may_redefine=True)
    _add_formats(registry, ("formats",), load_config() if config is None else config)
    registry.unread = list(flux_config.get("__unread__", []))
    return registry


def command_formats(command: str, config: Mapping[str, Any] | None = None) -> FormatRegistry:
    """`nodes`, `drain` and `history` formats: built-in, then `[COMMAND.formats.NAME]`."""
    builtins = {
        "nodes": NODE_FORMATS,
        "drain": DRAIN_FORMATS,
        "history": HISTORY_FORMATS,
        "audit": AUDIT_FORMATS,
    }
    path = (command, "formats")
    registry = FormatRegistry(f"hkconsole {command}", builtins[command], None, ".".join(path))
    _add_formats(registry, path, load_config() if config is None else config)
    return registry


def _add_formats(
    registry: FormatRegistry,
    path: tuple[str, ...],
    config: Mapping[str, Any],
    may_redefine: bool = False,
) -> None:
    formats: Any = config
    for depth, key in enumerate(path, 1):
        formats = formats.get(key, {})
        if not isinstance(formats, Mapping):
            table = ".".join(path[:depth])
            what = "a table of formats" if depth == len(path) else "a table"
            raise FormatError(f"{config_source(config, path[:depth])}: {table} must be {what}")
    for name, entry in formats.items():
        source = config_source(config, (*path, name))
        registry.add_configured({name: entry}, source, may_redefine)


def now() -> float:
    return time.time()


def ranks_of(groups: Iterable[NodeGroup]) -> set[int]:
    out: set[int] = set()
    for group in groups:
        out |= group.ranks
    return out
