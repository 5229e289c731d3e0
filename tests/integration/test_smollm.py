"""SmolLM2-135M (packaged GGUF → cached safetensors): instruction tuning lowers held-out
perplexity and the adapter exports. Slow: ~1 minute of CPU per few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import shared_data
from fedpeft.config import JobConfig
from fedpeft.export import export_adapter
from fedpeft.training.central import run_central

pytestmark = pytest.mark.slow


def test_smollm2_instruction_tuning_and_export(tmp_path: Path) -> None:
    alpaca = shared_data("alpaca", "alpaca_5000.json")
    records = json.loads(alpaca.read_text())
    held_out = tmp_path / "heldout.json"
    held_out.write_text(json.dumps(records[200:216]))
    cfg = JobConfig().replace(
        {
            "model.name": "smollm2-135m",
            "data.train": str(alpaca),
            "data.eval": str(held_out),
            "data.max_train_examples": 32,
            "data.max_length": 128,
            "train.batch_size": 8,
            "train.max_steps": 4,
            "train.lr": 1e-3,
            "output": str(tmp_path / "run"),
        }
    )
    record = run_central(cfg)
    assert record["eval_perplexity"] < record["initial_eval_perplexity"]
    info = export_adapter(tmp_path / "run", tmp_path / "adapter")
    assert info["task"] == "causal_lm"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(info["base_model"])
    PeftModel.from_pretrained(base, str(tmp_path / "adapter"))


def test_smollm2_federated_job_works_out_of_the_box(tmp_path: Path) -> None:
    """The issue-28 job at its smallest: no --eval-data, no partition or LLM settings
    given (the causal-LM defaults and the seeded held-out split fill them in), the
    label-free cluster partition, perplexity every round, then `fedpeft generate`."""
    from fedpeft.simulation import run_simulation
    from fedpeft.training.setup import with_task_defaults

    alpaca = shared_data("alpaca", "alpaca_5000.json")
    given = {
        "model.name": "smollm2-135m",
        "data.train": str(alpaca),
        "data.max_eval_examples": 8,
        "federation.clients": 4,
        "federation.clients_per_round": 2,
        "federation.rounds": 1,
        "federation.partition": "cluster",
        "train.max_steps": 2,
        "output": str(tmp_path / "run"),
    }
    cfg, applied, _ = with_task_defaults(JobConfig().replace(given), set(given))
    assert applied["data.max_length"] == 256 and "federation.partition" not in applied
    summary = run_simulation(cfg)
    assert summary["eval_examples"] == 8
    assert summary["final_eval_perplexity"] < summary["initial_eval_perplexity"]
    from fedpeft.training.generate import generate_texts, load_for_generation

    model, tokenizer, _ = load_for_generation(tmp_path / "run")
    assert generate_texts(model, tokenizer, ["Name a colour."], max_new_tokens=8)[0]
