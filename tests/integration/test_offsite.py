"""Federated Offsite-Tuning end to end: simulate (in-process and Ray) on a tiny backbone,
both metrics in metrics.jsonl, the plug-in export loaded by PEFT / transformers, and the
IP guard on the real MiniLM emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from unit.test_offsite import assert_ip_guard, make_tiny_backbone

from fedpeft.adapters import load_trainable_state
from fedpeft.adapters.offsite import build_emulator, build_plugin_model
from fedpeft.config import JobConfig
from fedpeft.models.registry import Task, load_backbone, resolve_model_path
from fedpeft.rundir import RunDir
from fedpeft.simulation import run_simulation


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("offsite-int")
    backbone = make_tiny_backbone(root / "bert", "bert")
    build_emulator(str(backbone), root / "emu", adapter_blocks=1, keep_middle=2)
    return backbone, root / "emu"


def ot_job(data: Path, backbone: Path, emulator: Path, out: Path, **more: Any) -> JobConfig:
    settings: dict[str, Any] = {
        "model.name": str(backbone),
        "model.device": "cpu",
        "adapter.kind": "offsite",
        "adapter.emulator": str(emulator),
        "data.train": str(data),
        "data.eval": str(data),
        "output": str(out),
        "federation.clients": 4,
        "federation.clients_per_round": 2,
        "federation.rounds": 2,
        "federation.partition": "iid",
        "train.max_steps": 2,
        "train.batch_size": 8,
        "train.lr": 5e-3,
    }
    settings.update(more)
    return JobConfig().replace(settings)


def _logits(model: Any, backbone: Path) -> torch.Tensor:
    from fedpeft.models.registry import load_tokenizer

    enc = load_tokenizer(str(backbone))(
        ["a joy to watch", "awful"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def test_simulate_offsite_inprocess_with_compeft_and_peft_export(
    tiny_bert: tuple[Path, Path], tiny_text_file: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    backbone, emulator = tiny_bert
    cfg = ot_job(tiny_text_file, backbone, emulator, tmp_path / "run", **{"codec.name": "compeft"})
    summary = run_simulation(cfg)
    records = RunDir(cfg.output).read_metrics()
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert record["clients_ok"] == 2
        assert {"eval_accuracy", "emulator_accuracy", "eval_loss", "emulator_loss"} <= set(record)
    assert "final_eval_accuracy" in summary and "initial_eval_accuracy" in summary

    # the export is the plug-in adapter as PEFT writes it, onto the *full* backbone
    out = tmp_path / "run" / "adapter"
    assert (out / "adapter_config.json").is_file()
    meta = RunDir(cfg.output).meta()
    base = load_backbone(str(backbone), Task.CLASSIFICATION, label_names=meta["label_names"])
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    plugin = build_plugin_model(cfg, Task.CLASSIFICATION, meta["label_names"]).model
    load_trainable_state(plugin, RunDir(cfg.output).load_state())
    torch.testing.assert_close(_logits(loaded, backbone), _logits(plugin, backbone))


def test_full_block_adapter_exports_a_transformers_model(
    tiny_bert: tuple[Path, Path], tiny_text_file: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    from fedpeft.export import export_adapter

    backbone, emulator = tiny_bert
    cfg = ot_job(
        tiny_text_file,
        backbone,
        emulator,
        tmp_path / "run",
        **{"adapter.train": "full", "federation.rounds": 1},
    )
    run_simulation(cfg, export=False)
    info = export_adapter(cfg.output, tmp_path / "export")
    assert info["format"] == "transformers-model"
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "export")).eval()
    meta = RunDir(cfg.output).meta()
    plugin = build_plugin_model(cfg, Task.CLASSIFICATION, meta["label_names"]).model
    load_trainable_state(plugin, RunDir(cfg.output).load_state())
    torch.testing.assert_close(_logits(loaded, backbone), _logits(plugin, backbone))


@pytest.mark.ray
def test_simulate_offsite_on_ray(
    tiny_bert: tuple[Path, Path], tiny_text_file: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="the `sim` extra (ray) is not installed")
    backbone, emulator = tiny_bert
    cfg = ot_job(
        tiny_text_file,
        backbone,
        emulator,
        tmp_path / "run",
        **{"federation.backend": "ray", "federation.workers": 2, "federation.rounds": 1},
    )
    run_simulation(cfg, export=False)
    (record,) = RunDir(cfg.output).read_metrics()
    assert record["clients_ok"] == 2
    assert "eval_accuracy" in record and "emulator_accuracy" in record


def test_ip_guard_on_the_minilm_emulator(tmp_path: Path) -> None:
    """The real backbone: a = 1, keep 2 of 4 middle blocks (2 and 3 dropped)."""
    from safetensors.torch import load_file

    info = build_emulator("minilm", tmp_path / "emu", adapter_blocks=1, keep_middle=2)
    full_file = Path(resolve_model_path("minilm")) / "model.safetensors"
    emulator_file = tmp_path / "emu" / "model.safetensors"
    assert info.layout.dropped == (2, 3)
    assert_ip_guard(
        load_file(str(full_file)),
        load_file(str(emulator_file)),
        info.layout,
        full_file,
        emulator_file,
    )


@pytest.mark.slow
def test_simulate_offsite_causal_lm_reports_both_perplexities(tmp_path: Path) -> None:
    import json

    backbone = make_tiny_backbone(tmp_path / "llama", "llama")
    build_emulator(str(backbone), tmp_path / "emu", adapter_blocks=1, keep_ratio=0.5)
    rows = [
        {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
        for i in range(16)
    ]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(rows))
    cfg = ot_job(data, backbone, tmp_path / "emu", tmp_path / "run", **{"federation.rounds": 1})
    run_simulation(cfg, export=False)
    (record,) = RunDir(cfg.output).read_metrics()
    assert {"eval_loss", "eval_perplexity", "emulator_loss", "emulator_perplexity"} <= set(record)
    assert record["eval_perplexity"] != record["emulator_perplexity"]


# ---- tiered federation: full-backbone and emulator clients in one cohort ---------------------
def _alpaca(path: Path, rows: int = 24) -> Path:
    import json

    path.write_text(
        json.dumps(
            [
                {"instruction": f"Say the number {i}.", "input": "", "output": f"It is {i}."}
                for i in range(rows)
            ]
        )
    )
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("offsite-tiers")
    backbone = make_tiny_backbone(root / "llama", "llama")
    build_emulator(str(backbone), root / "emu", adapter_blocks=1, keep_middle=2)
    return backbone, root / "emu", _alpaca(root / "alpaca.json")


def assert_tiers_recorded(cfg: JobConfig, records: list[dict[str, Any]]) -> None:
    """Every round line counts each tier among the round's results, from the clients' own
    reports: a tier is > 0 exactly when a client of that tier was in the cohort."""
    from fedpeft.client.factory import job_tiers
    from fedpeft.coordinator.sampling import ClientSampler

    fed = cfg.federation
    full = job_tiers(cfg)
    sampler = ClientSampler(fed.clients, fed.clients_per_round, fed.sampling, cfg.train.seed)
    for record in records:
        cohort = sampler.sample(record["round"])
        assert record["clients_ok"] == len(cohort)
        # counts: how many of the round's results came from each tier
        assert record["tier_full"] == sum(c in full for c in cohort), record
        assert record["tier_emulator"] == sum(c not in full for c in cohort), record


def test_tiered_simulation_with_compeft_chain_downlink(
    tiny_llama: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Half the clients train on the full backbone, half on the emulator, one cohort;
    ComPEFT uplink and the chain downlink; plug-in and emulator perplexity every round."""
    backbone, emulator, data = tiny_llama
    cfg = ot_job(
        data,
        backbone,
        emulator,
        tmp_path / "run",
        **{
            "federation.full_model_fraction": 0.5,
            "federation.rounds": 3,
            "codec.name": "compeft",
            "codec.downlink": "chain",
        },
    )
    summary = run_simulation(cfg, export=False)
    records = RunDir(cfg.output).read_metrics()
    assert [r["round"] for r in records] == [1, 2, 3]
    for record in records:
        assert "round_failed" not in record, record
        assert {"eval_perplexity", "emulator_perplexity", "tier_full", "tier_emulator"} <= set(
            record
        )
    assert_tiers_recorded(cfg, records)
    assert any(r["tier_full"] > 0 for r in records) and any(r["tier_emulator"] > 0 for r in records)
    assert "final_eval_perplexity" in summary


