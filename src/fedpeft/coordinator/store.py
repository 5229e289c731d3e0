"""The coordinator's persistent state: one SQLite file behind one small interface.

Tables: ``meta`` (run id, run status, the last client id given), ``clients`` (id, SHA-256
of the credential, when it registered, when it first asked for work, when it was last
seen), ``rounds`` (started / committed, the metrics record), ``results`` (every accepted
result, keyed by round, kind and client: nothing is counted twice, and a result accepted
before a crash is reused when the round runs again), ``artifacts`` (content-addressed
files).

The global adapter itself lives in the engine's checkpoint (the run folder); the store
never holds a model. The privacy ledger (:mod:`fedpeft.privacy.ledger`) keeps its own
SQLite file beside this one (``ledger_path``).

A registration that never asks for work expires (:class:`~fedpeft.coordinator.handlers.Fleet`):
its row is deleted (:meth:`Store.remove_client`), so its credential stays void and its
slot free across a coordinator restart; a restarted coordinator reads when each
registration was made and whether it became ready (``ready_at``) and expires the rest
on their original schedule, and counts the clients seen just before the crash as live.

SQLite in WAL mode, ``PRAGMA user_version`` for the schema version and
``PRAGMA application_id`` for "this is a fedpeft state database"; one connection shared by
the server's threads behind a lock (SQLite serialises writers anyway).

The file holds accepted, not yet aggregated client updates: it is created 0600 (SQLite
gives its ``-wal`` and ``-shm`` files the database's mode), and a looser existing one is
tightened. A file that is not SQLite, or SQLite of something else, is refused with its
path and left as it was; a database this process created is removed again by
:meth:`Store.discard` when the coordinator cannot start (port in use, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.errors import FedPeftError

#: 2: ``clients.ready_at`` (1 lacked it: those clients are taken as ready when opened)
SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a fedpeft state database ("fpst"); 0 in files written
#: before it was set, which are recognised by their tables instead.
APPLICATION_ID = 0x66707374
_TABLES = frozenset({"meta", "clients", "rounds", "results", "artifacts"})
_SIDE_FILES = ("-wal", "-shm", "-journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    ready_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    record TEXT
);
CREATE TABLE IF NOT EXISTS results (
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    client_id INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    num_examples INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    error TEXT,
    payload BLOB,
    payload_sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (round, kind, client_id)
);
CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class StoreError(FedPeftError):
    """The state database is unusable (newer schema, not a fedpeft database)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class StoredResult:
    round: int
    kind: str
    client_id: int
    task_id: str
    num_examples: int
    metrics: dict[str, float]
    error: str | None
    payload: bytes
    payload_sha256: str


@dataclass(frozen=True)
class Artifact:
    sha256: str
    name: str
    size: int
    path: Path


