"""Jobids: flux-reference §14's reference values in every encoding, strict parsing, and
the f58 prefix decided from the locale environment as Flux decides it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hkservice.jobid import KINDS, JobidError, encode_jobid, is_utf8_locale_name, parse_jobid

ROOT = Path(__file__).resolve().parent.parent

# flux-reference §14, every encoding of each value.
REFERENCE: dict[int, dict[str, str]] = {
    2**64 - 1: {
        "dec": "18446744073709551615",
        "hex": "0xffffffffffffffff",
        "dothex": "ffff.ffff.ffff.ffff",
        "kvs": "job.ffff.ffff.ffff.ffff",
        "f58plain": "fjpXCZedGfVQ",
        "words": "natural-analyze-verbal--natural-analyze-verbal",
        "emoji": "🚹💗💧👗😷📷📚",  # flux-core's basemoji tests
    },
    0: {
        "dec": "0",
        "hex": "0x0",
        "dothex": "0000.0000.0000.0000",
        "kvs": "job.0000.0000.0000.0000",
        "f58plain": "f1",
        "words": "academy-academy-academy--academy-academy-academy",
        "emoji": "😃",
    },
    1: {"f58plain": "f2", "emoji": "😄"},
    # flux-transcript.md section 3: `flux jobs` and `flux housekeeping list -o` on J1-J3.
    507426897920: {
        "dec": "507426897920",
        "hex": "0x7625000000",
        "dothex": "0000.0076.2500.0000",
        "kvs": "job.0000.0076.2500.0000",
        "f58plain": "fEL6aVGK",
        "words": "printer-bogart-east--catalog-academy-academy",
        "emoji": "😅🎍🐱👅🕓",
    },
    511419875328: {
        "dec": "511419875328",
        "hex": "0x7713000000",
        "dothex": "0000.0077.1300.0000",
        "kvs": "job.0000.0077.1300.0000",
        "f58plain": "fESBRYLP",
        "words": "robin-kitchen-cecilia--caviar-academy-academy",
        "emoji": "😅🎰👆🌼😃",
    },
    514523660288: {
        "dec": "514523660288",
        "hex": "0x77cc000000",
        "dothex": "0000.0077.cc00.0000",
        "kvs": "job.0000.0077.cc00.0000",
        "f58plain": "fEWuhFUB",
        "words": "lazarus-cheese-buenos--caviar-academy-academy",
        "emoji": "😅👜🍕🍱🕓",
    },
    # flux-core's basemoji tests: two and six digits, and 7 digits below 2**64 - 1.
    1234: {"emoji": "😁👌"},
    21900760568561664: {"emoji": "🎆🍧🎆🐾🕓😃"},
    18446743892750589633: {"emoji": "🚹💗🔥😜💟🎱💃"},
}


@pytest.fixture
def utf8_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HK_F58_FORCE_ASCII", "FLUX_F58_FORCE_ASCII", "LC_CTYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LC_ALL", "en_US.UTF-8")


@pytest.fixture
def c_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HK_F58_FORCE_ASCII", "FLUX_F58_FORCE_ASCII", "LC_CTYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LC_ALL", "C")


def test_every_kind_has_a_reference_value() -> None:
    assert set(KINDS) == {*REFERENCE[0], "f58"}


@pytest.mark.parametrize("value", sorted(REFERENCE))
def test_reference_values_round_trip(value: int, c_locale: None) -> None:
    for kind, text in REFERENCE[value].items():
        assert encode_jobid(value, kind) == text
        assert encode_jobid(value, kind.upper()) == text  # type names are case-insensitive
        assert parse_jobid(text) == value
    if "f58plain" in REFERENCE[value]:
        plain = REFERENCE[value]["f58plain"]
        assert encode_jobid(value, "f58") == plain
        assert parse_jobid("ƒ" + plain[1:]) == value


@pytest.mark.parametrize("value", sorted(v for v in REFERENCE if "f58plain" in REFERENCE[v]))
def test_reference_f58_in_a_utf8_locale(value: int, utf8_locale: None) -> None:
    plain = REFERENCE[value]["f58plain"]
    assert encode_jobid(value, "f58") == "ƒ" + plain[1:]
    assert encode_jobid(value, "f58plain") == plain
    assert parse_jobid(encode_jobid(value, "f58")) == value


@pytest.mark.parametrize(
    "text",
    [
        # `$` in a pattern let a trailing newline through (`0.0.0.0\n` was job f1).
        "0.0.0.0\n",
        "job.0000.0000.0000.0000\n",
        "ffff.ffff.ffff.ffff\n",
        "f1\n",
        "ƒ1\n",
        "academy-academy-academy--academy-academy-academy\n",
        "0.0.0.0 x",
        # Only ASCII digits and spaces, as C's parser reads them.
        "٩",
        "１",
        "0x٩",
        "\u00a01",
        "1\u00a0",
        "0.0.0.٩",
        "18446744073709551616",
        "0x10000000000000000",
        # Emoji: Flux's digits only, at most 7, nothing after them (Flux: a length that is
        # not a multiple of 4 bytes is no emoji string).
        "😅🎍🐱👅🕓 ",
        "😅🎍🐱👅🕓\n",
        "😅🎍🐱👅🕓x",
        "😅🎍🐱👅\ufe0f",  # an emoji with its presentation selector, as keyboards add
        "🦀",  # not one of the 576
        "😃😃😃😃😃😃😃😃",  # 8 digits
        "🎌🎌🎌🎌🎌🎌🎌",  # 7 digits above 2**64 - 1 (Flux wraps it around)
        "🚹💗💧👗😷📷📛",  # 2**64 exactly
        "fzzzzzzzzzzzz",  # 12 f58 digits above 2**64 - 1 (Flux wraps it around)
        pytest.param("9" * 5000, id="5000-digits"),
    ],
)
def test_parse_is_strict(text: str) -> None:
    with pytest.raises(JobidError) as exc:
        parse_jobid(text)
    assert str(exc.value).endswith(" is not a valid jobid")
    assert "\n" not in str(exc.value)  # one line, the input quoted with its escapes


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (" \t1", 1),
        (" 😅🎍🐱👅🕓", 507426897920),  # leading spaces are skipped before any form
        ("job.😅🎍🐱👅🕓", 507426897920),  # and `job.`, as flux_job_id_parse does
        ("1 \n", 1),  # strtoull leaves trailing spaces, which Flux allows
        ("0x10\n", 16),
        # Leading zeros do not run into int()'s 4,300-digit limit.
        pytest.param("0" * 5000, 0, id="5000-zeros"),
        pytest.param("0" * 4999 + "7", 7, id="4999-zeros-then-7"),
    ],
)
def test_parse_allows_what_flux_allows(text: str, value: int) -> None:
    assert parse_jobid(text) == value


@pytest.mark.parametrize(
    ("name", "utf8"),
    [
        ("en_US.UTF-8", True),
        ("en_US.utf8", True),
        ("C.UTF-8", True),
        ("UTF-8", True),
        ("de_DE.UTF-8@euro", True),
        ("C", False),
        ("POSIX", False),
        ("", False),
        ("en_US", False),
        ("en_US.ISO-8859-1", False),
        ("utf8ish.latin1", False),
    ],
)
def test_utf8_locale_names(name: str, utf8: bool) -> None:
    assert is_utf8_locale_name(name) is utf8


def f58_of_1(**env: str) -> str:
    """encode_jobid(1) in a fresh interpreter with only these variables (and PATH) set."""
    proc = subprocess.run(
        [sys.executable, "-c", "from hkservice.jobid import encode_jobid; print(encode_jobid(1))"],
        capture_output=True,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        check=True,
    )
    return proc.stdout.decode("utf-8").strip()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # Python enters UTF-8 mode in these and coerces LC_CTYPE to C.UTF-8; Flux says f.
        ({"LC_ALL": "C"}, "f2"),
        ({"LANG": "C"}, "f2"),
        ({"LANG": "C", "LC_ALL": "C"}, "f2"),
        ({"LANG": "POSIX"}, "f2"),
        ({}, "f2"),
        ({"LANG": "C", "PYTHONCOERCECLOCALE": "0"}, "f2"),
        ({"LANG": "C", "PYTHONUTF8": "0"}, "f2"),
        ({"LANG": "C.UTF-8", "LC_CTYPE": "POSIX"}, "f2"),  # LC_CTYPE over LANG
        ({"LANG": "en_US.UTF-8", "LC_ALL": "C"}, "f2"),  # LC_ALL over both
        # UTF-8 locales, installed or not (the name decides, not setlocale).
        ({"LANG": "en_US.UTF-8"}, "ƒ2"),
        ({"LANG": "C.UTF-8"}, "ƒ2"),
        ({"LANG": "C", "LC_CTYPE": "C.UTF-8"}, "ƒ2"),  # set by the user, not by Python
        ({"LANG": "C", "LC_ALL": "C.utf8"}, "ƒ2"),
        ({"LANG": "C", "LC_ALL": "", "LC_CTYPE": "", "PYTHONUTF8": "1"}, "f2"),
        ({"LANG": "C.UTF-8", "LC_ALL": ""}, "ƒ2"),  # empty counts as unset
        # Forced ASCII, whatever the locale; any value forces, as Flux tests for NULL.
        ({"LANG": "C.UTF-8", "HK_F58_FORCE_ASCII": "1"}, "f2"),
        ({"LANG": "C.UTF-8", "FLUX_F58_FORCE_ASCII": "1"}, "f2"),
        ({"LC_ALL": "en_US.UTF-8", "HK_F58_FORCE_ASCII": ""}, "f2"),
    ],
)
def test_f58_prefix_follows_the_locale_environment(env: dict[str, str], expected: str) -> None:
    assert f58_of_1(**env) == expected


def test_f58_prefix_follows_changes_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefix is cached per environment, not once: the console and tests change it."""
    for name in ("HK_F58_FORCE_ASCII", "FLUX_F58_FORCE_ASCII", "LC_ALL", "LC_CTYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    assert encode_jobid(1) == "ƒ2"
    monkeypatch.setenv("LC_ALL", "POSIX")
    assert encode_jobid(1) == "f2"
    monkeypatch.delenv("LC_ALL")
    assert encode_jobid(1) == "ƒ2"
    monkeypatch.setenv("HK_F58_FORCE_ASCII", "1")
    assert encode_jobid(1) == "f2"
    assert encode_jobid(1, "f58plain") == "f2"
