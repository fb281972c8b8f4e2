"""`hkconsole`: the scriptable command line, and the way into the console and the demo.

The `list` path must start fast: it imports neither Textual nor anything it does not use.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from hkconsole.client import (
    Client,
    ServiceError,
    acted_by,
    check_endpoint,
    curve_keys,
    resolve_endpoint,
    tcp_address,
)
from hkconsole.formatter import FormatError, FormatRegistry, OutputFormat, Row, merge_rows
from hkconsole.serve import DEFAULT_PORT, run_serve, under_web_driver
from hkconsole.stats import (
    STATS_NODE_HEADINGS,
    STATS_USER_HEADINGS,
    NodeStatsRow,
    UserStatsRow,
    node_stats_json,
    stats_formats,
    user_stats_json,
)
from hkconsole.tables import (
    AUDIT_HEADINGS,
    DRAIN_HEADINGS,
    GROUP_NODE_FIELDS,
    HISTORY_HEADINGS,
    HISTORY_NODE_FIELDS,
    NODE_HEADINGS,
    NODE_STATES,
    UNIT_HEADINGS,
    UNIT_NODE_FIELDS,
    Finished,
    FinishedRow,
    NodeGroup,
    Unit,
    audit_row,
    command_formats,
    merge_finished,
    merge_groups,
    merge_units,
    node_fields,
    node_groups,
    node_row,
    now,
    unit_formats,
    unit_row,
)
from hkconsole.terminal import NO_TERMINAL, on_a_terminal
from hkservice.cluster import Cluster, TargetError
from hkservice.fsd import parse_duration
from hkservice.idset import format_idset, parse_idset
from hkservice.jobid import JobidError, parse_jobid
from hkservice.text import plural, quoted, visible

PROG = "hkconsole"
# Under 5 s with start-up included: a hung service is reported within 5 s of the command.
TIMEOUT = 4.5


class CliError(Exception):
    pass


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized without shutil.

    argparse builds one per add_argument, and shutil's import (for the terminal width)
    costs every command 3 ms of start-up.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def ascii_number(text: str, high: int) -> int | None:
    """`text` as a number if it is ASCII digits only and at most `high`, else None.

    Not int(text) alone: it takes `٩` for 9, ` 9` for 9, `1_0` for 10, and stops at
    4,300 digits with a message of its own.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if value <= high else None


def parse_signal(text: str) -> int:
    """`9`, `KILL`, `SIGKILL`, `kill` -> 9."""
    if text.isascii() and text.isdigit():
        signum = ascii_number(text, signal.NSIG - 1)
        if not signum:
            raise CliError(f"invalid signal number '{text}' (1-{signal.NSIG - 1})")
        return signum
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise CliError(f"unknown signal '{text}' (try TERM, KILL, INT, HUP or a number)") from None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # real-time signals have no name of their own
        return f"signal {signum}"


UID_MAX = 2**32 - 1
HISTORY_MAX = 10_000  # the most the service returns


def userid_arg(text: str) -> int:
    userid = ascii_number(text, UID_MAX)
    if userid is None:
        raise argparse.ArgumentTypeError(
            f"{quoted(text)} is not a user id (a number from 0 to {UID_MAX})"
        )
    return userid


def limit_arg(text: str) -> int:
    limit = ascii_number(text, HISTORY_MAX)
    if not limit:
        raise argparse.ArgumentTypeError(
            f"{quoted(text)} is not a limit (a number from 1 to {HISTORY_MAX:,})"
        )
    return limit


def since_arg(text: str) -> float:
    # Not parse_duration's message: its examples (0, inf) are no window.
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(
            f"{quoted(text)} is not a window: give a duration above 0, e.g. 30m, 12h or 7d"
        )
    return seconds


