"""The one output-format engine of `list`, `nodes`, `drain` and `history` (flux-reference §13).

Python format syntax on dotted field names, with Flux's conversions (!d !D !F !H !P), spec
suffixes (`h` hyphenates empty values, `+` marks truncation), field prefixes (`?:` drops a
column empty for every row, `+:` widens a column to fit), a `sort:` prefix that works
after merging (Flux crashes there), and the merging of rows that differ only in node
fields, with unions of their ranks. Rank and host fields are rendered as strings before
their spec is applied, so widths and alignment work on them (Flux crashes there too).
Every string value is shown through text.visible(): controls from outside print as escapes.
"""

from __future__ import annotations

import re
import time

# The parser behind string.Formatter.parse, without importing the string module.
from _string import formatter_parser
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from hkservice.fsd import format_fsd
from hkservice.text import visible

EMPTY_STRINGS = frozenset(
    {"", "0s", "0.0", "0:00:00", "1970-01-01T00:00:00", time.strftime("%FT%T", time.localtime(0))}
)
_SORT = re.compile(r"^sort:([^{\s]+) ?")
_SPEC = re.compile(
    r"^(?:(?P<fill>.)?(?P<align>[<>=^]))?(?P<sign>[-+ ])?(?P<z>z)?(?P<alt>#)?(?P<zero>0)?"
    r"(?P<width>\d+)?(?P<grouping>[,_])?(?:\.(?P<precision>\d+))?(?P<type>[bcdeEfFgGnosxX%])?$"
)


# Widths and precisions above this are typing errors, and format() would build them.
MAX_WIDTH = 1_000_000

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
        self._texts: dict[tuple[str, str, str | None], str] = {}

    def get(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            value = self._values[name] = self.compute(name)
            return value

    def compute(self, name: str) -> Any:
        return self._getters[name]()

    def text(self, name: str, spec: str, conversion: str | None) -> str:
        """A field formatted; kept, since merging and printing both need it."""
        key = (name, spec, conversion)
        try:
            return self._texts[key]
        except KeyError:
            pass
        value = self.get(name)
        try:
            text = self._texts[key] = _compile(spec, conversion)(value)
        except FormatError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            # The spec is sound (checked when the format was parsed) but not for this value,
            # e.g. `{id!d}` (a jobid is no time) or `{nodelist:=6}` (`=` is for numbers).
            raise FormatError(f"{USER_FORMAT}field {name}: {exc}") from None
        return text

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


def _number(value: Any, conversion: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"!{conversion} needs a number, not {value!r}") from None


def _date(value: Any, conversion: str, timefmt: str) -> str:
    seconds = _number(value, conversion)
    try:
        return datetime.fromtimestamp(seconds).strftime(timefmt)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"!{conversion}: {value!r} is not a date") from None


def _iso_date(value: Any) -> str:
    return _date(value, "D", "%FT%T") if value else ""


def _fsd(value: Any) -> str:
    # float() inline, not through _number: a table of durations calls this 50,000 times.
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"!F needs a number, not {value!r}") from None
    return format_fsd(seconds)


def _hours(value: Any) -> str:
    seconds = _number(value, "H")
    # Anything in (0, 1) s shows as a second, as in Flux.
    return str(timedelta(seconds=round(1 if 0 < seconds < 1 else seconds)))


def _percent(value: Any) -> str:
    ratio = _number(value, "P")
    return f"{ratio * 100:.2f}%" if 0 < ratio < 1 else f"{ratio * 100:.3g}%"


_CONVERSIONS: dict[str, Callable[[Any], str]] = {
    "D": _iso_date,
    "F": _fsd,
    "H": _hours,
    "P": _percent,
}


def _converter(conversion: str, strftime: str = "") -> Callable[[Any], Any]:
    """The function of a `!X` conversion (`strftime` is the part of a `!d` spec before `::`)."""
    if conversion == "s":
        return str
    if conversion == "r":
        return repr
    if conversion == "a":
        return ascii
    if conversion == "d":
        timefmt = strftime or "%FT%T"
        return lambda v: _date(v, "d", timefmt) if v else ""
    if conversion not in _CONVERSIONS:
        raise FormatError(f"Unknown conversion specifier {conversion}")
    convert = _CONVERSIONS[conversion]

    def converted(value: Any) -> Any:
        # An empty value stays empty through every conversion but !d. A number's text is
        # never empty: not made only to be compared (a table of durations made 50,000).
        if value.__class__ is float or value.__class__ is int or str(value) != "":
            return convert(value)
        return ""

    return converted


def _unconverted(value: Any) -> Any:
    return value


