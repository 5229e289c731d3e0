"""What keeps an operator from losing a run: the state database (0600, corrupt and foreign
files refused untouched, nothing left behind), which run a folder holds (a fresh run
refuses another's folder, ``--force`` removes only run files, ``serve`` resumes only its
own run), ``/metrics`` (only that path, loopback, DP gauges only with DP), and the
refusal of a one-label classification job. Real SQLite, real files, real sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fedpeft.config import JobConfig
from fedpeft.coordinator.checkpoint import EngineState, save_checkpoint
from fedpeft.coordinator.metrics import FleetMetrics
from fedpeft.coordinator.server import check_serve_output
from fedpeft.coordinator.store import Store, StoreError
from fedpeft.errors import ConfigError
from fedpeft.rundir import RunDir, RunFolderInUse

LABELS = ["neg", "pos"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: content hash and modification time."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_run(path: Path, run_id: str, cfg: JobConfig | None = None, *, rounds: int = 1) -> Path:
    """A run folder as a federated job leaves it: config, meta, a metrics line, checkpoint."""
    cfg = cfg or JobConfig().replace({"output": str(path)})
    run = RunDir(path)
    run.create(cfg, {"run_id": run_id, "task": "classification", "label_names": LABELS})
    run.append_metrics({"round": 1, "clients_ok": 2, "bytes_up": 10, "bytes_down": 10})
    state = EngineState(round=rounds, params={"lora_A": np.ones((2, 2), np.float32)})
    save_checkpoint(path, state, {}, chain=False)
    return path


# ---- the state database ----------------------------------------------------------------
def test_state_database_and_its_wal_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: SQLite on its own would make 0644 files
    try:
        store = Store(tmp_path / "state.db")
        store.set_meta("k", "v")  # the WAL and shared-memory files exist after a write
        files = [tmp_path / n for n in ("state.db", "state.db-wal", "state.db-shm")]
        assert all(f.is_file() for f in files)
        assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
        store.close()
    finally:
        os.umask(old)


def test_the_state_database_is_0600_before_sqlite_opens_it(tmp_path: Path) -> None:
    from fedpeft.coordinator.store import _create_private

    old = os.umask(0o022)
    try:
        assert _create_private(tmp_path / "state.db")  # no window with a readable file
        assert (tmp_path / "state.db").stat().st_mode & 0o777 == 0o600
        assert not _create_private(tmp_path / "state.db")  # exists: not ours to remove
    finally:
        os.umask(old)


def test_a_looser_existing_state_database_is_tightened(tmp_path: Path) -> None:
    Store(tmp_path / "state.db").close()
    (tmp_path / "state.db").chmod(0o644)
    Store(tmp_path / "state.db").close()
    assert (tmp_path / "state.db").stat().st_mode & 0o777 == 0o600


def test_a_corrupt_state_database_is_refused_by_path_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"not sqlite at all " * 200)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=str(path)):
        Store(path)
    assert snapshot(tmp_path) == before  # no -wal, no -shm, same bytes


def test_a_foreign_sqlite_database_is_refused_and_not_given_our_tables(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices (total) VALUES (9.5)")
    db.commit()
    db.close()
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=str(path)):
        Store(path)
    assert snapshot(tmp_path) == before
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert tables == {"invoices"}


def test_discard_removes_only_a_database_this_process_created(tmp_path: Path) -> None:
    fresh = Store(tmp_path / "new" / "state.db")
    fresh.set_meta("k", "v")
    fresh.discard()
    assert not (tmp_path / "new").exists()  # file, side files and the folder made for it
    Store(tmp_path / "kept.db").close()
    again = Store(tmp_path / "kept.db")
    run_id = again.run_id
    again.discard()
    kept = Store(tmp_path / "kept.db")
    assert kept.run_id == run_id  # an existing database is never removed
    kept.close()


def test_an_expired_clients_id_is_never_given_to_a_newcomer(tmp_path: Path) -> None:
    """Results are keyed by client id: a newcomer must not inherit a removed client's id
    (SQLite reuses the highest rowid once its row is deleted), not even after a reopen."""
    store = Store(tmp_path / "state.db")
    first, squatter = store.add_client("h1", "a", 1.0), store.add_client("h2", "b", 2.0)
    assert store.remove_client(squatter) and not store.remove_client(squatter)
    store.close()
    store = Store(tmp_path / "state.db")
    # mutation caught: INSERT without an explicit id (the newcomer gets the squatter's id)
    newcomer = store.add_client("h3", "c", 3.0)
    assert newcomer not in (first, squatter) and newcomer > squatter
    assert store.client_token_hash(squatter) is None
    assert store.client_ids() == [first, newcomer]
    store.close()


def test_readiness_and_last_seen_are_kept_for_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    ready, waiting = store.add_client("h1", "a", 10.0), store.add_client("h2", "b", 20.0)
    store.mark_ready(ready, 11.0)
    store.touch_clients({waiting: 50.0})
    store.close()
    store = Store(tmp_path / "state.db")
    assert store.unready_clients() == {waiting: 20.0}  # registration time, not last seen
    assert store.seen_since(40.0) == {waiting: 50.0}
    store.close()


def test_a_schema_1_database_is_upgraded_with_its_clients_taken_as_ready(tmp_path: Path) -> None:
    """A state database written before readiness was recorded: its clients are kept and
    never expired by the upgrade (one of them may be a daemon training a long task)."""
    from fedpeft.coordinator.store import APPLICATION_ID

    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE clients (id INTEGER PRIMARY KEY, token_hash TEXT NOT NULL, name TEXT NOT "
        "NULL DEFAULT '', registered_at REAL NOT NULL, last_seen REAL NOT NULL);"
        "CREATE TABLE rounds (round INTEGER PRIMARY KEY, status TEXT, started_at REAL, "
        "finished_at REAL, record TEXT);"
        "CREATE TABLE results (round INTEGER, kind TEXT, client_id INTEGER, x TEXT);"
        "CREATE TABLE artifacts (sha256 TEXT PRIMARY KEY);"
        "INSERT INTO meta VALUES ('run_id', 'r1');"
        "INSERT INTO clients (token_hash, registered_at, last_seen) VALUES ('h', 5.0, 6.0);"
    )
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = Store(path)
    assert store.run_id == "r1" and store.client_ids() == [1]
    assert store.unready_clients() == {}
    assert store._query("PRAGMA user_version")[0][0] == 2
    store.close()
    assert Store(path).client_ids() == [1]  # opened again: no second upgrade


# ---- which run a folder holds ------------------------------------------------------------
def test_a_fresh_run_refuses_another_runs_folder_and_force_removes_only_run_files(
    tmp_path: Path,
) -> None:
    out = make_run(tmp_path / "run", "aaaa")
    (out / "notes.txt").write_text("mine")  # not a run file: never touched
    before = snapshot(out)
    run = RunDir(out)
    with pytest.raises(RunFolderInUse, match="--force") as err:
        run.claim("bbbb")
    assert str(out) in str(err.value) and "aaaa" in str(err.value)
    assert snapshot(out) == before
    run.claim("aaaa")  # the same run restarting: nothing removed
    assert snapshot(out) == before
    run.claim("bbbb", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_continuing_needs_the_folders_own_run(tmp_path: Path) -> None:
    out = make_run(tmp_path / "run", "aaaa")
    RunDir(out).check_own("aaaa")
    with pytest.raises(RunFolderInUse, match="aaaa"):
        RunDir(out).check_own("bbbb")
    with pytest.raises(ConfigError, match="holds no run"):
        RunDir(tmp_path / "empty").check_own("aaaa")


def serve_cfg(out: Path, **overrides: object) -> JobConfig:
    return JobConfig().replace(
        {"output": str(out), "data.eval": "eval.txt", "federation.rounds": 3, **overrides}
    )


def test_serve_resumes_its_own_run_and_refuses_any_other(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    out = tmp_path / "run"
    cfg = serve_cfg(out)
    assert check_serve_output(cfg, store, "classification", LABELS) is False  # empty: fresh
    make_run(out, store.run_id, cfg)
    before = snapshot(out)
    assert check_serve_output(cfg, store, "classification", LABELS) is True
    # more rounds continue the same run
    assert check_serve_output(
        serve_cfg(out, **{"federation.rounds": 9}), store, "classification", LABELS
    )
    # another config, task, labels or run id: another run
    for why, args in {
        "lora.r": (serve_cfg(out, **{"lora.r": 4}), "classification", LABELS),
        "causal_lm": (cfg, "causal_lm", None),
        "maybe": (cfg, "classification", ["neg", "pos", "maybe"]),
    }.items():
        with pytest.raises(RunFolderInUse, match="--force") as err:
            check_serve_output(args[0], store, args[1], args[2])
        assert why in str(err.value) and str(out) in str(err.value)
    assert snapshot(out) == before
    store.close()


def test_serve_refuses_a_simulate_run_of_another_task_unless_forced(tmp_path: Path) -> None:
    # the very same job, task and labels: only the run id says it is another run
    out = make_run(tmp_path / "run", "5151515151515151", serve_cfg(tmp_path / "run"))
    store = Store(tmp_path / "state.db")
    with pytest.raises(RunFolderInUse, match="5151515151515151"):
        check_serve_output(serve_cfg(out), store, "classification", LABELS)
    # forced: a fresh run (the job replaces the folder's run files)
    assert check_serve_output(serve_cfg(out), store, "classification", LABELS, force=True) is False
    store.close()


def test_a_state_database_belongs_to_one_run_folder(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.set_meta("output", str((tmp_path / "run").resolve()))
    with pytest.raises(ConfigError, match="belongs to the run in") as err:
        check_serve_output(
            serve_cfg(tmp_path / "other"), store, "classification", LABELS, force=True
        )
    assert "--state" in str(err.value)
    # finished rounds whose run folder is gone: never restarted as round 1 of a new run
    store.round_committed(1, {"round": 1}, 0.0)
    with pytest.raises(ConfigError, match="1 finished rounds"):
        check_serve_output(serve_cfg(tmp_path / "run"), store, "classification", LABELS)
    store.close()


# ---- the job --------------------------------------------------------------------------
def test_a_job_refuses_a_one_label_classifier_before_writing(tmp_path: Path) -> None:
    from fedpeft.coordinator.job import Job

    cfg = JobConfig().replace({"output": str(tmp_path / "run"), "data.train": "one.txt"})
    meta = {"task": "classification", "label_names": ["spam"]}
    with pytest.raises(ConfigError, match="at least two labels") as err:
        Job(cfg, meta, resume=False, population=4)
    assert "one.txt" in str(err.value) and "spam" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_job_refuses_a_folder_holding_another_run(tmp_path: Path) -> None:
    from fedpeft.coordinator.job import Job

    out = make_run(tmp_path / "run", "aaaa")
    before = snapshot(out)
    cfg = JobConfig().replace({"output": str(out)})
    meta = {"task": "classification", "label_names": LABELS}
    with pytest.raises(RunFolderInUse):
        Job(cfg, meta, resume=False, population=4)
    with pytest.raises(RunFolderInUse):  # resuming someone else's run
        Job(cfg, {**meta, "run_id": "bbbb"}, resume=True, population=4)
    assert snapshot(out) == before
    Job(cfg, {**meta, "run_id": "aaaa"}, resume=True, population=4)  # its own: continues


# ---- /metrics ---------------------------------------------------------------------------
def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_metrics_serves_only_metrics_on_loopback_without_dp_gauges(tmp_path: Path) -> None:
    metrics = FleetMetrics()
    port = metrics.serve(0)
    try:
        assert metrics._http is not None and metrics._http.server_address[0] == "127.0.0.1"
        status, body = get(port, "/metrics")
        assert status == 200 and "fedpeft_rounds_completed" in body
        assert "fedpeft_dp_epsilon" not in body  # DP off: no budget to report
        for path in ("/", "/index.html", "/metrics/x", "/debug", "/metricsx"):
            assert get(port, path)[0] == 404, path
    finally:
        metrics.close()


def test_metrics_with_dp_exports_epsilon(tmp_path: Path) -> None:
    metrics = FleetMetrics(dp=True)
    port = metrics.serve(0)
    try:
        assert "fedpeft_dp_epsilon 0.0" in get(port, "/metrics")[1]
        metrics.set_epsilon(1.25)
        assert "fedpeft_dp_epsilon 1.25" in get(port, "/metrics")[1]
    finally:
        metrics.close()


def test_metrics_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--metrics-port.*127.0.0.1:{port}"):
            FleetMetrics().serve(port)
