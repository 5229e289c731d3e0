"""Federated simulation with the real MiniLM on a tiny dataset: rounds, resume
equivalence, rejection of bad updates, Ray vs in-process equality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedpeft.client.app import LoraClientApp
from fedpeft.config import JobConfig
from fedpeft.protocol.messages import TrainResult, TrainTask
from fedpeft.simulation import run_simulation


def tiny_job(data: Path, out: Path, **overrides: object) -> JobConfig:
    base = {
        "data.train": str(data),
        "data.eval": str(data),
        "output": str(out),
        "federation.clients": 6,
        "federation.clients_per_round": 3,
        "federation.rounds": 2,
        "federation.partition": "iid",
        "train.max_steps": 2,
        "train.batch_size": 4,
        "train.lr": 5e-3,
        "train.threads": 1,
        "data.max_length": 32,
    }
    base.update(overrides)
    return JobConfig().replace(base)


def final_state(run: Path) -> dict[str, np.ndarray]:
    return dict(load_file(str(run / "adapter_state.safetensors")))


def test_simulation_writes_rounds_and_improves(tmp_path: Path, tiny_text_file: Path) -> None:
    cfg = tiny_job(
        tiny_text_file,
        tmp_path / "run",
        **{
            "federation.rounds": 3,
            "federation.client_lr_schedule": "linear",
            "federation.client_lr_final": 0.5,
        },
    )
    summary = run_simulation(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3]
    # the round schedule reached the clients: 5e-3 decayed linearly to half
    assert [r["lr"] for r in lines] == pytest.approx([5e-3, 3.75e-3, 2.5e-3])
    for r in lines:
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0 and "eval_accuracy" in r
    assert summary["rounds"] == 3
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_resume_equals_uninterrupted(tmp_path: Path, tiny_text_file: Path) -> None:
    full = tiny_job(
        tiny_text_file,
        tmp_path / "full",
        **{"federation.rounds": 3, "federation.strategy": "fedadam", "federation.server_lr": 0.01},
    )
    run_simulation(full, export=False)
    part = full.replace({"output": str(tmp_path / "part"), "federation.rounds": 2})
    run_simulation(part, export=False)
    resumed = part.replace({"federation.rounds": 3})
    run_simulation(resumed, resume=True, export=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2, 3]


def test_fedexp_logs_its_server_step(tmp_path: Path, tiny_text_file: Path) -> None:
    cfg = tiny_job(
        tiny_text_file,
        tmp_path / "run",
        **{"federation.strategy": "fedexp", "federation.server_ema": 0.5},
    )
    summary = run_simulation(cfg, export=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    assert all(r["server_step"] >= 1.0 and np.isfinite(r["server_step"]) for r in lines)
    assert np.isfinite(summary["final_eval_loss"])


def test_product_aggregation_round_trip(tmp_path: Path, tiny_text_file: Path) -> None:
    # the re-factored adapter is an ordinary rank-r LoRA adapter: A = c·Vᵣᵀ has orthogonal
    # rows of one length, B carries the singular values, and training goes on from it
    cfg = tiny_job(tiny_text_file, tmp_path / "run", **{"federation.lora_aggregation": "product"})
    summary = run_simulation(cfg, export=False)
    assert summary["rounds"] == 2 and np.isfinite(summary["final_eval_loss"])
    state = final_state(tmp_path / "run")
    a_names = [k for k in state if ".lora_A." in k]
    assert a_names
    for name in a_names:
        a = state[name].astype(np.float64)
        gram = a @ a.T
        np.testing.assert_allclose(gram, np.eye(len(a)) * gram[0, 0], atol=1e-5 * gram[0, 0])
        assert np.any(state[name.replace(".lora_A.", ".lora_B.")] != 0)


class _PoisonedApp(LoraClientApp):
    """Client 0 sends a wrongly shaped tensor, 1 crashes, 2 sends truncated bytes."""

    def train(self, task: TrainTask) -> TrainResult:
        if task.client_id == 1:
            return TrainResult(task.round, task.client_id, error="RuntimeError: boom")
        result = super().train(task)
        if task.client_id == 0 and result.ok:
            wrong = {k: np.zeros(v.size + 1, np.float32) for k, v in self.initial.items()}
            result.payload = self.uplink.encode(wrong)
        if task.client_id == 2 and result.ok:
            result.payload = result.payload[: len(result.payload) // 2]
        return result


def test_bad_updates_are_rejected_not_averaged(tmp_path: Path, tiny_text_file: Path) -> None:
    cfg = tiny_job(
        tiny_text_file,
        tmp_path / "run",
        **{"federation.clients": 4, "federation.clients_per_round": 4, "federation.rounds": 1},
    )
    summary = run_simulation(
        cfg, app_factory=lambda name: _PoisonedApp(cfg, name=name), export=False
    )
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["clients_ok"] == 1 and record["clients_rejected"] == 3
    assert "shape" in record["rejected"]["0"]
    assert "boom" in record["rejected"]["1"]
    assert "truncated" in record["rejected"]["2"].lower()
    state = final_state(tmp_path / "run")
    assert all(np.all(np.isfinite(v)) for v in state.values())
    assert summary["rounds"] == 1


def test_compressed_uplink_and_delta_downlink(tmp_path: Path, tiny_text_file: Path) -> None:
    cfg = tiny_job(
        tiny_text_file,
        tmp_path / "run",
        **{
            "federation.clients": 3,
            "federation.clients_per_round": 3,
            "federation.rounds": 2,
            "codec.name": "compeft",
            "codec.density": 0.1,
            "codec.error_feedback": True,
            "codec.downlink": "compeft",
        },
    )
    run_simulation(cfg, export=False)
    r1, r2 = (json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    n_params = sum(v.size for v in final_state(tmp_path / "run").values())
    assert r1["bytes_up"] < 3 * 4 * n_params / 40  # ≥ 40x smaller than fp32
    assert r1["bytes_down"] > 3 * 4 * n_params  # first contact: full fp32 weights
    assert r2["bytes_down"] < r1["bytes_down"] / 20  # then compressed deltas
    # error-feedback residuals stay with each client (run/clients/<id>/); the
    # coordinator's checkpoint keeps only what it sent each client
    from safetensors.numpy import load_file as load

    for cid in range(3):
        last = tmp_path / "run" / "clients" / str(cid) / "v1.safetensors"
        assert {k.split("/")[0] for k in load(str(last))} == {"held", "residual"}
    sent = load(str(tmp_path / "run" / "checkpoint" / "sent.safetensors"))
    assert sent and not (tmp_path / "run" / "checkpoint" / "clients.safetensors").exists()


def test_ccvr_calibrates_minilm_classifier(tmp_path: Path, tiny_text_file: Path) -> None:
    """CCVR with the real model: clients report statistics of the features entering the
    PEFT copy of BERT's classifier; only that layer changes; the PEFT export carries it."""
    cfg = tiny_job(
        tiny_text_file,
        tmp_path / "run",
        **{
            "federation.rounds": 1,
            "federation.calibration": "ccvr",
            "federation.calibration_clients": 4,
        },
    )
    summary = run_simulation(cfg)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["calibration_clients"] == 4
    assert summary["calibration_bytes_up"] == record["calibration_bytes_up"]
    assert summary["bytes_up"] == record["bytes_up"]  # a round's traffic stays the round's
    assert summary["final_uncalibrated_eval_accuracy"] == record["uncalibrated_eval_accuracy"]
    assert "uncalibrated_eval_accuracy" in record and "eval_accuracy" in record
    # 2 classes x (1 + 384 + 384*385/2) float32 values per client, plus the frame
    assert record["calibration_bytes_up"] >= 4 * 2 * (1 + 384 + 384 * 385 // 2) * 4
    trained = dict(load_file(str(tmp_path / "run" / "checkpoint" / "global.safetensors")))
    exported = final_state(tmp_path / "run")
    changed = sorted(k for k in trained if not np.array_equal(trained[k], exported[k]))
    assert changed == [
        "base_model.model.classifier.modules_to_save.default.bias",
        "base_model.model.classifier.modules_to_save.default.weight",
    ]
    from safetensors.torch import load_file as load_torch  # the standard PEFT folder

    peft_file = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    weights = load_torch(str(peft_file))
    key = next(
        k
        for k in weights
        if k.endswith("classifier.modules_to_save.default.weight")
        or k.endswith("classifier.weight")
    )
    np.testing.assert_allclose(
        weights[key].numpy(), exported["base_model.model.classifier.modules_to_save.default.weight"]
    )
