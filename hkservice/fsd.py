"""Flux Standard Duration: parsing config values and Flux's compact rendering."""

from __future__ import annotations

import math
import re

_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)(ms|s|m|h|d)?$")


def parse_duration(text: str) -> float:
    stripped = text.strip()
    if stripped.lower() in ("inf", "infinity"):
        return math.inf
    match = _PATTERN.match(stripped)
    if not match:
        raise ValueError(f"invalid duration '{text}' (use e.g. 0, 500ms, 30s, 5m, 1h, inf)")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def format_fsd(seconds: float) -> str:
    if math.isinf(seconds):
        return "inf"
    if seconds < 0.001:
        return "0s"
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.4g}s"
    if seconds < 3600:
        return f"{seconds / 60:.4g}m"
    if seconds < 86400:
        return f"{seconds / 3600:.4g}h"
    return f"{seconds / 86400:.4g}d"


def format_duration_config(seconds: float | None) -> str:
    if seconds is None:
        return "unset"
    if math.isinf(seconds):
        return "inf"
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
