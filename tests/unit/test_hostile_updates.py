"""One hostile client against the coordinator of a plain round (issue 27, findings 1-2).

The adversary is a client that answers its task with a well-formed result and lies in
everything it controls: its metrics (the round's number, counts, bytes, failure flag,
evaluation), its example count, the size of its update. Each test runs the real job
(``run_simulation``: Job, engine, checkpoint, resume, summary) with model-free clients
(:class:`conftest.NumpyClientApp`) whose honest members report their real shard sizes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import NumpyClientApp, run_records, small_job
from fedpeft.config import JobConfig
from fedpeft.coordinator.collect import CLIENT_METRICS, check_examples, client_metrics
from fedpeft.coordinator.failures import RunFailed
from fedpeft.coordinator.job import summarize
from fedpeft.errors import UpdateRejected
from fedpeft.protocol.messages import TrainResult
from fedpeft.rundir import RunDir, strict_json

HOSTILE = 1
#: finding 1's metrics, and every other key of the coordinator's record a client might try
LYING_METRICS: dict[str, Any] = {
    "round": 77,
    "clients_ok": 99,
    "round_failed": 1,
    "bytes_up": 0,
    "bytes_down": 0,
    "clients_sampled": 1,
    "clients_rejected": 5,
    "eval_accuracy": 1.0,
    "eval_loss": 0.0,
    "epsilon": 0.0,
    "round_seconds": 0.0,
    "clients_norm_clipped": 0,
    "train_loss": float("nan"),  # a listed key, but not a number
    "lr": True,  # a listed key, but a bool
}


class Fleet(NumpyClientApp):
    """Honest clients report their shard's size; client ``HOSTILE`` answers with
    ``lie(result)`` in the rounds listed in ``rounds`` (None: every round). Evaluation
    reports one weight of the global adapter, so the lines show what the adapter is."""

    def __init__(self, cfg: JobConfig, lie: Any = None, rounds: set[int] | None = None) -> None:
        super().__init__(cfg)
        self.lie = lie
        self.rounds = rounds

    def train(self, task: Any) -> Any:
        result = super().train(task)
        result = dataclasses.replace(result, num_examples=len(task.indices))
        hostile = self.rounds is None or task.round in self.rounds
        if self.lie is not None and task.client_id == HOSTILE and hostile:
            result = self.lie(self, task, result)
        return result

    def evaluate(self, params: dict[str, Any]) -> dict[str, float]:
        return {"eval_accuracy": float(params["lora_A"][0, 0])}


def run(
    cfg: JobConfig, lie: Any = None, *, rounds: set[int] | None = None, resume: bool = False
) -> list[dict[str, Any]]:
    return run_records(cfg, lambda _name: Fleet(cfg, lie, rounds), resume=resume)


def job(data: Path, out: Path, rounds: int = 3, **federation: Any) -> JobConfig:
    """4 clients, all of them in every round (the hostile one always takes part)."""
    return small_job(data, out, rounds, clients_per_round=4, **federation)


def strict_lines(path: Path) -> list[dict[str, Any]]:
    """The file's JSON lines, refusing NaN/Infinity (what strict parsers do)."""

    def refuse(name: str) -> None:
        raise ValueError(f"{path.name} holds a bare {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def zero_update_lying_metrics(app: Fleet, task: Any, result: TrainResult) -> TrainResult:
    payload = app.sender.uplink.encode({k: np.zeros(s, np.float32) for k, s in app.SHAPES.items()})
    return dataclasses.replace(result, payload=payload, metrics=dict(LYING_METRICS))


COORDINATOR_KEYS = ("round", "clients_sampled", "clients_ok", "clients_rejected", "bytes_up")


def test_client_metrics_never_set_the_round_record_and_resume_keeps_it(
    tmp_path: Path, tiny_text_file: Path
) -> None:
    # Prepare: the same job clean and with client 1 answering finding 1's metrics
    clean = run(job(tiny_text_file, tmp_path / "clean"))
    cfg = job(tiny_text_file, tmp_path / "hostile")
    # Execute
    lied = run(cfg, zero_update_lying_metrics)
    # Assert: round 3 is round 3, with the coordinator's counts and bytes, not failed
    assert [r["round"] for r in lied] == [1, 2, 3]
    for honest, hostile in zip(clean, lied, strict=True):
        assert {k: hostile[k] for k in COORDINATOR_KEYS} == {k: honest[k] for k in COORDINATOR_KEYS}
        assert hostile["clients_ok"] == 4 and hostile["bytes_up"] > 0
        assert "round_failed" not in hostile and "epsilon" not in hostile
        # every lie is dropped and counted; the evaluation is the coordinator's own
        assert hostile["client_metrics_dropped"] == len(LYING_METRICS)
        assert hostile["eval_accuracy"] != 1.0
        assert hostile["train_loss"] == 1.0  # the honest clients' mean, NaN dropped
    # the checkpoint and a restart keep round 3's line as written
    line3 = lied[2]
    resumed = run(
        job(tiny_text_file, tmp_path / "hostile", rounds=4), zero_update_lying_metrics, resume=True
    )
    assert [r["round"] for r in resumed] == [1, 2, 3, 4]
    assert resumed[2] == line3
    summary = json.loads((tmp_path / "hostile" / "summary.json").read_text())
    assert summary["final_round"] == 4 and summary["rounds"] == 4


def claims_examples(count: int) -> Any:
    def lie(app: Fleet, task: Any, result: TrainResult) -> TrainResult:
        return dataclasses.replace(result, num_examples=count)

    return lie


@pytest.mark.parametrize("count", [2**62, 2**64 - 1, 10_000_000])
def test_an_inflated_example_count_is_rejected_not_averaged(
    tmp_path: Path, tiny_text_file: Path, count: int
) -> None:
    cfg = job(tiny_text_file, tmp_path / "run", rounds=1)
    records = run(cfg, claims_examples(count))
    assert records[0]["clients_ok"] == 3 and records[0]["clients_rejected"] == 1
    reason = records[0]["rejected"][str(HOSTILE)]
    assert str(count) in reason and "federation.max_client_examples" in reason
    # the cap is configurable: 12 examples per shard, a cap of 5 rejects every client
    capped = job(tiny_text_file, tmp_path / "capped", rounds=1, max_client_examples=5)
    with pytest.raises(RunFailed):
        run(capped)
    (line,) = RunDir(tmp_path / "capped").read_metrics()
    assert line["clients_ok"] == 0 and "cap of 5" in line["rejected"]["0"]


def test_check_examples_names_the_client() -> None:
    assert check_examples(3, 12, 12) == 12
    for bad in (0, -1, 13, 2**64 - 1, True, 5.0, "7"):
        with pytest.raises(UpdateRejected, match="client 3"):
            check_examples(3, bad, 12)


def boosted(factor: float) -> Any:
    def lie(app: Fleet, task: Any, result: TrainResult) -> TrainResult:
        update = {k: v * np.float32(factor) for k, v in app.update_of(task.client_id).items()}
        return dataclasses.replace(result, payload=app.sender.uplink.encode(update))

    return lie


def constant(value: float) -> Any:
    def lie(app: Fleet, task: Any, result: TrainResult) -> TrainResult:
        update = {k: np.full(s, value, np.float32) for k, s in app.SHAPES.items()}
        return dataclasses.replace(result, payload=app.sender.uplink.encode(update))

    return lie


def final_adapter(out: Path) -> dict[str, np.ndarray]:
    return load_file(str(out / "adapter_state.safetensors"))


def test_a_boosted_update_is_clipped_to_the_cohorts_bound(
    tmp_path: Path, tiny_text_file: Path
) -> None:
    # the attack of finding 2: a finite 1e30 update
    defended = run(job(tiny_text_file, tmp_path / "on", rounds=2), boosted(1e30))
    assert all(r["clients_norm_clipped"] == 1 for r in defended)
    adapter = final_adapter(tmp_path / "on")
    assert all(np.all(np.abs(v) < 1.0) for v in adapter.values())
    # the bound is the cohort median's multiple: one client moves the mean by at most
    # 3 honest norms / 4 clients
    clean = run(job(tiny_text_file, tmp_path / "clean", rounds=2))
    assert clean[0]["clients_norm_clipped"] == 0
    assert defended[0]["update_norm_bound"] == pytest.approx(clean[0]["update_norm_bound"], rel=0.5)
    # without the bound the adapter holds the attacker's 1e30 (what the issue saw)
    run(job(tiny_text_file, tmp_path / "off", rounds=2, update_norm_multiple=0.0), boosted(1e30))
    assert max(float(np.abs(v).max()) for v in final_adapter(tmp_path / "off").values()) > 1e25


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_non_finite_aggregate_fails_the_round_and_keeps_the_adapter(
    tmp_path: Path, tiny_text_file: Path
) -> None:
    # bounds off, server lr 8 and momentum: round 2's step from a 3e38 update overflows
    cfg = job(
        tiny_text_file,
        tmp_path / "run",
        rounds=3,
        update_norm_multiple=0.0,
        server_lr=8.0,
        server_momentum=0.5,
    )
    records = run(cfg, constant(3e38), rounds={2})
    assert "round_failed" not in records[0] and "round_failed" not in records[2]
    assert "not finite" in records[1]["round_failed"]
    assert records[1]["eval_accuracy"] == records[0]["eval_accuracy"]  # adapter unchanged
    # the server momentum did not keep the failed round's step: round 3 is an honest step
    assert abs(records[2]["eval_accuracy"]) < 1.0
    assert all(np.all(np.isfinite(v)) for v in final_adapter(tmp_path / "run").values())
    strict_lines(tmp_path / "run" / "metrics.jsonl")


def test_metrics_and_summary_are_strict_json(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    record = {
        "round": 1,
        "bytes_up": 1,
        "bytes_down": 1,
        "eval_loss": float("nan"),
        "eval_accuracy": 0.5,
        "rejected": {"3": "x"},
        "spread": [1.0, float("inf")],
        "np": np.float32("nan"),
    }
    run_dir.append_metrics(record)
    run_dir.rewrite_metrics(run_dir.read_metrics())  # a resume rewrites: flags survive
    (line,) = strict_lines(run_dir.metrics_path)
    assert line["eval_loss"] is None and line["spread"] == [1.0, None] and line["np"] is None
    assert line["nonfinite"] == ["eval_loss", "np", "spread.1"]
    summary = summarize([line], {"initial_eval_loss": float("inf")}, 1.0, {})
    text = json.dumps(strict_json(summary), allow_nan=False)
    parsed = json.loads(text)
    assert parsed["final_eval_loss"] is None and parsed["initial_eval_loss"] is None
    assert parsed["nonfinite"] == ["final_eval_loss", "initial_eval_loss"]


def test_client_metrics_are_typed_and_range_checked() -> None:
    sent = {
        "train_loss": 0.7,
        "train_steps": 3,
        "prefix_hit_rate": 1.5,  # a fraction above 1
        "client_seconds": -2.0,
        "update_norm": float("inf"),
        "dp_clipped": True,
        "lr": "0.1",
        "round": 77,
        "clients_ok": 99,
    }
    kept, dropped = client_metrics(TrainResult(3, 1, metrics=sent))  # type: ignore[arg-type]
    assert kept == {"train_loss": 0.7, "train_steps": 3.0}
    assert dropped == len(sent) - 2
    # what the fedpeft client sends is listed; nothing listed is a record key
    assert {"train_loss", "client_seconds", "update_norm", "secagg_clipped_fraction"} <= set(
        CLIENT_METRICS
    )
    assert not set(CLIENT_METRICS) & set(LYING_METRICS) - {"train_loss", "lr"}


@pytest.mark.slow
def test_poisoning_benchmark_runs_at_minimal_size(tmp_path: Path) -> None:
    """bench/poisoning.py end to end (one round, tiny caps): the malicious client is
    clipped under the defaults and not under ``off``; the report is strict JSON."""
    import importlib.util

    from conftest import ROOT, shared_data

    shared_data("sst2", "train.txt")
    spec = importlib.util.spec_from_file_location(
        "bench_poisoning", ROOT / "bench" / "poisoning.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "poisoning.json"
    argv = ["--rounds", "1", "--max-train-examples", "100", "--max-eval-examples", "16"]
    assert (
        bench.main([*argv, "--runs", "clean,scale-off,scale-defaults", "--output", str(out)]) == 0
    )
    report = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name}"))
    runs = report["runs"]
    assert runs["scale-defaults"]["clients_norm_clipped"] == [1]
    assert runs["scale-off"]["clients_norm_clipped"] == [None]
    assert runs["clean"]["clients_norm_clipped"] == [0]
    assert set(report["summary"]["accuracy"]["scale"]) == {"off", "defaults"}
    assert (
        report["job"]["federation.clients"] == 20
        and report["job"]["federation.clients_per_round"] == 5
    )
