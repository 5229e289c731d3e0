"""The privacy ledger: append-only, idempotent retries, schema version, and durability
under processes killed at random points (SIGKILL, os._exit)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedpeft.privacy.accountant import RoundPrivacy
from fedpeft.privacy.ledger import SCHEMA_VERSION, LedgerError, PrivacyLedger

EVENT = RoundPrivacy(1.0, "poisson", 100, 10)
DELTA = 1e-5


def test_records_read_back_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "run" / "privacy.db"
    with PrivacyLedger(path) as ledger:
        assert ledger.rounds() == [] and ledger.last_round() == 0
        assert ledger.epsilon_spent() == 0.0
        ledger.record(1, EVENT, delta=DELTA, epsilon=0.5, extra={"survivors": 10})
        ledger.record(2, RoundPrivacy(1.5, "poisson", 100, 10), delta=DELTA, epsilon=0.7)
    with PrivacyLedger(path) as ledger:
        assert ledger.rounds() == [EVENT, RoundPrivacy(1.5, "poisson", 100, 10)]
        assert ledger.last_round() == 2
        assert ledger.epsilon_spent() == 0.7
        entries = ledger.entries()
        assert [e["round"] for e in entries] == [1, 2]
        assert entries[0]["extra"] == {"survivors": 10} and entries[1]["extra"] == {}
        assert entries[0]["delta"] == DELTA


def test_identical_retry_is_a_no_op_and_a_different_one_is_refused(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "p.db") as ledger:
        ledger.record(1, EVENT, delta=DELTA, epsilon=0.5, extra={"a": 1})
        ledger.record(1, EVENT, delta=DELTA, epsilon=0.5, extra={"a": 1})
        assert len(ledger.entries()) == 1
        with pytest.raises(LedgerError, match="already recorded"):
            ledger.record(1, EVENT, delta=DELTA, epsilon=0.6, extra={"a": 1})
        with pytest.raises(LedgerError, match="already recorded"):
            ledger.record(1, RoundPrivacy(2.0, "poisson", 100, 10), delta=DELTA, epsilon=0.5)
        assert ledger.epsilon_spent() == 0.5


def test_history_is_append_only_with_one_delta(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "p.db") as ledger:
        ledger.record(3, EVENT, delta=DELTA, epsilon=0.5)
        with pytest.raises(LedgerError, match="append-only"):
            ledger.record(2, EVENT, delta=DELTA, epsilon=0.6)
        with pytest.raises(LedgerError, match="delta"):
            ledger.record(4, EVENT, delta=1e-6, epsilon=0.6)
        with pytest.raises(LedgerError, match="round number"):
            ledger.record(0, EVENT, delta=DELTA, epsilon=0.6)
        assert ledger.last_round() == 3


def test_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    PrivacyLedger(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        PrivacyLedger(path)


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="cannot be opened"):
        PrivacyLedger(path)


def test_wal_and_full_sync_are_on(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "p.db") as ledger:
        db = ledger._conn
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_closed_ledger_refuses_use(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "p.db")
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.rounds()


# ---- crashes ----------------------------------------------------------------------------

#: The child resumes from the ledger (like --resume), records rounds as fast as it can and
#: prints each round number only after record() returned; optionally os._exit()s right after
#: a record, before printing — the process dies with the commit done but unreported.
CHILD = textwrap.dedent(
    """
    import os, sys
    from fedpeft.privacy.accountant import RoundPrivacy
    from fedpeft.privacy.ledger import PrivacyLedger

    path, exit_after = sys.argv[1], int(sys.argv[2])
    ledger = PrivacyLedger(path)
    start = ledger.last_round() + 1
    print("ready", start, flush=True)
    for r in range(start, start + 100000):
        ledger.record(r, RoundPrivacy(1.0, "poisson", 100, 10), delta=1e-5, epsilon=0.01 * r)
        if r == exit_after:
            os._exit(3)
        print(r, flush=True)
    """
)


def run_child(path: Path, *, exit_after: int = -1, kill_after_s: float | None = None) -> int:
    """Run the child until it exits or is SIGKILLed; the last round it reported done."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(exit_after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    header = proc.stdout.readline()
    assert header.startswith("ready"), proc.stderr.read() if proc.stderr else header
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    reported = [int(line) for line in out.split()]
    if kill_after_s is not None:
        assert proc.returncode == -signal.SIGKILL
    return reported[-1] if reported else int(header.split()[1]) - 1


def check_prefix(path: Path, last_reported: int) -> int:
    """The ledger's rounds are 1..m with m >= every round whose record() returned."""
    with PrivacyLedger(path) as ledger:
        numbers = [e["round"] for e in ledger.entries()]
        assert numbers == list(range(1, len(numbers) + 1))
        assert len(numbers) >= last_reported
        # at most the one round in flight when the process died is there unreported
        assert len(numbers) <= last_reported + 1
        if numbers:
            assert ledger.epsilon_spent() == pytest.approx(0.01 * numbers[-1])
        return len(numbers)


def test_os_exit_right_after_record_keeps_the_round(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    reported = run_child(path, exit_after=5)
    assert reported == 4  # round 5 was committed, then the process died before reporting
    assert check_prefix(path, reported) == 5


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_random_sigkills_and_resumes_never_lose_a_recorded_round(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "p.db"
    recorded = 0
    for _ in range(3):
        reported = run_child(path, kill_after_s=rng.uniform(0.0, 0.4))
        assert reported >= recorded  # the child resumed where the ledger ended
        recorded = check_prefix(path, reported)
    assert recorded > 0