@lru_cache(maxsize=256)
def _split_suffixes(spec: str) -> tuple[str, bool, bool]:
    truncate = spec.endswith("+")
    if truncate:
        spec = spec[:-1]
    hyphen = spec.endswith("h")
    if hyphen:
        spec = spec[:-1]
    return spec, hyphen, truncate


def _split_spec(spec: str, conversion: str | None) -> tuple[str, str, bool, bool]:
    """(strftime, layout, hyphen, truncate) of a field's spec.

    The `h` and `+` suffixes end it; a `!d` spec is `strftime::layout`, and with no `::`
    all of it is the strftime format, as in Flux.
    """
    base, hyphen, truncate = _split_suffixes(spec)
    strftime = ""
    if conversion == "d":
        strftime, _, base = base.partition("::")
    return strftime, base, hyphen, truncate


def _text_layout(base: str, match: re.Match[str]) -> str:
    # A hyphen or an empty value cannot take a numeric type: strings keep only the layout.
    return _layout_only(base) if match.group("type") not in (None, "s") else base


@lru_cache(maxsize=512)
def _compile(spec: str, conversion: str | None) -> Callable[[Any], str]:
    """One field's formatting, worked out once per format instead of once per row."""
    strftime, base, hyphen, truncate = _split_spec(spec, conversion)
    convert = _converter(conversion, strftime) if conversion is not None else None
    match = _SPEC.match(base)
    if match is None:
        message = f"{USER_FORMAT}invalid format specifier '{spec}'"

        def invalid(value: Any) -> str:
            raise FormatError(message)

        return invalid
    precision = match.group("precision")
    limit = int(precision) if truncate and precision is not None else 0
    text_spec = _text_layout(base, match)

    def run(value: Any) -> str:
        if convert is not None:
            value = convert(value)
        if not isinstance(value, str):
            if not (hyphen and str(value) in EMPTY_STRINGS):
                return format(value, base)
            value = "-"
        elif hyphen and value in EMPTY_STRINGS:
            value = "-"
        elif not value.isprintable():
            # Drain reasons, hostnames and the like come from outside: an escape sequence
            # in them must not act on the terminal, nor a newline forge a row. Escaped
            # before widths and cuts, so those count what is shown.
            value = visible(value)
        if limit and len(value) > limit:
            value = value[: limit - 1] + "+"
        return format(value, text_spec)

    return run


