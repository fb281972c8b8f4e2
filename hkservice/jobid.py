"""Flux jobids (FLUIDs): every encoding Flux prints and parses."""

from __future__ import annotations

import locale
import os
import re
import struct

from mnemonicode import mnformat, mnparse

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_MAX = (1 << 64) - 1
KINDS = ("dec", "hex", "dothex", "kvs", "f58", "f58plain", "words")


class JobidError(ValueError):
    pass


def f58_prefix() -> str:
    if os.environ.get("HK_F58_FORCE_ASCII") or os.environ.get("FLUX_F58_FORCE_ASCII"):
        return "f"
    return "ƒ" if "utf" in locale.getpreferredencoding(False).lower() else "f"


def _b58(value: int) -> str:
    digits = ""
    while True:
        value, rem = divmod(value, 58)
        digits = _B58[rem] + digits
        if value == 0:
            return digits


def encode_jobid(value: int, kind: str = "f58") -> str:
    if not 0 <= value <= _MAX:
        raise JobidError(f"jobid {value} is out of range")
    match kind.lower():
        case "dec":
            return str(value)
        case "hex":
            return f"0x{value:x}"
        case "dothex":
            return ".".join(f"{(value >> s) & 0xFFFF:04x}" for s in (48, 32, 16, 0))
        case "kvs":
            return "job." + encode_jobid(value, "dothex")
        case "f58":
            return f58_prefix() + _b58(value)
        case "f58plain":
            return "f" + _b58(value)
        case "words":
            return _words(value)
    raise ValueError(f"unknown jobid encoding '{kind}' (known: {', '.join(KINDS)})")


def _words(value: int) -> str:
    return mnformat(struct.pack("<Q", value))


_INTEGER = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")
_DOTHEX = re.compile(r"^[0-9a-fA-F]{1,4}(\.[0-9a-fA-F]{1,4}){3}$")


def parse_jobid(text: str) -> int:
    error = JobidError(f"'{text}' is not a valid jobid")
    s = text.lstrip()
    s = s.removeprefix("job.")
    if "." in s:
        if not _DOTHEX.match(s):
            raise error
        value = 0
        for group in s.split("."):
            value = (value << 16) | int(group, 16)
        return value
    if "-" in s:
        try:
            data = mnparse(s)
        except Exception:
            raise error from None
        if len(data) != 8:
            raise error
        return struct.unpack("<Q", bytes(data))[0]
    if s.startswith(("ƒ", "f")):
        digits = s[1:]
        if not digits or len(digits) > 12 or any(c not in _B58_INDEX for c in digits):
            raise error
        value = 0
        for c in digits:
            value = value * 58 + _B58_INDEX[c]
        if value > _MAX:
            raise error
        return value
    s = s.rstrip()
    if not _INTEGER.match(s):
        raise error
    value = int(s, 16) if s.lower().startswith("0x") else int(s, 10)
    if value > _MAX:
        raise error
    return value