def jobid_arg(text: str) -> int:
    if text.strip().lower() == "all":
        raise argparse.ArgumentTypeError("'all' is not a jobid: use --all to target every job")
    try:
        return parse_jobid(text)
    except JobidError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="hk housekeeping: the live console (no command), or one of the commands.",
        allow_abbrev=False,
    )
    parser.add_argument("--endpoint", help="service endpoint (default: $HK_ENDPOINT or local)")
    parser.add_argument(
        "--key",
        metavar="FILE",
        help="tcp with CURVE: your secret key file, NAME.key_secret (default: $HK_KEY)",
    )
    parser.add_argument(
        "--server-key",
        metavar="FILE",
        help="tcp with CURVE: the service's public key file (default: $HK_SERVER_KEY)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="console: hide kill and drain actions"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("list", help="list housekeeping units", allow_abbrev=False)
    p.add_argument("-i", "--include", metavar="TARGETS", help="only these ranks or hosts")
    p.add_argument("-n", "--no-header", action="store_true", help="suppress the header line")
    p.add_argument(
        "-o", "--format", default="default", metavar="FORMAT", help="format, name, help or json"
    )

    p = sub.add_parser("kill", help="signal running housekeeping commands", allow_abbrev=False)
    p.add_argument("--all", action="store_true", help="every unit")
    p.add_argument("-j", "--jobid", type=jobid_arg, help="the unit of this job")
    p.add_argument("-t", "--targets", metavar="TARGETS", help="ranks or hosts")
    p.add_argument("-s", "--signal", default="TERM", metavar="SIG", help="number or name")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    p = sub.add_parser("nodes", help="nodes by state", allow_abbrev=False)
    p.add_argument(
        "-s", "--states", metavar="STATES", help=f"comma list of {','.join(NODE_STATES)}"
    )
    _table_options(p)

    p = sub.add_parser("drain", help="list drained nodes, or drain some", allow_abbrev=False)
    p.add_argument("targets", nargs="?", metavar="TARGETS")
    p.add_argument("reason", nargs="*", metavar="REASON")
    _table_options(p)

    p = sub.add_parser("undrain", help="return drained nodes to service", allow_abbrev=False)
    p.add_argument("targets", metavar="TARGETS")

    p = sub.add_parser("output", help="the last lines a unit's commands wrote", allow_abbrev=False)
    p.add_argument("-j", "--jobid", type=jobid_arg, required=True)
    p.add_argument("-r", "--rank", type=int, help="only this rank")
    p.add_argument("-n", "--lines", type=int, default=20, help="per rank and stream (20)")

    p = sub.add_parser("start", help="hand a finished job's nodes to housekeeping")
    p.add_argument("-j", "--jobid", type=jobid_arg, required=True)
    p.add_argument("-t", "--targets", required=True, metavar="TARGETS")
    p.add_argument("--userid", type=userid_arg, help="the job's user id (default: yours)")

    p = sub.add_parser(
        "audit",
        help="who started, killed, drained and undrained what",
        description="The service's audit log, newest first: every start, kill, drain and "
        "undrain, refused ones too, with who asked (the uid on ipc, the key's name on tcp) "
        "and the user the client reported (REPORTED: not verified).",
        allow_abbrev=False,
    )
    _limit_option(p)
    _table_options(p)

    p = sub.add_parser("history", help="recently finished units", allow_abbrev=False)
    _limit_option(p)
    _table_options(p)

    p = sub.add_parser("stats", help="node and user statistics over time", allow_abbrev=False)
    stats = p.add_subparsers(dest="what", metavar="nodes|users", parser_class=Parser)
    stats.required = True
    for what, text in (
        ("nodes", "per node: runs, failures, durations, last failure, flapping"),
        ("users", "per user: units, failed ranks, time in cleanup caused"),
    ):
        q = stats.add_parser(what, help=text, description=text, allow_abbrev=False)
        q.add_argument(
            "--since",
            type=since_arg,
            metavar="DURATION",
            help="only runs that ended in the last DURATION, e.g. 7d (default: all kept)",
        )
        q.add_argument(
            "--stuck", action="store_true", help="only those with a rank running past warn-after"
        )
        if what == "nodes":
            q.add_argument(
                "--flapping", action="store_true", help="only nodes failing run after run"
            )
        _table_options(q)

    def bounded_int(low: int, high: int) -> Any:
        def parse(text: str) -> int:
            value = ascii_number(text, high)
            if value is None or value < low:
                raise argparse.ArgumentTypeError(
                    f"'{text}' is not a whole number from {low} to {high}"
                )
            return value

        return parse

    p = sub.add_parser(
        "demo",
        help="a simulated cluster with the live console",
        description="Start a private hkservice on a simulated cluster sim[0-N-1], with a "
        "simulated scheduler whose jobs' cleanups succeed, straggle, fail or hang, and "
        "open the console on it. Quitting stops everything the demo started.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--nodes",
        type=bounded_int(1, 4096),
        default=64,
        metavar="N",
        help="how many simulated nodes, 1 to 4096 (default: 64)",
    )
    p.add_argument(
        "--seed",
        type=bounded_int(0, (1 << 64) - 1),
        metavar="SEED",
        help="replay the same jobs with the same cleanup outcomes (default: a random seed, "
        "printed at start and exit and shown in the console's header); which nodes a job "
        "lands on, and when, still depends on timing",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the demo's config, service log and state here after it ends (default: "
        "a temporary directory, removed at exit); a demo started again on the same DIR "
        "starts clean",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        # Unset unless given here: `hkconsole --read-only demo` must keep working.
        default=argparse.SUPPRESS,
        help="console: hide kill and drain actions (default: off)",
    )
    p.add_argument("--run-for", type=float, help=argparse.SUPPRESS)

    p = sub.add_parser(
        "serve",
        help="the live console in a web browser",
        description="Serve the live console to web browsers on http://localhost:PORT (one "
        "console per browser tab). Read-only unless --operator: anyone who can open the "
        "page acts with your rights on the service.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--port",
        type=bounded_int(1, 65535),
        default=DEFAULT_PORT,
        metavar="P",
        help=f"the port on localhost (default: {DEFAULT_PORT})",
    )
    p.add_argument("--operator", action="store_true", help="allow kill and drain from the browser")
    return parser


def _limit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-l",
        "--limit",
        type=limit_arg,
        default=20,
        help=f"how many, 1 to {HISTORY_MAX:,} (default 20)",
    )


