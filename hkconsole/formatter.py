"""The one output-format engine behind `list`, `nodes` and `drain` (flux-reference §13).

Python format syntax on dotted field names, with Flux's conversions (!d !D !F !H !P), spec
suffixes (`h` hyphenates empty values, `+` marks truncation), field prefixes (`?:` drops a
column empty for every row, `+:` widens a column to fit), a `sort:` prefix that works
after merging (Flux crashes there), and the merging of rows that differ only in node
fields, with unions of their ranks. Rank and host fields are rendered as strings before
their spec is applied, so widths and alignment work on them (Flux crashes there too).
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from hkservice.fsd import format_fsd

EMPTY_STRINGS = frozenset(
    {"", "0s", "0.0", "0:00:00", "1970-01-01T00:00:00", time.strftime("%FT%T", time.localtime(0))}
)
_SORT = re.compile(r"^sort:([^{\s]+) ?")
_SPEC = re.compile(
    r"^(?:(?P<fill>.)?(?P<align>[<>=^]))?(?P<sign>[-+ ])?(?P<z>z)?(?P<alt>#)?(?P<zero>0)?"
    r"(?P<width>\d+)?(?P<grouping>[,_])?(?:\.(?P<precision>\d+))?(?P<type>[bcdeEfFgGnosxX%])?$"
)


# Flux's prefix for every fault found in a format string, kept so messages read the same.
USER_FORMAT = "Error in user format: "


# Longest first: `?+:` also ends with `+:`.
_SENTINELS = (("?+:", (True, True)), ("?:", (True, False)), ("+:", (False, True)))


class FormatError(ValueError):
    pass


class Row:
    """One item to format: field values computed on first use, then kept."""

    def __init__(self, getters: Mapping[str, Callable[[], Any]] | None = None) -> None:
        self._getters = getters or {}
        self._values: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            value = self._values[name] = self.compute(name)
            return value

    def compute(self, name: str) -> Any:
        return self._getters[name]()

    def sort_value(self, name: str) -> Any:
        """What `sort:` compares; a field whose text does not order well overrides it."""
        return self.get(name)


class _Field(NamedTuple):
    # NamedTuples, not dataclasses: `hkconsole list` must start fast, and each
    # dataclass costs start-up time to generate its methods.
    literal: str
    name: str
    spec: str
    conversion: str | None
    drop_if_empty: bool = False
    fit: bool = False


def _convert(value: Any, conversion: str | None, spec: str) -> tuple[Any, str]:
    """Apply a conversion; returns the new value and the spec left for format()."""
    if conversion is None:
        return value, spec
    if conversion == "s":
        return str(value), spec
    if conversion == "r":
        return repr(value), spec
    if conversion == "a":
        return ascii(value), spec
    if conversion == "d":
        strftime, sep, rest = spec.partition("::")
        if not sep:
            strftime, rest = "", spec
        if not value:
            return "", rest
        return datetime.fromtimestamp(float(value)).strftime(strftime or "%FT%T"), rest
    if str(value) == "":
        return "", spec
    if conversion == "D":
        return (datetime.fromtimestamp(float(value)).strftime("%FT%T") if value else ""), spec
    if conversion == "F":
        return format_fsd(float(value)), spec
    if conversion == "H":
        seconds = float(value)
        if 0 < seconds < 1:
            seconds = 1
        return str(timedelta(seconds=round(seconds))), spec
    if conversion == "P":
        percent = float(value) * 100
        return (f"{percent:.2f}%" if 0 < float(value) < 1 else f"{percent:.3g}%"), spec
    raise FormatError(f"Unknown conversion specifier {conversion}")


@lru_cache(maxsize=256)
def _match_spec(spec: str) -> re.Match[str] | None:
    return _SPEC.match(spec)


@lru_cache(maxsize=256)
def _split_suffixes(spec: str) -> tuple[str, bool, bool]:
    truncate = spec.endswith("+")
    if truncate:
        spec = spec[:-1]
    hyphen = spec.endswith("h")
    if hyphen:
        spec = spec[:-1]
    return spec, hyphen, truncate


def format_value(value: Any, spec: str, conversion: str | None) -> str:
    spec, hyphen, truncate = _split_suffixes(spec)
    value, spec = _convert(value, conversion, spec)
    if hyphen and str(value) in EMPTY_STRINGS:
        value = "-"
    match = _match_spec(spec)
    if match is None:
        raise FormatError(f"Invalid format specifier '{spec}'")
    precision = match.group("precision")
    if truncate and precision is not None and isinstance(value, str):
        limit = int(precision)
        if len(value) > limit > 0:
            value = value[: limit - 1] + "+"
    if isinstance(value, str) and match.group("type") not in (None, "s"):
        # A hyphen or an empty value cannot take a numeric type: keep only the layout.
        spec = _layout_only(spec)
    try:
        return format(value, spec)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"cannot format value {value!r} with '{spec}': {exc}") from None


def _layout_only(spec: str) -> str:
    match = _SPEC.match(spec)
    if match is None:
        return ""
    fill = match.group("fill") or ""
    align = match.group("align") or ""
    width = match.group("width") or ""
    return f"{fill}{align}{width}"


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None or value == "" or value == "-":
        return (0, 0)
    if isinstance(value, bool | int | float):
        # Not float(): 64-bit jobids would collide; Python compares int and float exactly.
        return (1, int(value) if isinstance(value, bool) else value)
    if isinstance(value, str):
        try:
            return (1, float(value))
        except ValueError:
            return (2, value)
    return (2, str(value))


def _reverse_key(key: tuple[int, Any]) -> tuple[bool, tuple[int, Any]]:
    return (key[0] != 0, key)


class OutputFormat:
    """A parsed format string for a given table of fields and headers."""

    def __init__(
        self,
        fmt: str,
        headings: Mapping[str, str],
        node_fields: Iterable[str] = (),
    ) -> None:
        self.headings = headings
        self.node_fields = frozenset(node_fields)
        self.sort_keys: list[tuple[str, bool]] = []
        match = _SORT.match(fmt)
        if match:
            for key in match.group(1).split(","):
                if not key:
                    continue
                name = key.removeprefix("-")
                if name not in headings:
                    raise FormatError(f"{USER_FORMAT}Invalid sort key: {name}")
                self.sort_keys.append((name, key.startswith("-")))
            fmt = fmt[match.end() :]
        self.fmt = fmt
        self.fields: list[_Field] = []
        self.trailer = ""
        try:
            parsed = list(string.Formatter().parse(fmt))
        except ValueError as exc:
            raise FormatError(f"{USER_FORMAT}{exc}") from None
        for literal, name, spec, conversion in parsed:
            if name is None:
                self.trailer += literal
                continue
            clean = name.removeprefix("0.")
            if clean not in headings:
                raise FormatError(f"{USER_FORMAT}Unknown format field: {name}")
            drop = fit = False
            for sentinel, flags in _SENTINELS:
                if literal.endswith(sentinel):
                    literal = literal[: -len(sentinel)]
                    drop, fit = flags
                    break
            if conversion is not None and conversion not in "sradDFHP":
                raise FormatError(f"{USER_FORMAT}Unknown conversion specifier {conversion}")
            self.fields.append(_Field(literal, clean, spec or "", conversion, drop, fit))

    # -- rendering ----------------------------------------------------------

    def _resolve(self, rows: Sequence[Row], header: bool) -> list[_Field]:
        """Apply `?:` and `+:` for these rows."""
        fields: list[_Field] = []
        for field in self.fields:
            if field.drop_if_empty and all(
                format_value(r.get(field.name), "", field.conversion).strip() in EMPTY_STRINGS
                for r in rows
            ):
                continue
            spec = field.spec
            if field.fit:
                spec = self._fitted(field, rows, header)
            fields.append(_Field(field.literal, field.name, spec, field.conversion))
        return fields

    def _fitted(self, field: _Field, rows: Sequence[Row], header: bool) -> str:
        base, hyphen, truncate = _split_suffixes(field.spec)
        match = _SPEC.match(base)
        if match is None:
            raise FormatError(f"Invalid format specifier '{field.spec}'")
        widest = max(
            (len(format_value(r.get(field.name), field.spec, field.conversion)) for r in rows),
            default=0,
        )
        if match.group("precision") is not None and match.group("type") in (None, "s"):
            # A string cut by its precision: the widest value is the uncut one.
            widest = max(
                widest,
                *(
                    len(str(v))
                    for v in (_convert(r.get(field.name), field.conversion, "")[0] for r in rows)
                    if isinstance(v, str)
                ),
                0,
            )
        width = max(int(match.group("width") or 0), widest)
        if header:
            width = max(width, len(self.headings[field.name]))
        parts = match.groupdict()
        precision = parts["precision"]
        if precision is not None and parts["type"] in (None, "s") and int(precision) < width:
            precision = str(width)
        spec = (
            f"{parts['fill'] or ''}{parts['align'] or ''}{parts['sign'] or ''}"
            f"{parts['z'] or ''}{parts['alt'] or ''}{parts['zero'] or ''}{width}"
            f"{parts['grouping'] or ''}{'.' + precision if precision is not None else ''}"
            f"{parts['type'] or ''}"
        )
        return spec + ("h" if hyphen else "") + ("+" if truncate else "")

    def header(self, fields: Sequence[_Field]) -> str:
        out = []
        for field in fields:
            spec = field.spec
            if field.conversion == "d":
                spec = spec.partition("::")[2] if "::" in spec else spec
            match = _SPEC.match(_split_suffixes(spec)[0])
            layout = ""
            if match is not None:
                layout = f"{match.group('align') or ''}{match.group('width') or ''}"
            out.append(field.literal + format(self.headings[field.name], layout))
        return "".join(out) + self.trailer

    def line(self, row: Row, fields: Sequence[_Field]) -> str:
        out = [f.literal + format_value(row.get(f.name), f.spec, f.conversion) for f in fields]
        return "".join(out) + self.trailer

    def sort(self, rows: list[Row]) -> list[Row]:
        for name, reverse in reversed(self.sort_keys):
            if reverse:
                # Reversed, empty values still go last, as in Flux.
                rows.sort(
                    key=lambda r, n=name: _reverse_key(_sort_key(r.sort_value(n))),
                    reverse=True,
                )
            else:
                rows.sort(key=lambda r, n=name: _sort_key(r.sort_value(n)))
        return rows

    def merge_key(self, row: Row) -> tuple[str, ...]:
        return tuple(
            format_value(row.get(f.name), f.spec, f.conversion)
            for f in self.fields
            if f.name not in self.node_fields
        )

    def render(self, rows: Sequence[Row], *, header: bool = True) -> list[str]:
        ordered = self.sort(list(rows))
        fields = self._resolve(ordered, header)
        lines = [self.header(fields)] if header else []
        for row in ordered:
            text = self.line(row, fields)
            if text.strip():
                lines.append(text)
        return lines


def merge_rows(
    items: Sequence[Any],
    fmt: OutputFormat,
    make_row: Callable[[Any], Row],
    combine: Callable[[list[Any]], Any],
) -> list[Row]:
    """Merge items whose rows format identically apart from node fields (Flux's dedup)."""
    groups: dict[tuple[str, ...], list[tuple[Any, Row]]] = {}
    for item in items:
        row = make_row(item)
        groups.setdefault(fmt.merge_key(row), []).append((item, row))
    return [
        group[0][1] if len(group) == 1 else make_row(combine([item for item, _ in group]))
        for group in groups.values()
    ]


class NamedFormat(NamedTuple):
    name: str
    description: str
    format: str


class FormatRegistry:
    """Built-in and configured named formats of one command, with Flux's `-o` rules."""

    def __init__(
        self, command: str, builtins: Sequence[NamedFormat], env_default: str | None = None
    ) -> None:
        self.command = command
        self.builtins = {f.name: f for f in builtins}
        self.configured: dict[str, NamedFormat] = {}
        self.env_default = env_default

    def add_configured(self, formats: Mapping[str, Any], source: str) -> None:
        for name, entry in formats.items():
            if name in self.builtins:
                raise FormatError(f"{source}: override of builtin format '{name}' not permitted")
            if not isinstance(entry, Mapping) or not isinstance(entry.get("format"), str):
                raise FormatError(f"{source}: formats.{name} needs a format string")
            description = entry.get("description", "")
            if not isinstance(description, str):
                raise FormatError(f"{source}: formats.{name}.description must be a string")
            self.configured[name] = NamedFormat(name, description, entry["format"])

    def all(self) -> dict[str, NamedFormat]:
        return {**self.builtins, **self.configured}

    def help_text(self) -> str:
        rows = [f"  {f.name:<12} {f.description}" for f in self.all().values()]
        return "\n" + f"Configured {self.command} output formats:" + "\n\n" + "\n".join(rows)

    def get_config(self, name: str) -> str:
        entry = self.all().get(name)
        if entry is None:
            raise FormatError(f"--format: No such format {name}")
        description = entry.description.replace('"', '\\"')
        fmt = entry.format.replace('"', '\\"')
        return f'[formats.{name}]\ndescription = "{description}"\nformat = "{fmt}"'

    def resolve(self, arg: str) -> str:
        if "{" in arg:
            return arg
        if arg == "default" and self.env_default:
            if "{" in self.env_default:
                return self.env_default
            arg = self.env_default
        entry = self.all().get(arg)
        if entry is None:
            suggestion = re.sub(r"(\w+)", r"{\1}", arg)
            raise FormatError(f"--format: No such format {arg} (Did you mean '{suggestion}'?)")
        return entry.format