@pytest.mark.slow
def test_tiered_offsite_under_central_dp(
    tiny_bert: tuple[Path, Path], tiny_text_file: Path, tmp_path: Path
) -> None:
    """DP clips and noises the tiered cohort's updates like any other: epsilon is spent
    and the tiers are still recorded."""
    backbone, emulator = tiny_bert
    cfg = ot_job(
        tiny_text_file,
        backbone,
        emulator,
        tmp_path / "run",
        **{
            "federation.full_model_fraction": 0.5,
            "federation.clients": 6,
            "federation.clients_per_round": 3,
            "federation.rounds": 1,
            "dp.noise_multiplier": 0.8,
            "dp.clip": 0.5,
            "dp.delta": 1e-3,
        },
    )
    run_simulation(cfg, export=False)
    records = RunDir(cfg.output).read_metrics()
    assert len(records) == 1 and all("round_failed" not in r for r in records)
    assert records[-1]["epsilon"] > 0
    assert_tiers_recorded(cfg, records)


def test_tiered_offsite_under_secagg(
    tiny_bert: tuple[Path, Path], tiny_text_file: Path, tmp_path: Path
) -> None:
    """Secure aggregation sums the tiered cohort's masked updates: the rounds aggregate and
    the plug-in model is evaluated."""
    backbone, emulator = tiny_bert
    cfg = ot_job(
        tiny_text_file,
        backbone,
        emulator,
        tmp_path / "run",
        **{
            "federation.full_model_fraction": 0.5,
            "federation.clients": 6,
            "federation.clients_per_round": 3,
            "federation.rounds": 1,
            "secagg.enabled": True,
        },
    )
    run_simulation(cfg, export=False)
    (record,) = RunDir(cfg.output).read_metrics()
    assert "round_failed" not in record, record
    assert record["secagg_survivors"] == 3
    assert {"eval_accuracy", "emulator_accuracy"} <= set(record)