def _table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--no-header", action="store_true", help="suppress the header line")
    p.add_argument(
        "-o", "--format", default="default", metavar="FORMAT", help="format, name, help or json"
    )


# -- commands ----------------------------------------------------------------


def _cluster(client: Client) -> Cluster:
    return Cluster(client.call("service.config")["hostlist"])


def _write(lines: Sequence[str]) -> None:
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")


def _resolve_format(registry: FormatRegistry, arg: str) -> str | None:
    """The format string, or None when the argument was help/get-config (printed)."""
    if arg == "help":
        print(registry.help_text())
        return None
    if arg.startswith("get-config="):
        print(registry.get_config(arg.split("=", 1)[1]))
        return None
    return registry.resolve(arg)


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    fmt = None  # json
    if args.format != "json":
        fmt_text = _resolve_format(unit_formats(), args.format)
        if fmt_text is None:
            return 0
        fmt = OutputFormat(fmt_text, UNIT_HEADINGS, UNIT_NODE_FIELDS)
    cluster = _cluster(client)
    result = client.call("housekeeping.list")
    units = [Unit.from_wire(u) for u in result["units"]]
    if args.include:
        # Unknown ranks or hosts match nothing (an operator asking for `-i foo` wants to
        # see nothing rather than everything); only an empty -i means no filter.
        include = cluster.parse_targets(args.include, strict=False)
        units = [u.restricted(include) for u in units]
        units = [u for u in units if u.allocated]
    t_now = now()
    if fmt is None:
        _json({"units": [u.to_json(cluster, t_now) for u in units]})
        return 0
    rows = merge_rows(units, fmt, lambda u: unit_row(u, cluster, t_now), merge_units)
    _write(fmt.render(rows, header=not args.no_header))
    return 0


def cmd_kill(args: argparse.Namespace, client: Client) -> int:
    signum = parse_signal(args.signal)
    # `is not None`: jobid 0 is a real jobid, and `-t ''` is an empty target (an error
    # below), where Flux takes both for "every job".
    if not (args.all or args.jobid is not None or args.targets is not None):
        raise CliError("specify at least one of --targets, --jobid, or --all")
    if args.all and args.jobid is not None:
        raise CliError("do not specify --jobid with --all")
    params: dict[str, Any] = {"signum": signum}
    if args.all:
        params["all"] = True
    if args.jobid is not None:
        params["jobid"] = args.jobid
    if args.targets is not None:
        cluster = _cluster(client)
        params["ranks"] = format_idset(cluster.parse_targets(args.targets, strict=True))
    result = client.call("housekeeping.kill", params)
    if not args.quiet:
        ranks, units = result["ranks"], result["units"]
        print(
            f"signalled {plural(ranks, 'rank')} of {plural(units, 'unit')} "
            f"with {signal_name(signum)}{acted_by(result)}"
        )
        offline = result.get("offline")
        if isinstance(offline, str) and offline:
            # Node agents: sent once those nodes' agents connect.
            print(f"{visible(offline)} offline: not signalled yet (sent when its agent connects)")
    return 0


