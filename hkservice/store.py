"""What the service must not forget, in SQLite (WAL) under state-dir.

Units in progress with every rank's outcome and release, the drains, and the history of
finished units and of every rank's run (`runs`, read by hkservice/stats.py; both kept for
[history] keep, pruned by `prune`). The service writes each batch of core actions in one
transaction before it publishes them, so after a crash the state on disk is never behind
what clients were told.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from hkservice import core
from hkservice.core import Outcome, RankRecord, Unit
from hkservice.idset import format_idset, parse_idset
from hkservice.statedir import DB_NAME, EVENT_SEQ_NAME, StateError, create_private

log = logging.getLogger("hkservice.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    jobid INTEGER UNIQUE NOT NULL,
    userid INTEGER NOT NULL,
    t_start REAL NOT NULL,
    ranks TEXT NOT NULL,
    timer_deadline REAL,
    timer_expired INTEGER NOT NULL DEFAULT 0,
    timeout_at REAL,
    releases INTEGER NOT NULL DEFAULT 0,
    stuck INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ranks (
    jobid INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    t_end REAL,
    kind TEXT,
    code INTEGER,
    signal INTEGER,
    text TEXT,
    released INTEGER NOT NULL DEFAULT 0,
    kill_cause TEXT,
    kill_signal INTEGER,
    escalate_at REAL,
    killed_at REAL,
    PRIMARY KEY (jobid, rank)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drains (
    rank INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    t REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    jobid INTEGER NOT NULL,
    userid INTEGER NOT NULL,
    t_start REAL NOT NULL,
    t_end REAL NOT NULL,
    ranks TEXT NOT NULL,
    failed TEXT NOT NULL,
    releases INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    t_end REAL NOT NULL,
    rank INTEGER NOT NULL,
    duration REAL NOT NULL,
    userid INTEGER NOT NULL,
    jobid INTEGER NOT NULL,
    result TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_t_end ON runs (t_end);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# Columns added since the first release: (table, column, declaration) added to a state
# directory written by an older service.
MIGRATIONS = [
    ("ranks", "kill_cause", "TEXT"),
    ("ranks", "kill_signal", "INTEGER"),
    ("ranks", "escalate_at", "REAL"),
    ("units", "stuck", "INTEGER NOT NULL DEFAULT 0"),
    ("ranks", "killed_at", "REAL"),
]

HISTORY_KEEP = 10_000

# Who asked for each start, kill, drain and undrain (hkservice/audit.py says what goes in).
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    ok INTEGER NOT NULL,
    effect TEXT NOT NULL,
    role TEXT NOT NULL,
    who TEXT NOT NULL,
    how TEXT NOT NULL,
    reported TEXT
);
CREATE INDEX IF NOT EXISTS audit_t ON audit (t);
"""
AUDIT_KEEP = 100_000
AUDIT_COLUMNS = ("t", "method", "params", "ok", "effect", "role", "who", "how", "reported")
# Uint64 jobids do not fit SQLite's signed 64-bit integers: store them shifted.
_OFFSET = 1 << 63


def run_result(outcome: Outcome) -> str:
    """A run's result as history and metrics name it: ok, or how it failed (a core dump is
    a signal: one label per way of failing an operator tells apart)."""
    if outcome.ok:
        return "ok"
    return "signal" if outcome.kind == "core" else outcome.kind


def _db(jobid: int) -> int:
    return jobid - _OFFSET


def _job(value: int) -> int:
    return value + _OFFSET


CHECKPOINT_SECONDS = 1.0


