"""The state directory on disk: who owns it, its modes, and what an earlier run left there.

Everything in it is private to the service's user (directories 0700, files 0600),
whatever the umask: the agent's socket there runs commands as that user, its journal
says which process groups to kill, the output may hold secrets. A directory someone else
owns or may write, or a symlink, is refused at start rather than trusted.

A database that is missing, empty or unreadable next to what an earlier run left (the
agent's journal, the event sequence file, output directories) is never a silent fresh
start: it is refused, with `--recover` (hkservice.recovery) or moving the directory away
as the ways on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import IO

from hkservice.text import plural

DIR_MODE = 0o700
FILE_MODE = 0o600
DB_NAME = "hk.db"
DB_SIDE_FILES = ("-wal", "-shm")
EVENT_SEQ_NAME = "events.seq"
JOURNAL_NAME = "agent.journal"
LOCK_NAME = "hkservice.lock"
# Files of the service's own in the state directory and run/: checked like the journal.
_OWN_FILES = (DB_NAME, *(DB_NAME + s for s in DB_SIDE_FILES), EVENT_SEQ_NAME, LOCK_NAME)
_OWN_RUN_FILES = (JOURNAL_NAME, "agent.log", "agent.lock")


class StateError(RuntimeError):
    """The state directory cannot be used as it is: one line saying what and what to do."""


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def ownership_problem(st: os.stat_result, kind: str) -> str | None:
    """Why a file or directory of the state tree cannot be trusted, or None.

    Reading it is fine for anyone (older versions made them 0644/0755; they are
    tightened); writing it is what would let another user forge state.
    """
    wanted = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not wanted(st.st_mode):
        return f"is not a {kind}"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not {os.geteuid()} (the service's user)"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {_mode(st)})"
    return None


def private_dir(path: Path, what: str) -> None:
    """Make `path` (if missing) and make sure it is ours alone: mode 0700."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        st = os.lstat(path)
        problem = ownership_problem(st, "directory") or exc.strerror
        raise StateError(f"{what} {path} {problem}: {_ADVICE}") from None
    try:
        st = os.fstat(fd)
        problem = ownership_problem(st, "directory")
        if problem is not None:
            raise StateError(f"{what} {path} {problem}: {_ADVICE}")
        if stat.S_IMODE(st.st_mode) != DIR_MODE:
            os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


_ADVICE = (
    "the state directory and its run/ must be directories owned by the service's user "
    "that no one else may write (fix it, or set another [service] state-dir)"
)


def private_file(path: Path, what: str) -> None:
    """An existing file of ours: refused if someone else could have written it, made
    0600 otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:
        # A symlink (ELOOP) or something we cannot open: say what it is.
        problem = ownership_problem(os.lstat(path), "file") or "cannot be opened"
        raise StateError(
            f"{what} {path} {problem}: it must be a file owned by the service's user that no "
            "one else may write; move it away once you have checked it"
        ) from None
    try:
        st = os.fstat(fd)
        problem = ownership_problem(st, "file")
        if problem is not None:
            raise StateError(
                f"{what} {path} {problem}: it must be a file owned by the service's user that "
                "no one else may write; move it away once you have checked it"
            )
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def create_private(path: Path, flags: int = os.O_WRONLY) -> int:
    """Open `path`, creating it 0600 whatever the umask, never through a symlink."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def prepare(state_dir: Path) -> None:
    """Check and tighten the state tree before anything in it is read or trusted."""
    if not state_dir.exists() and not state_dir.is_symlink():
        state_dir.parent.mkdir(parents=True, exist_ok=True)
    private_dir(state_dir, "the state directory")
    run_dir = state_dir / "run"
    private_dir(run_dir, "the run directory")
    for name in _OWN_FILES:
        private_file(state_dir / name, "the state file")
    for name in _OWN_RUN_FILES:
        private_file(run_dir / name, "the agent's file" if name != JOURNAL_NAME else "the journal")
    # Output of earlier versions, made 0755: closing the unit directories closes the files.
    with os.scandir(run_dir) as entries:
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != DIR_MODE:
                    os.chmod(entry.path, DIR_MODE, follow_symlinks=False)


def lock(state_dir: Path) -> IO[bytes]:
    """One service per state directory: a second one would steal the first's socket
    and write over its state. The lock is held as long as the returned file is open."""
    fh = os.fdopen(create_private(state_dir / LOCK_NAME), "wb")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StateError(
            f"another hkservice is already running with state-dir {state_dir}"
        ) from None
    return fh


# -- the database and what an earlier run left -------------------------------


def earlier_state(state_dir: Path) -> list[str]:
    """What an earlier run left besides the database, described for the operator."""
    run_dir = state_dir / "run"
    found: list[str] = []
    if (run_dir / JOURNAL_NAME).exists():
        found.append(f"the local agent's journal run/{JOURNAL_NAME}")
    if (state_dir / EVENT_SEQ_NAME).exists():
        found.append(f"the event sequence file {EVENT_SEQ_NAME}")
    if (state_dir / (DB_NAME + "-wal")).exists():
        found.append(f"a write-ahead log {DB_NAME}-wal")
    units = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(run_dir) as entries:
        units = sum(1 for e in entries if e.name.isdigit() and e.is_dir(follow_symlinks=False))
    if units:
        found.append(f"the output of {plural(units, 'unit')} in run/")
    return found


def database_problem(path: Path) -> str | None:
    """What is wrong with the database, or None if it is a sound hk database."""
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        return "missing"
    if size == 0:
        return "empty (0 bytes)"
    try:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            checked = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"not a readable SQLite database ({exc})"
    if checked != ["ok"]:
        # Its report spans lines: the refusal is one.
        report = "; ".join(" ".join(str(c).split()) for c in checked)
        return f"corrupt (PRAGMA quick_check: {report})"
    if "units" not in tables:
        return "not an hk database (it has no units table)"
    return None


def fresh_start_is_safe(problem: str, found: list[str]) -> bool:
    """A missing or empty database with nothing else there: a first start."""
    return problem in ("missing", "empty (0 bytes)") and not found


def refusal(state_dir: Path, problem: str, found: list[str]) -> str:
    db = state_dir / DB_NAME
    if found:
        return (
            f"{db} is {problem}, but {state_dir} holds {', '.join(found)} from an earlier "
            "run: start with --recover to set the database aside and rebuild the units in "
            "progress from them (drains and history cannot be rebuilt), or move "
            f"{state_dir} away to start empty"
        )
    return (
        f"{db} is {problem}: move it away (or start with --recover, which sets it aside) "
        "to start empty"
    )


def set_aside(state_dir: Path) -> list[Path]:
    """Rename the database and its side files out of the way, never deleting them."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved: list[Path] = []
    for suffix in ("", *DB_SIDE_FILES):
        path = state_dir / (DB_NAME + suffix)
        if path.exists() or path.is_symlink():
            target = state_dir / f"{DB_NAME}.broken-{stamp}{suffix}"
            os.replace(path, target)
            moved.append(target)
    return moved
