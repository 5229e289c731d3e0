"""Real MiniLM + LoRA: a few steps of central training, then the export round trip
through ``peft.PeftModel.from_pretrained`` gives the same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import shared_data
from fedpeft.config import JobConfig
from fedpeft.data import load_dataset
from fedpeft.export import export_adapter
from fedpeft.training.central import run_central
from fedpeft.training.encode import encode
from fedpeft.training.loop import predict


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_text_file: Path) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = JobConfig().replace(
        {
            "data.train": str(tiny_text_file),
            "data.eval": str(tiny_text_file),
            "train.max_steps": 6,
            "train.lr": 5e-3,
            "train.threads": 2,
            "output": str(out),
        }
    )
    record = run_central(cfg)
    assert record["step"] == 6
    return out


def test_run_folder_contents(trained_run: Path) -> None:
    lines = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert "eval_accuracy" in lines[-1]
    assert 0.0 <= lines[-1]["eval_accuracy"] <= 1.0
    assert (trained_run / "config.toml").is_file()
    assert (trained_run / "adapter" / "adapter_config.json").is_file()
    meta = json.loads((trained_run / "meta.json").read_text())
    assert meta["label_names"] == ["0", "1"]


def test_training_reduces_loss(trained_run: Path) -> None:
    lines = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eval_loss"] < 0.69  # below chance-level cross-entropy for 2 classes


def test_export_loads_with_peft_and_predicts_identically(
    trained_run: Path, tmp_path: Path, tiny_text_file: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "adapter"
    info = export_adapter(trained_run, out)
    assert (out / "adapter_model.safetensors").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(
        info["base_model"], num_labels=len(info["label_names"])
    )
    model = PeftModel.from_pretrained(base, str(out))
    tokenizer = AutoTokenizer.from_pretrained(info["base_model"])
    data = encode(tokenizer, load_dataset(str(tiny_text_file)), 64)
    logits_peft = predict(model, data)

    # fedpeft's own evaluation path: rebuild from the run folder
    from fedpeft.adapters import load_trainable_state
    from fedpeft.models import Task
    from fedpeft.rundir import RunDir
    from fedpeft.training.setup import build_adapted_model

    run = RunDir(trained_run)
    ours = build_adapted_model(run.config(), Task.CLASSIFICATION, info["label_names"])
    load_trainable_state(ours.model, run.load_state())
    logits_ours = predict(ours.model, data)
    assert torch.equal(logits_peft.argmax(-1), logits_ours.argmax(-1))
    torch.testing.assert_close(logits_peft, logits_ours, rtol=1e-4, atol=1e-5)


def test_trec_shared_data_loads_for_training() -> None:
    path = shared_data("trec", "test.txt")
    data = load_dataset(str(path))
    assert len(data) == 500 and len(data.label_names) == 6
