"""What the console's acting keys do: confirm, then kill, drain, undrain or pick a signal.

Each flow gets its target frozen at the moment its key was pressed (`KillTarget`), asks
in a modal screen, then checks the latest data again before each request it sends.
Each runs in a worker of its own: opening a dialog never stops a flow already sending.
"""

from __future__ import annotations

import signal as signal_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hkconsole.client import ServiceError, acted_by
from hkconsole.tui.cells import hosts_text, in_hosts, jobid_text, unit_names
from hkconsole.tui.screens import ConfirmScreen, OutputScreen, PromptScreen, SignalScreen
from hkservice.cluster import TargetError
from hkservice.idset import format_idset
from hkservice.text import plural, visible

if TYPE_CHECKING:
    from hkconsole.tui.app import HkConsole

TARGET_UNITS_LISTED = 8


@dataclass(frozen=True)
class KillTarget:
    """What a kill key captured when it was pressed, so the action cannot drift."""

    jobids: tuple[int, ...]  # marked units, else the one under the cursor
    signal: str
    hidden: tuple[int, ...]  # marked, but hidden by the filter
    filter_text: str


async def send_kill(
    app: HkConsole, params: dict[str, Any], signal_name: str
) -> dict[str, Any] | None:
    """The service's reply (ranks signalled, by whom), or None (the failure is reported)."""
    signum = int(signal_module.Signals[f"SIG{signal_name}"])
    try:
        result = await app.client.call("housekeeping.kill", {**params, "signum": signum})
    except ServiceError as exc:
        app.notify(in_hosts(exc.message, app.model.cluster), title="Kill failed", severity="error")
        return None
    app.feed.resync_soon()
    return result


def report_kill(
    app: HkConsole, jobids: list[int], ranks: int, signal: str, where: set[int], by: str
) -> None:
    """Say what was signalled: `ranks` is the service's count, `where` the ranks the
    console expected to hit (named when the two agree, else just counted), `by` who the
    service recorded as sending it (`acted_by`)."""
    if not ranks:
        app.notify("nothing was running there: nothing signalled", severity="warning")
        return
    whom = unit_names(jobids) if jobids else "housekeeping"
    cluster = app.model.cluster
    nodes = hosts_text(cluster, where) if cluster and len(where) == ranks else plural(ranks, "node")
    app.notify(f"sent SIG{signal} to {whom} on {nodes}{by}", title="Kill sent")


def finished_notice(jobids: list[int]) -> str:
    verb = "has" if len(jobids) == 1 else "have"
    return f"{unit_names(jobids)} {verb} already finished: nothing to kill"


async def kill_units(app: HkConsole, target: KillTarget) -> None:
    # Read against the model, which follows the service while the table is paused, so
    # a unit that finished since is not offered as running.
    model = app.model
    jobids = [j for j in target.jobids if model.still_running(j)]
    finished = [j for j in target.jobids if j not in jobids]
    if not jobids:
        app.notify(finished_notice(finished), severity="warning")
        return
    cluster = model.cluster
    lines = []
    for jobid in jobids:
        pending = model.units[jobid].pending
        nodes = cluster.nodelist(pending) if cluster else format_idset(pending)
        where = "  (hidden by the filter)" if jobid in target.hidden else ""
        lines.append(f"  {jobid_text(jobid)}  running on {nodes}{where}")
    for jobid in finished:
        lines.append(f"  {jobid_text(jobid)}  already finished: nothing to send")
    hidden = [j for j in jobids if j in target.hidden]
    if hidden:
        verb = "is" if len(hidden) == 1 else "are"
        some = "It" if len(jobids) == 1 else f"{len(hidden)} of these {len(jobids)} units"
        lines.append(f"\n{some} {verb} hidden by the filter '{target.filter_text}'.")
    body = "\n".join(lines) + f"\n\nsignal: SIG{target.signal}"
    title = f"Kill housekeeping of {plural(len(jobids), 'unit')}?"
    if not await app.push_screen_wait(ConfirmScreen(title, body)):
        return
    await send_each(app, jobids, target.signal)
    # Finished ones too: a mark on a unit that is over is no use.
    app.units.marked -= set(target.jobids)
    app.units.refresh_marks(target.jobids)


async def send_each(app: HkConsole, jobids: list[int], signal: str) -> None:
    """Kill these units one by one, each checked again at send time."""
    killed: list[int] = []
    ranks = 0
    by = ""
    hosts: set[int] = set()
    for jobid in jobids:
        # The unit may have finished while the dialog was open.
        if not app.model.still_running(jobid):
            app.notify(f"{jobid_text(jobid)} already finished: nothing sent", severity="warning")
            continue
        pending = set(app.model.units[jobid].pending)
        sent = await send_kill(app, {"jobid": jobid}, signal)
        if sent is not None:
            killed.append(jobid)
            ranks += int(sent["ranks"])
            hosts |= pending
            by = acted_by(sent)
    if killed:
        report_kill(app, killed, ranks, signal, hosts, by)


def validate_targets(app: HkConsole, text: str) -> str | None:
    if app.model.cluster is None:
        return "not connected"
    try:
        app.model.cluster.parse_targets(text, strict=True)
    except TargetError as exc:
        return str(exc)
    return None


