"""The finished view: units that left housekeeping lately, so a failure does not vanish.

Its rows come from `housekeeping.history` (the feed fetches it when units end): each
unit's outcome, its failed nodes with why they failed, how long its housekeeping took
and when it ended, newest first. The bar under the table has the highlighted unit in full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.widgets import Static

from hkconsole.tables import Finished
from hkconsole.tui.cells import (
    STATE_STYLES,
    Cell,
    Query,
    age_text,
    failed_cell,
    fold,
    jobid_names,
    jobid_text,
)
from hkconsole.tui.keys import FINISHED_BINDINGS
from hkconsole.tui.model import ConsoleModel
from hkconsole.tui.views.base import TableView
from hkservice.cluster import Cluster
from hkservice.fsd import format_fsd
from hkservice.text import plural, visible

FINISHED_COLUMNS = (
    ("jobid", "JOBID"),
    ("user", "USER"),
    ("outcome", "OUTCOME"),
    ("nnodes", "NNODES"),
    ("failed", "FAILED"),
    ("duration", "DURATION"),
    ("ended", "ENDED"),
    ("failures", "FAILED NODES: WHY"),
)


def failures_text(entry: Finished, cluster: Cluster | None) -> str:
    """`sim22: exited 1; sim[33-34]: killed TERM`: failed hosts grouped by reason."""
    parts = []
    explained: set[int] = set()
    for ranks, reason in entry.reasons:
        explained |= ranks
        parts.append(f"{hosts(ranks, cluster)}: {reason}")
    # Failed ranks the service gave no reason for (one older than `reasons`).
    unexplained = entry.failed - explained
    if unexplained:
        parts.append(hosts(unexplained, cluster))
    return "; ".join(parts)


def hosts(ranks: set[int] | frozenset[int], cluster: Cluster | None) -> str:
    if cluster is not None and all(r < cluster.size for r in ranks):
        return cluster.nodelist(ranks)
    return "ranks " + ",".join(str(r) for r in sorted(ranks))


def outcome(entry: Finished) -> tuple[str, str]:
    """(word, style): ok, or failed when any of its ranks failed."""
    if entry.failed:
        return "failed", STATE_STYLES["failed"]
    return "ok", STATE_STYLES["ok"]


class FinishedView(TableView):
    COLUMNS = FINISHED_COLUMNS
    SORTABLE = tuple(key for key, _ in FINISHED_COLUMNS)
    BINDINGS: ClassVar[list[BindingType]] = FINISHED_BINDINGS

    def __init__(self, model: ConsoleModel, clock: Callable[[], float]) -> None:
        super().__init__(model, "finished", id="finished-view")
        self.clock = clock
        self.table.columns.give_way = (
            ("failures", 16),
            ("user", 4),
            *((key, len(label)) for key, label in FINISHED_COLUMNS[1:7]),
        )
        self.bar = Static(id="finished-detail")
        self._hay: dict[int, str] = {}

    def compose(self) -> ComposeResult:
        yield from super().compose()
        yield self.bar

    def _follow_cursor(self) -> None:
        super()._follow_cursor()
        self.show_unit()

    def cells(self, entry: Finished) -> list[Cell]:
        cluster = self.model.cluster
        word, style = outcome(entry)
        duration = max(0.0, entry.t_end - entry.t_start)
        ended = time.strftime("%H:%M:%S", time.localtime(entry.t_end))
        return [
            # Newest first, as the service lists them, until sorted otherwise.
            Cell(jobid_text(entry.jobid), entry.jobid, natural=(-entry.t_end, -entry.jobid)),
            Cell(str(entry.userid), entry.userid),
            Cell(word, word, style=style),
            Cell(str(len(entry.ranks)), len(entry.ranks), right=True),
            failed_cell(len(entry.failed)),
            Cell(format_fsd(duration), duration, right=True),
            Cell(ended, entry.t_end, right=True),
            Cell(failures_text(entry, cluster), style="red"),
        ]

    def matches(self, entry: Finished, query: Query) -> bool:
        """Its jobid, user, outcome, failed hosts and reasons contain the text, or it
        ran on a host the text names."""
        if not query.text or not query.ranks.isdisjoint(entry.ranks):
            return True
        hay = self._hay.get(entry.jobid)
        if hay is None:
            fields = (jobid_names(entry.jobid), str(entry.userid))
            words = (outcome(entry)[0], failures_text(entry, self.model.cluster))
            hay = self._hay[entry.jobid] = fold("\n".join((*fields, *words)))
        return query.folded in hay

    def refresh_rows(self, changed: set[int], full: bool) -> None:
        table = self.table
        finished = self.model.finished
        gone = self.model.take_finished_changes()
        refiltered = self.take_refiltered()
        for jobid in gone:
            self._hay.pop(jobid, None)
        query = self.filter_query
        wanted = {j for j, entry in finished.items() if self.matches(entry, query)}
        present = {int(k) for k in table.rows}
        with self.app.batch_update():
            # A few hundred rows at most: what changed is rebuilt, the rest stays.
            stale = (present - wanted) | (present & gone)
            table.remove_rows(str(j) for j in stale)
            rows = [
                (str(j), self.cells(finished[j]))
                for j in sorted(wanted - (present - stale), key=lambda j: -finished[j].t_end)
            ]
            table.add_keyed_rows(rows)
            if rows or stale:
                self.apply_sort()
            self.restore_cursor(first_if_gone=refiltered or bool(stale), scroll=refiltered)
            self.show_empty()
            self.show_unit()

    def total(self) -> int:
        return len(self.model.finished)

    def empty_reason(self) -> str:
        if self.model.history_error:
            return f"no finished units: {self.model.history_error}"
        if not self.model.finished:
            return "no unit has finished housekeeping yet"
        return f"no finished units match '{self.filter_query.text}'"

    def counts(self) -> tuple[int, int, int]:
        """(finished units, of which failed, failed ranks in all)."""
        entries = self.model.finished.values()
        failed = [e for e in entries if e.failed]
        return len(entries), len(failed), sum(len(e.failed) for e in failed)

    def show_unit(self) -> None:
        """The highlighted unit in full: when it ran, and every failed node's reason."""
        entry = self.model.finished.get(self.cursor_key) if self.cursor_key is not None else None
        if entry is None:
            self.bar.update("")
            return
        cluster = self.model.cluster
        word, style = outcome(entry)
        start = time.strftime("%b %d %H:%M:%S", time.localtime(entry.t_start))
        end = time.strftime("%H:%M:%S", time.localtime(entry.t_end))
        out = Text.assemble(
            (jobid_text(entry.jobid), "bold"),
            (f"  user {entry.userid}  ", "dim"),
            (word, style),
            f"  {start} → {end} ({age_text(self.clock() - entry.t_end)})",
            ("  on ", "dim"),
            visible(hosts(entry.ranks, cluster)),
            ("  ", "dim"),
            plural(entry.releases, "release"),
        )
        for ranks, reason in entry.reasons:
            out.append(f"\n  {visible(hosts(ranks, cluster))}: ", style="bold")
            out.append(visible(reason), style="red")
        self.bar.update(out)
