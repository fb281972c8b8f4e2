"""RFC 22 idsets: strict parsing (as Flux) and the ranged encoding.

Parsing yields ranges first: "0-2147483646" is two numbers, and only becomes two billion
ids if someone expands it. Callers that know the cluster's size check or clip the ranges
against it (see Cluster.parse_ranks) before anything is expanded.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_ID = (1 << 31) - 1

# An inclusive (lo, hi) range of ids.
Range = tuple[int, int]


class IdsetError(ValueError):
    pass


def _number(text: str, whole: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise IdsetError(f"error parsing range '{whole}'")
    # Checked before int(): Python refuses to convert numbers of over 4,300 digits, and
    # no id has more digits than MAX_ID anyway.
    if len(text) > len(str(MAX_ID)) or int(text) > MAX_ID:
        raise IdsetError(f"id {_shorten(text)} in '{_shorten(whole)}' is too large (max {MAX_ID})")
    return int(text)


def _shorten(text: str, keep: int = 40) -> str:
    """Long input quoted in an error message, cut down to a readable size."""
    if len(text) <= keep:
        return text
    return f"{text[: keep // 2]}…{text[-keep // 4 :]} ({len(text)} characters)"


def parse_ranges(text: str, *, allow_empty: bool = True) -> list[Range]:
    """The ranges of an idset, in order and disjoint (the syntax requires it)."""
    body = text
    if body.startswith("[") or body.endswith("]"):
        if not (body.startswith("[") and body.endswith("]")) or body.count("[") != 1:
            raise IdsetError(f"invalid idset '{text}': mismatched or nested brackets")
        body = body[1:-1]
    if "[" in body or "]" in body:
        raise IdsetError(f"invalid idset '{text}': mismatched or nested brackets")
    if body == "":
        if allow_empty:
            return []
        raise IdsetError("cannot create an empty idset")
    ranges: list[Range] = []
    last = -1
    for element in body.split(","):
        lo_text, dash, hi_text = element.partition("-")
        lo = _number(lo_text, element)
        hi = _number(hi_text, element) if dash else lo
        if dash and hi <= lo:
            raise IdsetError(f"error parsing range '{element}'")
        if lo <= last:
            raise IdsetError(f"range '{element}' is out of order")
        ranges.append((lo, hi))
        last = hi
    return ranges


def expand_ranges(ranges: Iterable[Range]) -> set[int]:
    ids: set[int] = set()
    for lo, hi in ranges:
        ids.update(range(lo, hi + 1))
    return ids


def parse_idset(text: str, *, allow_empty: bool = True) -> set[int]:
    """All the ids of an idset: only for idsets whose size is already bounded (ones the
    service wrote); operator input goes through Cluster.parse_ranks."""
    return expand_ranges(parse_ranges(text, allow_empty=allow_empty))


def clip_ranges(ranges: Iterable[Range], size: int) -> list[Range]:
    """The parts of ordered ranges that lie in [0, size)."""
    clipped: list[Range] = []
    for lo, hi in ranges:
        if lo >= size:
            break
        clipped.append((lo, min(hi, size - 1)))
    return clipped


def ranges_outside(ranges: Iterable[Range], size: int) -> list[Range]:
    """The parts of ordered ranges that lie at or above size."""
    return [(max(lo, size), hi) for lo, hi in ranges if hi >= size]


def format_ranges(ranges: Iterable[Range]) -> str:
    """The idset of ordered, disjoint ranges, adjacent ones merged (as format_idset)."""
    parts: list[str] = []
    start = prev = -2
    for lo, hi in ranges:
        if lo == prev + 1:
            prev = hi
            continue
        if prev >= 0:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start, prev = lo, hi
    if prev >= 0:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def format_idset(ids: Iterable[int]) -> str:
    ordered = sorted(set(ids))
    if not ordered:
        return ""
    parts: list[str] = []
    start = prev = ordered[0]
    for value in ordered[1:]:
        if value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = value
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)
