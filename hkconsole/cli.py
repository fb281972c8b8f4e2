"""`hkconsole`: the scriptable command line, and the way into the console and the demo.

The `list` path must start fast: it imports neither Textual nor anything it does not use.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from hkconsole.client import Client, ServiceError
from hkconsole.formatter import FormatError, FormatRegistry, OutputFormat, merge_rows
from hkconsole.tables import (
    DRAIN_FORMATS,
    DRAIN_HEADINGS,
    NODE_FORMATS,
    NODE_HEADINGS,
    NODE_STATES,
    UNIT_HEADINGS,
    UNIT_NODE_FIELDS,
    NodeGroup,
    Unit,
    merge_units,
    node_groups,
    node_row,
    now,
    unit_formats,
    unit_row,
)
from hkservice.cluster import Cluster, TargetError
from hkservice.fsd import format_fsd
from hkservice.idset import format_idset, parse_idset
from hkservice.jobid import JobidError, encode_jobid, parse_jobid

PROG = "hkconsole"


class CliError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_signal(text: str) -> int:
    """`9`, `KILL`, `SIGKILL`, `kill` -> 9."""
    if text.isdigit():
        signum = int(text)
        if not 0 < signum < signal.NSIG:
            raise CliError(f"invalid signal number {text} (1-{signal.NSIG - 1})")
        return signum
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise CliError(f"unknown signal '{text}' (try TERM, KILL, INT, HUP or a number)") from None


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
    p.add_argument("-n", "--no-header", action="store_true")
    p.add_argument("-o", "--format", default="default", metavar="FORMAT")

    p = sub.add_parser("drain", help="list drained nodes, or drain some", allow_abbrev=False)
    p.add_argument("targets", nargs="?", metavar="TARGETS")
    p.add_argument("reason", nargs="*", metavar="REASON")
    p.add_argument("-n", "--no-header", action="store_true")
    p.add_argument("-o", "--format", default="default", metavar="FORMAT")

    p = sub.add_parser("undrain", help="return drained nodes to service", allow_abbrev=False)
    p.add_argument("targets", metavar="TARGETS")

    p = sub.add_parser("start", help="hand a finished job's nodes to housekeeping")
    p.add_argument("-j", "--jobid", type=jobid_arg, required=True)
    p.add_argument("-t", "--targets", required=True, metavar="TARGETS")
    p.add_argument("--userid", type=int, help="the job's user id (default: yours)")

    p = sub.add_parser("history", help="recently finished units", allow_abbrev=False)
    p.add_argument("-l", "--limit", type=int, default=20)

    p = sub.add_parser("demo", help="a simulated cluster with the live console")
    p.add_argument("--nodes", type=int, default=64)
    p.add_argument("--seed", type=int)
    p.add_argument("--state-dir", help="keep the demo's state here")
    p.add_argument("--run-for", type=float, help=argparse.SUPPRESS)
    return parser


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
    if args.format == "json":
        fmt_text = None
    else:
        fmt_text = _resolve_format(unit_formats(), args.format)
        if fmt_text is None:
            return 0
    fmt = OutputFormat(fmt_text, UNIT_HEADINGS, UNIT_NODE_FIELDS) if fmt_text else None
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
        json.dump({"units": [u.to_json(cluster, t_now) for u in units]}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    rows = merge_rows(units, fmt, lambda u: unit_row(u, cluster, t_now), merge_units)
    _write(fmt.render(rows, header=not args.no_header))
    return 0


def cmd_kill(args: argparse.Namespace, client: Client) -> int:
    signum = parse_signal(args.signal)
    if not (args.all or args.jobid is not None or args.targets):
        raise CliError("specify at least one of --targets, --jobid, or --all")
    if args.all and args.jobid is not None:
        raise CliError("do not specify --jobid with --all")
    params: dict[str, Any] = {"signum": signum}
    if args.all:
        params["all"] = True
    if args.jobid is not None:
        params["jobid"] = args.jobid
    if args.targets:
        cluster = _cluster(client)
        params["ranks"] = format_idset(cluster.parse_targets(args.targets, strict=True))
    result = client.call("housekeeping.kill", params)
    if not args.quiet:
        ranks, units = result["ranks"], result["units"]
        print(
            f"signalled {ranks} rank{'s' if ranks != 1 else ''} of {units} "
            f"unit{'s' if units != 1 else ''} with {signal.Signals(signum).name}"
        )
    return 0


def cmd_nodes(args: argparse.Namespace, client: Client) -> int:
    registry = FormatRegistry("hkconsole nodes", NODE_FORMATS)
    fmt_text = _resolve_format(registry, args.format)
    if fmt_text is None:
        return 0
    fmt = OutputFormat(fmt_text, NODE_HEADINGS)
    cluster = _cluster(client)
    groups = node_groups(client.call("resource.status"))
    if args.states:
        wanted = [s.strip() for s in args.states.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in NODE_STATES]
        if unknown:
            raise CliError(f"unknown state '{unknown[0]}' (states: {', '.join(NODE_STATES)})")
        groups = [g for g in groups if g.state in wanted]
    _write(fmt.render([node_row(g, cluster) for g in groups], header=not args.no_header))
    return 0


def cmd_drain(args: argparse.Namespace, client: Client) -> int:
    cluster = _cluster(client)
    if args.targets is None:
        registry = FormatRegistry("hkconsole drain", DRAIN_FORMATS)
        fmt_text = _resolve_format(registry, args.format)
        if fmt_text is None:
            return 0
        fmt = OutputFormat(fmt_text, DRAIN_HEADINGS)
        groups: list[NodeGroup] = [
            g for g in node_groups(client.call("resource.status")) if g.reason or g.t
        ]
        groups = [g for g in groups if g.state in ("drained", "draining")]
        groups.sort(key=lambda g: (g.t, min(g.ranks)))
        _write(fmt.render([node_row(g, cluster) for g in groups], header=not args.no_header))
        return 0
    ranks = cluster.parse_targets(args.targets, strict=True)
    result = client.call(
        "resource.drain", {"ranks": format_idset(ranks), "reason": " ".join(args.reason)}
    )
    if result.get("already"):
        print(
            f"{cluster.nodelist(parse_idset(result['already']))} already drained: "
            "kept the first reason",
            file=sys.stderr,
        )
    return 0


def cmd_undrain(args: argparse.Namespace, client: Client) -> int:
    ranks = _cluster(client).parse_targets(args.targets, strict=True)
    client.call("resource.undrain", {"ranks": format_idset(ranks)})
    return 0


def cmd_start(args: argparse.Namespace, client: Client) -> int:
    ranks = _cluster(client).parse_targets(args.targets, strict=True)
    params: dict[str, Any] = {"jobid": args.jobid, "ranks": format_idset(ranks)}
    if args.userid is not None:
        params["userid"] = args.userid
    client.call("housekeeping.start", params)
    return 0


def cmd_history(args: argparse.Namespace, client: Client) -> int:
    cluster = _cluster(client)
    units = client.call("housekeeping.history", {"limit": args.limit})["units"]
    print(f"{'JOBID':>12} {'NNODES':>6} {'FAILED':>6} {'TIME':>8} NODELIST")
    for u in units:
        ranks = parse_idset(u["ranks"])
        failed = parse_idset(u["failed"])
        print(
            f"{encode_jobid(u['jobid']):>12} {len(ranks):>6} {len(failed):>6} "
            f"{format_fsd(u['t_end'] - u['t_start']):>8} {cluster.nodelist(ranks)}"
        )
    return 0


COMMANDS = {
    "list": cmd_list,
    "kill": cmd_kill,
    "nodes": cmd_nodes,
    "drain": cmd_drain,
    "undrain": cmd_undrain,
    "start": cmd_start,
    "history": cmd_history,
}


def error(message: str) -> int:
    print(f"{PROG}: ERROR: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command is None:
            from hkconsole.tui import run_console

            return run_console(endpoint=args.endpoint, read_only=args.read_only)
        if args.command == "demo":
            from hkconsole.demo import run_demo

            return run_demo(
                nodes=args.nodes,
                seed=args.seed,
                state_dir=args.state_dir,
                read_only=args.read_only,
                run_for=args.run_for,
            )
        with Client(args.endpoint) as client:
            return COMMANDS[args.command](args, client)
    except (CliError, FormatError, TargetError, ServiceError, ValueError) as exc:
        return error(str(exc))
    except BrokenPipeError:
        # `hkconsole list | head`: the reader went away; that is not an error.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return error(exc.strerror or str(exc))


if __name__ == "__main__":
    sys.exit(main())
