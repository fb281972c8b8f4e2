"""What the console's tables and notices are made of: cells, names and filter queries.

Pure (no widgets): every view and dialog builds its text from here, so outside text
(hostnames, drain reasons, command output) goes through `visible()` in one place.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len

from hkservice.cluster import Cluster, TargetError
from hkservice.fsd import format_fsd
from hkservice.idset import parse_idset
from hkservice.jobid import encode_jobid, f58_prefix
from hkservice.text import plural, visible

# Room for a nodelist in a notification (three lines of a toast).
HOSTS_WIDTH = 60
STATE_STYLES = {
    "running": "yellow",
    "ok": "green",
    "failed": "bold red",
    "released": "dim",
    "housekeeping": "yellow",
    "drained": "bold red",
    "draining": "red",
    "idle": "green",
    "offline": "magenta",
}
# A node failing run after run (`resource.status` flapping), beside its state.
FLAPPING_STYLE = "bold magenta"

# The f58 prefix (ƒ or f) is read from the locale's environment at every encoding, 8 of
# its 10 µs: for the console's life it is read once (10,000 units load at once).
f58_prefix_once = functools.cache(f58_prefix)


@functools.lru_cache(maxsize=1 << 16)
def jobid_text(jobid: int) -> str:
    """A jobid as every table shows it: f58, as `encode_jobid` writes it."""
    return f58_prefix_once() + encode_jobid(jobid, "f58plain")[1:]


def visible_lines(text: str) -> str:
    """`visible()` line by line: our own line breaks stay, the outside's controls show."""
    return "\n".join(visible(line) for line in text.split("\n"))


def fold(text: str) -> str:
    """Text as the filter compares it: case folded, ƒ spelled f, no emoji presentation
    selector (U+FE0F, which some keyboards add after an emoji).

    Tables show jobids as ƒ283AqxTPzKB, drain reasons as housekeeping@f283AqxTPzKB, and
    nobody types ƒ at 3 a.m.: either spelling finds both.
    """
    return text.lower().replace("ƒ", "f").replace("\ufe0f", "")


@functools.lru_cache(maxsize=1 << 16)
def jobid_names(jobid: int) -> str:
    """Every name a filter finds a jobid by, one a line: f58 (as shown), decimal, and
    emoji (`{id.emoji}`, as `hkconsole list` or `flux jobs` may have shown it)."""
    return "\n".join((jobid_text(jobid), str(jobid), encode_jobid(jobid, "emoji")))


@functools.lru_cache(maxsize=1 << 16)
def folded_jobid_names(jobid: int) -> str:
    """`jobid_names`, folded for the filter (`fold`)."""
    return fold(jobid_names(jobid))


def hosts_text(cluster: Cluster, ranks: Iterable[int], width: int = HOSTS_WIDTH) -> str:
    """sim40; sim[0-1,4-5]; past `width` characters, 212 nodes: sim[0-3,5,7,…].

    A cut list ends after a whole entry (never `…,50-5`): what shows is never a number
    that is not there.
    """
    ranks = set(ranks)
    nodes = visible(cluster.nodelist(ranks))
    if len(nodes) <= width:
        return nodes
    cut = nodes[: width - 1]
    end = max(cut.rfind(","), cut.rfind("["))
    if end > 0:
        cut = cut[: end + 1]
    return f"{plural(len(ranks), 'node')}: {cut}…"


_RANKS = re.compile(r"\b(ranks?) ([0-9][0-9,\-]*)")


def in_hosts(message: str, cluster: Cluster | None) -> str:
    """A service message in the operator's terms: `rank 14 is not drained` -> `sim14 …`."""
    if cluster is None:
        return message

    def hosts(match: re.Match[str]) -> str:
        try:
            ranks = parse_idset(match.group(2).rstrip(",-"))
            return cluster.nodelist(ranks) if ranks else match.group(0)
        except ValueError:
            return match.group(0)

    return _RANKS.sub(hosts, message)


def unit_names(jobids: list[int], shown: int = 3) -> str:
    """ƒA; ƒA and ƒB; ƒA, ƒB, ƒC and 4 more units."""
    names = [jobid_text(j) for j in jobids[:shown]]
    rest = len(jobids) - len(names)
    if rest:
        return f"{', '.join(names)} and {plural(rest, 'more unit')}"
    if len(names) > 1:
        return f"{', '.join(names[:-1])} and {names[-1]}"
    return names[0] if names else "no unit"


def cell_width(text: str) -> int:
    """Terminal cells `text` takes (an emoji or a CJK character takes two)."""
    return len(text) if text.isascii() else cell_len(text)