def _check_field(name: str, spec: str, conversion: str | None) -> None:
    """A spec no value could be formatted with is an error before any row exists."""
    base = _split_spec(spec, conversion)[1]
    match = _SPEC.match(base)
    if match is None:
        raise FormatError(f"{USER_FORMAT}field {name}: invalid format specifier '{spec}'")
    for part in ("width", "precision"):
        size = match.group(part) or ""
        digits = size.lstrip("0")
        # Checked before any trial below: format() would build a string that long.
        if len(digits) > len(str(MAX_WIDTH)) or int(digits or 0) > MAX_WIDTH:
            raise FormatError(
                f"{USER_FORMAT}field {name}: {part} {size} is over {MAX_WIDTH:,} ('{spec}')"
            )
    text_spec = _text_layout(base, match)
    # Conversions all give strings; other fields are strings, ints or floats.
    samples: tuple[Any, ...] = ("",) if conversion is not None else ("", 0, 0.0)
    first_error = ""
    for sample in samples:
        try:
            format(sample, text_spec if isinstance(sample, str) else base)
            return
        except (ValueError, TypeError) as exc:
            first_error = first_error or str(exc)
    raise FormatError(f"{USER_FORMAT}field {name}: {first_error} ('{spec}')")


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
            parsed = list(formatter_parser(fmt))
        except ValueError as exc:
            raise FormatError(f"{USER_FORMAT}{exc}") from None
        for literal, name, spec, conversion in parsed:
            if name is None:
                self.trailer += literal
                continue
            if not name:
                raise FormatError(f"{USER_FORMAT}empty field name {{}}: name a field, e.g. {{id}}")
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
            _check_field(clean, spec or "", conversion)
            self.fields.append(_Field(literal, clean, spec or "", conversion, drop, fit))

    # -- rendering ----------------------------------------------------------

    def _resolve(self, rows: Sequence[Row], header: bool) -> list[tuple[_Field, list[str] | None]]:
        """Apply `?:` and `+:` for these rows: the fields shown, each with its column's
        texts when fitting made them already."""
        fields: list[tuple[_Field, list[str] | None]] = []
        for field in self.fields:
            if field.drop_if_empty and all(
                text.strip() in EMPTY_STRINGS
                for text in _column(rows, field.name, "", field.conversion)
            ):
                continue
            spec, texts = field.spec, None
            if field.fit:
                spec, texts = self._fitted(field, rows, header)
            fields.append((_Field(field.literal, field.name, spec, field.conversion), texts))
        return fields

    def _fitted(
        self, field: _Field, rows: Sequence[Row], header: bool
    ) -> tuple[str, list[str] | None]:
        """The spec widened to fit the column, and the column's texts if they could be
        padded to it rather than formatted again."""
        strftime, base, hyphen, truncate = _split_spec(field.spec, field.conversion)
        if field.conversion == "d":
            # Only the layout is fitted; `::` is added if there was none.
            strftime += "::"
        match = _SPEC.match(base)
        if match is None:  # never: the spec was checked when the format was parsed
            raise FormatError(f"{USER_FORMAT}field {field.name}: invalid format specifier")
        texts = _column(rows, field.name, field.spec, field.conversion)
        widest = max(map(len, texts), default=0)
        if match.group("precision") is not None and match.group("type") in (None, "s"):
            # A string cut by its precision: the widest value is the uncut one.
            convert = _converter(field.conversion) if field.conversion else _unconverted
            widest = max(
                widest,
                *(
                    len(visible(v))
                    for v in (convert(r.get(field.name)) for r in rows)
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
        spec = strftime + (
            f"{parts['fill'] or ''}{parts['align'] or ''}{parts['sign'] or ''}"
            f"{parts['z'] or ''}{parts['alt'] or ''}{parts['zero'] or ''}{width}"
            f"{parts['grouping'] or ''}{'.' + precision if precision is not None else ''}"
            f"{parts['type'] or ''}"
        )
        spec += ("h" if hyphen else "") + ("+" if truncate else "")
        # Each text is already padded to the old width and no wider than the new one:
        # with a fill to one side and nothing cut, padding it on is formatting it anew.
        align, fill = parts["align"], parts["fill"] or " "
        if precision is not None or align not in ("<", ">") or parts["zero"]:
            return spec, None
        pad = str.ljust if align == "<" else str.rjust
        return spec, [pad(text, width, fill) for text in texts]

    def header(self, fields: Sequence[_Field]) -> str:
        out = []
        for field in fields:
            match = _SPEC.match(_split_spec(field.spec, field.conversion)[1])
            layout = ""
            if match is not None:
                # `=` (padding after the sign) is for numbers only: a heading goes right.
                align = (match.group("align") or "").replace("=", ">")
                layout = f"{align}{match.group('width') or ''}"
            out.append(field.literal + format(self.headings[field.name], layout))
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
            row.text(f.name, f.spec, f.conversion)
            for f in self.fields
            if f.name not in self.node_fields
        )

    def render(self, rows: Sequence[Row], *, header: bool = True) -> list[str]:
        ordered = self.sort(list(rows))
        try:
            resolved = self._resolve(ordered, header)
            # A column at a time, each joined into its rows by one str.format: a table of
            # 16,384 nodes has 200,000 cells, and a few calls per cell were most of its time.
            columns = [
                _column(ordered, f.name, f.spec, f.conversion) if texts is None else texts
                for f, texts in resolved
            ]
        except FormatError:
            self._first_error(ordered, header)
            raise
        fields = [field for field, _ in resolved]
        lines = [self.header(fields)] if header else []
        template = "".join(_braced(f.literal) + "{}" for f in fields) + _braced(self.trailer)
        cells = zip(*columns, strict=True) if columns else [()] * len(ordered)
        lines += [text for text in (template.format(*c) for c in cells) if text.strip()]
        return lines

    def _first_error(self, rows: Sequence[Row], header: bool) -> None:
        """Raise the error a row by row rendering meets first (the first bad row's first
        bad field), so a table with several bad values reports the same one as always."""
        fields = []
        for field in self.fields:
            if field.drop_if_empty and all(
                r.text(field.name, "", field.conversion).strip() in EMPTY_STRINGS for r in rows
            ):
                continue
            spec = self._fitted(field, rows, header)[0] if field.fit else field.spec
            fields.append((field.name, spec, field.conversion))
        for row in rows:
            for name, spec, conversion in fields:
                row.text(name, spec, conversion)


def _braced(literal: str) -> str:
    """Literal text as str.format reads it back."""
    return literal.replace("{", "{{").replace("}", "}}")


def _column(rows: Sequence[Row], name: str, spec: str, conversion: str | None) -> list[str]:
    """One field formatted in every row, as Row.text would: the formatting compiled once,
    and in a column of few distinct values (counts, states, empty reasons) each of them
    formatted once."""
    run = _compile(spec, conversion)
    try:
        values = [row._values[name] for row in rows]
    except KeyError:  # not all computed yet
        values = [row.get(name) for row in rows]
    try:
        try:
            repeats = len(set(values)) * 2 < len(values)
        except TypeError:  # an unhashable value
            repeats = False
        if not repeats:
            return list(map(run, values))
        # Keyed by type too: True, 1 and 1.0 are equal keys but not the same text.
        keys = list(zip(map(type, values), values, strict=True))
        distinct = dict.fromkeys(keys, "")
        for key in distinct:
            distinct[key] = run(key[1])
        texts = list(map(distinct.__getitem__, keys))
        if (float, 0.0) in distinct:
            # -0.0 is an equal key but shows as -0.0.
            for i, value in enumerate(values):
                if value.__class__ is float and not value:
                    texts[i] = run(value)
        return texts
    except FormatError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise FormatError(f"{USER_FORMAT}field {name}: {exc}") from None


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


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(text: str) -> str:
    """A TOML basic string that reads back as `text` (control characters escaped too)."""
    out = []
    for char in text:
        escaped = _TOML_ESCAPES.get(char)
        if escaped is None and (char < " " or char == "\x7f"):
            escaped = f"\\u{ord(char):04X}"
        out.append(escaped or char)
    return '"' + "".join(out) + '"'


def toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else toml_string(name)


class NamedFormat(NamedTuple):
    name: str
    description: str
    format: str
    source: str = ""  # the file it came from; "" for a built-in format


class FormatRegistry:
    """Built-in and configured named formats of one command, with Flux's `-o` rules."""

    def __init__(
        self,
        command: str,
        builtins: Sequence[NamedFormat],
        env_default: str | None = None,
        table: str = "formats",
    ) -> None:
        self.command = command
        # Where hkconsole.toml holds this command's formats: get-config prints that table,
        # so its output can be pasted into the file as it is.
        self.table = table
        self.builtins = {f.name: f for f in builtins}
        self.configured: dict[str, NamedFormat] = {}
        self.env_default = env_default
        # Config files that were found but not read (YAML): said where a format is missing.
        self.unread: list[str] = []

    def add_configured(
        self, formats: Mapping[str, Any], source: str, may_redefine: bool = False
    ) -> None:
        """Formats of one file; a later file's format replaces an earlier one's."""
        for name, entry in formats.items():
            if name in self.builtins and not may_redefine:
                raise FormatError(f"{source}: override of builtin format '{name}' not permitted")
            if not isinstance(entry, Mapping) or not isinstance(entry.get("format"), str):
                raise FormatError(f"{source}: formats.{name} needs a format string")
            description = entry.get("description", "")
            if not isinstance(description, str):
                raise FormatError(f"{source}: formats.{name}.description must be a string")
            self.configured[name] = NamedFormat(name, description, entry["format"], source)

    def all(self) -> dict[str, NamedFormat]:
        return {**self.builtins, **self.configured}

    def help_text(self) -> str:
        """Flux's list of names, built-in ones first, then those of each file under its path."""
        by_source: dict[str, list[NamedFormat]] = {}
        for entry in self.all().values():
            by_source.setdefault(entry.source, []).append(entry)
        builtin = by_source.pop("", [])
        parts = [f"\nConfigured {self.command} output formats:\n", *map(_help_row, builtin)]
        for source, entries in by_source.items():
            parts += ["", f"From {visible(source)}:", "", *map(_help_row, entries)]
        if self.unread:
            parts += ["", *(f"Not read: {path} ({_UNREAD_WHY})" for path in self.unread)]
        return "\n".join(parts)

    def get_config(self, name: str) -> str:
        entry = self.all().get(name)
        if entry is None:
            raise FormatError(f"--format: No such format {name}")
        description = f"description = {toml_string(entry.description)}\n"
        return (
            f"[{self.table}.{toml_key(name)}]\n"
            f"{description if entry.description else ''}"
            f"format = {toml_string(entry.format)}"
        )

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
            unread = "".join(f"; not read: {path} ({_UNREAD_WHY})" for path in self.unread)
            raise FormatError(
                f"--format: No such format {arg} (Did you mean '{suggestion}'?){unread}"
            )
        return entry.format


_UNREAD_WHY = "hk reads TOML and JSON, not YAML"


def _help_row(entry: NamedFormat) -> str:
    # As Flux: a format with no description is its padded name alone. Names and
    # descriptions come from config files: shown, like table text, with controls escaped.
    name, description = visible(entry.name), visible(entry.description)
    return f"  {name:<12}" + (f" {description}" if description else "")
