"""A crash-safe, append-only record of the privacy events a run has released.

The coordinator records a round's :class:`~fedpeft.privacy.accountant.RoundPrivacy`
*before* the adapter that spends it is checkpointed, evaluated or exported. If the
process dies after :meth:`PrivacyLedger.record` returns, the round is on disk; if it dies
before, nothing was released. ``--resume`` reads the rounds back and composes them again,
so ε is never under-counted and never forgotten.

Storage is one SQLite file (stdlib ``sqlite3``): WAL journal, ``synchronous=FULL`` (the
commit is fsynced before ``record`` returns), one row per round in a table with a primary
key on the round number, and the schema version in ``PRAGMA user_version``. A file written
by a newer fedpeft (higher version) is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from fedpeft.errors import FedPeftError
from fedpeft.privacy.accountant import RoundPrivacy

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round_num   INTEGER PRIMARY KEY,
    event       TEXT    NOT NULL,
    delta       REAL    NOT NULL,
    epsilon     REAL    NOT NULL,
    extra       TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL
)
"""


class LedgerError(FedPeftError):
    """The privacy ledger is unreadable, from a newer version, or asked to rewrite history."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class _Row(NamedTuple):
    """One round as stored, minus its timestamp: what a retried ``record`` must match
    (the JSON is canonical so that equal values compare equal)."""

    round_num: int
    event: str
    delta: float
    epsilon: float
    extra: str


class PrivacyLedger:
    """Append-only privacy events of one run, durable when :meth:`record` returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the ledger says who took part when: owner-only, as SQLite would not make it
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0
            )
            db = self._db
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                self._db = None
                raise LedgerError(
                    f"privacy ledger {self.path} has schema version {version}, newer than "
                    f"this fedpeft's {SCHEMA_VERSION}: upgrade fedpeft to resume this run"
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if version < SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            raise LedgerError(f"privacy ledger {self.path} cannot be opened: {err}") from err

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise LedgerError(f"privacy ledger {self.path} is closed")
        return self._db

    def record(
        self,
        round_num: int,
        event: RoundPrivacy,
        *,
        delta: float,
        epsilon: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Append round ``round_num``'s event with the cumulative ε it brings the run to.

        Committed and fsynced when it returns. Recording a round that is already there is
        a no-op if every field is identical (a retry after a crash between ``record`` and
        the checkpoint) and an error otherwise; rounds must increase, and every round of a
        ledger uses the same δ.
        """
        if not (isinstance(round_num, int) and round_num >= 1):
            raise LedgerError(f"round number must be an int >= 1, got {round_num!r}")
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise LedgerError(f"round {round_num}: epsilon must be finite and >= 0, got {epsilon}")
        row = _Row(
            round_num,
            _canonical(event.to_dict()),
            float(delta),
            float(epsilon),
            _canonical(extra or {}),
        )
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._already_recorded(db, row):
                db.execute("ROLLBACK")
                return
            self._check_appends(db, row)
            db.execute(
                "INSERT INTO rounds (round_num, event, delta, epsilon, extra, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*row, datetime.now(UTC).isoformat(timespec="microseconds")),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _already_recorded(self, db: sqlite3.Connection, row: _Row) -> bool:
        """Whether ``row``'s round is on disk already. An identical row is a retry after a
        crash between ``record`` and the checkpoint, and is fine; a different one would
        rewrite a released round, and is refused."""
        existing = db.execute(
            "SELECT round_num, event, delta, epsilon, extra FROM rounds WHERE round_num = ?",
            (row.round_num,),
        ).fetchone()
        if existing is None:
            return False
        if tuple(existing) != row:
            raise LedgerError(
                f"round {row.round_num} is already recorded in {self.path} with different "
                f"values ({existing[1]}, delta={existing[2]}, epsilon={existing[3]}); "
                "the ledger never rewrites a released round"
            )
        return True

    def _check_appends(self, db: sqlite3.Connection, row: _Row) -> None:
        """Refuse a new row that does not extend the ledger: a round before the last one
        recorded, or a δ other than the ledger's (the rounds compose at one δ)."""
        last = db.execute(
            "SELECT round_num, delta FROM rounds ORDER BY round_num DESC LIMIT 1"
        ).fetchone()
        if last is None:
            return
        if row.round_num < last[0]:
            raise LedgerError(
                f"round {row.round_num} comes after round {last[0]} in {self.path}: the "
                "ledger is append-only"
            )
        if last[1] != row.delta:
            raise LedgerError(
                f"round {row.round_num}: delta {row.delta:g} differs from the ledger's {last[1]:g}"
            )

    def entries(self) -> list[dict[str, Any]]:
        """Every recorded round, oldest first, as plain dicts."""
        rows = self._conn.execute(
            "SELECT round_num, event, delta, epsilon, extra, recorded_at FROM rounds "
            "ORDER BY round_num"
        ).fetchall()
        return [
            {
                "round": r[0],
                "event": json.loads(r[1]),
                "delta": r[2],
                "epsilon": r[3],
                "extra": json.loads(r[4]),
                "recorded_at": r[5],
            }
            for r in rows
        ]

    def rounds(self) -> list[RoundPrivacy]:
        """The recorded events, oldest first (what the accountant composes on resume)."""
        return [RoundPrivacy.from_dict(e["event"]) for e in self.entries()]

    def last_round(self) -> int:
        """The highest recorded round number, or 0 when nothing is recorded."""
        row = self._conn.execute("SELECT MAX(round_num) FROM rounds").fetchone()
        return int(row[0]) if row[0] is not None else 0

    def epsilon_spent(self) -> float:
        """The cumulative ε recorded with the last round (0.0 when empty)."""
        row = self._conn.execute(
            "SELECT epsilon FROM rounds ORDER BY round_num DESC LIMIT 1"
        ).fetchone()
        return float(row[0]) if row is not None else 0.0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