def _table_format(command: str, arg: str, headings: dict[str, str]) -> OutputFormat | None:
    """The parsed format of `nodes`, `drain` or `history`; None for json."""
    if arg == "json":
        return None
    fmt_text = _resolve_format(command_formats(command), arg)
    if fmt_text is None:
        raise _Done
    node_fields = {
        "history": HISTORY_NODE_FIELDS,
        "audit": frozenset[str](),
    }.get(command, GROUP_NODE_FIELDS)
    return OutputFormat(fmt_text, headings, node_fields)


def _write_groups(
    groups: list[NodeGroup], fmt: OutputFormat, cluster: Cluster, header: bool
) -> None:
    rows = merge_rows(groups, fmt, lambda g: node_row(g, cluster), merge_groups)
    _write(fmt.render(rows, header=header))


class _Done(Exception):
    """The command has printed all it had to (`-o help`, `-o get-config=NAME`)."""


def _json(document: dict[str, Any]) -> None:
    import json  # only here: most runs print tables

    # dumps, not dump: dump writes piece by piece through json's pure-Python encoder
    # (1 s for stats nodes over 16,384 nodes), dumps all at once through its C one.
    sys.stdout.write(json.dumps(document) + "\n")


def _group_json(group: NodeGroup, cluster: Cluster) -> dict[str, Any]:
    return {
        "state": group.state,
        **node_fields(group.ranks, cluster),
        "reason": group.reason,
        "timestamp": group.t or None,
        "by": group.by or None,
    }


def cmd_nodes(args: argparse.Namespace, client: Client) -> int:
    wanted: list[str] = []
    if args.states:
        wanted = [s.strip() for s in args.states.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in NODE_STATES]
        if unknown:
            raise CliError(f"unknown state '{unknown[0]}' (states: {', '.join(NODE_STATES)})")
    fmt = _table_format("nodes", args.format, NODE_HEADINGS)
    cluster = _cluster(client)
    groups = node_groups(client.call("resource.status"))
    if wanted:
        groups = [g for g in groups if g.state in wanted]
    if fmt is None:
        _json({"nodes": [_group_json(g, cluster) for g in groups]})
        return 0
    _write_groups(groups, fmt, cluster, header=not args.no_header)
    return 0


def cmd_drain(args: argparse.Namespace, client: Client) -> int:
    if args.targets is None:
        fmt = _table_format("drain", args.format, DRAIN_HEADINGS)
        cluster = _cluster(client)
        groups = [
            g
            for g in node_groups(client.call("resource.status"))
            if g.state in ("drained", "draining")
        ]
        # Oldest drain first, as `flux resource drain`.
        groups.sort(key=lambda g: (g.t, min(g.ranks)))
        if fmt is None:
            _json({"drained": [_group_json(g, cluster) for g in groups]})
            return 0
        _write_groups(groups, fmt, cluster, header=not args.no_header)
        return 0
    cluster = _cluster(client)
    ranks = cluster.parse_targets(args.targets, strict=True)
    result = client.call(
        "resource.drain", {"ranks": format_idset(ranks), "reason": " ".join(args.reason)}
    )
    if result.get("drained"):
        _notice(f"drained {cluster.nodelist(parse_idset(result['drained']))}{acted_by(result)}")
    if result.get("already"):
        print(
            f"{visible(cluster.nodelist(parse_idset(result['already'])))} already drained: "
            "kept the first reason",
            file=sys.stderr,
        )
    return 0


def cmd_undrain(args: argparse.Namespace, client: Client) -> int:
    cluster = _cluster(client)
    ranks = cluster.parse_targets(args.targets, strict=True)
    result = client.call("resource.undrain", {"ranks": format_idset(ranks)})
    _notice(f"undrained {cluster.nodelist(ranks)}{acted_by(result)}")
    return 0


