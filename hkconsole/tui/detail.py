"""The detail pane: the highlighted unit's ranks, their outcomes and last output lines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from hkconsole.client import AsyncClient, ServiceError
from hkconsole.tui.cells import STATE_STYLES, jobid_text
from hkconsole.tui.model import ConsoleModel
from hkservice.fsd import format_fsd
from hkservice.text import visible

DETAIL_RANKS_SHOWN = 64
DETAIL_OUTPUT_LINES = 12
# A highlight that moves on within this long fetches nothing (the operator is scrolling).
SETTLE = 0.15

# A `housekeeping.unit` reply, the unit's last output lines, and where on the nodes its
# output is kept instead (`kept_on_nodes`: node agents; None when the lines are here).
Detail = tuple[dict[str, Any], list[list[Any]], str | None]


def kept_on_nodes(output: Mapping[str, Any]) -> str | None:
    """Where a `housekeeping.output` reply says the output is, when node agents keep it
    on the nodes (the reply then has no lines: this is what there is to show)."""
    kept = output.get("kept_on_nodes")
    return kept if isinstance(kept, str) and kept else None


class DetailPane(VerticalScroll):
    """Scrolls (mouse, or tab to it and arrows) when a big unit lists more ranks than fit."""

    def __init__(
        self,
        model: ConsoleModel,
        clock: Callable[[], float],
        client: AsyncClient,
        sample: Callable[[int], Detail | None] | None = None,
    ) -> None:
        super().__init__(id="detail-scroll")
        self.model = model
        self.clock = clock
        self.client = client
        # Fixed data (snapshots, benchmarks): no wait, no task, drawn at once.
        self.sample = sample
        self.body = Static(id="detail")
        self.jobid: int | None = None
        self.detail: Detail | None = None
        self.now: float | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._lines = -1

    def compose(self) -> ComposeResult:
        yield self.body

    def show(self, jobid: int | None, restart: bool = True) -> None:
        """Show `jobid` soon (None: nothing).

        A new highlight restarts the wait (the operator is moving); a change in the data
        never postpones a refresh already on its way, or a busy cluster would starve it.
        """
        if jobid != self.jobid:
            self.jobid = jobid
            self.detail = None
        if jobid is None or jobid not in self.model.units:
            self._cancel()
            self.render_detail()
            return
        if self.sample is not None:
            self.detail = self.sample(jobid) or self.detail
            self.render_detail()
            return
        pending = self._fetch is not None and not self._fetch.done()
        if pending and not restart:
            return
        self._cancel()
        self._fetch = asyncio.get_running_loop().create_task(self._load(jobid, SETTLE))

    def _cancel(self) -> None:
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()

    async def _load(self, jobid: int, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            detail = await self.fetch(jobid)
        except ServiceError:
            detail = None
        # Still wanted? The operator may have moved on, or the unit ended, meanwhile.
        if jobid != self.jobid:
            return
        if detail is not None and jobid in self.model.units:
            self.detail = detail
        self.render_detail()

    async def fetch(self, jobid: int) -> Detail:
        unit = await self.client.call("housekeeping.unit", {"jobid": jobid})
        output = await self.client.call("housekeeping.output", {"jobid": jobid, "tail": 3})
        return dict(unit), list(output["lines"]), kept_on_nodes(output)

    def gone(self) -> None:
        """The data changed: a unit that left housekeeping is shown as such at once."""
        if self.jobid is not None and self.jobid not in self.model.units:
            self.show(self.jobid)
        elif self.jobid is not None:
            self.show(self.jobid, restart=False)

    def tick(self, now: float) -> None:
        self.now = now
        if self.detail is not None:
            self.render_detail()

    def render_detail(self) -> None:
        jobid = self.jobid
        if jobid is None:
            self._lines = -1
            self.body.update(Text("no unit selected", style="dim"))
            return
        if jobid not in self.model.units:
            self.detail = None
            self._lines = -1
            self.body.update(Text(f"{jobid_text(jobid)}: housekeeping ended", style="dim"))
            return
        if self.detail is None:
            return  # on its way: the last one stays until it comes
        # The moment RUNTIME last ticked to: a running rank's time never runs ahead
        # of its unit's, and the two tick together.
        now = self.now if self.now is not None else self.clock()
        text = detail_text(*self.detail, self.model, now)
        # A tick changes durations, not lines: no layout (it would repaint the screen).
        lines = text.plain.count("\n")
        self.body.update(text, layout=lines != self._lines)
        self._lines = lines


def detail_text(
    unit: dict[str, Any],
    lines: list[list[Any]],
    kept: str | None,
    model: ConsoleModel,
    now: float,
) -> Text:
    out = Text()
    out.append(jobid_text(unit["jobid"]), style="bold")
    noun = "rank" if len(unit["rank_detail"]) == 1 else "ranks"
    out.append(f"  user {unit['userid']}  {noun} {unit['ranks']}\n", style="dim")
    # What needs the operator first: failures, then what still runs, then the nodes
    # that finished cleanly (held, then already released), each with its duration.
    # Past DETAIL_RANKS_SHOWN rows, the rest of each group is one summary line.
    groups: dict[str, list[dict[str, Any]]] = {
        "failed": [],
        "running": [],
        "ok": [],
        "released": [],
    }
    for rank in unit["rank_detail"]:
        outcome = rank["outcome"]
        if rank["state"] == "running":
            groups["running"].append(rank)
        elif outcome and outcome["kind"] == "exit" and outcome["code"] == 0:
            groups["released" if rank["state"] == "released" else "ok"].append(rank)
        else:
            groups["failed"].append(rank)
    room = DETAIL_RANKS_SHOWN
    cluster = model.cluster
    for group, ranks in groups.items():
        shown, rest = ranks[:room], ranks[room:]
        room -= len(shown)
        for rank in shown:
            end = rank["t_end"] or now
            out.append(f"  {rank['rank']:>6} {visible(str(rank['hostname'])):<14}")
            out.append(f"{group:<9}", style=STATE_STYLES.get(group, ""))
            out.append(f" {format_fsd(max(0.0, end - rank['t_start'])):>8}")
            failure = rank["outcome"]["text"] if group == "failed" and rank["outcome"] else ""
            out.append(f"  {visible(str(failure))}" if failure else "", style="red")
            out.append("\n")
        if rest:
            nodes = cluster.nodelist(r["rank"] for r in rest) if cluster else ""
            out.append(f"  … {len(rest)} more {group}: ", style="dim")
            out.append(f"{visible(nodes)}\n", style=STATE_STYLES.get(group, ""))
    if kept is not None:
        out.append("output: ", style="dim")
        out.append(visible(kept) + "\n")
    if lines:
        out.append("output (last lines per rank, o for all):\n", style="dim")
        # In a short pane the complaints are what must show: ranks that wrote to
        # stderr first, then the rest in the order of the rank list above (failed,
        # running, …). Each rank's lines stay together and in their order.
        by_rank: dict[int, list[list[Any]]] = {}
        for line in lines:
            by_rank.setdefault(line[0], []).append(line)
        listed = {r["rank"]: i for i, r in enumerate(x for g in groups.values() for x in g)}
        ranks_out = sorted(
            by_rank,
            key=lambda r: (
                not any(x[1] == "err" for x in by_rank[r]),
                listed.get(r, len(listed)),
            ),
        )
        ordered = [x for r in ranks_out for x in by_rank[r]]
        for rank, stream, text in ordered[:DETAIL_OUTPUT_LINES]:
            out.append(f"  [{rank}] ", style="dim")
            if stream == "err":
                out.append("err: ", style="bold red")
            out.append(visible(str(text)) + "\n", style="red" if stream == "err" else "")
    return out