class _Checkpointer:
    """Copies the WAL into the database from a thread and connection of its own.

    SQLite otherwise checkpoints inside the commit that crosses 1,000 WAL pages, with an
    fsync, on the event loop: a request arriving then waited for the disk (start p99 86 ms
    in bench/load.py). A PASSIVE checkpoint neither waits for nor blocks the writer.
    """

    def __init__(self, path: Path) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(path,), name="hk-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            db = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            log.error("cannot open %s to checkpoint it: %s", path, exc)
            return
        failing = False
        try:
            while not self._stop.wait(CHECKPOINT_SECONDS):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    failing = False
                except sqlite3.Error as exc:
                    if not failing:  # once per spell (a full disk)
                        log.error("cannot checkpoint %s: %s", path, exc)
                    failing = True
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Snapshot:
    """The database as it was when taken, to be read later from a worker thread.

    Taken on the event loop, which alone writes, so what it sees is exactly what the
    service had saved at that point; read on a connection of its own, so the thread needs
    nothing of the loop's (in WAL mode a read transaction sees the commits made before
    its first read, and neither waits for nor holds up the writer or a PASSIVE
    checkpoint). One at a time: the next is taken once this one is done.
    """

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock
        with lock:
            if db.in_transaction:  # the last one's thread never ran (the service stopping)
                db.execute("ROLLBACK")
            db.execute("BEGIN")
            db.execute("SELECT 1 FROM history LIMIT 1").fetchall()  # the snapshot starts

    def units_by_user(self, since: float | None) -> dict[int, int]:
        """Store.units_by_user, as of the snapshot."""
        with self._lock:
            return _units_by_user(self._db, since)

    def done(self) -> None:
        """Ends the read transaction; the thread calls it once it has read."""
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")


