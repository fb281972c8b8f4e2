"""Flux jobids (FLUIDs): every encoding Flux prints and parses."""

from __future__ import annotations

import os
import re
import struct
from functools import lru_cache

from mnemonicode import mnformat, mnparse

from hkservice.text import quoted

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_F58_MAX_DIGITS = 12
_MAX = (1 << 64) - 1
KINDS = ("dec", "hex", "dothex", "kvs", "f58", "f58plain", "words", "emoji")

# Flux's basemoji digits (flux-core src/common/libutil/basemoji.c): 576 emoji, one code
# point each, in CLDR order. The order is the encoding: `{id.emoji}` and emoji jobids typed
# by an operator read the same in hk and in Flux only with this exact table.
_EMOJI = (
    "😃😄😁😆😅😂😉😊😍😘😚😋😜😝😏😒😌😔😪😷😵😲😳😨"
    "😰😥😢😭😱😖😣😞😓😩😫😤😡😠👿💀💩👹👺👻👽👾😺😸"
    "😹😻😼😽🙀😿😾🙈🙉🙊💌💘💝💖💗💓💞💕💟💔💛💚💙💜"
    "💋💯💢💥💫💦💨💬💤👋👌👈👉👆👇👍👎👊👏🙌👐🙏💅💪"
    "👂👃👀👅👄👶👦👧👱👨👩👴👵🙍🙎🙅🙆💁🙋🙇👮💂👷👸"
    "👳👲👰👼🎅💆💇🚶🏃💃👯🏂🏄🏊🛀👫💏💑👪👤👣🐵🐒🐶"
    "🐩🐺🐱🐯🐴🐎🐮🐷🐗🐽🐑🐫🐘🐭🐹🐰🐻🐨🐼🐾🐔🐣🐤🐥"
    "🐦🐧🐸🐢🐍🐲🐳🐬🐟🐠🐡🐙🐚🐌🐛🐜🐝🐞💐🌸💮🌹🌺🌻"
    "🌼🌷🌱🌴🌵🌾🌿🍀🍁🍂🍃🍄🍇🍈🍉🍊🍌🍍🍎🍏🍑🍒🍓🍅"
    "🍆🌽🌰🍞🍖🍗🍔🍟🍕🍳🍲🍱🍘🍙🍚🍛🍜🍝🍠🍢🍣🍤🍥🍡"
    "🍦🍧🍨🍩🍪🎂🍰🍫🍬🍭🍮🍯🍵🍶🍷🍸🍹🍺🍻🍴🔪🌏🗾🌋"
    "🗻🏠🏡🏢🏣🏥🏦🏨🏩🏪🏫🏬🏭🏯🏰💒🗼🗽🌁🌃🌄🌅🌆🌇"
    "🌉🎠🎡🎢💈🎪🚃🚄🚅🚇🚉🚌🚑🚒🚓🚕🚗🚙🚚🚲🚏🚨🚥🚧"
    "🚤🚢💺🚀🕛🕐🕑🕒🕓🕔🕕🕖🕗🕘🕙🕚🌑🌓🌔🌕🌙🌛🌟🌠"
    "🌌🌀🌈🌂🔥💧🌊🎃🎄🎆🎇🎈🎉🎊🎋🎍🎎🎏🎐🎑🎀🎁🎫🏆"
    "🏀🏈🎾🎳🎣🎽🎿🎯🔫🎱🔮🎮🎰🎲🃏🀄🎴🎭🎨👓👔👕👖👗"
    "👘👙👚👛👜👝🎒👞👟👠👡👢👑👒🎩🎓💄💍💎🔊📢📣🔔🎼"
    "🎵🎶🎤🎧📻🎷🎸🎹🎺🎻📱📲📞📟📠🔋🔌💻💽💾💿📀🎥🎬"
    "📺📷📹📼🔍🔎💡🔦🏮📔📕📖📗📘📙📚📓📒📃📜📄📰📑🔖"
    "💰💴💵💸💳💹📧📨📩📤📥📦📫📪📮📝💼📁📂📅📆📇📈📉"
    "📊📋📌📍📎📏📐🔒🔓🔏🔐🔑🔨💣🔧🔩🔗📡💉💊🚪🚽🚬🗿"
    "🏧🚹🚺🚻🚼🚾🚫🚭🔞🔃🔙🔚🔛🔜🔝🔯🔼🔽🎦📶📳📴💱💲"
    "🔱📛🔰🔟🔠🔡🔢🔣🔤🆎🆑🆒🆓🆔🆕🆖🆗🆘🆙🆚🈁🈶🈯🉐"
    "🈹🈚🈲🉑🈸🈴🈳🈺🈵🔴🔵🔶🔷🔸🔹🔺🔻💠🔘🔳🔲🏁🚩🎌"
)
_EMOJI_INDEX = {c: i for i, c in enumerate(_EMOJI)}
_EMOJI_MAX_DIGITS = 7  # 576**7 > 2**64


class JobidError(ValueError):
    pass


# The values Python's C-locale coercion (PEP 538) writes into LC_CTYPE at start-up.
_COERCED_CTYPES = frozenset({"C.UTF-8", "C.utf8", "UTF-8"})
_FORCE_ASCII = ("HK_F58_FORCE_ASCII", "FLUX_F58_FORCE_ASCII")