class Store:
    """The coordinator's state database (``--state``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._made_parent = not self.path.parent.exists()
        #: this process made the file (so :meth:`discard` may remove it)
        self.created = _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            self._undo_create()
            raise StoreError(f"cannot open the state database {self.path}: {exc}") from exc
        try:
            self._open()
        except sqlite3.DatabaseError as exc:  # not SQLite at all, or a damaged file
            self._db.close()
            self._undo_create()
            raise StoreError(
                f"{self.path} is not a usable fedpeft state database ({exc}); give another --state"
            ) from exc
        except BaseException:
            self._db.close()
            self._undo_create()
            raise
        _tighten(self.path)

    def _open(self) -> None:
        """Check the file is ours (or new), then WAL mode and the schema."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if (
            app_id not in (0, APPLICATION_ID)
            or (version == 0 and tables)
            or (version > 0 and not _TABLES.issubset(tables))
        ):
            raise StoreError(
                f"{self.path} is an SQLite database of something else, not a fedpeft state "
                "database; give another --state"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this fedpeft knows {SCHEMA_VERSION}"
            )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted result survives kill -9
        if version == 0:  # a new file: create the schema (executescript commits itself)
            with self._lock:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version == 1:
            self._upgrade_from_1()
        if self.get_meta("run_id") is None:
            self.set_meta("run_id", secrets.token_hex(8))
            self.set_meta("created_at", str(time.time()))

    def _upgrade_from_1(self) -> None:
        """Schema 1 did not record readiness: its clients are taken as ready (whether
        they ever asked for work is unknown, and expiring a real daemon mid-task on an
        upgrade is worse than keeping an old squatter's row, which counts only while it
        is live)."""
        with self._tx() as db:
            db.execute("ALTER TABLE clients ADD COLUMN ready_at REAL")
            db.execute("UPDATE clients SET ready_at = registered_at")
            db.execute("PRAGMA user_version=2")

    def _undo_create(self) -> None:
        if self.created:
            for file in _files(self.path):
                file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # only if this process made it, and empty
                if self._made_parent:
                    self.path.parent.rmdir()

    def discard(self) -> None:
        """Close; remove the database if this process created it (a coordinator that
        could not start leaves no state behind)."""
        self.close()
        self._undo_create()

    @property
    def ledger_path(self) -> Path:
        """Where the privacy ledger's own SQLite file belongs (beside this one)."""
        return self.path.with_name(self.path.stem + ".ledger.db")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def run_id(self) -> str:
        return self.get_meta("run_id") or ""

    # ---- clients ------------------------------------------------------------------------
    def add_client(self, token_hash: str, name: str, now: float) -> int:
        """A new client; its id is never one a removed (expired) client had: results
        and logs keyed by client id must not pass to a newcomer (SQLite alone would
        reuse the highest id once its row is deleted)."""
        with self._tx() as db:
            top = db.execute("SELECT MAX(id) FROM clients").fetchone()[0] or 0
            row = db.execute("SELECT value FROM meta WHERE key = 'last_client_id'").fetchone()
            client_id = max(int(top), int(row[0]) if row else 0) + 1
            db.execute(
                "INSERT INTO clients (id, token_hash, name, registered_at, last_seen) "
                "VALUES (?, ?, ?, ?, ?)",
                (client_id, token_hash, name, now, now),
            )
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_client_id', ?)",
                (str(client_id),),
            )
            return client_id

    def client_token_hash(self, client_id: int) -> str | None:
        rows = self._query("SELECT token_hash FROM clients WHERE id = ?", (client_id,))
        return str(rows[0][0]) if rows else None

    def client_ids(self) -> list[int]:
        return [int(r[0]) for r in self._query("SELECT id FROM clients ORDER BY id")]

    def touch_clients(self, seen: dict[int, float]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE clients SET last_seen = ? WHERE id = ?",
                [(t, cid) for cid, t in seen.items()],
            )

    def count_clients(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM clients")[0][0])

    def mark_ready(self, client_id: int, now: float) -> None:
        """The client asked for work (its data and model loaded): it never expires."""
        with self._tx() as db:
            db.execute(
                "UPDATE clients SET ready_at = ? WHERE id = ? AND ready_at IS NULL",
                (now, client_id),
            )

    def unready_clients(self) -> dict[int, float]:
        """Registrations that never asked for work: client id -> when it registered
        (wall clock)."""
        rows = self._query("SELECT id, registered_at FROM clients WHERE ready_at IS NULL")
        return {int(r[0]): float(r[1]) for r in rows}

    def seen_since(self, since: float) -> dict[int, float]:
        """Clients last seen at or after ``since`` (wall clock): id -> last seen."""
        rows = self._query("SELECT id, last_seen FROM clients WHERE last_seen >= ?", (since,))
        return {int(r[0]): float(r[1]) for r in rows}

    def remove_client(self, client_id: int) -> bool:
        """Delete a registration (it expired): its credential is void for good, also
        after a restart. Results it sent stay (who sent what). False: no such client."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM clients WHERE id = ?", (client_id,))
            return cur.rowcount > 0

    # ---- rounds -------------------------------------------------------------------------
    def round_started(self, round_num: int, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rounds (round, status, started_at) VALUES (?, 'running', ?) "
                "ON CONFLICT(round) DO UPDATE SET status = 'running', started_at = excluded."
                "started_at, finished_at = NULL, record = NULL",
                (round_num, now),
            )

    def round_committed(self, round_num: int, record: dict[str, Any], now: float) -> None:
        status = "failed" if "round_failed" in record else "committed"
        with self._tx() as db:
            db.execute(
                "INSERT INTO rounds (round, status, started_at, finished_at, record) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(round) DO UPDATE SET status = "
                "excluded.status, finished_at = excluded.finished_at, record = excluded.record",
                (round_num, status, now, now, json.dumps(record, sort_keys=True)),
            )
            # the round's updates are in the checkpoint now: keep who sent what, drop bytes
            db.execute("UPDATE results SET payload = NULL WHERE round <= ?", (round_num,))

    def rounds(self) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT round, status, started_at, finished_at, record FROM rounds ORDER BY round"
        )
        return [
            {
                "round": r[0],
                "status": r[1],
                "started_at": r[2],
                "finished_at": r[3],
                "record": json.loads(r[4]) if r[4] else None,
            }
            for r in rows
        ]

    # ---- results ------------------------------------------------------------------------
    def add_result(self, result: StoredResult, now: float) -> bool:
        """Record an accepted result; False when (round, kind, client) already has one."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO results (round, kind, client_id, task_id, num_examples, "
                    "metrics, error, payload, payload_sha256, size, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        result.round,
                        result.kind,
                        result.client_id,
                        result.task_id,
                        result.num_examples,
                        json.dumps(result.metrics),
                        result.error,
                        result.payload,
                        result.payload_sha256,
                        len(result.payload),
                        now,
                    ),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def get_result(self, round_num: int, kind: str, client_id: int) -> StoredResult | None:
        """An accepted result whose payload is still held (its round not yet committed)."""
        rows = self._query(
            "SELECT task_id, num_examples, metrics, error, payload, payload_sha256 FROM results "
            "WHERE round = ? AND kind = ? AND client_id = ? AND payload IS NOT NULL",
            (round_num, kind, client_id),
        )
        if not rows:
            return None
        task_id, n, metrics, error, payload, sha = rows[0]
        return StoredResult(
            round_num, kind, client_id, task_id, n, json.loads(metrics), error, bytes(payload), sha
        )

    def has_result(self, round_num: int, kind: str, client_id: int) -> bool:
        rows = self._query(
            "SELECT 1 FROM results WHERE round = ? AND kind = ? AND client_id = ?",
            (round_num, kind, client_id),
        )
        return bool(rows)

    def held_results(self, round_num: int, kind: str = "train") -> list[int]:
        """The clients whose result for ``round_num`` is accepted and not yet in a
        committed round (a round run again after a coordinator restart reuses them)."""
        rows = self._query(
            "SELECT client_id FROM results WHERE round = ? AND kind = ? AND payload IS NOT NULL "
            "ORDER BY client_id",
            (round_num, kind),
        )
        return [int(r[0]) for r in rows]

    def forget_result(self, round_num: int, kind: str, client_id: int) -> None:
        """Drop one accepted result (it cannot be reused: the client is asked again)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM results WHERE round = ? AND kind = ? AND client_id = ?",
                (round_num, kind, client_id),
            )

    def forget_uncommitted_results(self, round_num: int) -> None:
        """Drop results of ``round_num`` and later (a rerun of a round the checkpoint does
        not hold, for clients that are not asked again)."""
        with self._tx() as db:
            db.execute("DELETE FROM results WHERE round >= ?", (round_num,))

    def count_results(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM results")[0][0])

    # ---- artifacts ----------------------------------------------------------------------
    def add_artifact(self, artifact: Artifact, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO artifacts (sha256, name, size, path, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (artifact.sha256, artifact.name, artifact.size, str(artifact.path), now),
            )

    def get_artifact(self, sha256: str) -> Artifact | None:
        rows = self._query("SELECT name, size, path FROM artifacts WHERE sha256 = ?", (sha256,))
        if not rows:
            return None
        name, size, path = rows[0]
        return Artifact(sha256, str(name), int(size), Path(path))

    def artifacts(self) -> list[Artifact]:
        rows = self._query("SELECT sha256, name, size, path FROM artifacts ORDER BY created_at")
        return [Artifact(r[0], r[1], int(r[2]), Path(r[3])) for r in rows]

    def remove_artifact(self, sha256: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM artifacts WHERE sha256 = ?", (sha256,))


def _files(path: Path) -> list[Path]:
    """The database and the side files SQLite keeps beside it."""
    return [path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)]


def _create_private(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; True when created here.
    (SQLite would create it with the umask's mode, usually 0644.)"""
    if path.exists():
        if not path.is_file():
            raise StoreError(f"{path} is not a file; give --state a database file")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: not ours to remove
        return False
    except OSError as exc:
        raise StoreError(f"cannot create the state database {path}: {exc.strerror}") from exc
    os.close(fd)
    return True


def _tighten(path: Path) -> None:
    """Mode 0600 for the database and its side files (an older, looser file too)."""
    for file in _files(path):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)