class Store:
    """The database of a state directory already checked (hkservice.statedir)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        self.seq_path = state_dir / EVENT_SEQ_NAME
        self._checkpointer: _Checkpointer | None = None
        # The connection snapshots are read on (opened by the first), and what keeps a
        # thread reading it and close() apart.
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        try:
            # Made 0600 before SQLite opens it, whatever the umask: SQLite gives its
            # -wal and -shm files the database's mode.
            os.close(create_private(self.path))
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state database {self.path}: {_why(exc)}") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (our case); only a power cut
            # could lose the last transactions, and the agent's journal covers those ranks.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.executescript(AUDIT_SCHEMA)
            for table, column, declaration in MIGRATIONS:
                columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.Error as exc:
            self.db.close()
            raise StateError(f"cannot set up the state database {self.path}: {exc}") from None

    def start_checkpoints(self) -> None:
        """From now on the WAL is checkpointed by a thread, not by the commits."""
        if self._checkpointer is None:
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self.path)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        with self._reader_lock:  # a thread reading a snapshot finishes its read first
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self.db.close()

    # -- writing ------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR):
            # a ROLLBACK then fails with "no transaction is active" and would hide the
            # error that matters.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def apply(self, actions: Iterable[core.Action], hk: core.Housekeeping) -> None:
        with self._transaction():
            for action in actions:
                self._apply_one(action, hk)

    def _apply_one(self, action: core.Action, hk: core.Housekeeping) -> None:
        db = self.db
        match action:
            case core.UnitStarted(jobid):
                unit = hk.units[jobid]
                db.execute(
                    "INSERT INTO units (jobid, userid, t_start, ranks, timeout_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        _db(jobid),
                        unit.userid,
                        unit.t_start,
                        format_idset(unit.ranks),
                        unit.timeout_at,
                    ),
                )
                db.executemany(
                    "INSERT INTO ranks (jobid, rank) VALUES (?, ?)",
                    ((_db(jobid), r) for r in unit.ranks),
                )
            case core.RankFinished(jobid, rank, outcome, t_end, t_start, userid):
                db.execute(
                    "INSERT INTO runs (t_end, rank, duration, userid, jobid, result, reason)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        t_end,
                        rank,
                        max(0.0, t_end - t_start),
                        userid,
                        _db(jobid),
                        run_result(outcome),
                        None if outcome.ok else outcome.describe(),
                    ),
                )
                db.execute(
                    "UPDATE ranks SET t_end=?, kind=?, code=?, signal=?, text=?"
                    " WHERE jobid=? AND rank=?",
                    (
                        t_end,
                        outcome.kind,
                        outcome.code,
                        outcome.signal,
                        outcome.text,
                        _db(jobid),
                        rank,
                    ),
                )
            case core.Signal(jobid, ranks, _):
                held = hk.units[jobid]
                records = held.records
                db.executemany(
                    "UPDATE ranks SET kill_cause=?, kill_signal=?, escalate_at=?, killed_at=?"
                    " WHERE jobid=? AND rank=?",
                    (
                        (
                            records[r].kill_cause,
                            records[r].kill_signal,
                            records[r].escalate_at,
                            records[r].killed_at,
                            _db(jobid),
                            r,
                        )
                        for r in ranks
                    ),
                )
                # A timeout that fired must not fire again after a restart.
                db.execute(
                    "UPDATE units SET timeout_at=? WHERE jobid=?", (held.timeout_at, _db(jobid))
                )
            case core.TimerArmed(jobid, deadline):
                db.execute(
                    "UPDATE units SET timer_deadline=? WHERE jobid=?", (deadline, _db(jobid))
                )
            case core.Released(jobid, ranks, _):
                db.executemany(
                    "UPDATE ranks SET released=1 WHERE jobid=? AND rank=?",
                    ((_db(jobid), r) for r in ranks),
                )
                held = hk.units.get(jobid)
                expired = 1 if held is not None and held.timer_expired else 0
                db.execute(
                    "UPDATE units SET releases=releases+1, timer_expired=? WHERE jobid=?",
                    (expired, _db(jobid)),
                )
            case core.Stuck(jobid, _):
                db.execute("UPDATE units SET stuck=1 WHERE jobid=?", (_db(jobid),))
            case core.UnitEnded(jobid, t_end):
                self._end_unit(jobid, t_end)
            case core.Drained(ranks, reason, t):
                db.executemany(
                    "INSERT OR IGNORE INTO drains (rank, reason, t) VALUES (?, ?, ?)",
                    ((r, reason, t) for r in ranks),
                )
            case core.Undrained(ranks):
                db.executemany("DELETE FROM drains WHERE rank=?", ((r,) for r in ranks))
            case _:
                pass

    def _end_unit(self, jobid: int, t_end: float) -> None:
        db = self.db
        row = db.execute(
            "SELECT userid, t_start, ranks, releases FROM units WHERE jobid=?", (_db(jobid),)
        ).fetchone()
        if row is None:
            return
        failed = [
            r
            for (r,) in db.execute(
                "SELECT rank FROM ranks WHERE jobid=? AND NOT (kind='exit' AND code=0)",
                (_db(jobid),),
            )
        ]
        db.execute(
            "INSERT INTO history (jobid, userid, t_start, t_end, ranks, failed, releases)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_db(jobid), row[0], row[1], t_end, row[2], format_idset(failed), row[3]),
        )
        db.execute("DELETE FROM ranks WHERE jobid=?", (_db(jobid),))
        db.execute("DELETE FROM units WHERE jobid=?", (_db(jobid),))

    def prune(self, before: float, batch: int) -> int:
        """Forget at most `batch` runs and finished units that ended before `before`;
        returns how many rows went. Small batches: each is one short write transaction."""
        with self._transaction() as db:
            gone = db.execute(
                "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs WHERE t_end < ? LIMIT ?)",
                (before, batch),
            ).rowcount
            gone += db.execute(
                "DELETE FROM history WHERE seq IN"
                " (SELECT seq FROM history WHERE t_end < ? ORDER BY seq LIMIT ?)",
                (before, batch),
            ).rowcount
        return gone

    # -- reading ------------------------------------------------------------

    def load_units(self) -> list[Unit]:
        units: list[Unit] = []
        rows = self.db.execute(
            "SELECT jobid, userid, t_start, ranks, timer_deadline, timer_expired,"
            " timeout_at, releases, stuck FROM units ORDER BY seq"
        ).fetchall()
        for (
            jobid_db,
            userid,
            t_start,
            ranks_text,
            deadline,
            expired,
            timeout_at,
            rel,
            stuck,
        ) in rows:
            ranks = tuple(sorted(parse_idset(ranks_text)))
            records: dict[int, RankRecord] = {}
            for (
                rank,
                t_end,
                kind,
                code,
                signal,
                text,
                released,
                kill_cause,
                kill_signal,
                escalate_at,
                killed_at,
            ) in self.db.execute(
                "SELECT rank, t_end, kind, code, signal, text, released, kill_cause,"
                " kill_signal, escalate_at, killed_at FROM ranks WHERE jobid=?",
                (jobid_db,),
            ):
                outcome = Outcome(kind, code, signal, text or "") if kind else None
                records[rank] = RankRecord(
                    rank,
                    t_start,
                    t_end,
                    outcome,
                    bool(released),
                    kill_cause,
                    kill_signal,
                    escalate_at if outcome is None else None,
                    killed_at,
                )
            for r in ranks:
                records.setdefault(r, RankRecord(r, t_start))
            units.append(
                Unit(
                    jobid=_job(jobid_db),
                    userid=userid,
                    t_start=t_start,
                    ranks=ranks,
                    records=records,
                    allocated={r for r, rec in records.items() if not rec.released},
                    pending={r for r, rec in records.items() if rec.outcome is None},
                    failed={r for r, rec in records.items() if rec.outcome and not rec.outcome.ok},
                    timer_deadline=deadline,
                    timer_expired=bool(expired),
                    timeout_at=timeout_at,
                    releases=rel,
                    stuck=bool(stuck),
                )
            )
        return units

    def reserve_events(self, block: int) -> int:
        """Reserve the next `block` event sequence numbers; returns the first of them.

        Only the ceiling of each block is written, so an event costs no write, and a
        restarted service starts above every number its predecessor could have used.
        The ceiling also goes to the event sequence file, first: a database rebuilt by
        --recover carries on from there, so clients never see the numbers go back.
        """
        row = self.db.execute("SELECT value FROM meta WHERE key='event_seq'").fetchone()
        first = max(row[0] if row else 0, self._seq_file()) + 1
        self._write_seq_file(first + block - 1)
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('event_seq', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (first + block - 1,),
        )
        return first

    def _seq_file(self) -> int:
        try:
            text = self.seq_path.read_text()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("ignored the event sequence file %s: %s", self.seq_path, exc)
            return 0
        if not (text.strip().isascii() and text.strip().isdigit()):
            log.warning("ignored the event sequence file %s: not a number", self.seq_path)
            return 0
        return int(text)

    def _write_seq_file(self, ceiling: int) -> None:
        tmp = self.seq_path.with_name(self.seq_path.name + ".tmp")
        with os.fdopen(create_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as fh:
            fh.write(f"{ceiling}\n")
        os.replace(tmp, self.seq_path)

    def restore(self, units: Iterable[Unit], drains: dict[int, tuple[str, float]]) -> None:
        """Write units and drains rebuilt by --recover into this (new) database."""
        with self._transaction() as db:
            for unit in units:
                db.execute(
                    "INSERT INTO units (jobid, userid, t_start, ranks, timer_deadline,"
                    " timer_expired, timeout_at, releases) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        _db(unit.jobid),
                        unit.userid,
                        unit.t_start,
                        format_idset(unit.ranks),
                        unit.timer_deadline,
                        int(unit.timer_expired),
                        unit.timeout_at,
                        unit.releases,
                    ),
                )
                db.executemany(
                    "INSERT INTO ranks (jobid, rank, t_end, kind, code, signal, text, released)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        (
                            _db(unit.jobid),
                            rec.rank,
                            rec.t_end,
                            rec.outcome.kind if rec.outcome else None,
                            rec.outcome.code if rec.outcome else None,
                            rec.outcome.signal if rec.outcome else None,
                            rec.outcome.text if rec.outcome else None,
                            int(rec.released),
                        )
                        for rec in unit.records.values()
                    ),
                )
            db.executemany(
                "INSERT OR IGNORE INTO drains (rank, reason, t) VALUES (?, ?, ?)",
                ((rank, reason, t) for rank, (reason, t) in drains.items()),
            )

    def load_drains(self) -> list[tuple[int, str, float]]:
        return list(self.db.execute("SELECT rank, reason, t FROM drains ORDER BY rank"))

    def history(self, limit: int) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT jobid, userid, t_start, t_end, ranks, failed, releases FROM history"
            " ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        units: list[dict[str, object]] = []
        for jobid, userid, t_start, t_end, ranks, failed, releases in rows:
            unit: dict[str, object] = {
                "jobid": _job(jobid),
                "userid": userid,
                "t_start": t_start,
                "t_end": t_end,
                "ranks": ranks,
                "failed": failed,
                "releases": releases,
            }
            if failed:
                unit["reasons"] = self._failures(jobid, t_start, t_end)
            units.append(unit)
        return units

    def _failures(self, jobid: int, t_start: float, t_end: float) -> list[dict[str, str]]:
        """Why a finished unit's ranks failed: [{ranks, reason}], one entry per reason.

        Its runs ended within the unit's own time span: that bound lets the t_end index
        find them (runs has no index by jobid).
        """
        by_reason: dict[str, list[int]] = {}
        for rank, reason in self.db.execute(
            "SELECT rank, reason FROM runs WHERE t_end BETWEEN ? AND ? AND jobid = ?"
            " AND result != 'ok' ORDER BY rank",
            (t_start, t_end, jobid),
        ):
            by_reason.setdefault(reason or "", []).append(rank)
        return [{"ranks": format_idset(r), "reason": why} for why, r in by_reason.items()]

    def last_run(self) -> int:
        """The id of the latest run saved (0: none); ids grow with each run saved."""
        return self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM runs").fetchone()[0]

    def runs(
        self, after: int, upto: int, limit: int
    ) -> list[tuple[int, float, int, float, int, int, str | None]]:
        """Runs with ids in (after, upto], oldest first, at most `limit`: (id, t_end, rank,
        duration, userid, jobid, reason), reason being None for a success."""
        return [
            (rowid, t_end, rank, duration, userid, _job(jobid), reason)
            for rowid, t_end, rank, duration, userid, jobid, reason in self.db.execute(
                "SELECT rowid, t_end, rank, duration, userid, jobid,"
                " CASE WHEN result = 'ok' THEN NULL ELSE COALESCE(reason, '') END"
                " FROM runs WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?",
                (after, upto, limit),
            )
        ]

    def units_by_user(self, since: float | None) -> dict[int, int]:
        """How many finished units each user's jobs made, since `since` (or ever)."""
        return _units_by_user(self.db, since)

    def snapshot(self) -> Snapshot:
        """What is saved now, to read from a worker thread (Snapshot); on the event loop,
        after the last one taken is done."""
        if self._reader is None:
            # Read-only: nothing a thread does through it can change the state.
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            reader.execute("PRAGMA query_only=1")
            self._reader = reader
        return Snapshot(self._reader, self._reader_lock)

    # -- audit ----------------------------------------------------------------

    def add_audit(self, entry: dict[str, object]) -> None:
        """One audit record (AUDIT_COLUMNS); the oldest beyond AUDIT_KEEP go."""
        cursor = self.db.execute(
            f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})",
            tuple(entry[c] for c in AUDIT_COLUMNS),
        )
        if cursor.lastrowid is not None and cursor.lastrowid % 1000 == 0:
            self.db.execute("DELETE FROM audit WHERE seq <= ?", (cursor.lastrowid - AUDIT_KEEP,))

    def audit(self, limit: int) -> list[dict[str, object]]:
        """The newest `limit` audit records, newest first."""
        rows = self.db.execute(
            f"SELECT seq, {', '.join(AUDIT_COLUMNS)} FROM audit ORDER BY seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [dict(zip(("seq", *AUDIT_COLUMNS), row, strict=True)) for row in rows]

    def audit_at(self, method: str, t: float) -> dict[str, object] | None:
        """The successful `method` recorded at time `t` (a drain's own time), if any."""
        row = self.db.execute(
            f"SELECT seq, {', '.join(AUDIT_COLUMNS)} FROM audit"
            " WHERE t = ? AND method = ? AND ok = 1 ORDER BY seq DESC LIMIT 1",
            (t, method),
        ).fetchone()
        return dict(zip(("seq", *AUDIT_COLUMNS), row, strict=True)) if row else None


def _units_by_user(db: sqlite3.Connection, since: float | None) -> dict[int, int]:
    return dict(
        db.execute(
            "SELECT userid, COUNT(*) FROM history WHERE t_end >= ? GROUP BY userid",
            (-math.inf if since is None else since,),
        )
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