async def kill_targets(app: HkConsole, signal: str) -> None:
    cluster = app.model.cluster
    example = cluster.nodelist(range(min(4, cluster.size))) if cluster else "node[0-3]"
    targets = await app.push_screen_wait(
        PromptScreen(
            f"Kill housekeeping (SIG{signal}) on which ranks or hosts?",
            f"e.g. 0-3,7 or {example}",
            lambda text: validate_targets(app, text),
            hint="enter: see what it hits, then confirm · esc: cancel",
        )
    )
    cluster = app.model.cluster
    if not targets or cluster is None:
        return
    ranks = cluster.parse_targets(targets, strict=True)
    # Which units it hits, from what the console knows now (the service decides at
    # send time: a unit that started since is hit too).
    hits = app.model.running_on(ranks)
    noun = "rank" if len(ranks) == 1 else "ranks"
    lines = [f"  on {cluster.nodelist(ranks)} ({noun} {format_idset(ranks)}):"]
    for jobid, where in list(hits.items())[:TARGET_UNITS_LISTED]:
        lines.append(f"    {jobid_text(jobid)}  running on {cluster.nodelist(where)}")
    if len(hits) > TARGET_UNITS_LISTED:
        lines.append(f"    … and {plural(len(hits) - TARGET_UNITS_LISTED, 'more unit')}")
    if not hits:
        lines.append("    no unit is running there now")
    body = "\n".join(lines) + f"\n\nsignal: SIG{signal}"
    title = f"Kill housekeeping of {plural(len(hits), 'unit')} on these nodes?"
    if await app.push_screen_wait(ConfirmScreen(title, body)):
        # What it hits as the console knows it at send time, to name in the notice.
        hits = app.model.running_on(ranks)
        sent = await send_kill(app, {"ranks": format_idset(ranks)}, signal)
        if sent is not None:
            where = set().union(*hits.values())
            report_kill(app, list(hits), int(sent["ranks"]), signal, where, acted_by(sent))


async def kill_all(app: HkConsole, signal: str) -> None:
    # The units running now are the ones confirmed, and the ones killed: a unit that
    # starts while the dialog is open is not in the count, so it is not hit either.
    running = sorted(j for j, unit in app.model.units.items() if unit.pending)
    if not running:
        app.notify("no housekeeping is running: nothing to kill", severity="warning")
        return
    answer = await app.push_screen_wait(
        PromptScreen(
            f"Kill ALL housekeeping ({plural(len(running), 'unit')}) with SIG{signal}? Type 'all'",
            "all",
            lambda text: None if text == "all" else "type exactly: all",
            danger=True,
            hint="enter: kill · esc: cancel",
        )
    )
    if answer == "all":
        await send_each(app, running, signal)


async def choose_signal(app: HkConsole) -> None:
    choice = await app.push_screen_wait(SignalScreen(app.signal_name))
    if choice is None:
        return
    if choice == "KILL":
        sure = await app.push_screen_wait(
            ConfirmScreen(
                "Use SIGKILL?",
                "SIGKILL gives cleanup commands no chance to clean up after\n"
                "themselves. As with any signal, every node a kill hits is drained.",
            )
        )
        if not sure:
            return
    app.signal_name = choice
    app.notify(f"kills now send SIG{choice}")
    app.render_header()


async def drain(app: HkConsole, rank: int) -> None:
    cluster = app.model.cluster
    if cluster is None:
        return
    host = visible(cluster.hostname(rank))
    reason = await app.push_screen_wait(
        PromptScreen(
            f"Drain {host} (rank {rank}): reason?",
            "e.g. bad DIMM, ticket 1234",
            lambda text: None if text.strip() else "give a reason",
            hint="enter: drain · esc: cancel",
        )
    )
    if reason is None:
        return
    try:
        result = await app.client.call("resource.drain", {"ranks": str(rank), "reason": reason})
    except ServiceError as exc:
        app.notify(in_hosts(exc.message, cluster), title="Drain failed", severity="error")
        return
    app.notify(f"drained {host}{acted_by(result)}: {reason}")
    app.feed.resync_soon()


async def undrain(app: HkConsole, rank: int) -> None:
    cluster = app.model.cluster
    if cluster is None:
        return
    host = visible(cluster.hostname(rank))
    try:
        result = await app.client.call("resource.undrain", {"ranks": str(rank)})
    except ServiceError as exc:
        app.notify(in_hosts(exc.message, cluster), title="Undrain failed", severity="error")
        return
    app.notify(f"undrained {host}{acted_by(result)}")
    app.feed.resync_soon()


async def output(app: HkConsole, jobid: int) -> None:
    try:
        lines, kept = await app.fetch_output(jobid)
    except ServiceError as exc:
        app.notify(exc.message, title="No output", severity="error")
        return
    cluster = app.model.cluster

    def where(rank: int) -> str:
        # The host an operator knows the node by, with the rank the tables show.
        if cluster is None or not 0 <= rank < cluster.size:
            return f"[{rank}]"
        return f"[{rank} {visible(cluster.hostname(rank))}]"

    shown = [(f"{where(rank)} {stream}", visible(str(text))) for rank, stream, text in lines]
    await app.push_screen_wait(OutputScreen(f"Output of {jobid_text(jobid)}", shown, kept))