class Cell:
    """A table cell: text that sorts by a value of its own (numbers as numbers). Outside
    text shows its control characters as escapes, so `\\x1b[2J` in a reason cannot blank
    a screen. Plain data, not a Rich `Text`: a view builds 16,384 rows of these, and only
    the rows on screen are ever drawn (table.py)."""

    __slots__ = ("natural", "plain", "right", "sort_value", "spans", "style", "width")

    def __init__(
        self,
        text: str,
        sort_value: Any = None,
        style: str = "",
        right: bool = False,
        natural: Any = None,
    ) -> None:
        self.plain = visible(text)
        self.width = cell_width(self.plain)
        self.style = style
        self.right = right
        self.sort_value = text if sort_value is None else sort_value
        # The row's place in the view's natural order (units: start time), for `sort`
        # to go back to once a column sort is dropped.
        self.natural = natural
        # (start, end, style) of parts styled apart from the rest.
        self.spans: tuple[tuple[int, int, str], ...] = ()

    def stylize(self, style: str, start: int = 0, end: int | None = None) -> None:
        end = len(self.plain) if end is None else end
        self.spans = (*self.spans, (start, end, style))

    def __str__(self) -> str:
        return self.plain

    def __repr__(self) -> str:
        return f"Cell({self.plain!r}, style={self.style!r})"


# Shared by the many node rows with nothing to show there (never mutated).
NO_TEXT = Cell("")
NO_TIME = Cell("", 0.0)


def sort_key(cell: Any) -> Any:
    value = getattr(cell, "sort_value", str(cell))
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def natural_key(cell: Any) -> Any:
    return getattr(cell, "natural", None) or 0


def failed_cell(failed: int) -> Cell:
    """How many ranks failed, red; blank when none, so a failure stands out."""
    return Cell(str(failed) if failed else "", failed, style="bold red", right=True)


def runtime_cell(runtime: float, long_running: float, sort_value: Any = None) -> Cell:
    # Units cleaning for longer than the threshold stand out.
    slow = runtime >= long_running
    style = "bold yellow" if slow else ""
    value = runtime if sort_value is None else sort_value
    return Cell(format_fsd(runtime), value, style=style, right=True)


def age_text(seconds: float) -> str:
    """How long ago, in the largest unit that fits: `42s ago`, `3m ago`, `2h ago`, `5d ago`."""
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@contextlib.contextmanager
def heap_at_rest() -> Iterator[None]:
    """Build rows with the cyclic GC held off, then take what was built out of its sight.

    Rows and cells live long and hold no reference cycles (reference counting frees
    them), but each collection walks every one: building the 16,384 rows of the nodes
    view took twice as long with collections running, and with 10,000 units and 16,384
    nodes shown a full collection falling in a key stroke added ~250 ms to it.
    """
    enabled = gc.isenabled()
    gc.disable()
    made = gc.get_count()[0]
    try:
        yield
    finally:
        if gc.get_count()[0] - made > 20_000:
            gc.freeze()
        if enabled:
            gc.enable()


@dataclass
class Sort:
    column: str | None = None
    reverse: bool = False


@dataclass(frozen=True)
class Query:
    """A filter text, worked out for matching (`Queries.get`)."""

    text: str
    cluster: Cluster | None
    folded: str
    ranks: frozenset[int]  # the ranks of the hosts it names


NO_QUERY = Query("", None, "", frozenset())


class Queries:
    """Builds a `Query` once per filter text and cluster, for every view to share."""

    def __init__(self) -> None:
        self._last = NO_QUERY
        self._folded_hosts: tuple[object, list[str]] = (None, [])

    def get(self, text: str, cluster: Cluster | None) -> Query:
        """The filter text, folded, and the ranks it names as hosts: those whose hostname
        contains it (as the nodes view's HOST column matches), or a hostlist's.

        Worked out once per filter text, over the hostnames (16,384 substring tests),
        so matching units is a set intersection per unit, not string work per host. A
        text that reads as an idset is not taken for ranks: `/1000` means a jobid or a
        user as much as rank 1000.
        """
        known = self._last
        if known.text == text and known.cluster is cluster:
            return known
        folded = fold(text)
        ranks: set[int] = set()
        if cluster is not None and text:
            if self._folded_hosts[0] is not cluster:
                self._folded_hosts = (cluster, [fold(host) for host in cluster.hosts])
            ranks = {rank for rank, host in enumerate(self._folded_hosts[1]) if folded in host}
            numeric = all(c.isdigit() or c in ",-[]" for c in text)
            if not numeric and ("[" in text or "," in text):
                # A hostlist (sim[28-29], sim4,sim40): python-hostlist refuses to
                # expand more than 100,000 hosts, so no key stroke can hang on it.
                with contextlib.suppress(TargetError):
                    ranks |= cluster.parse_targets(text, strict=False)
        self._last = Query(text, cluster, folded, frozenset(ranks))
        return self._last