def f58_prefix() -> str:
    """`ƒ` in a UTF-8 locale, else `f`: decided from the environment, as Flux's C does.

    Not from Python's preferred encoding: in a C or POSIX locale Python 3.7+ switches to
    UTF-8 mode and coerces LC_CTYPE to C.UTF-8, so it reports UTF-8 where Flux, in the
    same shell, prints `f`.
    """
    environ = os.environ
    # Any value forces ASCII, even an empty one: Flux tests getenv() for NULL.
    if _FORCE_ASCII[0] in environ or _FORCE_ASCII[1] in environ:
        return "f"
    return _prefix_for(environ.get("LC_ALL"), environ.get("LC_CTYPE"), environ.get("LANG"))


@lru_cache(maxsize=8)
def _prefix_for(lc_all: str | None, lc_ctype: str | None, lang: str | None) -> str:
    if not lc_all and lc_ctype in _COERCED_CTYPES:
        lc_ctype = _uncoerced_ctype(lc_ctype)
    # POSIX precedence; an empty variable counts as unset.
    name = lc_all or lc_ctype or lang or ""
    return "ƒ" if is_utf8_locale_name(name) else "f"


def is_utf8_locale_name(name: str) -> bool:
    """`en_US.UTF-8`, `C.utf8`, `UTF-8` (macOS), `de_DE.UTF-8@euro`: yes; `C`, `POSIX`: no."""
    codeset = name.partition("@")[0].rpartition(".")[2]
    return codeset.replace("-", "").replace("_", "").lower() == "utf8"


def _uncoerced_ctype(value: str | None) -> str | None:
    """LC_CTYPE as this process was started with, if Python's coercion rewrote it.

    The kernel keeps the environment a process was exec'd with in /proc/self/environ,
    which setenv() does not touch. Where there is no /proc, the value is taken as given.
    """
    try:
        with open("/proc/self/environ", "rb") as fh:
            initial = fh.read().split(b"\0")
    except OSError:
        return value
    for entry in initial:
        if entry.startswith(b"LC_CTYPE="):
            return entry[len(b"LC_CTYPE=") :].decode("utf-8", "replace")
    return None


def _positional(value: int, alphabet: str) -> str:
    """`value` in base len(alphabet), most significant digit first; 0 is one digit."""
    digits = []
    while True:
        value, rem = divmod(value, len(alphabet))
        digits.append(alphabet[rem])
        if value == 0:
            return "".join(reversed(digits))


def _from_positional(text: str, index: dict[str, int], max_digits: int) -> int | None:
    """The value of 1 to `max_digits` digits of `index`'s alphabet; None if not that or
    above 2**64 - 1.

    Flux's C arithmetic wraps such values modulo 2**64 (12 f58 digits or 7 emoji can hold
    more than 64 bits); hk refuses them, as it refuses a decimal jobid too large.
    """
    if not 0 < len(text) <= max_digits:
        return None
    value = 0
    for c in text:
        digit = index.get(c)
        if digit is None:
            return None
        value = value * len(index) + digit
    return value if value <= _MAX else None


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
            return f58_prefix() + _positional(value, _B58)
        case "f58plain":
            return "f" + _positional(value, _B58)
        case "words":
            return _words(value)
        case "emoji":
            return _positional(value, _EMOJI)
    raise ValueError(f"unknown jobid encoding '{kind}' (known: {', '.join(KINDS)})")


def _words(value: int) -> str:
    return mnformat(struct.pack("<Q", value))


# fullmatch, never `$`: `$` also matches before a trailing newline, so `0.0.0.0\n` would
# pass for a jobid.
_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_DOTHEX = re.compile(r"[0-9a-fA-F]{1,4}(?:\.[0-9a-fA-F]{1,4}){3}")
# What C's isspace() skips in the C locale; str.strip() would also take Unicode spaces.
_SPACE = " \t\n\v\f\r"


def parse_jobid(text: str) -> int:
    error = JobidError(f"{quoted(text)} is not a valid jobid")
    s = text.lstrip(_SPACE)
    s = s.removeprefix("job.")
    if "." in s:
        if not _DOTHEX.fullmatch(s):
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
    # Then f58, then emoji, as Flux detects them; neither takes trailing spaces.
    if s.startswith(("ƒ", "f")):
        value = _from_positional(s[1:], _B58_INDEX, _F58_MAX_DIGITS)
    elif s[:1] in _EMOJI_INDEX:
        value = _from_positional(s, _EMOJI_INDEX, _EMOJI_MAX_DIGITS)
    else:
        value = _integer(s)
    if value is None:
        raise error
    return value


def _integer(s: str) -> int | None:
    """Hex after `0x`, else decimal, as strtoull reads them; trailing spaces allowed."""
    s = s.rstrip(_SPACE)
    if _HEX.fullmatch(s):
        value = int(s, 16)
    elif _DECIMAL.fullmatch(s) and len(s.lstrip("0")) <= 20:
        # Leading zeros dropped and the length checked first: int() refuses over 4,300
        # digits with a message of its own.
        value = int(s.lstrip("0") or "0", 10)
    else:
        return None
    return value if value <= _MAX else None
