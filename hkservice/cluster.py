"""The cluster's hosts: rank <-> hostname, RFC 29 nodelists, and operator targets."""

from __future__ import annotations

import re
from collections.abc import Iterable

import hostlist

from hkservice.idset import (
    IdsetError,
    Range,
    clip_ranges,
    expand_ranges,
    format_idset,
    format_ranges,
    parse_ranges,
    ranges_outside,
)

# Like Flux's RFC 29 encoder, only a trailing number is compressed: `foo[1,3]-bar`
# encodes as `foo1-bar,foo3-bar`.
_HOST = re.compile(r"^(.*?)(\d+)$")


class TargetError(ValueError):
    pass


def not_in_cluster(ranks: str, size: int) -> str:
    """The error for ranks (an idset) beyond a cluster of `size` ranks."""
    return f"ranks {ranks} are not in the cluster ({format_ranges([(0, size - 1)])})"


def _split(host: str) -> tuple[str, int, int, str] | None:
    """(prefix, number, zero-padded width or 0, suffix) of a host, None if no number."""
    match = _HOST.match(host)
    if match is None:
        return None
    digits = match.group(2)
    width = len(digits) if len(digits) > 1 and digits[0] == "0" else 0
    return match.group(1), int(digits), width, ""


def _ranges(numbers: list[int], width: int) -> str:
    parts: list[str] = []
    start = prev = numbers[0]
    for value in [*numbers[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        lo, hi = f"{start:0{width}d}", f"{prev:0{width}d}"
        parts.append(lo if start == prev else f"{lo}-{hi}")
        if value is not None:
            start = prev = value
    return ",".join(parts)


_SIMPLE = re.compile(r"^([^\[\],\d]*)\[(0|[1-9]\d*)-([1-9]\d*)\]$")


class Cluster:
    def __init__(self, text: str) -> None:
        simple = _SIMPLE.match(text)
        if simple and int(simple.group(2)) < int(simple.group(3)):
            # The usual `node[0-N]`: built directly, it costs a command-line start
            # nothing; the general path goes through python-hostlist.
            prefix, lo, hi = simple.group(1), int(simple.group(2)), int(simple.group(3))
            hosts = [f"{prefix}{i}" for i in range(lo, hi + 1)]
        else:
            try:
                hosts = hostlist.expand_hostlist(text, allow_duplicates=True)
            except hostlist.BadHostlist as exc:
                raise ValueError(f"invalid hostlist '{text}': {exc}") from None
        if not hosts or not text.strip():
            raise ValueError(f"invalid hostlist '{text}': no hosts")
        seen: dict[str, int] = {}
        for rank, host in enumerate(hosts):
            if host in seen:
                raise ValueError(f"hostlist '{text}' names host '{host}' twice")
            seen[host] = rank
        self.text = text
        self.hosts: list[str] = hosts
        self.size = len(hosts)
        self._rank_of = seen
        self._simple_prefix: tuple[str, int] | None = (
            (simple.group(1), int(simple.group(2))) if simple else None
        )
        self._parts_cache: list[tuple[str, int, int, str] | None] | None = None
        self._uniform_cache: bool | None = None

    @property
    def _parts(self) -> list[tuple[str, int, int, str] | None]:
        if self._parts_cache is None:
            self._parts_cache = [_split(h) for h in self.hosts]
        return self._parts_cache

    @property
    def _uniform(self) -> bool:
        # The common case, node[0-N] in rank order, gets a nodelist straight from the
        # numbers of the ranks, with no grouping pass.
        if self._uniform_cache is None:
            first = self._parts[0]
            self._uniform_cache = first is not None and all(
                p is not None and (p[0], p[2], p[3]) == (first[0], first[2], first[3])
                for p in self._parts
            )
        return self._uniform_cache

    def rank_of(self, host: str) -> int | None:
        return self._rank_of.get(host)

    def hostname(self, rank: int) -> str:
        return self.hosts[rank]

    def nodelist(self, ranks: Iterable[int]) -> str:
        ordered = sorted(set(ranks))
        if not ordered:
            return ""
        if len(ordered) == 1:
            return self.hosts[ordered[0]]
        if self._simple_prefix is not None:
            prefix, lo = self._simple_prefix
            return f"{prefix}[{_ranges([lo + r for r in ordered], 0)}]"
        if self._uniform:
            prefix, _, width, suffix = self._parts[0]  # type: ignore[misc]
            numbers = [self._parts[r][1] for r in ordered]  # type: ignore[index]
            return f"{prefix}[{_ranges(numbers, width)}]{suffix}"
        return self._grouped(ordered)

    def _grouped(self, ordered: list[int]) -> str:
        out: list[str] = []
        key: tuple[str, int, str] | None = None
        numbers: list[int] = []

        def flush() -> None:
            if key is None:
                return
            prefix, width, suffix = key
            if len(numbers) == 1:
                out.append(f"{prefix}{numbers[0]:0{width}d}{suffix}")
            else:
                out.append(f"{prefix}[{_ranges(numbers, width)}]{suffix}")

        for rank in ordered:
            part = self._parts[rank]
            if part is None:
                flush()
                key, numbers = None, []
                out.append(self.hosts[rank])
                continue
            prefix, number, width, suffix = part
            if (prefix, width, suffix) != key:
                flush()
                key, numbers = (prefix, width, suffix), []
            numbers.append(number)
        flush()
        return ",".join(out)

    def parse_ranks(self, text: str, *, strict: bool, allow_empty: bool = False) -> set[int]:
        """The ranks of an idset: ranks beyond the cluster are an error (strict) or left
        out, decided on the ranges before anything is expanded, so a request for
        "0-2147483646" costs two numbers, not two billion."""
        return self._within(parse_ranges(text, allow_empty=allow_empty), strict)

    def _within(self, ranges: list[Range], strict: bool) -> set[int]:
        if strict:
            outside = ranges_outside(ranges, self.size)
            if outside:
                raise TargetError(not_in_cluster(format_ranges(outside), self.size))
        return expand_ranges(clip_ranges(ranges, self.size))

    def parse_targets(self, text: str, *, strict: bool) -> set[int]:
        """Ranks named by an idset (tried first) or a hostlist."""
        if text == "":
            if strict:
                everything = range(self.size)
                raise TargetError(
                    f"empty targets: give ranks ({format_idset(everything)}) "
                    f"or hosts ({self.nodelist(everything)})"
                )
            return set()
        if any(c.isspace() for c in text):
            # Neither syntax has whitespace; taken as a hostname it would only ever be
            # an unknown host, silently matching nothing in a filter.
            raise TargetError(f"invalid targets '{text}': targets cannot contain whitespace")
        try:
            ranges = parse_ranges(text, allow_empty=False)
        except IdsetError as idset_error:
            return self._host_targets(text, strict, idset_error)
        return self._within(ranges, strict)

    def _host_targets(self, text: str, strict: bool, idset_error: IdsetError) -> set[int]:
        looks_numeric = all(c.isdigit() or c in ",-[]" for c in text)
        if looks_numeric:
            raise TargetError(f"invalid targets '{text}': {idset_error}")
        try:
            hosts = hostlist.expand_hostlist(text)
        except hostlist.BadHostlist:
            raise TargetError(f"invalid targets '{text}': not an idset or a hostlist") from None
        ranks: set[int] = set()
        unknown: list[str] = []
        for host in hosts:
            rank = self._rank_of.get(host)
            if rank is None:
                unknown.append(host)
            else:
                ranks.add(rank)
        if unknown and strict:
            names = hostlist.collect_hostlist(unknown)
            if len(unknown) == 1:
                raise TargetError(f"host '{names}' is not in the cluster")
            raise TargetError(f"hosts '{names}' are not in the cluster")
        return ranks

    def ranks_text(self, ranks: Iterable[int]) -> str:
        return format_idset(ranks)
