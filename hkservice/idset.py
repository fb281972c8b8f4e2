"""RFC 22 idsets: strict parsing (as Flux) and the ranged encoding."""

from __future__ import annotations

from collections.abc import Iterable

MAX_ID = (1 << 31) - 1


class IdsetError(ValueError):
    pass


def _number(text: str, whole: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise IdsetError(f"error parsing range '{whole}'")
    value = int(text)
    if value > MAX_ID:
        raise IdsetError(f"id {text} in '{whole}' is too large (max {MAX_ID})")
    return value


def parse_idset(text: str, *, allow_empty: bool = True) -> set[int]:
    body = text
    if body.startswith("[") or body.endswith("]"):
        if not (body.startswith("[") and body.endswith("]")) or body.count("[") != 1:
            raise IdsetError(f"invalid idset '{text}': mismatched or nested brackets")
        body = body[1:-1]
    if "[" in body or "]" in body:
        raise IdsetError(f"invalid idset '{text}': mismatched or nested brackets")
    if body == "":
        if allow_empty:
            return set()
        raise IdsetError("cannot create an empty idset")
    ids: set[int] = set()
    last = -1
    for element in body.split(","):
        lo_text, dash, hi_text = element.partition("-")
        lo = _number(lo_text, element)
        hi = _number(hi_text, element) if dash else lo
        if dash and hi <= lo:
            raise IdsetError(f"error parsing range '{element}'")
        if lo <= last:
            raise IdsetError(f"range '{element}' is out of order")
        ids.update(range(lo, hi + 1))
        last = hi
    return ids


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