def _notice(text: str) -> None:
    """What an act did, on stderr: stdout stays as Flux's commands leave it (empty)."""
    print(text, file=sys.stderr)


def cmd_output(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"jobid": args.jobid, "tail": args.lines}
    if args.rank is not None:
        params["rank"] = args.rank
    result = client.call("housekeeping.output", params)
    cluster = _cluster(client)
    for rank, stream, text in result["lines"]:
        print(f"{cluster.hostname(rank)} {stream}: {visible(text)}")
    elsewhere = result.get("kept_on_nodes")
    if isinstance(elsewhere, str):
        # Node agents: the output is on the nodes, and nothing above says otherwise.
        print(visible(elsewhere), file=sys.stderr)
    if result.get("truncated"):
        print("(more ranks than one reply holds: use -r RANK)", file=sys.stderr)
    return 0


def cmd_start(args: argparse.Namespace, client: Client) -> int:
    ranks = _cluster(client).parse_targets(args.targets, strict=True)
    # The caller's uid by default (the service's own would be a guess about someone else).
    userid = os.getuid() if args.userid is None else args.userid
    params: dict[str, Any] = {"jobid": args.jobid, "ranks": format_idset(ranks), "userid": userid}
    client.call("housekeeping.start", params)
    return 0


def cmd_history(args: argparse.Namespace, client: Client) -> int:
    fmt = _table_format("history", args.format, HISTORY_HEADINGS)
    cluster = _cluster(client)
    wire = client.call("housekeeping.history", {"limit": args.limit})["units"]
    entries = [Finished.from_wire(u) for u in wire]
    if fmt is None:
        _json({"units": [e.to_json(cluster) for e in entries]})
        return 0
    rows = merge_rows(entries, fmt, lambda e: FinishedRow(e, cluster), merge_finished)
    _write(fmt.render(rows, header=not args.no_header))
    return 0


def cmd_stats(args: argparse.Namespace, client: Client) -> int:
    headings = STATS_NODE_HEADINGS if args.what == "nodes" else STATS_USER_HEADINGS
    fmt = None  # json
    if args.format != "json":
        fmt_text = _resolve_format(stats_formats(args.what), args.format)
        if fmt_text is None:
            return 0
        fmt = OutputFormat(fmt_text, headings)
    params: dict[str, Any] = {"stuck": args.stuck}
    if args.since is not None:
        params["window"] = args.since
    if args.what == "users":
        users = client.call("stats.users", params)["users"]
        if fmt is None:
            _json({"users": [user_stats_json(u) for u in users]})
            return 0
        rows: list[Row] = [UserStatsRow(u) for u in users]
    else:
        params["flapping"] = args.flapping
        cluster = _cluster(client)
        nodes = client.call("stats.nodes", params)["nodes"]
        if fmt is None:
            _json({"nodes": [node_stats_json(n, cluster) for n in nodes]})
            return 0
        rows = [NodeStatsRow(n, cluster) for n in nodes]
    _write(fmt.render(rows, header=not args.no_header))
    return 0


def cmd_audit(args: argparse.Namespace, client: Client) -> int:
    fmt = _table_format("audit", args.format, AUDIT_HEADINGS)
    entries = client.call("housekeeping.audit", {"limit": args.limit})["entries"]
    if fmt is None:
        _json({"entries": entries})
        return 0
    _write(fmt.render([audit_row(e) for e in entries], header=not args.no_header))
    return 0


COMMANDS = {
    "list": cmd_list,
    "kill": cmd_kill,
    "nodes": cmd_nodes,
    "drain": cmd_drain,
    "undrain": cmd_undrain,
    "output": cmd_output,
    "start": cmd_start,
    "history": cmd_history,
    "stats": cmd_stats,
    "audit": cmd_audit,
}


def error(message: str) -> int:
    # A message can quote the service or a config file: one line, nothing that acts.
    print(f"{PROG}: ERROR: {visible(message)}", file=sys.stderr)
    return 1


# A TCP handshake answered by a live host takes well under this; a silent one means a
# host that is down or a firewall dropping packets.
TCP_PROBE_TIMEOUT = 1.0


def check_listening(endpoint: str) -> None:
    """A service that is not there (died, never started, wrong port) is reported at once.

    ZeroMQ would keep retrying in silence until the request timed out.
    """
    if endpoint.startswith("tcp://"):
        _probe_tcp(endpoint)
        return
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://") :]
    if not os.path.exists(path):
        return  # the client says so itself
    # _socket, not socket: the wrapper module costs the command line 3 ms of start-up.
    import _socket

    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        raise ServiceError(
            "EHOSTDOWN",
            f"no hk service at {endpoint}: nothing listens on its socket "
            "(did the service stop? is hkservice running?)",
        ) from None
    except OSError:
        pass  # e.g. a path too long for AF_UNIX: let ZeroMQ try
    finally:
        probe.close()


def _probe_tcp(endpoint: str) -> None:
    import _socket

    host, port = tcp_address(endpoint)
    try:
        addresses = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
    except _socket.gaierror as exc:
        raise ServiceError(
            "EHOSTDOWN", f"no hk service at {endpoint}: unknown host '{host}' ({exc.strerror})"
        ) from None
    failure: OSError | None = None
    # Each address in turn, as a name such as localhost may give ::1 before 127.0.0.1 and
    # the service listen on one of them only.
    for family, kind, proto, _, address in addresses:
        probe = _socket.socket(family, kind, proto)
        probe.settimeout(TCP_PROBE_TIMEOUT)
        try:
            probe.connect(address)
            return
        except OSError as exc:
            failure = failure if isinstance(failure, ConnectionRefusedError) else exc
        finally:
            probe.close()
    if isinstance(failure, ConnectionRefusedError):
        reason = "connection refused (is hkservice running? is this its port?)"
    elif isinstance(failure, TimeoutError):
        reason = f"no answer to a connection within {TCP_PROBE_TIMEOUT:g} s (is the host up?)"
    else:
        reason = (failure.strerror if failure else None) or str(failure)
    raise ServiceError("EHOSTDOWN", f"no hk service at {endpoint}: {reason}")


class CliClient(Client):
    """The blocking client, checking once, before the first request, that anyone listens.

    Not at start-up: `-o help` and usage checks need no service.
    """

    _checked = False

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        if not self._checked:
            check_endpoint(self.endpoint)
            start = time.monotonic()
            check_listening(self.endpoint)
            # A slow probe comes out of the request's time: the whole command still
            # reports a hung service within 5 s.
            self.timeout = round(max(0.5, self.timeout - (time.monotonic() - start)), 1)
            self._checked = True
        return super().call(method, params)


def _quiet_stdout() -> None:
    # The reader of a pipe went away (`hkconsole list | head`): send the rest of the
    # output, and the flush at exit, to /dev/null instead of raising again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (embedded use)
        pass


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command is None:
            # Under textual-serve (`serve`) the console draws into a browser through pipes.
            if not on_a_terminal() and not under_web_driver():
                return _usage_error(NO_TERMINAL)
            # Checked before Textual starts: the console would only show it as a status.
            check_endpoint(resolve_endpoint(args.endpoint))
            from hkconsole.tui import run_console

            keys = curve_keys(args.key, args.server_key)
            return run_console(endpoint=args.endpoint, read_only=args.read_only, keys=keys)
        if args.command == "demo":
            from hkconsole.demo import run_demo

            return run_demo(
                nodes=args.nodes,
                seed=args.seed,
                state_dir=args.state_dir,
                read_only=args.read_only,
                run_for=args.run_for,
            )
        if args.command == "serve":
            if args.operator and args.read_only:
                return _usage_error("serve: --read-only and --operator contradict each other")
            endpoint = resolve_endpoint(args.endpoint)
            check_endpoint(endpoint)
            return run_serve(endpoint, args.port, args.operator)
        keys = curve_keys(args.key, args.server_key)
        with CliClient(args.endpoint, timeout=TIMEOUT, keys=keys) as client:
            try:
                code = COMMANDS[args.command](args, client)
            except _Done:
                code = 0
            sys.stdout.flush()  # a closed pipe must surface here, inside the handlers
            return code
    except (CliError, FormatError, TargetError, ServiceError, ValueError) as exc:
        return error(str(exc))
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return error(exc.strerror or str(exc))
    except Exception as exc:  # a bug or an odd reply: still one line, never a traceback
        return error(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
